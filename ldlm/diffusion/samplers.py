"""Samplers over a time grid from t = 1 (noise) to t = 0 (clean), as pure functions.

A sampler takes `net(z_BxNxD, t_B, self_cond_BxNxD) -> output` (conditioning already bound)
and runs its whole denoising loop inside `lax.scan`, so one compile serves a given step count
and batch shape. The previous clean-latent estimate is carried across steps and fed back as
self-conditioning.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from ldlm.diffusion import schedules

Net = Callable[[jax.Array, jax.Array, jax.Array], jax.Array]


def time_grid(steps: int):
    """steps + 1 times, uniform from 1 to 0."""
    return jnp.linspace(1.0, 0.0, steps + 1)


def ddim(net: Net, z_T, steps: int, rng, *, schedule: str = "cosine", snr_scale: float = 1.0,
         prediction: str = "v", eta: float = 0.0):
    """DDIM (eta = 0: deterministic; eta = 1: ancestral, DDPM-like). Returns z_0 BxNxD."""
    ts = time_grid(steps)
    B = z_T.shape[0]

    def step(carry, i):
        z, x0_prev, key = carry
        key, k_noise = jax.random.split(key)
        t, s = ts[i], ts[i + 1]
        a_t, s_t = schedules.alpha_sigma(schedules.logsnr(t, schedule, snr_scale))
        a_s, s_s = schedules.alpha_sigma(schedules.logsnr(s, schedule, snr_scale))
        out = net(z, jnp.full((B,), t), x0_prev)
        x0 = schedules.to_x0(prediction, out, z, a_t, s_t)
        eps = schedules.to_eps(prediction, out, z, a_t, s_t)
        # DDIM noise level: eta * sqrt(sigma_s^2 / sigma_t^2 * (1 - alpha_t^2 sigma_s^2 /
        # (alpha_s^2 sigma_t^2)))
        ratio = jnp.clip(1.0 - (a_t * s_s) ** 2 / jnp.maximum((a_s * s_t) ** 2, 1e-20), 0.0, 1.0)
        c = eta * (s_s / s_t) * jnp.sqrt(ratio)
        z = a_s * x0 + jnp.sqrt(jnp.maximum(s_s ** 2 - c ** 2, 0.0)) * eps \
            + c * jax.random.normal(k_noise, z.shape)
        return (z, x0, key), None

    (z, _, _), _ = jax.lax.scan(step, (z_T, jnp.zeros_like(z_T), rng), jnp.arange(steps))
    return z
