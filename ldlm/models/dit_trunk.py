"""The trunk both DiT priors share: adaLN-Zero transformer blocks (DiT) conditioned on a
diffusion time and a class, the input projection of [noisy latents | self-conditioning],
and the modulated output projection.

- adaLN-Zero: every block is modulated by shift / scale / gate vectors computed from the
  condition c = time embedding + class embedding; the modulation layers start at zero, so
  at initialisation every residual branch is exactly zero and the network is the identity
  on its input projection.
- Class conditioning with a learned null label (index num_classes) for classifier-free
  guidance.
- A condition is one vector per sequence (BxE), one per position (BxTxE), or one per
  group of positions (BxKxE with an index per position), computed once per condition.

A prior subclasses `DiTTrunk` and adds its own input embeddings in `_embeddings` (created
between the input projection and the time MLP, so parameter initialisation keeps its
order). Shape letters: B batch, T positions, D latent width, E model width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ldlm.config import DiTConfig
from ldlm.models import layers


def timestep_embedding(t, dim: int, max_period: float = 10_000.0):
    """Sinusoidal embedding of t in [0, 1] (scaled to 0 .. 1000), t's shape x dim."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (1000.0 * t.astype(jnp.float32))[..., None] * freqs.reshape(
        (1,) * t.ndim + (-1,))
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def per_position(v):
    """A modulation vector BxE (the same for every position) as BxTxE-broadcastable, or a
    per-position one BxTxE as it is."""
    return v if v.ndim == 3 else v[:, None, :]


def modulate(x_BxTxE, shift, scale):
    """adaLN modulation; shift / scale BxE (one per sequence) or BxTxE (per position)."""
    return x_BxTxE * (1 + per_position(scale)) + per_position(shift)


def _zeros():
    return nnx.initializers.zeros_init()


def _mods(ada, c, n: int, dtype, c_index_T=None):
    """n modulation vectors from the condition c (BxE, BxTxE, or BxKxE with c_index_T:
    computed once per condition, then gathered per position)."""
    mods = ada(jax.nn.silu(c)).astype(dtype)
    if c_index_T is not None:
        mods = jnp.take(mods, c_index_T, axis=1)
    return jnp.split(mods, n, axis=-1)


class DiTBlock(nnx.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs, dtype):
        self.attn = layers.Attention(width, heads, rngs=rngs, dtype=dtype)
        self.mlp = layers.SwiGLU(width, mlp_dim, rngs=rngs, dtype=dtype)
        # adaLN-Zero: 6 modulation vectors from c, zero at initialisation
        self.ada = layers.dense(width, 6 * width, rngs=rngs, names=("embed", "mlp"),
                                use_bias=True, init=_zeros(), dtype=dtype)

    def _mlp_branch(self, x, shift, scale, gate):
        h = modulate(layers.rms_normalize(x), shift, scale)
        return x + per_position(gate) * self.mlp(h).astype(x.dtype)

    def __call__(self, x_BxTxE, c, mask_BxTxT, positions_T=None, c_index_T=None):
        """c: BxE (one condition for the sequence), BxTxE (one per position), or BxKxE with
        c_index_T (the condition of each position)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = _mods(self.ada, c, 6, x_BxTxE.dtype,
                                                             c_index_T)
        h = modulate(layers.rms_normalize(x_BxTxE), shift1, scale1)
        x = x_BxTxE + per_position(gate1) * self.attn(
            h, positions_T=positions_T, mask_BxTxT=mask_BxTxT).astype(x_BxTxE.dtype)
        return self._mlp_branch(x, shift2, scale2, gate2)

    def with_prefix(self, x_BxTxE, c, positions_T, prefix_k, prefix_v, prefix_mask_BxS,
                    mask_BxTxT):
        """The block with x also attending to cached keys / values (layers.Attention.
        with_prefix); returns (x, x's keys, x's values)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = _mods(self.ada, c, 6, x_BxTxE.dtype)
        h = modulate(layers.rms_normalize(x_BxTxE), shift1, scale1)
        a, k, v = self.attn.with_prefix(h, positions_T, prefix_k, prefix_v, prefix_mask_BxS,
                                        mask_BxTxT)
        x = x_BxTxE + per_position(gate1) * a.astype(x_BxTxE.dtype)
        return self._mlp_branch(x, shift2, scale2, gate2), k, v


class DiTTrunk(nnx.Module):
    """Input projection, time and class conditioning, adaLN-Zero blocks and the modulated
    output projection of a DiT prior (see the module docstring)."""

    def __init__(self, cfg: DiTConfig, num_latents: int, latent_dim: int, num_classes: int,
                 *, rngs: nnx.Rngs, dtype=jnp.float32, remat: bool = False):
        E = cfg.width
        self.cfg, self.remat, self.dtype = cfg, remat, dtype
        self.N, self.D, self.num_classes = num_latents, latent_dim, num_classes
        # the noisy latents and the self-conditioning estimate, side by side
        self.in_proj = layers.dense(2 * latent_dim, E, rngs=rngs, names=("latent", "embed"),
                                    use_bias=True, dtype=dtype)
        self._embeddings(rngs)
        self.time_mlp1 = layers.dense(E, E, rngs=rngs, names=("embed", "mlp"), use_bias=True,
                                      dtype=dtype)
        self.time_mlp2 = layers.dense(E, E, rngs=rngs, names=("mlp", "embed"), use_bias=True,
                                      dtype=dtype)
        # num_classes + 1 rows: the last is the null label (unconditional)
        self.class_embed = layers.param(rngs, layers.normal(0.02), (num_classes + 1, E),
                                        (None, "embed"))
        self.blocks = nnx.List([DiTBlock(E, cfg.heads, cfg.mlp_dim, rngs=rngs, dtype=dtype)
                                for _ in range(cfg.layers)])
        self.final_ada = layers.dense(E, 2 * E, rngs=rngs, names=("embed", "mlp"),
                                      use_bias=True, init=_zeros(), dtype=dtype)
        self.out_proj = layers.dense(E, latent_dim, rngs=rngs, names=("embed", "latent"),
                                     use_bias=True, init=_zeros(), dtype=dtype)

    def _embeddings(self, rngs: nnx.Rngs) -> None:
        """The prior's own input parameters (context projections, segment embeddings)."""

    @property
    def null_label(self) -> int:
        return self.num_classes

    def labels(self, label_B, B: int):
        """label_B, or the null label for every row when None."""
        return jnp.full((B,), self.null_label, jnp.int32) if label_B is None else label_B

    def input_tokens(self, z_BxTxD, self_cond_BxTxD=None):
        if self_cond_BxTxD is None:
            self_cond_BxTxD = jnp.zeros_like(z_BxTxD)
        return self.in_proj(jnp.concatenate([z_BxTxD, self_cond_BxTxD], -1))

    def condition(self, t, label_B):
        """c: the time embedding of t (B, or BxK) plus the class embedding, t's shape x E."""
        temb = timestep_embedding(t, self.cfg.width)
        c = self.time_mlp2(jax.nn.silu(self.time_mlp1(temb)))
        cls = jnp.take(self.class_embed[...], label_B, axis=0).astype(c.dtype)
        return c + (cls if t.ndim == 1 else cls[:, None, :])

    def run_blocks(self, x_BxTxE, c, mask_BxTxT, positions_T=None, c_index_T=None):
        for block in self.blocks:
            x_BxTxE = layers.call_block(block, self.remat, x_BxTxE, c, mask_BxTxT,
                                        positions_T, c_index_T)
        return x_BxTxE

    def output(self, x_BxTxE, c, c_index_T=None):
        """The network output BxTxD (float32): the output projection, modulated by c."""
        shift, scale = _mods(self.final_ada, c, 2, x_BxTxE.dtype, c_index_T)
        return self.out_proj(modulate(layers.rms_normalize(x_BxTxE), shift, scale)).astype(
            jnp.float32)
