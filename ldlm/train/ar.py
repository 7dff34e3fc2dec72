"""Causal LM stages: the autoregressive baseline (`make ar`, config sections `ar` /
`ar_train`) and the larger reference LM for generative perplexity (`make reference`,
`reference` / `reference_train`): next-token cross-entropy on the same token blocks as the
VAE, trained by the same loop.

Input of a block: [EOS, t_0 .. t_{L-2}]; targets: [t_0 .. t_{L-1}]; only real tokens count
(the EOS at a document's end is a target, so the model learns where texts stop).
"""

from __future__ import annotations

import jax.numpy as jnp
import optax

from ldlm import rundir
from ldlm.config import Config
from ldlm.data import pipeline
from ldlm.data.blocks import read_meta
from ldlm.data.tokenizer import EOS_ID, PAD_ID
from ldlm.mesh import make_mesh
from ldlm.models.ar import CausalLM
from ldlm.train.loop import Task, TrainResult, train
from ldlm.train.vae import compute_dtype

STAGE = "ar"
STAGES = ("ar", "reference")
RESULT_FILE = "result.json"
ARCHITECTURE = ("width", "heads", "mlp_dim", "layers")


def shift_right(tokens_BxL):
    """Model inputs: EOS (the start token) followed by all but the last token."""
    start = jnp.full_like(tokens_BxL[:, :1], EOS_ID)
    return jnp.concatenate([start, tokens_BxL[:, :-1]], axis=1)


def ar_loss(model: CausalLM, batch, rng, step, train: bool):
    tokens, mask = batch["tokens"], batch["mask"]
    inputs = jnp.where(mask, tokens, PAD_ID)
    logits = model(shift_right(inputs))
    maskf = mask.astype(jnp.float32)
    n = jnp.maximum(maskf.sum(), 1.0)
    nll = (optax.softmax_cross_entropy_with_integer_labels(logits, tokens) * maskf).sum() / n
    accuracy = ((jnp.argmax(logits, -1) == tokens) * maskf).sum() / n
    return nll, {"nll": nll, "accuracy": accuracy, "tokens": maskf.sum()}


def build_ar(cfg: Config, vocab_size: int, stage: str = STAGE):
    model_cfg, train_cfg = getattr(cfg, stage), getattr(cfg, f"{stage}_train")
    dtype = compute_dtype(train_cfg.compute_dtype)
    return lambda rngs: CausalLM(model_cfg, vocab_size, rngs=rngs, dtype=dtype,
                                 remat=train_cfg.remat)


def ar_task(cfg: Config, run_dir, mesh, stage: str = STAGE) -> Task:
    meta = read_meta(pipeline.blocks_dir(run_dir))  # MissingStageError -> make tokenizer
    model_cfg = getattr(cfg, stage)
    return Task(
        stage=stage, train_cfg=getattr(cfg, f"{stage}_train"),
        build_model=build_ar(cfg, meta["vocab_size"], stage), loss_fn=ar_loss,
        train_batches=pipeline.train_batches(cfg, run_dir, mesh),
        eval_batches=lambda: pipeline.eval_batches(cfg, run_dir, mesh),
        frozen={**{f"{stage}.{k}": getattr(model_cfg, k) for k in ARCHITECTURE},
                "data.block_len": cfg.data.block_len, "vocab_size": meta["vocab_size"]})


def train_ar(cfg: Config, run_dir, stage: str = STAGE) -> TrainResult:
    mesh = make_mesh(cfg.mesh)
    task = ar_task(cfg, run_dir, mesh, stage)  # a missing input stage raises first
    rundir.start_stage(cfg, run_dir, stage)
    return train(cfg, run_dir, task, mesh)


def run_ar(cfg: Config, run_dir, stage: str = STAGE) -> dict:
    """`make ar` / `make reference`: train (or resume) the causal LM of `stage`; writes its
    training time and validation loss to <stage>/result.json."""
    from ldlm.metrics import read_metrics

    result = train_ar(cfg, run_dir, stage)
    rows = [r for r in read_metrics(rundir.stage_dir(run_dir, stage))
            if r["split"] == "validation"]
    out = {"train_seconds": round(result.seconds, 1), "validation": rows[-1] if rows else {}}
    if rundir.is_main_process():
        rundir.write_json_atomic(rundir.stage_dir(run_dir, stage) / RESULT_FILE, out)
    return out


def run_reference(cfg: Config, run_dir) -> dict:
    return run_ar(cfg, run_dir, "reference")
