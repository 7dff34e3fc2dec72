"""Training the causal LMs: the autoregressive baseline (`make ar`, config sections `ar` /
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
from ldlm.locks import stage_lock
from ldlm.config import Config
from ldlm.data import batches
from ldlm.data.blocks import read_meta
from ldlm.data.tokenizer import PAD_ID
from ldlm.mesh import make_mesh
from ldlm.models.ar import CausalLM, build_ar, shift_right
from ldlm.train.loop import Task, TrainResult, train

STAGES = ("ar", "reference")
ARCHITECTURE = ("width", "heads", "mlp_dim", "layers")


def ar_loss(model: CausalLM, batch, rng, step, train: bool, *, counts: dict):
    """Next-token cross-entropy summed over the real tokens of a (micro-)batch, divided by
    the global batch's token count."""
    tokens, mask = batch["tokens"], batch["mask"]
    inputs = jnp.where(mask, tokens, PAD_ID)
    logits = model(shift_right(inputs))
    maskf = mask.astype(jnp.float32)
    n = counts["tokens"]
    nll = (optax.softmax_cross_entropy_with_integer_labels(logits, tokens) * maskf).sum() / n
    accuracy = ((jnp.argmax(logits, -1) == tokens) * maskf).sum() / n
    return nll, {"nll": nll, "accuracy": accuracy}


def ar_task(cfg: Config, run_dir, mesh, stage: str = "ar") -> Task:
    meta = read_meta(batches.blocks_dir(run_dir))  # MissingStageError -> make tokenizer
    model_cfg = getattr(cfg, stage)
    return Task(
        stage=stage, train_cfg=getattr(cfg, f"{stage}_train"),
        build_model=build_ar(cfg, meta["vocab_size"], stage), loss_fn=ar_loss,
        train_batches=batches.train_batches(cfg, run_dir, mesh),
        eval_batches=lambda: batches.eval_batches(cfg, run_dir, mesh),
        must_match={**{f"{stage}.{k}": getattr(model_cfg, k) for k in ARCHITECTURE},
                    "data.block_len": cfg.data.block_len, "vocab_size": meta["vocab_size"]})


def train_ar(cfg: Config, run_dir, stage: str = "ar") -> TrainResult:
    mesh = make_mesh(cfg.mesh)
    task = ar_task(cfg, run_dir, mesh, stage)  # a missing input stage raises first
    with stage_lock(rundir.stage_dir(run_dir, stage)):  # before anything is written
        return train(cfg, run_dir, task, mesh)
