"""Does the DiT denoise? Token accuracy of its clean estimate at each noise level.

For validation latent blocks z0 (normalised, from the latent cache) and times t, with
z_t = alpha z0 + sigma eps, two latents are decoded and compared token by token with the
decoding of z0 itself:
- `accuracy_noisy`: z_t / alpha, the noisy latents rescaled (no denoiser at all);
- `accuracy_estimate`: the DiT's one-pass clean estimate x0_hat(z_t, t).
A denoiser that has learned the language beats the rescaled latents wherever the noise
leaves room (mid-range t); one that has only learned to shrink towards the mean does not.
`mse_estimate` is the estimate's squared error per coordinate; for unit-variance data the
best *linear* estimate (alpha z_t) has error sigma^2, given as `mse_linear` beside it.
"""

from __future__ import annotations

from typing import Sequence

import jax
import numpy as np

from ldlm.data import latents as latents_lib
from ldlm.diffusion import schedules

TIMES = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)


def validation_latents(run_dir, n: int = 256) -> np.ndarray:
    """n normalised validation latent blocks spread over the split, n x N x D."""
    src = latents_lib.LatentSource(run_dir, "validation")
    idx = np.unique(np.linspace(0, len(src) - 1, min(n, len(src))).round().astype(int))
    return np.stack([src[int(i)]["z"] for i in idx])


def _accuracy(pipe, z_BxNxD, ref_tokens, ref_real) -> float:
    tokens, _ = pipe.vae.decode_tokens(pipe.denormalise(z_BxNxD))
    return float((tokens == ref_tokens)[ref_real].mean())


def denoising_accuracy(pipe, z0_BxNxD, times: Sequence[float] = TIMES,
                       seed: int = 0) -> list[dict]:
    """One row per t: logsnr, accuracy_noisy, accuracy_estimate, mse_estimate, mse_linear."""
    z0 = np.asarray(z0_BxNxD, np.float32)
    ref_tokens, ref_real = pipe.vae.decode_tokens(pipe.denormalise(z0))
    dcfg = pipe.cfg.dit
    rows = []
    for i, t in enumerate(times):
        logsnr = float(schedules.logsnr(t, dcfg.schedule, dcfg.snr_scale))
        a, s = (float(x) for x in schedules.alpha_sigma(logsnr))
        eps = np.asarray(jax.random.normal(jax.random.PRNGKey(seed + i), z0.shape))
        z_t = a * z0 + s * eps
        x0_hat = pipe.predict_clean(z_t, np.full(len(z0), t, np.float32))
        rows.append({"t": float(t), "logsnr": logsnr,
                     "accuracy_noisy": _accuracy(pipe, z_t / a, ref_tokens, ref_real),
                     "accuracy_estimate": _accuracy(pipe, x0_hat, ref_tokens, ref_real),
                     "mse_estimate": float(np.mean((x0_hat - z0) ** 2)),
                     "mse_linear": s * s})
    return rows
