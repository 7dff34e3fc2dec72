"""Noise schedules in continuous time, forward noising and prediction targets (pure).

Variance preserving: z_t = alpha_t * x0 + sigma_t * eps with alpha_t^2 + sigma_t^2 = 1, for
t in [0, 1] (t = 0 clean, t = 1 pure noise). A schedule is its log signal-to-noise ratio
logsnr(t) = log(alpha_t^2 / sigma_t^2), decreasing in t; alpha and sigma follow from it:
alpha_t^2 = sigmoid(logsnr), sigma_t^2 = sigmoid(-logsnr).

`snr_scale` s shifts a schedule: logsnr(t) + 2 log s, i.e. the data scaled by s before
noising. s < 1 spends more of the time range at high noise, which helps when latents are
easy to denoise (their per-dimension normalisation makes them much "cleaner" than images).

Prediction targets: eps, x0 or v = alpha * eps - sigma * x0; each converts to the others
given z_t (`to_x0`, `to_eps`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

SCHEDULES = ("cosine", "linear")
PREDICTIONS = ("eps", "x0", "v")
WEIGHTINGS = ("none", "min_snr")
TIME_SAMPLINGS = ("uniform", "logit_normal")
LOGSNR_MIN, LOGSNR_MAX = -20.0, 20.0


def logsnr(t, schedule: str = "cosine", snr_scale: float = 1.0):
    """log SNR at time t (array in [0, 1]), clipped to [-20, 20] for numerical safety."""
    t = jnp.asarray(t, jnp.float32)
    if schedule == "cosine":
        # alpha = cos(pi t / 2), bounded away from t = 0 and t = 1
        t_min = jnp.arctan(jnp.exp(-0.5 * LOGSNR_MAX)) * 2 / jnp.pi
        t_max = jnp.arctan(jnp.exp(-0.5 * LOGSNR_MIN)) * 2 / jnp.pi
        u = t_min + t * (t_max - t_min)
        out = -2.0 * jnp.log(jnp.tan(jnp.pi * u / 2))
    elif schedule == "linear":
        # the continuous-time limit of DDPM's linear betas (beta 0.1 -> 20)
        b0, b1 = 0.1, 20.0
        integral = b0 * t + 0.5 * (b1 - b0) * t * t
        out = -jnp.log(jnp.expm1(jnp.maximum(integral, 1e-9)))
    else:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of {SCHEDULES}")
    out = out + 2.0 * jnp.log(jnp.float32(snr_scale))
    return jnp.clip(out, LOGSNR_MIN, LOGSNR_MAX)


def alpha_sigma(logsnr_):
    """(alpha, sigma) from log SNR; alpha^2 + sigma^2 = 1."""
    return jnp.sqrt(jax.nn.sigmoid(logsnr_)), jnp.sqrt(jax.nn.sigmoid(-logsnr_))


def _bcast(a, x):
    """Per-example scalars a_B broadcast against x_BxNxD explicitly."""
    return jnp.reshape(a, a.shape + (1,) * (x.ndim - a.ndim))


def q_sample(x0, eps, alpha, sigma):
    """z_t = alpha * x0 + sigma * eps (alpha, sigma per example)."""
    return _bcast(alpha, x0) * x0 + _bcast(sigma, x0) * eps


def target(prediction: str, x0, eps, alpha, sigma):
    """What the network regresses on for `prediction`."""
    if prediction == "eps":
        return eps
    if prediction == "x0":
        return x0
    if prediction == "v":
        return _bcast(alpha, x0) * eps - _bcast(sigma, x0) * x0
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def to_x0(prediction: str, out, z, alpha, sigma):
    """The clean-latent estimate implied by a network output."""
    a, s = _bcast(alpha, z), _bcast(sigma, z)
    if prediction == "x0":
        return out
    if prediction == "eps":
        return (z - s * out) / a
    if prediction == "v":
        return a * z - s * out
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def to_eps(prediction: str, out, z, alpha, sigma):
    """The noise estimate implied by a network output."""
    a, s = _bcast(alpha, z), _bcast(sigma, z)
    if prediction == "eps":
        return out
    if prediction == "x0":
        return (z - a * out) / s
    if prediction == "v":
        return s * z + a * out
    raise ValueError(f"unknown prediction {prediction!r}; choose one of {PREDICTIONS}")


def loss_weight(weighting: str, logsnr_, prediction: str, gamma: float = 5.0):
    """Per-example weight of the squared error on `prediction`'s target.

    "none": 1. "min_snr": min(SNR, gamma) expressed for the target (Hang et al. 2023), i.e.
    the x0-space weight min(SNR, gamma) divided by the target's own factor (SNR for eps,
    1 for x0, SNR + 1 for v).
    """
    if weighting == "none":
        return jnp.ones_like(logsnr_)
    if weighting != "min_snr":
        raise ValueError(f"unknown loss weighting {weighting!r}; choose none or min_snr")
    snr = jnp.exp(logsnr_)
    clipped = jnp.minimum(snr, gamma)
    return {"eps": clipped / snr, "x0": clipped, "v": clipped / (snr + 1.0)}[prediction]


def sample_t(rng, shape, sampling: str = "uniform", mean: float = 0.0, std: float = 1.0):
    """Training times in (0, 1): uniform, or logit-normal (more mass at mid noise)."""
    if sampling == "uniform":
        return jax.random.uniform(rng, shape, minval=1e-4, maxval=1.0 - 1e-4)
    if sampling == "logit_normal":
        return jax.nn.sigmoid(mean + std * jax.random.normal(rng, shape))
    raise ValueError(f"unknown time sampling {sampling!r}; choose uniform or logit_normal")
