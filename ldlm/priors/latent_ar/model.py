"""The latent-autoregressive prior (CALM, arXiv 2510.27688): a causal transformer over chunk
positions and a light generative head that draws each next latent.

Backbone: position i of a window reads the chunk before it (i - 1): its K tokens, embedded,
concatenated and compressed by an MLP (K*E -> 2E, SiLU, 2E -> E, RMSNorm), or its latent
(a linear map), or both summed (`dit.backbone_input`); position 0 reads a learned start
vector. The class embedding (a learned null label for unconditional rows) is added at
every position. Causal self-attention (the project's blocks: RoPE, QK-norm, SwiGLU) gives
the hidden state h_i from which the head draws latent i.

Heads (`ldlm/priors/latent_ar/heads.py`): `energy` maps uniform noise to a latent in one
pass; `flow` predicts the velocity of a straight path from Gaussian noise to the latent.

Sampling runs the backbone once per chunk against a rolling key/value cache of the W - 1
positions a training window ever saw before a position (`KVCache`); RoPE is relative, so
positions keep counting past the window.

Shape letters: B batch, W chunk positions, K tokens per chunk, D latent width, E model
width, C cache slots.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from ldlm.config import Config, DiTConfig
from ldlm.models import layers
from ldlm.priors.latent_ar.heads import EnergyHead, FlowHead

BACKBONE_INPUTS = ("tokens", "latents", "both")
HEADS = {"energy": EnergyHead, "flow": FlowHead}


class KVCache(NamedTuple):
    """Keys and values of the positions written so far, right-aligned (the newest in the
    last slot): k / v layers x B x C x H x Kh, valid_BxC True on written positions."""

    k: jax.Array
    v: jax.Array
    valid_BxC: jax.Array


class LatentAR(nnx.Module):
    def __init__(self, cfg: DiTConfig, num_latents: int, latent_dim: int, num_classes: int,
                 vocab_size: int, chunk_len: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 remat: bool = False):
        if cfg.backbone_input not in BACKBONE_INPUTS:
            raise ValueError(f"backbone_input {cfg.backbone_input!r}")
        self.cfg, self.dtype, self.remat = cfg, dtype, remat
        self.N, self.D, self.K = num_latents, latent_dim, chunk_len
        self.W = cfg.window * num_latents  # chunk positions of a training window
        self.null_label = num_classes
        E = cfg.width
        self.reads_tokens = cfg.backbone_input in ("tokens", "both")
        self.reads_latents = cfg.backbone_input in ("latents", "both")
        if self.reads_tokens:
            self.embed = layers.Embed(vocab_size, E, rngs=rngs, dtype=dtype)
            self.compress_in = layers.dense(chunk_len * E, 2 * E, rngs=rngs,
                                            names=("mlp", "embed"), use_bias=True,
                                            dtype=dtype)
            self.compress_out = layers.dense(2 * E, E, rngs=rngs, names=("embed", "mlp"),
                                             use_bias=True, dtype=dtype)
            self.compress_norm = layers.RMSNorm(E, rngs=rngs)
        if self.reads_latents:
            self.latent_in = layers.dense(latent_dim, E, rngs=rngs, names=("latent", "embed"),
                                          use_bias=True, dtype=dtype)
        self.start = layers.param(rngs, layers.normal(0.02), (E,), ("embed",))
        self.label_embed = layers.param(rngs, layers.normal(0.02), (num_classes + 1, E),
                                        (None, "embed"))
        self.blocks = nnx.List([layers.Block(E, cfg.heads, cfg.mlp_dim, rngs=rngs,
                                             dtype=dtype) for _ in range(cfg.layers)])
        self.norm = layers.RMSNorm(E, rngs=rngs)
        self.head = HEADS[cfg.head](cfg, latent_dim, rngs=rngs, dtype=dtype)

    # ------------------------------------------------------------------ inputs
    def chunk_inputs(self, tokens_BxTxK, z_BxTxD, first_B=None):
        """Backbone inputs BxTxE of T positions, each reading the chunk (tokens and/or
        latent) given at that position: the chunk before it. Rows where `first_B` is True
        read the start vector at their first position instead (T = 1 in sampling)."""
        B, T = tokens_BxTxK.shape[:2]
        x = jnp.zeros((B, T, self.cfg.width), self.dtype)
        if self.reads_tokens:
            e = rearrange(self.embed(tokens_BxTxK), "B T K E -> B T (K E)")
            x = x + self.compress_norm(self.compress_out(jax.nn.silu(self.compress_in(e))))
        if self.reads_latents:
            x = x + self.latent_in(z_BxTxD.astype(self.dtype))
        if first_B is not None:
            start = jnp.broadcast_to(self.start[...].astype(x.dtype), x.shape)
            x = jnp.where(first_B[:, None, None], start, x)
        return x

    def labels(self, label_B, B: int):
        label_B = jnp.full((B,), self.null_label, jnp.int32) if label_B is None else label_B
        return jnp.take(self.label_embed[...], label_B, axis=0).astype(self.dtype)

    # ------------------------------------------------------------------ training pass
    def hidden(self, tokens_BxWxK, z_BxWxD, *, label_B=None, latent_mask_BxW=None):
        """h_BxWxE: the state from which the head draws latent i, given chunks < i (the
        inputs are shifted here: position i reads chunk i - 1, position 0 the start)."""
        B, W = tokens_BxWxK.shape[:2]
        prev_tokens = jnp.concatenate([jnp.zeros_like(tokens_BxWxK[:, :1]),
                                       tokens_BxWxK[:, :-1]], axis=1)
        prev_z = jnp.concatenate([jnp.zeros_like(z_BxWxD[:, :1]), z_BxWxD[:, :-1]], axis=1)
        x = self.chunk_inputs(prev_tokens, prev_z)
        start = jnp.broadcast_to(self.start[...].astype(x.dtype), x[:, :1].shape)
        x = jnp.concatenate([start, x[:, 1:]], axis=1) + self.labels(label_B, B)[:, None, :]
        if latent_mask_BxW is None:
            latent_mask_BxW = jnp.ones((B, W), bool)
        mask = jnp.tril(jnp.ones((W, W), bool))[None] & latent_mask_BxW[:, None, :]
        for block in self.blocks:
            x = layers.call_block(block, self.remat, x, mask)
        return self.norm(x)

    # ------------------------------------------------------------------ sampling with a cache
    @property
    def cache_slots(self) -> int:
        return max(1, self.W - 1)

    def empty_cache(self, B: int, dtype=jnp.float32) -> KVCache:
        E, H = self.cfg.width, self.cfg.heads
        shape = (len(self.blocks), B, self.cache_slots, H, E // H)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                       jnp.zeros((B, self.cache_slots), bool))

    def step(self, cache: KVCache, prev_tokens_BxK, prev_z_BxD, first_B, valid_B, pos,
             label_B=None) -> tuple[jax.Array, KVCache]:
        """(h_BxE at position `pos` reading the chunk before it, the cache with this position
        written). `first_B`: rows whose text starts here (they read the start vector);
        `valid_B`: False on rows that have not started yet (nothing attends to the slot)."""
        B = prev_tokens_BxK.shape[0]
        x = self.chunk_inputs(prev_tokens_BxK[:, None], prev_z_BxD[:, None], first_B)
        x = x + self.labels(label_B, B)[:, None, :]
        positions = jnp.reshape(pos, (1,))
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x, k, v = block.with_prefix(x, positions, cache.k[i], cache.v[i], cache.valid_BxC,
                                        jnp.ones((B, 1, 1), bool))
            ks.append(k)
            vs.append(v)

        def roll(old, new, axis):
            return jnp.concatenate([old, new.astype(old.dtype)], axis=axis)[
                (slice(None),) * axis + (slice(1, None),)]

        cache = KVCache(roll(cache.k, jnp.stack(ks), 2), roll(cache.v, jnp.stack(vs), 2),
                        roll(cache.valid_BxC, valid_B[:, None], 1))
        return self.norm(x)[:, 0], cache


def build_latent_ar(cfg: Config, num_latents: int, latent_dim: int, num_classes: int,
                    vocab_size: int):
    """rngs -> LatentAR of a run's config (compute dtype and remat from `dit_train`)."""
    dtype = layers.compute_dtype(cfg.dit_train.compute_dtype)
    chunk_len = cfg.data.block_len // num_latents
    return lambda rngs: LatentAR(cfg.dit, num_latents, latent_dim, num_classes, vocab_size,
                                 chunk_len, rngs=rngs, dtype=dtype, remat=cfg.dit_train.remat)
