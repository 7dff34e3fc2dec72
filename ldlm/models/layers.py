"""Transformer building blocks shared by the VAE, the DiT and the baseline LM.

Pre-norm blocks with RMSNorm, multi-head attention with rotary position embeddings (RoPE)
and QK-norm, and a SwiGLU MLP. Every parameter carries logical axis names (`embed`, `mlp`,
`heads`, `kv`, `vocab`, ...) that `ldlm.mesh` maps onto the device mesh, so a model built
under `jax.set_mesh(mesh)` and `nnx.logical_axis_rules(rules)` is born sharded.

Parameters are stored in float32; `dtype` is the compute dtype (bfloat16 on accelerators).
Softmax and normalisation statistics are computed in float32.

Shape letters: B batch, T sequence, D model width, H heads, K head width, F MLP width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ldlm.mesh import constrain_batch

Dtype = jnp.dtype
COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def compute_dtype(name: str):
    """The jnp dtype of a `<stage>_train.compute_dtype` name (float32 | bfloat16)."""
    return COMPUTE_DTYPES[name]


def lead(v, ndim: int):
    """`v` with leading unit axes up to rank `ndim` (explicit broadcasting)."""
    return v.reshape((1,) * (ndim - v.ndim) + v.shape)


def param(rngs: nnx.Rngs, init, shape, names) -> nnx.Param:
    """A float32 parameter with logical axis names."""
    return nnx.Param(nnx.with_partitioning(init, names)(rngs.params(), shape, jnp.float32))


def normal(stddev: float):
    return nnx.initializers.normal(stddev)


class RMSNorm(nnx.Module):
    def __init__(self, dim: int, *, rngs: nnx.Rngs, eps: float = 1e-6, names=("embed",)):
        self.scale = param(rngs, nnx.initializers.ones_init(), (dim,), names)
        self.eps = eps

    def __call__(self, x):
        dtype = x.dtype
        x = x.astype(jnp.float32)
        x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
        return (x * lead(self.scale[...], x.ndim)).astype(dtype)


def rms_normalize(x, eps: float = 1e-6):
    """RMSNorm without a learned scale (used for QK-norm targets and latent means)."""
    x32 = x.astype(jnp.float32)
    return (x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + eps)
            ).astype(x.dtype)


def dense(d_in: int, d_out: int, *, rngs: nnx.Rngs, names=("embed", "mlp"),
          use_bias: bool = False, init=None, dtype: Dtype = jnp.float32) -> nnx.Linear:
    """nnx.Linear (kernel (in, out), float32 parameters, computed in `dtype`) whose kernel
    and bias carry logical axis names."""
    init = init or nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal")
    return nnx.Linear(d_in, d_out, use_bias=use_bias, dtype=dtype, param_dtype=jnp.float32,
                      kernel_init=nnx.with_partitioning(init, names),
                      bias_init=nnx.with_partitioning(nnx.initializers.zeros_init(),
                                                      names[-1:]), rngs=rngs)


def rope(x_BxTxHxK, positions_T, base: float = 10_000.0):
    """Rotary position embedding over the last axis (split in halves)."""
    k = x_BxTxHxK.shape[-1]
    half = k // 2
    freqs = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    angles_TxK2 = positions_T.astype(jnp.float32)[:, None] * freqs[None, :]
    sin = jnp.sin(angles_TxK2)[None, :, None, :]
    cos = jnp.cos(angles_TxK2)[None, :, None, :]
    x = x_BxTxHxK.astype(jnp.float32)
    x1, x2 = x[..., :half], x[..., half:]
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x_BxTxHxK.dtype)


def dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS=None):
    """Scaled dot-product attention, BxTxHxK, through `jax.nn.dot_product_attention` (cuDNN
    flash attention where it can, XLA elsewhere; softmax in float32). mask_BxTxS: True
    where query t may attend to key s."""
    mask = None if mask_BxTxS is None else mask_BxTxS[:, None, :, :]
    return jax.nn.dot_product_attention(q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask=mask)


class Attention(nnx.Module):
    """Multi-head self-attention with RoPE and QK-norm (RMSNorm on queries and keys)."""

    def __init__(self, width: int, heads: int, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 rope_base: float = 10_000.0, out_init=None):
        assert width % heads == 0, f"width {width} not divisible by heads {heads}"
        self.heads, self.head_dim, self.dtype, self.rope_base = heads, width // heads, dtype, \
            rope_base
        init = nnx.initializers.variance_scaling(1.0, "fan_in", "truncated_normal",
                                                 in_axis=0, out_axis=(1, 2))
        shape = (width, heads, self.head_dim)
        self.wq = param(rngs, init, shape, ("embed", "heads", "kv"))
        self.wk = param(rngs, init, shape, ("embed", "heads", "kv"))
        self.wv = param(rngs, init, shape, ("embed", "heads", "kv"))
        out_init = out_init or nnx.initializers.variance_scaling(
            1.0, "fan_in", "truncated_normal", in_axis=(0, 1), out_axis=2)
        self.wo = param(rngs, out_init, (heads, self.head_dim, width), ("heads", "kv", "embed"))
        self.q_norm = RMSNorm(self.head_dim, rngs=rngs, names=("kv",))
        self.k_norm = RMSNorm(self.head_dim, rngs=rngs, names=("kv",))

    def _qkv(self, x_BxTxD, positions_T):
        dt = self.dtype
        x = x_BxTxD.astype(dt)
        q = jnp.einsum("BTD,DHK->BTHK", x, self.wq[...].astype(dt))
        k = jnp.einsum("BTD,DHK->BTHK", x, self.wk[...].astype(dt))
        v = jnp.einsum("BTD,DHK->BTHK", x, self.wv[...].astype(dt))
        q, k = self.q_norm(q), self.k_norm(k)
        return rope(q, positions_T, self.rope_base), rope(k, positions_T, self.rope_base), v

    def _attend(self, q_BxTxHxK, k_BxSxHxK, v_BxSxHxK, mask_BxTxS):
        """Attention (see `dot_product_attention`), then the output projection."""
        dt = self.dtype
        out = dot_product_attention(q_BxTxHxK, k_BxSxHxK.astype(q_BxTxHxK.dtype),
                                    v_BxSxHxK.astype(q_BxTxHxK.dtype), mask_BxTxS)
        return jnp.einsum("BTHK,HKD->BTD", out.astype(dt), self.wo[...].astype(dt))

    def __call__(self, x_BxTxD, *, positions_T=None, mask_BxTxT=None):
        if positions_T is None:
            positions_T = jnp.arange(x_BxTxD.shape[1])
        q, k, v = self._qkv(x_BxTxD, positions_T)
        return self._attend(q, k, v, mask_BxTxT)

    def with_prefix(self, x_BxTxD, positions_T, prefix_k_BxSxHxK, prefix_v_BxSxHxK,
                    prefix_mask_BxS, mask_BxTxT):
        """x's T positions attend to S cached keys / values (where prefix_mask) and to each
        other (where mask_BxTxT); returns (output BxTxD, x's keys, x's values BxTxHxK), the
        keys already rotated to `positions_T` (what a cache stores)."""
        q, k, v = self._qkv(x_BxTxD, positions_T)
        B, T = x_BxTxD.shape[:2]
        S = prefix_k_BxSxHxK.shape[1]
        keys = jnp.concatenate([prefix_k_BxSxHxK.astype(k.dtype), k], axis=1)
        values = jnp.concatenate([prefix_v_BxSxHxK.astype(v.dtype), v], axis=1)
        mask = jnp.concatenate([jnp.broadcast_to(prefix_mask_BxS[:, None, :], (B, T, S)),
                                mask_BxTxT], axis=-1)
        return self._attend(q, keys, values, mask), k, v


class SwiGLU(nnx.Module):
    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32,
                 out_init=None):
        self.gate = dense(width, hidden, rngs=rngs, names=("embed", "mlp"), dtype=dtype)
        self.up = dense(width, hidden, rngs=rngs, names=("embed", "mlp"), dtype=dtype)
        self.down = dense(hidden, width, rngs=rngs, names=("mlp", "embed"), dtype=dtype,
                          init=out_init)

    def __call__(self, x):
        return self.down(jax.nn.silu(self.gate(x)) * self.up(x))


class ResidualMLP(nnx.Module):
    """Pre-norm residual SwiGLU block without attention: x + mlp(norm(x)), position-wise."""

    def __init__(self, width: int, hidden: int, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32):
        self.norm = RMSNorm(width, rngs=rngs)
        self.mlp = SwiGLU(width, hidden, rngs=rngs, dtype=dtype)

    def __call__(self, x):
        return x + self.mlp(self.norm(x)).astype(x.dtype)


class Block(nnx.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, width: int, heads: int, mlp_dim: int, *, rngs: nnx.Rngs,
                 dtype: Dtype = jnp.float32):
        self.attn_norm = RMSNorm(width, rngs=rngs)
        self.attn = Attention(width, heads, rngs=rngs, dtype=dtype)
        self.mlp_norm = RMSNorm(width, rngs=rngs)
        self.mlp = SwiGLU(width, mlp_dim, rngs=rngs, dtype=dtype)

    def __call__(self, x_BxTxD, mask_BxTxT=None, *, positions_T=None):
        x = x_BxTxD + self.attn(self.attn_norm(x_BxTxD), positions_T=positions_T,
                                mask_BxTxT=mask_BxTxT).astype(x_BxTxD.dtype)
        return x + self.mlp(self.mlp_norm(x)).astype(x.dtype)

    def with_prefix(self, x_BxTxD, positions_T, prefix_k_BxSxHxK, prefix_v_BxSxHxK,
                    prefix_mask_BxS, mask_BxTxT):
        """The block with x attending to S cached keys / values as well (see
        Attention.with_prefix); returns (output BxTxD, x's keys, x's values)."""
        h, k, v = self.attn.with_prefix(self.attn_norm(x_BxTxD), positions_T, prefix_k_BxSxHxK,
                                        prefix_v_BxSxHxK, prefix_mask_BxS, mask_BxTxT)
        x = x_BxTxD + h.astype(x_BxTxD.dtype)
        return x + self.mlp(self.mlp_norm(x)).astype(x.dtype), k, v

    def decode_step(self, x_Bx1xD, cache: dict, pos):
        """The block at one new position `pos` (traced int) attending to the cached keys /
        values of the positions before it (`with_prefix`, the one cache convention);
        returns (output Bx1xD, cache with this position written). cache: {"k", "v"}, each
        BxSxHxK for the S positions of the whole sequence."""
        B, S = cache["k"].shape[:2]
        before_BxS = jnp.broadcast_to(jnp.arange(S)[None, :] < pos, (B, S))
        x, k, v = self.with_prefix(x_Bx1xD, jnp.reshape(pos, (1,)), cache["k"], cache["v"],
                                   before_BxS, jnp.ones((B, 1, 1), bool))
        write = lambda c, new: jax.lax.dynamic_update_slice_in_dim(  # noqa: E731
            c, new.astype(c.dtype), pos, axis=1)
        return x, {"k": write(cache["k"], k), "v": write(cache["v"], v)}


def call_block(block, remat: bool, *args):
    """block(*args) at a block boundary: the batch axis pinned to the mesh's batch axes, and
    with `remat` the block's activations recomputed in the backward pass (nnx.remat)."""
    args = (constrain_batch(args[0]),) + args[1:]
    if remat:
        return nnx.remat(lambda b, *a: b(*a))(block, *args)
    return block(*args)


class Embed(nnx.Module):
    """Token embedding; `attend` gives output logits with the same (tied) table."""

    def __init__(self, vocab: int, width: int, *, rngs: nnx.Rngs, dtype: Dtype = jnp.float32):
        self.table = param(rngs, normal(1.0), (vocab, width), ("vocab", "embed"))
        self.dtype = dtype

    def __call__(self, ids_BxT):
        return jnp.take(self.table[...], ids_BxT, axis=0).astype(self.dtype)

    def attend(self, x_BxTxD):
        """Logits in float32, scaled by 1/sqrt(D) so tied weights start with unit logits."""
        w = self.table[...].astype(self.dtype)
        logits = jnp.einsum("BTD,VD->BTV", x_BxTxD.astype(self.dtype), w)
        return logits.astype(jnp.float32) / jnp.sqrt(jnp.float32(x_BxTxD.shape[-1]))
