"""TextVAE: a block of L tokens <-> N continuous latent vectors of width d.

Encoder: token embedding, bidirectional transformer blocks, then strided pooling: the states
of each group of L/N consecutive positions are concatenated and projected to the mean and
log-variance of one latent vector. (Pooling by N learned queries cross-attending to the
tokens was tried first and collapsed: the output stopped depending on the input.) Each mean
vector is RMS-normalised (RMS 1 over its d coordinates), which fixes the latent scale without
batch statistics, so encoding one text gives the same latents as encoding it in a batch.

Decoder (parallel, non-autoregressive): each latent is expanded by a linear layer to the
states of its L/N positions, bidirectional transformer blocks follow, then tied-embedding
token logits and a per-position "real token" logit (where the block ends: blocks closed
early at a sentence end have padding and no EOS).

Shape letters: B batch, L tokens per block, N latents, D latent width, W model width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from ldlm.config import Config, VAEConfig
from ldlm.models import layers
from ldlm.models.align import add_align_projector
from ldlm.models.chunk_vae import ChunkVAEModel


class TextVAEModel(nnx.Module):
    def __init__(self, cfg: VAEConfig, vocab_size: int, block_len: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, remat: bool = False):
        if block_len % cfg.num_latents:
            raise ValueError(f"block_len {block_len} must be a multiple of vae.num_latents "
                             f"{cfg.num_latents}")
        self.cfg, self.block_len, self.dtype, self.remat = cfg, block_len, dtype, remat
        self.group = block_len // cfg.num_latents  # tokens per latent (the compression)
        W, D = cfg.width, cfg.latent_dim
        self.embed = layers.Embed(vocab_size, W, rngs=rngs, dtype=dtype)
        self.encoder = nnx.List([layers.Block(W, cfg.heads, cfg.mlp_dim, rngs=rngs, dtype=dtype)
                                 for _ in range(cfg.encoder_layers)])
        self.encoder_norm = layers.RMSNorm(W, rngs=rngs)
        self.to_mean = layers.dense(self.group * W, D, rngs=rngs, names=("embed", "latent"),
                                    dtype=dtype)
        # log-variance starts near exp(-6): the latent path carries signal from step one
        self.to_logvar = layers.dense(
            self.group * W, D, rngs=rngs, names=("embed", "latent"), use_bias=True,
            init=nnx.initializers.zeros_init(), dtype=dtype)
        self.to_logvar.bias[...] = jnp.full((D,), cfg.logvar_init, jnp.float32)
        add_decoder_layers(self, cfg, self.group, rngs=rngs, dtype=dtype)
        add_align_projector(self, cfg, rngs=rngs)

    def encode(self, tokens_BxL) -> tuple[jax.Array, jax.Array]:
        """Posterior mean (RMS-normalised) and log-variance, each BxNxD, float32."""
        h = self.embed(tokens_BxL)
        for block in self.encoder:
            h = layers.call_block(block, self.remat, h)
        h = self.encoder_norm(h)
        pooled = rearrange(h, "B (N G) W -> B N (G W)", G=self.group)
        mean = layers.rms_normalize(self.to_mean(pooled).astype(jnp.float32))
        logvar = self.to_logvar(pooled).astype(jnp.float32)
        return mean, logvar

    def decode(self, z_BxNxD) -> tuple[jax.Array, jax.Array]:
        """Token logits BxLxV (float32) and real-token logits BxL."""
        h = self.from_latent(z_BxNxD)
        h = rearrange(h, "B N (G W) -> B (N G) W", G=self.group)
        for block in self.decoder:
            h = layers.call_block(block, self.remat, h)
        h = self.decoder_norm(h)
        real = self.real_head(h)[..., 0].astype(jnp.float32)
        return self.embed.attend(h), real



def add_decoder_layers(module: nnx.Module, cfg: VAEConfig, group: int, *, rngs: nnx.Rngs,
                       dtype) -> None:
    """The decoder's layers on `module`: from_latent (a latent to `group` positions),
    decoder (blocks), decoder_norm, real_head. The VAE and the seam decoder both build theirs
    here, so that the seam decoder starts from the VAE decoder's weights by name and shape."""
    W, D = cfg.width, cfg.latent_dim
    module.from_latent = layers.dense(D, group * W, rngs=rngs, names=("latent", "embed"),
                                      use_bias=True, dtype=dtype)
    module.decoder = nnx.List([layers.Block(W, cfg.heads, cfg.mlp_dim, rngs=rngs, dtype=dtype)
                               for _ in range(cfg.decoder_layers)])
    module.decoder_norm = layers.RMSNorm(W, rngs=rngs)
    module.real_head = layers.dense(W, 1, rngs=rngs, names=("embed", None), use_bias=True,
                                    dtype=dtype)

def build_vae(cfg: Config, vocab_size: int):
    """rngs -> the autoencoder of a run's config (`vae.kind`: TextVAEModel or
    ChunkVAEModel; compute dtype and remat from `vae_train`)."""
    dtype = layers.compute_dtype(cfg.vae_train.compute_dtype)
    cls = ChunkVAEModel if cfg.vae.kind == "chunk" else TextVAEModel
    return lambda rngs: cls(cfg.vae, vocab_size, cfg.data.block_len, rngs=rngs,
                            dtype=dtype, remat=cfg.vae_train.remat)
