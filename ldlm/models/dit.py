"""Latent DiT: a transformer that denoises the N latent vectors of a block.

- adaLN-Zero (DiT): every block is modulated by shift / scale / gate vectors computed from
  the conditioning c = time embedding + class embedding; the modulation layers start at
  zero, so at initialisation every residual branch is exactly zero and the network is the
  identity on its input projection.
- Self-conditioning: the previous estimate of the clean latents is concatenated to the
  noisy input (zeros when there is none).
- Class conditioning with a learned null label (index num_classes) for classifier-free
  guidance.
- Document context (`use_context`): the latents of the previous block (continuation) and of
  the next block (infilling) enter as extra tokens in the same sequence, each with its own
  segment embedding; an absent neighbour is masked out of attention, so it contributes
  nothing. Each group of `context_pool` consecutive neighbour latents becomes one token
  (M = N / context_pool tokens per neighbour), which keeps the sequence short. Without
  `use_context` the sequence is the current block alone and neighbour inputs are ignored.

Sequence: [prev (M) | current (N) | next (M)], RoPE positions 0 .. T-1.
Shape letters: B batch, N latents, D latent width, W model width, M context tokens per
neighbour, T = N + 2M (or N without context).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from ldlm.config import Config, DiTConfig
from ldlm.models import layers


def timestep_embedding(t_B, dim: int, max_period: float = 10_000.0):
    """Sinusoidal embedding of t in [0, 1] (scaled to 0 .. 1000)."""
    half = dim // 2
    freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)
    args = (1000.0 * t_B.astype(jnp.float32))[:, None] * freqs[None, :]
    return jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)


def per_position(v):
    """A modulation vector BxW (the same for every position) as BxTxW-broadcastable, or a
    per-position one BxTxW as it is."""
    return v if v.ndim == 3 else v[:, None, :]


def modulate(x_BxTxW, shift, scale):
    """adaLN modulation; shift / scale BxW (one per sequence) or BxTxW (per position)."""
    return x_BxTxW * (1 + per_position(scale)) + per_position(shift)


def _zeros():
    return nnx.initializers.zeros_init()


class DiTBlock(nnx.Module):
    def __init__(self, width: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs, dtype):
        self.attn = layers.Attention(width, heads, rngs=rngs, dtype=dtype)
        self.mlp = layers.SwiGLU(width, mlp_dim, rngs=rngs, dtype=dtype)
        # adaLN-Zero: 6 modulation vectors from c, zero at initialisation
        self.ada = layers.Dense(width, 6 * width, rngs=rngs, names=("embed", "mlp"),
                                use_bias=True, init=_zeros(), dtype=dtype)

    def _mods(self, c, dtype, c_index_T=None):
        """The 6 modulation vectors; with c_index_T, c is BxKxW (K distinct conditions)
        and position t takes condition c_index_T[t] (computed once per condition)."""
        mods = self.ada(jax.nn.silu(c)).astype(dtype)
        if c_index_T is not None:
            mods = jnp.take(mods, c_index_T, axis=1)
        return jnp.split(mods, 6, axis=-1)

    def _mlp_branch(self, x, shift, scale, gate):
        h = modulate(layers.rms_normalize(x), shift, scale)
        return x + per_position(gate) * self.mlp(h).astype(x.dtype)

    def __call__(self, x_BxTxW, c, mask_BxTxT, positions_T=None, c_index_T=None):
        """c: BxW (one condition for the sequence), BxTxW (one per position), or BxKxW with
        c_index_T (the condition of each position)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self._mods(c, x_BxTxW.dtype,
                                                                  c_index_T)
        h = modulate(layers.rms_normalize(x_BxTxW), shift1, scale1)
        x = x_BxTxW + per_position(gate1) * self.attn(
            h, positions_T=positions_T, mask_BxTxT=mask_BxTxT).astype(x_BxTxW.dtype)
        return self._mlp_branch(x, shift2, scale2, gate2)

    def with_prefix(self, x_BxTxW, c, positions_T, prefix_k, prefix_v, prefix_mask_BxS,
                    mask_BxTxT):
        """The block with x also attending to cached keys / values (layers.Attention.
        with_prefix); returns (x, x's keys, x's values)."""
        shift1, scale1, gate1, shift2, scale2, gate2 = self._mods(c, x_BxTxW.dtype)
        h = modulate(layers.rms_normalize(x_BxTxW), shift1, scale1)
        a, k, v = self.attn.with_prefix(h, positions_T, prefix_k, prefix_v, prefix_mask_BxS,
                                        mask_BxTxT)
        x = x_BxTxW + per_position(gate1) * a.astype(x_BxTxW.dtype)
        return self._mlp_branch(x, shift2, scale2, gate2), k, v


class DiT(nnx.Module):
    def __init__(self, cfg: DiTConfig, num_latents: int, latent_dim: int, num_classes: int,
                 *, rngs: nnx.Rngs, dtype=jnp.float32, remat: bool = False):
        W = cfg.width
        self.remat = remat
        self.cfg, self.N, self.D, self.num_classes, self.dtype = (cfg, num_latents, latent_dim,
                                                                   num_classes, dtype)
        self.in_proj = layers.Dense(2 * latent_dim, W, rngs=rngs, names=("latent", "embed"),
                                    use_bias=True, dtype=dtype)
        if cfg.use_context:
            if num_latents % cfg.context_pool:
                raise ValueError(f"dit.context_pool {cfg.context_pool} must divide the "
                                 f"number of latents {num_latents}")
            self.ctx_proj = layers.Dense(cfg.context_pool * latent_dim, W, rngs=rngs,
                                        names=("latent", "embed"), use_bias=True, dtype=dtype)
        self.segment = layers.param(rngs, layers.normal(0.02), (3, W), (None, "embed"))
        self.time_mlp1 = layers.Dense(W, W, rngs=rngs, names=("embed", "mlp"), use_bias=True,
                                      dtype=dtype)
        self.time_mlp2 = layers.Dense(W, W, rngs=rngs, names=("mlp", "embed"), use_bias=True,
                                      dtype=dtype)
        # num_classes + 1 rows: the last is the null label (unconditional)
        self.class_embed = layers.param(rngs, layers.normal(0.02), (num_classes + 1, W),
                                        (None, "embed"))
        self.blocks = nnx.List([DiTBlock(W, cfg.heads, cfg.mlp_dim, rngs=rngs, dtype=dtype)
                                for _ in range(cfg.layers)])
        self.final_ada = layers.Dense(W, 2 * W, rngs=rngs, names=("embed", "mlp"),
                                      use_bias=True, init=_zeros(), dtype=dtype)
        self.out_proj = layers.Dense(W, latent_dim, rngs=rngs, names=("embed", "latent"),
                                     use_bias=True, init=_zeros(), dtype=dtype)

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, z_BxNxD, t_B, *, self_cond_BxNxD=None, label_B=None,
                 prev_BxNxD=None, has_prev_B=None, next_BxNxD=None, has_next_B=None):
        """The network output (eps, x0 or v, per config) for the current block, BxNxD."""
        B, N, D = z_BxNxD.shape
        if self_cond_BxNxD is None:
            self_cond_BxNxD = jnp.zeros_like(z_BxNxD)
        if label_B is None:
            label_B = jnp.full((B,), self.null_label, jnp.int32)
        x = self.in_proj(jnp.concatenate([z_BxNxD, self_cond_BxNxD], -1))
        seg = self.segment[...].astype(x.dtype)
        x = x + seg[1][None, None, :]
        mask_BxTxT = None
        if self.cfg.use_context:
            x, mask_BxTxT = self._with_context(x, prev_BxNxD, has_prev_B, next_BxNxD,
                                               has_next_B, seg)

        temb = timestep_embedding(t_B, self.cfg.width)
        c = self.time_mlp2(jax.nn.silu(self.time_mlp1(temb)))
        c = c + jnp.take(self.class_embed[...], label_B, axis=0).astype(c.dtype)
        for block in self.blocks:
            x = layers.call_block(block, self.remat, x, c, mask_BxTxT)
        if self.cfg.use_context:
            M = N // self.cfg.context_pool
            x = x[:, M:M + N]
        shift, scale = jnp.split(self.final_ada(jax.nn.silu(c)).astype(x.dtype), 2, axis=-1)
        out = self.out_proj(modulate(layers.rms_normalize(x), shift, scale))
        return out.astype(jnp.float32)

    def _with_context(self, x_BxNxW, prev_BxNxD, has_prev_B, next_BxNxD, has_next_B, seg):
        """[prev | current | next] tokens BxTxW and the attention mask hiding absent ones."""
        B, N, _ = x_BxNxW.shape
        M = N // self.cfg.context_pool
        absent = jnp.zeros((B,), bool)
        zeros = jnp.zeros((B, N, self.D), x_BxNxW.dtype)
        has_prev_B = absent if has_prev_B is None else has_prev_B
        has_next_B = absent if has_next_B is None else has_next_B
        prev_BxNxD = zeros if prev_BxNxD is None else prev_BxNxD
        next_BxNxD = zeros if next_BxNxD is None else next_BxNxD

        def tokens(z_BxNxD, segment):
            pooled = rearrange(z_BxNxD, "B (M P) D -> B M (P D)", P=self.cfg.context_pool)
            return self.ctx_proj(pooled) + segment[None, None, :]

        x = jnp.concatenate([tokens(prev_BxNxD, seg[0]), x_BxNxW, tokens(next_BxNxD, seg[2])],
                            axis=1)
        present_BxT = jnp.concatenate([
            jnp.broadcast_to(has_prev_B[:, None], (B, M)), jnp.ones((B, N), bool),
            jnp.broadcast_to(has_next_B[:, None], (B, M))], axis=1)
        T = N + 2 * M
        # every query attends to the present tokens only (an absent neighbour is invisible)
        return x, jnp.broadcast_to(present_BxT[:, None, :], (B, T, T))


def build_dit(cfg: Config, num_latents: int, latent_dim: int, num_classes: int):
    """rngs -> DiT of a run's config (compute dtype and remat from `dit_train`)."""
    dtype = layers.compute_dtype(cfg.dit_train.compute_dtype)
    return lambda rngs: DiT(cfg.dit, num_latents, latent_dim, num_classes, rngs=rngs,
                            dtype=dtype, remat=cfg.dit_train.remat)
