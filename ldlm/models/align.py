"""Alignment of the autoencoder's latents to a causal LM's hidden states (`vae.align_weight`):
each latent, through a small projector, is pulled towards the teacher's states of the tokens
it covers (REPA / VA-VAE for text). Pure functions and the projector; the teacher itself is
loaded in ldlm/train/teacher.py.

Shape letters: B batch, L tokens per block, N latents, G tokens per latent, D latent width,
H teacher width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from ldlm.models import layers

POOLS = ("mean", "last")


class AlignProjector(nnx.Module):
    """A latent (D) -> the teacher's width (H): Linear, SiLU, Linear. Trained with the
    autoencoder, unused downstream."""

    def __init__(self, latent_dim: int, width: int, teacher_width: int, *, rngs: nnx.Rngs):
        self.inp = layers.dense(latent_dim, width, rngs=rngs, names=("latent", "mlp"),
                                use_bias=True)
        self.out = layers.dense(width, teacher_width, rngs=rngs, names=("mlp", None),
                                use_bias=True)

    def __call__(self, z_BxNxD) -> jax.Array:
        return self.out(jax.nn.silu(self.inp(z_BxNxD))).astype(jnp.float32)


def add_align_projector(module: nnx.Module, cfg, *, rngs: nnx.Rngs) -> None:
    """`module.align_proj` when the autoencoder aligns (`cfg.align_dim`, the teacher's width,
    set), built last so that an autoencoder without it initialises as before."""
    if cfg.align_dim:
        module.align_proj = AlignProjector(cfg.latent_dim, cfg.width, cfg.align_dim, rngs=rngs)


def latent_targets(hidden_BxLxH, mask_BxL, num_latents: int, pool: str = "mean"):
    """The teacher's target of each latent and which latents have one: (BxNxH, BxN bool).
    `mean`: the mean of the states of its real tokens; `last`: the state of its last real
    token (which has read the chunk and everything before it)."""
    G = hidden_BxLxH.shape[1] // num_latents
    h = rearrange(hidden_BxLxH.astype(jnp.float32), "B (N G) H -> B N G H", G=G)
    m = rearrange(mask_BxL, "B (N G) -> B N G", G=G).astype(jnp.float32)
    real_BxN = m.sum(-1) > 0
    if pool == "mean":
        target = (h * m[..., None]).sum(2) / jnp.maximum(m.sum(-1), 1.0)[..., None]
    elif pool == "last":
        last_BxN = jnp.maximum(m.sum(-1).astype(jnp.int32) - 1, 0)  # real tokens come first
        target = jnp.take_along_axis(h, last_BxN[..., None, None], axis=2)[:, :, 0]
    else:
        raise ValueError(f"pool={pool!r}: expected one of {POOLS}")
    return target, real_BxN


def centered(target_BxNxH, real_BxN):
    """The targets less their mean over the latents that have one (in the whole batch)."""
    w = real_BxN.astype(jnp.float32)[..., None]
    mean_1x1xH = ((target_BxNxH * w).sum((0, 1), keepdims=True) /
                  jnp.maximum(w.sum((0, 1), keepdims=True), 1.0))
    return target_BxNxH - mean_1x1xH


def cosine(a, b, eps: float = 1e-6):
    """Cosine similarity over the last axis."""
    a = a / jnp.maximum(jnp.linalg.norm(a, axis=-1, keepdims=True), eps)
    b = b / jnp.maximum(jnp.linalg.norm(b, axis=-1, keepdims=True), eps)
    return (a * b).sum(-1)


def cosine_loss_B(pred_BxNxH, target_BxNxH, real_BxN, margin: float = 0.0):
    """Per block, the mean over its latents that have a target of max(0, 1 - cos - margin)
    (VA-VAE's marginal cosine loss; margin 0: 1 - cos)."""
    per = jax.nn.relu(1.0 - cosine(pred_BxNxH, target_BxNxH) - margin)
    w = real_BxN.astype(jnp.float32)
    return (per * w).sum(-1) / jnp.maximum(w.sum(-1), 1.0)


def distance_matrix_loss_B(pred_BxNxH, target_BxNxH, real_BxN, margin: float = 0.0):
    """Per block, VA-VAE's distance-matrix term: the latents' pairwise cosine similarities
    against the teacher's, mean over pairs of latents with targets of
    max(0, |cos(p_i, p_j) - cos(t_i, t_j)| - margin)."""
    def gram(x):
        x = x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), 1e-6)
        return jnp.einsum("bnh,bmh->bnm", x, x)

    per = jax.nn.relu(jnp.abs(gram(pred_BxNxH) - gram(target_BxNxH)) - margin)
    w = real_BxN.astype(jnp.float32)
    pair = w[:, :, None] * w[:, None, :]
    return (per * pair).sum((1, 2)) / jnp.maximum(pair.sum((1, 2)), 1.0)
