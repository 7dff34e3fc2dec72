"""Training the latent DiT (stage 2, `make dit`) on the cached, normalised VAE latents.

Objective: the squared error of the network output against its target (eps, x0 or v) at a
random time, optionally min-SNR weighted, plus (`dit.token_loss_weight`) the token
cross-entropy of the frozen VAE decoder on the DiT's clean estimate, weighted by alpha_t^2 so
that it speaks where the estimate can know the tokens (the squared error alone rewards a
blurred average of the plausible latents; the token term asks the estimate to decode to the
block's words). Validation always reports the estimate's token accuracy. In training, the
class label is replaced by the null label with probability `label_dropout` (classifier-free
guidance), each neighbouring block is dropped with probability `context_dropout` (one
model for unconditional generation, continuation and infilling), and with probability `self_cond_prob` the network first
estimates the clean latents and sees that estimate (without gradient) on its second pass.

The frozen VAE decoder comes from the run's vae stage (`ldlm.loading`), passed to the jitted
steps as an argument; decoded sample dumps are a hook the stage wires up (ldlm/stages/dit.py).
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ldlm import rundir
from ldlm.locks import stage_lock
from ldlm.config import Config, DiTConfig
from ldlm.data import latents as latents_lib
from ldlm.data.batches import blocks_dir, real_rows
from ldlm.data.blocks import read_meta as read_blocks_meta
from ldlm.diffusion import schedules
from ldlm.errors import ConfigError
from ldlm.loading import load_stage_model, stage_config
from ldlm.mesh import make_mesh, replicate
from ldlm.models.dit import DiT
from ldlm.models.prior import build_prior, is_block_causal
from ldlm.models.vae import build_vae
from ldlm.train.block_causal import block_causal_loss
from ldlm.train.decoder_scores import decoder_token_scores
from ldlm.train.loop import Task, TrainResult, train

STAGE = "dit"
ARCHITECTURE = ("width", "heads", "mlp_dim", "layers", "use_context", "context_pool", "window",
                "block_size")


def conditioning(batch, model: DiT, cfg: DiTConfig, rng, train: bool) -> dict:
    """The DiT's keyword inputs from a latent batch, with training-time dropout."""
    k_label, k_prev, k_next = jax.random.split(rng, 3)
    B = batch["label"].shape[0]
    label = batch["label"]
    drop = label < 0  # unlabelled rows are always unconditional
    if train:
        drop = drop | jax.random.bernoulli(k_label, cfg.label_dropout, (B,))
    label = jnp.where(drop, model.null_label, label)
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
    k_t, k_eps, k_cond, k_sc, k_sc_use = jax.random.split(rng, 5)
    # validation always draws t uniformly, so runs with other time samplings compare
    t = schedules.sample_t(k_t, (B,), cfg.time_sampling if train else "uniform")
    ls = schedules.logsnr(t, cfg.schedule, cfg.snr_scale)
    a, s = schedules.alpha_sigma(ls)
    eps = jax.random.normal(k_eps, x0.shape)
    z = schedules.q_sample(x0, eps, a, s)
    cond = conditioning(batch, model, cfg, k_cond, train)
    self_cond = None
    if train and cfg.self_cond_prob > 0:
        first = model(z, t, **cond)
        estimate = jax.lax.stop_gradient(schedules.to_x0(cfg.prediction, first, z, a, s))
        use = jax.random.bernoulli(k_sc_use, cfg.self_cond_prob, (B,))
        self_cond = estimate * use[:, None, None].astype(estimate.dtype)
    out = model(z, t, self_cond_BxNxD=self_cond, **cond)
    tgt = schedules.target(cfg.prediction, x0, eps, a, s)
    w = schedules.loss_weight(cfg.loss_weighting, ls, cfg.prediction, cfg.min_snr_gamma)
    per_example = jnp.mean((out - tgt) ** 2, axis=(1, 2))
    n = counts["rows"]
    loss = (w * per_example * rows).sum() / n
    x0_hat = schedules.to_x0(cfg.prediction, out, z, a, s)
    mse_x0 = (jnp.mean((x0_hat - x0) ** 2, axis=(1, 2)) * rows).sum() / n
    metrics = {"mse": (per_example * rows).sum() / n, "mse_x0": mse_x0}
    if frozen is not None and (cfg.token_loss_weight > 0 or not train):
        vae = nnx.merge(decoder_graphdef, frozen["vae"])
        x0_hat_vae = latents_lib.LatentNormaliser(frozen["mean"], frozen["std"]).denormalise(
            x0_hat)
        ce_B, acc_B = decoder_token_scores(vae.decode, x0_hat_vae, batch["tokens"],
                                           batch["mask"])
        metrics["token_ce"] = (ce_B * rows).sum() / n
        metrics["token_accuracy"] = (acc_B * rows).sum() / n
        if train:
            loss = loss + cfg.token_loss_weight * (a * a * ce_B * rows).sum() / n
    return loss, metrics


def frozen_decoder(run_dir, mesh, vae_model=None):
    """(graphdef, frozen) for `dit_loss`: the run's VAE (EMA weights; `vae_model` when the
    caller has loaded it already) and the latent statistics, replicated over `mesh`."""
    if vae_model is None:
        vae_cfg = stage_config(run_dir, "vae", "a trained VAE")
        vocab = read_blocks_meta(blocks_dir(run_dir))["vocab_size"]
        vae_model = load_stage_model(run_dir, "vae", build_vae(vae_cfg, vocab),
                                     vae_cfg.vae_train)
    graphdef, params = nnx.split(vae_model)
    normaliser = latents_lib.LatentNormaliser.load(run_dir)
    frozen = {"vae": jax.tree.map(lambda x: replicate(x, mesh), params),
              "mean": replicate(normaliser.mean_D, mesh),
              "std": replicate(normaliser.std_D, mesh)}
    return graphdef, frozen


def dit_task(cfg: Config, run_dir, mesh, hook: Callable | None = None,
             vae_model=None) -> Task:
    """The DiT's training task; `hook(step, graphdef, params)` runs every
    `dit.sample_every` steps and at the end (the stage's sample dumps); `vae_model`: the
    run's VAE if the caller has loaded it (else loaded here)."""
    meta = latents_lib.read_meta(run_dir)  # MissingStageError -> make latents
    N, D = meta["num_latents"], meta["latent_dim"]
    if cfg.dit.use_context and N % cfg.dit.context_pool:
        raise ConfigError(f"dit.context_pool={cfg.dit.context_pool} must divide the VAE's "
                          f"number of latents ({N})")
    label_names = meta["label_names"]
    decoder_graphdef, frozen = frozen_decoder(run_dir, mesh, vae_model)

    # the block-causal prior learns from windows of blocks, the per-block DiT from blocks
    loss, batches = (block_causal_loss, latents_lib.window_batches) if is_block_causal(cfg) \
        else (dit_loss, latents_lib.latent_batches)

    def loss_fn(model, batch, rng, step, train, *, counts, frozen=None):
        return loss(model, batch, rng, step, train, counts=counts, cfg=cfg.dit,
                    decoder_graphdef=decoder_graphdef, frozen=frozen)

    return Task(
        stage=STAGE, train_cfg=cfg.dit_train,
        build_model=build_prior(cfg, N, D, max(1, len(label_names))), loss_fn=loss_fn,
        train_batches=batches(cfg, run_dir, mesh),
        eval_batches=lambda: batches(cfg, run_dir, mesh, "validation", train=False),
        must_match={**{f"dit.{k}": getattr(cfg.dit, k) for k in ARCHITECTURE},
                    "num_latents": N, "latent_dim": D, "num_classes": len(label_names)},
        hook=hook, hook_every=cfg.dit.sample_every, frozen=frozen)


def train_dit(cfg: Config, run_dir, hook: Callable | None = None,
              vae_model=None) -> TrainResult:
    mesh = make_mesh(cfg.mesh)
    task = dit_task(cfg, run_dir, mesh, hook, vae_model)  # a missing input raises first
    with stage_lock(rundir.stage_dir(run_dir, STAGE)):  # before anything is written
        return train(cfg, run_dir, task, mesh)
