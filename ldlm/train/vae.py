"""Training the TextVAE (stage 1, `make vae`; its evaluation is in ldlm/stages/vae.py).

The objective is built for the diffusion stage downstream, not for reconstruction alone:
- token cross-entropy on real tokens only (padding never counts);
- a small KL term (per latent coordinate, optional free-bits clamp per block and
  coordinate, warmed up);
- robustness: encoder input tokens replaced by <mask> with a small probability, and Gaussian
  noise of a random level added to the latents, so the decoder survives imperfect latents;
- a per-position real-token / padding classification (weighted separately), so a decoded
  block knows where it ends.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from ldlm import rundir
from ldlm.locks import stage_lock
from ldlm.config import Config, VAEConfig
from ldlm.data import batches
from ldlm.data.blocks import read_meta
from ldlm.data.tokenizer import MASK_ID, PAD_ID
from ldlm.errors import ConfigError
from ldlm.mesh import make_mesh
from ldlm.models import align
from ldlm.models.vae import TextVAEModel, build_vae
from ldlm.mesh import replicate
from ldlm.train.loop import Task, TrainResult, train
from ldlm.train.teacher import Teacher, load_teacher

STAGE = "vae"
# What a checkpoint's parameters depend on; the objective's weights may change on resume.
ARCHITECTURE = ("width", "heads", "mlp_dim", "encoder_layers", "decoder_layers", "num_latents",
                "latent_dim")


def vae_loss(model: TextVAEModel, batch, rng, step, train: bool, *, counts: dict,
             cfg: VAEConfig, total_steps: int, teacher: Teacher | None = None, frozen=None):
    """Loss and metrics of a (micro-)batch, each a sum over its rows divided by the global
    batch's `counts` (tokens, rows). With `teacher` (its parameters in `frozen`), the
    alignment term of the posterior means to its states."""
    tokens_BxL, mask_BxL = batch["tokens"], batch["mask"]
    B, L = tokens_BxL.shape
    k_drop, k_post, k_sigma, k_noise, k_zdrop = jax.random.split(rng, 5)
    inputs = jnp.where(mask_BxL, tokens_BxL, PAD_ID)  # whatever sits in padding is ignored
    if train and cfg.token_mask_prob > 0:
        drop = jax.random.bernoulli(k_drop, cfg.token_mask_prob, (B, L)) & mask_BxL
        inputs = jnp.where(drop, MASK_ID, inputs)
    mean, logvar = model.encode(inputs)
    z = mean
    if train:
        z = z + jnp.exp(0.5 * logvar) * jax.random.normal(k_post, mean.shape)
        if cfg.latent_noise_max > 0:
            sigma_Bx1x1 = jax.random.uniform(k_sigma, (B, 1, 1)) * cfg.latent_noise_max
            z = z + sigma_Bx1x1 * jax.random.normal(k_noise, mean.shape)
        if cfg.latent_dropout > 0:
            keep = jax.random.bernoulli(k_zdrop, 1.0 - cfg.latent_dropout, z.shape)
            z = jnp.where(keep, z / (1.0 - cfg.latent_dropout), 0.0)
    logits, real_logits = model.decode(z)

    maskf = mask_BxL.astype(jnp.float32)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BxL)
    recon = (ce * maskf).sum() / counts["tokens"]
    accuracy = ((jnp.argmax(logits, -1) == tokens_BxL) * maskf).sum() / counts["tokens"]
    # Where the block ends: a binary target on every position of real rows (eval batches can
    # carry all-padding rows at the end).
    row_B = batches.real_rows(batch).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(real_logits, maskf)
    length = (bce * row_B[:, None]).sum() / (counts["rows"] * L)
    # KL(q(z|x) || N(0, I)) of each block per coordinate; free bits per block and coordinate
    kl_BxNxD = 0.5 * (mean ** 2 + jnp.exp(logvar) - logvar - 1.0)
    kl_B = jnp.maximum(kl_BxNxD, cfg.kl_clamp).mean((1, 2))
    kl = (kl_B * row_B).sum() / counts["rows"]
    if train:
        ramp = jnp.clip(step / max(1.0, cfg.kl_warmup_frac * total_steps), 0.0, 1.0)
    else:
        ramp = 1.0
    loss = recon + cfg.length_weight * length + cfg.kl_weight * ramp * kl
    metrics = {"recon": recon, "accuracy": accuracy, "length_bce": length,
               "kl": (kl_BxNxD.mean((1, 2)) * row_B).sum() / counts["rows"]}
    if teacher is not None:
        align_loss, metrics["align_cos"] = alignment(model, mean, tokens_BxL, mask_BxL, row_B,
                                                     counts, cfg, teacher, frozen["teacher"])
        loss = loss + align_loss
    return loss, metrics


def alignment(model, mean_BxNxD, tokens_BxL, mask_BxL, row_B, counts, cfg: VAEConfig,
              teacher: Teacher, teacher_params):
    """(weighted alignment loss, mean cosine of latents to their targets): the projected
    posterior means against the teacher's states of their tokens (ldlm/models/align.py)."""
    states_BxLxH = teacher.token_states(teacher_params, jnp.where(mask_BxL, tokens_BxL,
                                                                  PAD_ID))
    target, real_BxN = align.latent_targets(states_BxLxH, mask_BxL, cfg.num_latents,
                                            cfg.align_pool)
    if cfg.align_center:
        target = align.centered(target, real_BxN & (row_B[:, None] > 0))
    pred = model.align_proj(mean_BxNxD)
    per_B = cfg.align_weight * align.cosine_loss_B(pred, target, real_BxN, cfg.align_margin)
    if cfg.align_distance_weight:
        per_B += cfg.align_distance_weight * align.distance_matrix_loss_B(
            pred, target, real_BxN, cfg.align_margin)
    w = real_BxN.astype(jnp.float32)
    cos_B = (align.cosine(pred, target) * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)
    return ((per_B * row_B).sum() / counts["rows"], (cos_B * row_B).sum() / counts["rows"])


def with_teacher(cfg: Config, run_dir) -> tuple[Config, Teacher | None]:
    """The config with the teacher's width and FLOPs filled in, and the teacher (None when
    the autoencoder does not align)."""
    if not cfg.vae.align_weight:
        return cfg, None
    teacher = load_teacher(cfg.vae.align_teacher, run_dir, cfg.vae.align_layer)
    return cfg.override([f"vae.align_dim={teacher.width}",
                         f"vae.align_teacher_flops={teacher.forward_flops_per_token}"]), teacher


def vae_task(cfg: Config, run_dir, mesh, teacher: Teacher | None = None) -> Task:
    """The autoencoder's training task; `teacher` (with `cfg` from `with_teacher`) adds
    the alignment term."""
    meta = read_meta(batches.blocks_dir(run_dir))  # MissingStageError -> make tokenizer
    if meta["block_len"] != cfg.data.block_len:
        raise ConfigError(
            f"the token blocks in {batches.blocks_dir(run_dir)} hold {meta['block_len']} "
            f"tokens but data.block_len={cfg.data.block_len}: rerun `make tokenizer` with "
            "this config, or use another RUN")
    total = cfg.vae_train.steps

    def loss_fn(model, batch, rng, step, train, *, counts, frozen=None):
        return vae_loss(model, batch, rng, step, train, counts=counts, cfg=cfg.vae,
                        total_steps=total, teacher=teacher, frozen=frozen)

    frozen = None
    if teacher is not None:
        frozen = {"teacher": jax.tree.map(lambda x: replicate(x, mesh), teacher.params)}

    return Task(
        stage=STAGE, train_cfg=cfg.vae_train,
        build_model=build_vae(cfg, meta["vocab_size"]), loss_fn=loss_fn,
        train_batches=batches.train_batches(cfg, run_dir, mesh),
        eval_batches=lambda: batches.eval_batches(cfg, run_dir, mesh),
        must_match={**{f"vae.{k}": getattr(cfg.vae, k) for k in ARCHITECTURE},
                    # runs from before vae.kind existed saved no kind: they are "block"
                    **({"vae.kind": cfg.vae.kind} if cfg.vae.kind != "block" else {}),
                    **({"vae.align_dim": cfg.vae.align_dim} if cfg.vae.align_dim else {}),
                    "data.block_len": cfg.data.block_len, "vocab_size": meta["vocab_size"]},
        frozen=frozen)


def train_vae(cfg: Config, run_dir) -> TrainResult:
    """Trains (or resumes) the VAE of `run_dir`; no evaluation."""
    mesh = make_mesh(cfg.mesh)
    cfg, teacher = with_teacher(cfg, run_dir)  # a missing teacher raises first too
    task = vae_task(cfg, run_dir, mesh, teacher)  # a missing input stage raises before vae/
    with stage_lock(rundir.stage_dir(run_dir, STAGE)):  # before anything is written
        return train(cfg, run_dir, task, mesh)

