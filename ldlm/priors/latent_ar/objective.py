"""The training losses of the latent-autoregressive prior on windows of chunk latents.

The backbone runs once over a window; its state at each position conditions the head, whose
loss per position is
- `energy`: the energy score (strictly proper for alpha in (0, 2)) of N head samples against
  M targets drawn from the autoencoder's posterior N(mu, sigma^2) (CALM):
  (2 / NM) sum_nm ||z_m - zhat_n||^a - (1 / N(N - 1)) sum_{n != k} ||zhat_n - zhat_k||^a;
- `flow`: flow matching on the straight path z_t = (1 - t) eps + t z, the squared error of
  the velocity z - eps, at `flow_draws` (t, eps) draws per position (MAR: the head trains on
  several draws per backbone pass).
Positions past the document's end count for nothing; position 0 counts only where the window
starts a document (elsewhere its history is cut off, and it reads the start vector).
Validation also decodes one head sample per position with the frozen VAE decoder and reports
its token accuracy (teacher-forced next-chunk accuracy).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ldlm.config import DiTConfig
from ldlm.data import latents as latents_lib
from ldlm.data.batches import real_rows
from ldlm.diffusion import schedules
from ldlm.priors import objective
from ldlm.priors.decoder_scores import decoder_token_scores

# validation draws a flow head's sample in this many Euler steps
EVAL_FLOW_STEPS = 4


def pairwise_distance(a_xNxD, b_xMxD, alpha: float, eps: float = 1e-8):
    """||a_n - b_m||^alpha, (..., N, M), from dot products (no N x M x D tensor)."""
    sq = (jnp.sum(a_xNxD ** 2, -1)[..., :, None] + jnp.sum(b_xMxD ** 2, -1)[..., None, :]
          - 2.0 * jnp.einsum("...nd,...md->...nm", a_xNxD, b_xMxD))
    return (jnp.maximum(sq, 0.0) + eps) ** (alpha / 2.0)


def energy_score(samples_xNxD, targets_xMxD, alpha: float = 1.0):
    """The energy-score loss per leading index (lower is better; see the module
    docstring). Needs N >= 2 samples."""
    N = samples_xNxD.shape[-2]
    attract = pairwise_distance(samples_xNxD, targets_xMxD, alpha).mean((-2, -1))
    spread = pairwise_distance(samples_xNxD, samples_xNxD, alpha)
    off_diagonal = (1.0 - jnp.eye(N, dtype=spread.dtype)).reshape(
        (1,) * (spread.ndim - 2) + (N, N))
    repel = (spread * off_diagonal).sum((-2, -1)) / (N * (N - 1))
    return 2.0 * attract - repel


def energy_loss(head, c_xF, z_xD, sigma_xD, key, cfg: DiTConfig):
    """Per-position energy score of `energy_samples` head samples against
    `energy_targets` posterior draws z + sigma * eps."""
    k_head, k_target = jax.random.split(key)
    samples = head.sample(c_xF, k_head, cfg.energy_samples)
    eps = jax.random.normal(k_target, z_xD.shape[:-1] + (cfg.energy_targets, z_xD.shape[-1]))
    targets = z_xD[..., None, :] + sigma_xD[..., None, :] * eps
    return energy_score(samples, targets, cfg.energy_alpha)


def flow_loss(head, c_xF, z_xD, key, cfg: DiTConfig, train: bool = True):
    """Per-position squared error of the velocity over `flow_draws` (t, eps) draws."""
    k_t, k_eps = jax.random.split(key)
    R = cfg.flow_draws
    t = schedules.sample_t(k_t, z_xD.shape[:-1] + (R,), cfg.time_sampling if train
                           else "uniform")
    eps = jax.random.normal(k_eps, t.shape + (z_xD.shape[-1],))
    z = z_xD[..., None, :]
    z_t = (1.0 - t[..., None]) * eps + t[..., None] * z
    v = head(c_xF[..., None, :], z_t, t)
    return jnp.mean((v - (z - eps)) ** 2, axis=(-2, -1))


def loss_weights(latent_mask_BxW, block_index_B):
    """Which positions count: real latents, and position 0 only at a document's start."""
    W = latent_mask_BxW.shape[1]
    first_ok = (jnp.arange(W)[None, :] > 0) | (block_index_B[:, None] == 0)
    return (latent_mask_BxW & first_ok).astype(jnp.float32)


def latent_ar_loss(model, batch, rng, step, train: bool, *, counts: dict, cfg: DiTConfig,
                   decoder_graphdef=None, frozen=None):
    """Loss of a (micro-)batch of windows: each row's mean over the positions that count,
    summed over rows and divided by the global batch's `counts["rows"]`."""
    z, latent_mask = batch["z"], batch["latent_mask"]
    B, W, D = z.shape
    tokens = batch["tokens"].reshape(B, W, model.K)
    rows = real_rows(batch).astype(jnp.float32)
    k_label, k_head, k_eval = jax.random.split(rng, 3)
    label = objective.drop_labels(batch["label"], model.null_label, cfg, k_label, train)
    h = model.hidden(tokens, z, label_B=label, latent_mask_BxW=latent_mask)
    c = model.head.condition(h)
    if cfg.head == "energy":
        per_position = energy_loss(model.head, c, z, batch["sigma"], k_head, cfg)
    else:
        per_position = flow_loss(model.head, c, z, k_head, cfg, train)
    w = loss_weights(latent_mask, batch["block_index"])
    count_B = jnp.maximum(w.sum(-1), 1.0)

    def window_mean(v_BxW):
        return (v_BxW * w).sum(-1) / count_B

    total = counts["rows"]
    loss = (window_mean(per_position) * rows).sum() / total
    metrics = {cfg.head: loss}
    if frozen is not None and not train:
        if cfg.head == "energy":
            draw = model.head.sample(c, k_eval, 1)[..., 0, :]
        else:
            draw = model.head.sample(c, k_eval, EVAL_FLOW_STEPS)[..., 0, :]
        vae = nnx.merge(decoder_graphdef, frozen["vae"])
        latents = latents_lib.LatentNormaliser(frozen["mean"], frozen["std"]).denormalise(draw)
        mask = batch["mask"].reshape(B * W, model.K)
        _, acc = decoder_token_scores(vae.decode, latents.reshape(B * W, 1, D),
                                      tokens.reshape(B * W, model.K), mask)
        weight = w * mask.any(-1).reshape(B, W)
        acc_B = (acc.reshape(B, W) * weight).sum(-1) / jnp.maximum(weight.sum(-1), 1.0)
        metrics["sample_token_accuracy"] = (acc_B * rows).sum() / total
    return loss, metrics
