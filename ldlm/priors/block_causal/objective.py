"""The training loss of the block-causal prior on windows of latents.

One pass of `BlockCausalDiT` covers every diffusion block of a window: each block draws its
own time and noise, the noisy stream is denoised given the clean stream of the blocks
before it, and the squared error is averaged over a window's real latents (positions past
the document's end count for nothing). Label dropout (guidance) and self-conditioning from
the shared objective (ldlm/priors/objective.py). Validation also reports the frozen VAE
decoder's token accuracy on the clean estimate of every real VAE block of the window.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ldlm.config import DiTConfig
from ldlm.data import latents as latents_lib
from ldlm.data.batches import real_rows
from ldlm.priors import objective
from ldlm.priors.block_causal.model import BlockCausalDiT
from ldlm.priors.decoder_scores import decoder_token_scores


def window_times(rng, B: int, W: int, G: int, cfg: DiTConfig, train: bool = True):
    """t_BxW: one diffusion time per block of G latents, repeated over its positions."""
    return jnp.repeat(objective.train_times(rng, (B, W // G), cfg, train), G, axis=1)


def block_causal_loss(model: BlockCausalDiT, batch, rng, step, train: bool, *, counts: dict,
                      cfg: DiTConfig, decoder_graphdef=None, frozen=None):
    """Loss of a (micro-)batch of windows: a sum over its rows divided by the global batch's
    `counts["rows"]` (see ldlm/priors/per_block/objective.dit_loss for `frozen`)."""
    x0, latent_mask = batch["z"], batch["latent_mask"]
    B, W, _ = x0.shape
    rows = real_rows(batch).astype(jnp.float32)
    k_t, k_eps, k_label, k_sc_use = jax.random.split(rng, 4)
    t = window_times(k_t, B, W, model.G, cfg, train)
    n = objective.noise(x0, t, cfg, k_eps)
    cond = {"label_B": objective.drop_labels(batch["label"], model.null_label, cfg, k_label,
                                             train),
            "latent_mask_BxW": latent_mask}
    self_cond = objective.self_condition(
        lambda sc: model(x0, n.z, t, self_cond_BxWxD=sc, **cond), n, cfg, k_sc_use, train)
    out = model(x0, n.z, t, self_cond_BxWxD=self_cond, **cond)
    err, w, x0_hat = objective.regression(out, x0, n, cfg)
    maskf = latent_mask.astype(jnp.float32)
    real_B = jnp.maximum(maskf.sum(-1), 1.0)

    def window_mean(err_BxW):
        return (err_BxW * maskf).sum(-1) / real_B

    total = counts["rows"]
    loss = (window_mean(w * err) * rows).sum() / total
    metrics = {"mse": (window_mean(err) * rows).sum() / total,
               "mse_x0": (window_mean(jnp.mean((x0_hat - x0) ** 2, -1)) * rows).sum() / total}
    if frozen is not None and not train:
        metrics.update(_token_scores(x0_hat, batch, rows, total, decoder_graphdef, frozen))
    return loss, metrics


def _token_scores(x0_hat_BxWxD, batch, rows_B, total, decoder_graphdef, frozen) -> dict:
    """The frozen decoder's token cross-entropy and accuracy on each real VAE block of the
    clean estimate, averaged per window."""
    B, K, L = batch["tokens"].shape
    vae = nnx.merge(decoder_graphdef, frozen["vae"])
    z = latents_lib.LatentNormaliser(frozen["mean"], frozen["std"]).denormalise(x0_hat_BxWxD)
    ce, acc = decoder_token_scores(vae.decode, z.reshape(B * K, -1, z.shape[-1]),
                                   batch["tokens"].reshape(B * K, L),
                                   batch["mask"].reshape(B * K, L))
    block_real = batch["mask"].any(-1).astype(jnp.float32)  # BxK
    per_window = lambda v: (v.reshape(B, K) * block_real).sum(-1) / jnp.maximum(  # noqa: E731
        block_real.sum(-1), 1.0)
    return {"token_ce": (per_window(ce) * rows_B).sum() / total,
            "token_accuracy": (per_window(acc) * rows_B).sum() / total}
