"""The train state (a pytree) and the optimiser built from a TrainConfig."""

from __future__ import annotations

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp
import optax

from ldlm.config import TrainConfig


@flax.struct.dataclass
class TrainState:
    step: jax.Array  # int32 scalar: number of updates applied
    params: Any  # nnx.State of the model's parameters (float32)
    opt_state: Any
    ema: Any  # EMA of params, or None when ema_decay is 0
    rng: jax.Array  # uint32[2] base key; step t uses fold_in(rng, t)


def learning_rate_schedule(cfg: TrainConfig) -> optax.Schedule:
    """Linear warm-up, then cosine decay to lr * end_lr_frac at the last step."""
    warmup = max(1, int(cfg.warmup_frac * cfg.steps))
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=cfg.lr, warmup_steps=warmup,
        decay_steps=max(cfg.steps, warmup + 1), end_value=cfg.lr * cfg.end_lr_frac)


def make_optimizer(cfg: TrainConfig) -> optax.GradientTransformation:
    """AdamW with global-norm clipping; no weight decay on vectors (norms, biases)."""
    return optax.chain(
        optax.clip_by_global_norm(cfg.grad_clip),
        optax.adamw(learning_rate_schedule(cfg), b1=cfg.b1, b2=cfg.b2,
                    weight_decay=cfg.weight_decay,
                    mask=lambda params: jax.tree.map(lambda p: p.ndim >= 2, params)))


def init_state(params, tx: optax.GradientTransformation, seed: int,
               ema: bool) -> TrainState:
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                      ema=jax.tree.map(jnp.copy, params) if ema else None,
                      rng=jax.random.PRNGKey(seed))
