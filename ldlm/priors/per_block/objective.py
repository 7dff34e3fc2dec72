"""The training loss of the per-block DiT on the cached, normalised VAE latents.

Objective (ldlm/priors/objective.py): the squared error of the network output against its
target (eps, x0 or v) at a random time, optionally min-SNR weighted, plus
(`dit.token_loss_weight`) the token cross-entropy of the frozen VAE decoder on the DiT's
clean estimate, weighted by alpha_t^2 so that it speaks where the estimate can know the
tokens (the squared error alone rewards a blurred average of the plausible latents; the
token term asks the estimate to decode to the block's words). Validation always reports
the estimate's token accuracy. In training, the class label is replaced by the null label
with probability `label_dropout` (classifier-free guidance), each neighbouring block is
dropped with probability `context_dropout` (one model for unconditional generation,
continuation and infilling), and with probability `self_cond_prob` the network first
estimates the clean latents and sees that estimate (without gradient) on its second pass.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ldlm.config import DiTConfig
from ldlm.data import latents as latents_lib
from ldlm.data.batches import real_rows
from ldlm.priors import objective
from ldlm.priors.decoder_scores import decoder_token_scores
from ldlm.priors.per_block.model import DiT


def conditioning(batch, model: DiT, cfg: DiTConfig, rng, train: bool) -> dict:
    """The DiT's keyword inputs from a latent batch, with training-time dropout."""
    k_label, k_prev, k_next = jax.random.split(rng, 3)
    B = batch["label"].shape[0]
    label = objective.drop_labels(batch["label"], model.null_label, cfg, k_label, train)
    has_prev = batch["has_prev"] & cfg.use_context
    has_next = batch["has_next"] & cfg.use_context
    if train:
        has_prev = has_prev & ~jax.random.bernoulli(k_prev, cfg.context_dropout, (B,))
        has_next = has_next & ~jax.random.bernoulli(k_next, cfg.context_dropout, (B,))
    return {"label_B": label, "prev_BxNxD": batch["prev"], "has_prev_B": has_prev,
            "next_BxNxD": batch["next"], "has_next_B": has_next}


def dit_loss(model: DiT, batch, rng, step, train: bool, *, counts: dict, cfg: DiTConfig,
             decoder_graphdef=None, frozen=None):
    """Diffusion loss of a (micro-)batch, a sum over its rows divided by the global batch's
    `counts["rows"]`; with `frozen` ({"vae": decoder params, "mean", "std": the latent
    statistics}) and `decoder_graphdef`, also the decoder's token scores of the clean
    estimate (in the loss when `cfg.token_loss_weight` > 0 in training, always reported in
    evaluation)."""
    x0 = batch["z"]
    B = x0.shape[0]
    rows = real_rows(batch).astype(jnp.float32)  # eval passes end in padding rows
    k_t, k_eps, k_cond, _, k_sc_use = jax.random.split(rng, 5)
    t = objective.train_times(k_t, (B,), cfg, train)
    n = objective.noise(x0, t, cfg, k_eps)
    cond = conditioning(batch, model, cfg, k_cond, train)
    self_cond = objective.self_condition(
        lambda sc: model(n.z, t, self_cond_BxNxD=sc, **cond), n, cfg, k_sc_use, train)
    out = model(n.z, t, self_cond_BxNxD=self_cond, **cond)
    err_BxN, w, x0_hat = objective.regression(out, x0, n, cfg)
    per_example = jnp.mean(err_BxN, axis=1)
    total = counts["rows"]
    loss = (w * per_example * rows).sum() / total
    mse_x0 = (jnp.mean((x0_hat - x0) ** 2, axis=(1, 2)) * rows).sum() / total
    metrics = {"mse": (per_example * rows).sum() / total, "mse_x0": mse_x0}
    if frozen is not None and (cfg.token_loss_weight > 0 or not train):
        vae = nnx.merge(decoder_graphdef, frozen["vae"])
        x0_hat_vae = latents_lib.LatentNormaliser(frozen["mean"], frozen["std"]).denormalise(
            x0_hat)
        ce_B, acc_B = decoder_token_scores(vae.decode, x0_hat_vae, batch["tokens"],
                                           batch["mask"])
        metrics["token_ce"] = (ce_B * rows).sum() / total
        metrics["token_accuracy"] = (acc_B * rows).sum() / total
        if train:
            loss = loss + cfg.token_loss_weight * (n.a * n.a * ce_B * rows).sum() / total
    return loss, metrics
