"""The diffusion objective both DiT priors train with, as pure pieces: noising at times t,
classifier-free guidance's label dropout, self-conditioning, the regression target and its
weighting. Each prior's loss calls them with its own random keys and reduces the error its
own way (over a block, over a window's real latents).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp

from ldlm.config import DiTConfig
from ldlm.diffusion import schedules


class Noised(NamedTuple):
    """z = a x0 + s eps at times t (a, s, logsnr broadcast against x0)."""

    z: jax.Array
    eps: jax.Array
    a: jax.Array
    s: jax.Array
    logsnr: jax.Array


def train_times(key, shape, cfg: DiTConfig, train: bool):
    """Diffusion times; validation always draws them uniformly, so runs with other time
    samplings compare."""
    return schedules.sample_t(key, shape, cfg.time_sampling if train else "uniform")


def noise(x0, t, cfg: DiTConfig, key) -> Noised:
    ls = schedules.logsnr(t, cfg.schedule, cfg.snr_scale)
    a, s = schedules.alpha_sigma(ls)
    eps = jax.random.normal(key, x0.shape)
    return Noised(schedules.q_sample(x0, eps, a, s), eps, a, s, ls)


def drop_labels(label_B, null_label: int, cfg: DiTConfig, key, train: bool):
    """Labels with the null label for unlabelled rows (label < 0) and, in training, for a
    share `label_dropout` of the rest (one model serves guided and unguided sampling)."""
    drop = label_B < 0
    if train:
        drop = drop | jax.random.bernoulli(key, cfg.label_dropout, label_B.shape)
    return jnp.where(drop, null_label, label_B)


def self_condition(net: Callable, n: Noised, cfg: DiTConfig, key, train: bool):
    """Self-conditioning input: in training, with probability `self_cond_prob` per row, the
    network's own clean estimate from a first pass `net(None)` (without gradient); zeros
    for the other rows; None outside training or when switched off."""
    if not (train and cfg.self_cond_prob > 0):
        return None
    estimate = jax.lax.stop_gradient(schedules.to_x0(cfg.prediction, net(None), n.z, n.a,
                                                     n.s))
    use = jax.random.bernoulli(key, cfg.self_cond_prob, (n.z.shape[0],))
    return estimate * use.reshape((-1,) + (1,) * (estimate.ndim - 1)).astype(estimate.dtype)


def regression(out, x0, n: Noised, cfg: DiTConfig):
    """(squared error per latent vector (mean over its D coordinates), its weight from the
    log-SNR, the clean estimate x0_hat)."""
    tgt = schedules.target(cfg.prediction, x0, n.eps, n.a, n.s)
    w = schedules.loss_weight(cfg.loss_weighting, n.logsnr, cfg.prediction, cfg.min_snr_gamma)
    return (jnp.mean((out - tgt) ** 2, axis=-1), w,
            schedules.to_x0(cfg.prediction, out, n.z, n.a, n.s))
