"""Chunk autoencoder (`vae.kind=chunk`, CALM's design): a block of L tokens <-> N latents,
each latent made from its own chunk of K = L/N consecutive tokens only, by MLPs (no
attention: CALM's authors found attention in the autoencoder helped reconstruction but hurt
the prior downstream).

Encoder: token embedding, `encoder_layers` residual SwiGLU blocks per token, the chunk's K
states concatenated and projected to one state, `encoder_layers` residual blocks per chunk,
then the posterior's mean and log-variance. Decoder, mirrored: the latent to one state,
`decoder_layers` blocks per chunk, expanded to K token states, `decoder_layers` blocks per
token, tied-embedding logits and the real-token logit. The mean is not normalised: the KL
term (with a per-coordinate floor, `vae.kl_clamp`) sets the scale.

Same interface as TextVAEModel (encode, decode on whole blocks), so the latent cache,
evaluation and samplers take either; `decode` also accepts any number of latents (each is
read on its own), which latent-autoregressive sampling uses chunk by chunk.

Shape letters: B batch, L tokens per block, N latents (chunks), K tokens per chunk, D latent
width, W model width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from ldlm.config import VAEConfig
from ldlm.models import layers
from ldlm.models.align import add_align_projector


class ChunkVAEModel(nnx.Module):
    def __init__(self, cfg: VAEConfig, vocab_size: int, block_len: int, *, rngs: nnx.Rngs,
                 dtype=jnp.float32, remat: bool = False):
        if block_len % cfg.num_latents:
            raise ValueError(f"block_len {block_len} must be a multiple of vae.num_latents "
                             f"{cfg.num_latents}")
        self.cfg, self.block_len, self.dtype, self.remat = cfg, block_len, dtype, remat
        self.group = block_len // cfg.num_latents  # K, tokens per latent
        W, D, K, H = cfg.width, cfg.latent_dim, self.group, cfg.mlp_dim

        def stack(n):
            return nnx.List([layers.ResidualMLP(W, H, rngs=rngs, dtype=dtype)
                             for _ in range(n)])

        self.embed = layers.Embed(vocab_size, W, rngs=rngs, dtype=dtype)
        self.token_encoder = stack(cfg.encoder_layers)
        self.merge = layers.dense(K * W, W, rngs=rngs, names=("mlp", "embed"), dtype=dtype)
        self.chunk_encoder = stack(cfg.encoder_layers)
        self.encoder_norm = layers.RMSNorm(W, rngs=rngs)
        self.to_mean = layers.dense(W, D, rngs=rngs, names=("embed", "latent"), dtype=dtype)
        self.to_logvar = layers.dense(
            W, D, rngs=rngs, names=("embed", "latent"), use_bias=True,
            init=nnx.initializers.zeros_init(), dtype=dtype)
        self.to_logvar.bias[...] = jnp.full((D,), cfg.logvar_init, jnp.float32)
        self.from_latent = layers.dense(D, W, rngs=rngs, names=("latent", "embed"),
                                        use_bias=True, dtype=dtype)
        self.chunk_decoder = stack(cfg.decoder_layers)
        self.expand = layers.dense(W, K * W, rngs=rngs, names=("embed", "mlp"), dtype=dtype)
        self.token_decoder = stack(cfg.decoder_layers)
        self.decoder_norm = layers.RMSNorm(W, rngs=rngs)
        self.real_head = layers.dense(W, 1, rngs=rngs, names=("embed", None), use_bias=True,
                                      dtype=dtype)
        add_align_projector(self, cfg, rngs=rngs)

    def _run(self, stack, h):
        for block in stack:
            h = nnx.remat(lambda b, x: b(x))(block, h) if self.remat else block(h)
        return h

    def encode(self, tokens_BxL) -> tuple[jax.Array, jax.Array]:
        """Posterior mean and log-variance, each BxNxD, float32; latent n reads tokens
        n*K .. n*K + K - 1 only."""
        h = self._run(self.token_encoder, self.embed(tokens_BxL))
        h = self.merge(rearrange(h, "B (N K) W -> B N (K W)", K=self.group))
        h = self.encoder_norm(self._run(self.chunk_encoder, h))
        return (self.to_mean(h).astype(jnp.float32),
                self.to_logvar(h).astype(jnp.float32))

    def decode(self, z_BxNxD) -> tuple[jax.Array, jax.Array]:
        """Token logits Bx(N K)xV (float32) and real-token logits Bx(N K); any N."""
        h = self._run(self.chunk_decoder, self.from_latent(z_BxNxD))
        h = rearrange(self.expand(h), "B N (K W) -> B (N K) W", K=self.group)
        h = self.decoder_norm(self._run(self.token_decoder, h))
        real = self.real_head(h)[..., 0].astype(jnp.float32)
        return self.embed.attend(h), real

