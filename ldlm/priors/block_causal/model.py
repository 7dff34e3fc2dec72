"""Attention masks of a block-causal latent prior (a window of W latents in diffusion blocks
of G latents: p(z) = prod_b p(z_b | z_<b)).

Training runs one pass over [clean window | noisy window] (2W positions, BD3-LM's vectorised
form): a clean position of block b sees the clean positions of blocks <= b (what a KV cache
holds once block b is committed); a noisy position of block b sees the clean positions of
blocks < b and the noisy positions of its own block. The loss is taken on the noisy half;
this equals W/G separate passes, one per block, with the same times and noise.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ldlm.config import Config, DiTConfig
from ldlm.errors import ConfigError
from ldlm.models import layers
from ldlm.models.dit_trunk import DiTTrunk


def diffusion_blocks(window: int, block_size: int) -> np.ndarray:
    """int_W: the diffusion block of each latent position; ConfigError unless G divides W."""
    if block_size < 1 or window % block_size:
        raise ConfigError(f"dit.block_size={block_size} must divide the window of {window} "
                          "latents")
    return np.arange(window) // block_size


def two_stream_mask(window: int, block_size: int) -> np.ndarray:
    """bool_(2W)x(2W): query (row) may attend to key (column) over [clean | noisy]."""
    b = diffusion_blocks(window, block_size)
    clean_clean = b[:, None] >= b[None, :]
    noisy_clean = b[:, None] > b[None, :]
    noisy_noisy = b[:, None] == b[None, :]
    clean_noisy = np.zeros_like(clean_clean)
    return np.block([[clean_clean, clean_noisy], [noisy_clean, noisy_noisy]])


def window_latents(cfg: DiTConfig, num_latents: int) -> int:
    """W: the latents of a training window (dit.window VAE blocks of num_latents each)."""
    return cfg.window * num_latents


class KVCache(NamedTuple):
    """The clean history of block-by-block sampling, right-aligned: the newest committed
    latent in the last slot. k / v: layers x B x C x H x K per layer stacked (C = W - G
    slots: the most history a training block ever saw), valid_BxC: True on real latents."""

    k: jax.Array
    v: jax.Array
    valid_BxC: jax.Array


class BlockCausalDiT(DiTTrunk):
    """A DiT over a window of W latents in diffusion blocks of G latents, block-causal
    (the trunk: ldlm/models/dit_trunk.py).

    Training (`__call__`): one pass over [clean window | noisy window] (2W tokens) with
    `two_stream_mask`; RoPE positions 0..W-1 for both streams; every position is modulated
    (adaLN-Zero) by its own block's diffusion time plus the class; the clean stream carries
    time 0 and a learned stream embedding. Output on the noisy half, BxWxD.

    Sampling (`commit`, `denoise`): the clean stream of a committed block is run once and its
    keys and values per layer appended to a `KVCache`; each denoising step runs only the G
    noisy positions of the next block against the cache. Rope is relative, so positions
    keep counting past W while the cache rolls (its oldest block drops out).

    Shape letters: B batch, W window latents, G block latents, C cache slots, D latent
    width, E model width.
    """

    def _embeddings(self, rngs: nnx.Rngs) -> None:
        self.W, self.G = window_latents(self.cfg, self.N), self.cfg.block_size
        diffusion_blocks(self.W, self.G)  # ConfigError unless G divides W
        # row 0: the clean history stream, row 1: the noisy stream
        self.stream = layers.param(rngs, layers.normal(0.02), (2, self.cfg.width),
                                   (None, "embed"))

    @property
    def cache_slots(self) -> int:
        return self.W - self.G

    def _tokens(self, z_BxTxD, self_cond_BxTxD, stream: int):
        x = self.input_tokens(z_BxTxD, self_cond_BxTxD)
        return x + self.stream[...][stream].astype(x.dtype)[None, None, :]

    # ------------------------------------------------------------------ training pass
    def block_times(self, t_BxW):
        """t_BxK: the time of each diffusion block (K = W / G) from per-position times (the
        first position of each block is read)."""
        return t_BxW[:, ::self.G]

    def __call__(self, x0_BxWxD, z_BxWxD, t_BxW, *, self_cond_BxWxD=None, label_B=None,
                 latent_mask_BxW=None):
        """The network output (eps, x0 or v per config) on the noisy window, BxWxD: block b
        of z denoised given the clean blocks < b of x0. t_BxW: each position's time, one
        per diffusion block (`block_times` reads it); latent_mask_BxW: False past the
        document's end (hidden as keys)."""
        B, W, _ = z_BxWxD.shape
        if latent_mask_BxW is None:
            latent_mask_BxW = jnp.ones((B, W), bool)
        label_B = self.labels(label_B, B)
        x = jnp.concatenate([self._tokens(x0_BxWxD, jnp.zeros_like(x0_BxWxD), 0),
                             self._tokens(z_BxWxD, self_cond_BxWxD, 1)], axis=1)
        # 1 + W/G conditions per row: the clean stream's (time 0), then each noisy block's;
        # adaLN's modulation is computed once per condition, then gathered per position
        t_blocks = self.block_times(t_BxW)
        c = self.condition(jnp.concatenate([jnp.zeros_like(t_blocks[:, :1]), t_blocks], 1),
                           label_B)
        c_index = jnp.asarray(np.concatenate([np.zeros(W, np.int32),
                                              1 + diffusion_blocks(W, self.G)]))
        keys_B2W = jnp.concatenate([latent_mask_BxW, latent_mask_BxW], axis=1)
        mask = jnp.asarray(two_stream_mask(W, self.G))[None] & keys_B2W[:, None, :]
        positions = jnp.concatenate([jnp.arange(W), jnp.arange(W)])
        x = self.run_blocks(x, c, mask, positions, c_index)
        return self.output(x[:, W:], c, c_index[W:])

    # ------------------------------------------------------------------ sampling with a cache
    def empty_cache(self, B: int, dtype=jnp.float32) -> KVCache:
        E, H = self.cfg.width, self.cfg.heads
        shape = (len(self.blocks), B, self.cache_slots, H, E // H)
        return KVCache(jnp.zeros(shape, dtype), jnp.zeros(shape, dtype),
                       jnp.zeros((B, self.cache_slots), bool))

    def _with_cache(self, x_BxGxE, c_BxE, cache: KVCache, pos0, own_mask_BxGxG):
        """Every layer with the G positions attending to the cache and to each other;
        returns (x, keys and values of the G positions, layers x B x G x H x K)."""
        positions = pos0 + jnp.arange(x_BxGxE.shape[1])
        ks, vs = [], []
        for i, block in enumerate(self.blocks):
            x_BxGxE, k, v = block.with_prefix(x_BxGxE, c_BxE, positions, cache.k[i],
                                              cache.v[i], cache.valid_BxC, own_mask_BxGxG)
            ks.append(k)
            vs.append(v)
        return x_BxGxE, jnp.stack(ks), jnp.stack(vs)

    def denoise(self, cache: KVCache, z_BxGxD, t_B, pos0, *, self_cond_BxGxD=None,
                label_B=None, valid_BxG=None):
        """The network output on the next block (positions pos0 .. pos0 + G - 1) at time t
        given the committed history in `cache`, BxGxD (valid_BxG: False past a document's
        end, hidden as keys as in training)."""
        B, G, _ = z_BxGxD.shape
        if valid_BxG is None:
            valid_BxG = jnp.ones((B, G), bool)
        c = self.condition(t_B[:, None], self.labels(label_B, B))[:, 0]  # one per block
        x = self._tokens(z_BxGxD, self_cond_BxGxD, 1)
        x, _, _ = self._with_cache(x, c, cache, pos0,
                                   jnp.broadcast_to(valid_BxG[:, None, :], (B, G, G)))
        return self.output(x, c)

    def commit(self, cache: KVCache, x0_BxGxD, pos0, *, valid_BxG=None,
               label_B=None) -> KVCache:
        """The cache with the clean block x0 (positions pos0 ..) appended: its clean-stream
        keys and values per layer, the oldest G slots dropped. valid_BxG: False on slots
        holding no latent (a prompt shorter than others in its batch)."""
        B, G, _ = x0_BxGxD.shape
        if valid_BxG is None:
            valid_BxG = jnp.ones((B, G), bool)
        c = self.condition(jnp.zeros((B, 1)), self.labels(label_B, B))[:, 0]
        x = self._tokens(x0_BxGxD, jnp.zeros_like(x0_BxGxD), 0)
        _, k, v = self._with_cache(x, c, cache, pos0,
                                   jnp.broadcast_to(valid_BxG[:, None, :], (B, G, G)))

        def roll(old, new, axis):
            return jnp.concatenate([old, new.astype(old.dtype)], axis=axis)[
                (slice(None),) * axis + (slice(G, None),)]

        return KVCache(roll(cache.k, k, 2), roll(cache.v, v, 2),
                       roll(cache.valid_BxC, valid_BxG, 1))


def build_block_causal(cfg: Config, num_latents: int, latent_dim: int, num_classes: int):
    """rngs -> BlockCausalDiT of a run's config (compute dtype and remat from `dit_train`)."""
    dtype = layers.compute_dtype(cfg.dit_train.compute_dtype)
    return lambda rngs: BlockCausalDiT(cfg.dit, num_latents, latent_dim, num_classes,
                                       rngs=rngs, dtype=dtype, remat=cfg.dit_train.remat)
