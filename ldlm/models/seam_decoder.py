"""The seam decoder: a VAE block's latents -> its L tokens, seeing the preceding VAE block's
latents as well (Cola DLM's conditional decoder, with one block of history), so that a
block's first tokens can follow on from the text before them.

The VAE decoder's shape (and, at the start of training, its weights: `load_vae_decoder`),
run as two streams of one set of weights:
- the history stream of a block: its L positions (RoPE 0..L-1) attend to each other only,
  the VAE decoder's own computation, and decode the block on its own. Its keys and values
  per layer are the `History` the next block sees: computed once per block, the decoder's
  cache.
- the conditional stream of a block: its L positions (RoPE L..2L-1) attend to each other and
  to the previous block's `History` (where the row has one). Without history (a document's
  first block) it computes what the history stream does, as RoPE is relative.
Outputs as in the VAE: token logits tied to the embedding table, a real-token logit per
position.

Shape letters: B batch, N latents, D latent width, L tokens per block, E model width,
H heads, K head width.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from einops import rearrange
from flax import nnx

from ldlm.config import Config, VAEConfig
from ldlm.mesh import constrain_batch
from ldlm.models import layers
from ldlm.models.vae import add_decoder_layers

# The parameters the seam decoder shares, by name and shape, with TextVAEModel.
VAE_DECODER_PARAMS = ("embed", "from_latent", "decoder", "decoder_norm", "real_head")


class History(NamedTuple):
    """What a block leaves to the next: keys and values of its history stream per layer
    (layers x B x L x H x K, stacked) and valid_B (False: the next block has no history)."""

    k: jax.Array
    v: jax.Array
    valid_B: jax.Array


class SeamDecoder(nnx.Module):
    def __init__(self, cfg: VAEConfig, vocab_size: int, block_len: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32):
        self.cfg, self.block_len, self.dtype = cfg, block_len, dtype
        self.group = block_len // cfg.num_latents  # tokens per latent
        E = cfg.width
        self.heads, self.head_dim = cfg.heads, E // cfg.heads
        self.embed = layers.Embed(vocab_size, E, rngs=rngs, dtype=dtype)  # output table only
        add_decoder_layers(self, cfg, self.group, rngs=rngs, dtype=dtype)

    def empty_history(self, B: int) -> History:
        """The history of rows that have none (every row decodes alone)."""
        shape = (len(self.decoder), B, self.block_len, self.heads, self.head_dim)
        return History(jnp.zeros(shape, self.dtype), jnp.zeros(shape, self.dtype),
                       jnp.zeros((B,), bool))

    def _stream(self, z_BxNxD, positions_L, history: History | None):
        h = self.from_latent(z_BxNxD)
        h = rearrange(h, "B N (G E) -> B (N G) E", G=self.group)
        B, L = h.shape[:2]
        within = jnp.ones((B, L, L), bool)
        ks, vs = [], []
        for i, block in enumerate(self.decoder):
            if history is None:
                prefix_k = prefix_v = jnp.zeros((B, 0, self.heads, self.head_dim), self.dtype)
                prefix_mask = jnp.zeros((B, 0), bool)
            else:
                prefix_k, prefix_v = history.k[i], history.v[i]
                prefix_mask = jnp.broadcast_to(history.valid_B[:, None], (B, L))
            h, k, v = block.with_prefix(constrain_batch(h), positions_L, prefix_k, prefix_v,
                                        prefix_mask, within)
            ks.append(k)
            vs.append(v)
        h = self.decoder_norm(h)
        logits = self.embed.attend(h)
        real = self.real_head(h)[..., 0].astype(jnp.float32)
        return logits, real, jnp.stack(ks), jnp.stack(vs)

    def alone(self, z_BxNxD, valid_B=None):
        """The history stream: token logits BxLxV, real-token logits BxL of each block on its
        own, and the `History` it leaves to the next block (valid where `valid_B`)."""
        B = z_BxNxD.shape[0]
        logits, real, k, v = self._stream(z_BxNxD, jnp.arange(self.block_len), None)
        valid_B = jnp.ones((B,), bool) if valid_B is None else valid_B
        return logits, real, History(k, v, valid_B)

    def decode(self, z_BxNxD, history: History):
        """The conditional stream: token logits BxLxV and real-token logits BxL of blocks that
        follow the blocks `history` came from."""
        L = self.block_len
        logits, real, _, _ = self._stream(z_BxNxD, L + jnp.arange(L), history)
        return logits, real


def load_vae_decoder(seam: SeamDecoder, vae_params) -> None:
    """Copies the trained VAE decoder's weights (`vae_params`: the VAE's nnx.Param state,
    host arrays) into `seam` in place, each laid out as `seam`'s own parameter: the seam
    decoder starts as the VAE's decoder."""
    dst = nnx.state(seam, nnx.Param)

    def put(d, s):
        s = np.asarray(s)
        if s.shape != d.shape:
            raise ValueError(f"VAE parameter of shape {s.shape} for one of {d.shape}")
        return jax.make_array_from_callback(s.shape, d.sharding, lambda idx: s[idx])

    for name in VAE_DECODER_PARAMS:
        dst[name] = jax.tree.map(put, dst[name], vae_params[name])
    nnx.update(seam, dst)


def build_seam_decoder(cfg: Config, vocab_size: int):
    """rngs -> SeamDecoder of a run's VAE shape (compute dtype of `decoder_train`)."""
    dtype = layers.compute_dtype(cfg.decoder_train.compute_dtype)
    return lambda rngs: SeamDecoder(cfg.vae, vocab_size, cfg.data.block_len, rngs=rngs,
                                    dtype=dtype)
