"""Samplers from t = t_start (1: pure noise) to t = 0 (clean), as pure functions.

A sampler takes `net(z_BxNxD, t_B, self_cond_BxNxD) -> output` (conditioning already bound;
the output is eps, x0 or v per `prediction`) and runs its whole denoising loop inside jit:
`lax.fori_loop` with the step count as a traced integer, so one compile serves every budget
from 1 to 1000 for a given batch shape; `trajectory` uses `lax.scan` to keep every step's
clean-latent estimate. The previous clean-latent estimate is carried across steps and fed
back as self-conditioning.

- "ddpm": ancestral sampling from the exact Gaussian posterior q(z_s | z_t, x0_hat).
- "ddim": DDIM (Song et al. 2021); eta = 0 deterministic, eta = 1 the DDPM posterior noise.
- "dpm++": DPM-Solver++(2M) (Lu et al. 2022), multistep second order in log-SNR, with the
  first and the final step of first order (the final step jumps to log-SNR 20, where the
  second-order extrapolation is unstable).

Time grids over [t_start, 0]: "uniform", or "quadratic" (t = t_start (1 - i/steps)^2: large
steps at high noise, small ones near the data).

`temperature` scales the fresh noise that the stochastic updates (ddpm, ddim with eta > 0)
add at every step; callers scale the starting noise by the same factor. Below 1 it trades
diversity for likelier text, as in likelihood-model sampling.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ldlm.diffusion import schedules
from ldlm.diffusion.spec import GRIDS, MAX_STEPS, MIN_STEPS, SAMPLERS, SamplingSpec

Net = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]
__all__ = ["GRIDS", "MAX_STEPS", "MIN_STEPS", "SAMPLERS", "SamplingSpec", "sample", "guide"]


def time_at(i, steps, grid: str = "uniform", t_start=1.0):
    """Time of grid point i in 0 .. steps (t_start at i = 0, 0 at i = steps)."""
    remaining = 1.0 - jnp.asarray(i, jnp.float32) / jnp.asarray(steps, jnp.float32)
    if grid == "uniform":
        return t_start * remaining
    if grid == "quadratic":
        return t_start * remaining ** 2
    raise ValueError(f"unknown time grid {grid!r}; choose one of {', '.join(GRIDS)}")


def _update(sampler: str, z, x0, eps, x0_prev, h_prev, first, last, ls_t, ls_s, key, eta,
            temperature):
    """z at the next time s from the estimates at the current time t; also returns h."""
    a_t, s_t = schedules.alpha_sigma(ls_t)
    a_s, s_s = schedules.alpha_sigma(ls_s)
    # Fraction of the variance at t that is fresh relative to s: 1 - SNR_t / SNR_s.
    fresh = -jnp.expm1(jnp.minimum(ls_t - ls_s, 0.0))
    h = 0.5 * (ls_s - ls_t)  # step in lambda = log(alpha / sigma)
    if sampler == "ddim":
        c = eta * s_s * jnp.sqrt(fresh)  # eta = 1: the DDPM posterior standard deviation
        z_s = a_s * x0 + jnp.sqrt(jnp.maximum(s_s ** 2 - c ** 2, 0.0)) * eps
        return z_s + temperature * c * jax.random.normal(key, z.shape), h
    if sampler == "ddpm":
        # posterior mean: (SNR_t / SNR_s) (alpha_s / alpha_t) z_t + alpha_s fresh x0
        keep = jnp.exp(jnp.minimum(ls_t - ls_s, 0.0)) * a_s / a_t
        z_s = keep * z + a_s * fresh * x0
        return z_s + temperature * s_s * jnp.sqrt(fresh) * jax.random.normal(key, z.shape), h
    if sampler == "dpm++":
        r = h_prev / jnp.where(h == 0, 1.0, h)
        second = (1 + 0.5 / r) * x0 - (0.5 / r) * x0_prev
        d = jnp.where(first | last, x0, second)
        return (s_s / s_t) * z - a_s * jnp.expm1(-h) * d, h
    raise ValueError(f"unknown sampler {sampler!r}; choose one of {', '.join(SAMPLERS)}")


def _step_fn(net: Net, sampler: str, steps, *, schedule, snr_scale, prediction, eta, grid,
             t_start, temperature):
    def step(carry, i):
        z, x0_prev, h_prev, key = carry
        key, k_noise = jax.random.split(key)
        t, s = time_at(i, steps, grid, t_start), time_at(i + 1, steps, grid, t_start)
        ls_t = schedules.logsnr(t, schedule, snr_scale)
        ls_s = schedules.logsnr(s, schedule, snr_scale)
        a_t, s_t = schedules.alpha_sigma(ls_t)
        out = net(z, jnp.full((z.shape[0],), t), x0_prev)
        x0 = schedules.to_x0(prediction, out, z, a_t, s_t)
        eps = schedules.to_eps(prediction, out, z, a_t, s_t)
        z, h = _update(sampler, z, x0, eps, x0_prev, h_prev, i == 0, i == steps - 1, ls_t,
                       ls_s, k_noise, eta, temperature)
        return (z, x0, h, key), x0

    return step


def sample(net: Net, z_BxNxD, rng, spec: SamplingSpec, *, schedule: str = "cosine",
           snr_scale: float = 1.0, prediction: str = "v", t_start=1.0,
           trajectory_steps: int | None = None):
    """Denoises z (noise at t_start) with `spec`'s sampler, grid, steps, eta and temperature;
    returns z_0 BxNxD, or with `trajectory_steps` (a Python int: the scan's length, which
    replaces spec.steps) the clean-latent estimate of every step, steps x B x N x D, whose
    last entry is followed by z_0: (z_0, estimates)."""
    steps = trajectory_steps or spec.steps
    step = _step_fn(net, spec.sampler, steps, schedule=schedule, snr_scale=snr_scale,
                    prediction=prediction, eta=spec.eta, grid=spec.grid, t_start=t_start,
                    temperature=spec.temperature)
    init = (z_BxNxD, jnp.zeros_like(z_BxNxD), jnp.float32(1.0), rng)
    if trajectory_steps:
        (z, _, _, _), estimates = jax.lax.scan(step, init, jnp.arange(steps))
        return z, estimates
    z, _, _, _ = jax.lax.fori_loop(0, steps, lambda i, c: step(c, i)[0], init)
    return z


def guide(cond, uncond, scale):
    """Classifier-free guidance: uncond + scale * (cond - uncond); scale 0 gives the
    unconditional output, 1 the conditional one, > 1 extrapolates towards the condition."""
    return uncond + scale * (cond - uncond)
