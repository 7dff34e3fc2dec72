"""Stage 1: train the TextVAE (`make vae`), evaluate it, record its latent statistics.

The objective is built for the diffusion stage downstream, not for reconstruction alone:
- token cross-entropy on real tokens only (padding never counts);
- a small KL term (per latent coordinate, optional free-bits clamp, warmed up);
- robustness: encoder input tokens replaced by <mask> with a small probability, and Gaussian
  noise of a random level added to the latents, so the decoder survives imperfect latents;
- a per-position real-token / padding classification (weighted separately), so a decoded
  block knows where it ends.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import optax

from ldlm import rundir
from ldlm.config import Config, VAEConfig
from ldlm.data import pipeline
from ldlm.data.blocks import read_meta
from ldlm.data.tokenizer import MASK_ID, PAD_ID, Tokenizer
from ldlm.errors import ConfigError
from ldlm.mesh import make_mesh
from ldlm.models.vae import TextVAEModel
from ldlm.train.loop import Task, TrainResult, train

log = logging.getLogger("ldlm.vae")
STAGE = "vae"
# What a checkpoint's parameters depend on; the objective's weights may change on resume.
ARCHITECTURE = ("width", "heads", "mlp_dim", "encoder_layers", "decoder_layers", "num_latents",
                "latent_dim")


def compute_dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def vae_loss(model: TextVAEModel, batch, rng, step, train: bool, *, cfg: VAEConfig,
             total_steps: int):
    tokens_BxL, mask_BxL = batch["tokens"], batch["mask"]
    B, L = tokens_BxL.shape
    k_drop, k_post, k_sigma, k_noise = jax.random.split(rng, 4)
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
    logits, real_logits = model.decode(z)

    maskf = mask_BxL.astype(jnp.float32)
    n_tokens = maskf.sum()
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BxL)
    recon = (ce * maskf).sum() / jnp.maximum(n_tokens, 1.0)
    accuracy = ((jnp.argmax(logits, -1) == tokens_BxL) * maskf).sum() / jnp.maximum(n_tokens,
                                                                                    1.0)
    # Where the block ends: a binary target on every position of real rows (eval batches can
    # carry all-padding rows at the end).
    row_B = mask_BxL.any(-1).astype(jnp.float32)
    bce = optax.sigmoid_binary_cross_entropy(real_logits, maskf)
    length = (bce * row_B[:, None]).sum() / jnp.maximum(row_B.sum() * L, 1.0)
    # KL(q(z|x) || N(0, I)) per coordinate, averaged over real rows; free bits per coordinate
    kl_NxD = (0.5 * (mean ** 2 + jnp.exp(logvar) - logvar - 1.0) * row_B[:, None, None]
              ).sum(0) / jnp.maximum(row_B.sum(), 1.0)
    kl = jnp.maximum(kl_NxD, cfg.kl_clamp).mean()
    if train:
        ramp = jnp.clip(step / max(1.0, cfg.kl_warmup_frac * total_steps), 0.0, 1.0)
    else:
        ramp = 1.0
    loss = recon + cfg.length_weight * length + cfg.kl_weight * ramp * kl
    metrics = {"recon": recon, "accuracy": accuracy, "length_bce": length, "kl": kl_NxD.mean(),
               "tokens": n_tokens}
    return loss, metrics


def build_vae(cfg: Config, vocab_size: int):
    dtype = compute_dtype(cfg.vae_train.compute_dtype)
    return lambda rngs: TextVAEModel(cfg.vae, vocab_size, cfg.data.block_len, rngs=rngs,
                                     dtype=dtype, remat=cfg.vae_train.remat)


def vae_task(cfg: Config, run_dir, mesh) -> Task:
    meta = read_meta(pipeline.blocks_dir(run_dir))  # MissingStageError -> make tokenizer
    if meta["block_len"] != cfg.data.block_len:
        raise ConfigError(
            f"the token blocks in {pipeline.blocks_dir(run_dir)} hold {meta['block_len']} "
            f"tokens but data.block_len={cfg.data.block_len}: rerun `make tokenizer` with "
            "this config, or use another RUN")
    total = cfg.vae_train.steps

    def loss_fn(model, batch, rng, step, train):
        return vae_loss(model, batch, rng, step, train, cfg=cfg.vae, total_steps=total)

    return Task(
        stage=STAGE, train_cfg=cfg.vae_train,
        build_model=build_vae(cfg, meta["vocab_size"]), loss_fn=loss_fn,
        train_batches=pipeline.train_batches(cfg, run_dir, mesh),
        eval_batches=lambda: pipeline.eval_batches(cfg, run_dir, mesh),
        frozen={**{f"vae.{k}": getattr(cfg.vae, k) for k in ARCHITECTURE},
                "data.block_len": cfg.data.block_len, "vocab_size": meta["vocab_size"]})


def train_vae(cfg: Config, run_dir) -> TrainResult:
    """Trains (or resumes) the VAE of `run_dir`; no evaluation."""
    mesh = make_mesh(cfg.mesh)
    task = vae_task(cfg, run_dir, mesh)  # a missing input stage raises before vae/ exists
    rundir.start_stage(cfg, run_dir, STAGE)
    return train(cfg, run_dir, task, mesh)


def run_vae(cfg: Config, run_dir) -> dict:
    """`make vae`: train, then evaluate reconstruction and write latent statistics."""
    from ldlm.eval import reconstruction

    result = train_vae(cfg, run_dir)
    t0 = time.time()
    tokenizer = Tokenizer.load(rundir.stage_dir(run_dir, "tokenizer"))
    report = reconstruction.evaluate_vae(cfg, run_dir, result.model(), result.mesh, tokenizer)
    report["train_seconds"] = round(result.seconds, 1)
    report["eval_seconds"] = round(time.time() - t0, 1)
    if rundir.is_main_process():
        rundir.write_json_atomic(rundir.stage_dir(run_dir, STAGE) / "eval.json", report)
    reconstruction.log_report(report)
    return report
