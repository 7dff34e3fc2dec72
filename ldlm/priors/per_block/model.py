"""The per-block DiT: a transformer that denoises the N latent vectors of one VAE block
(the trunk: ldlm/models/dit_trunk.py).

- Self-conditioning: the previous estimate of the clean latents is concatenated to the
  noisy input (zeros when there is none).
- Document context (`dit.use_context`): the latents of the previous block (continuation)
  and of the next block (infilling) enter as extra tokens in the same sequence, each with
  its own segment embedding; an absent neighbour is masked out of attention, so it
  contributes nothing. Each group of `dit.context_pool` consecutive neighbour latents
  becomes one token (M = N / context_pool tokens per neighbour), which keeps the sequence
  short. Without `use_context` the sequence is the current block alone and neighbour
  inputs are ignored.

Sequence: [prev (M) | current (N) | next (M)], RoPE positions 0 .. T-1.
Shape letters: B batch, N latents, D latent width, E model width, M context tokens per
neighbour, T = N + 2M (or N without context).
"""

from __future__ import annotations

import jax.numpy as jnp
from einops import rearrange
from flax import nnx

from ldlm.config import Config
from ldlm.models import layers
from ldlm.models.dit_trunk import DiTTrunk


class DiT(DiTTrunk):
    def _embeddings(self, rngs: nnx.Rngs) -> None:
        cfg, E = self.cfg, self.cfg.width
        if cfg.use_context:
            if self.N % cfg.context_pool:
                raise ValueError(f"dit.context_pool {cfg.context_pool} must divide the "
                                 f"number of latents {self.N}")
            self.ctx_proj = layers.dense(cfg.context_pool * self.D, E, rngs=rngs,
                                         names=("latent", "embed"), use_bias=True,
                                         dtype=self.dtype)
        self.segment = layers.param(rngs, layers.normal(0.02), (3, E), (None, "embed"))

    def __call__(self, z_BxNxD, t_B, *, self_cond_BxNxD=None, label_B=None,
                 prev_BxNxD=None, has_prev_B=None, next_BxNxD=None, has_next_B=None):
        """The network output (eps, x0 or v, per config) for the current block, BxNxD."""
        B, N, D = z_BxNxD.shape
        x = self.input_tokens(z_BxNxD, self_cond_BxNxD)
        seg = self.segment[...].astype(x.dtype)
        x = x + seg[1][None, None, :]
        mask_BxTxT = None
        if self.cfg.use_context:
            x, mask_BxTxT = self._with_context(x, prev_BxNxD, has_prev_B, next_BxNxD,
                                               has_next_B, seg)
        c = self.condition(t_B, self.labels(label_B, B))
        x = self.run_blocks(x, c, mask_BxTxT)
        if self.cfg.use_context:
            M = N // self.cfg.context_pool
            x = x[:, M:M + N]
        return self.output(x, c)

    def _with_context(self, x_BxNxE, prev_BxNxD, has_prev_B, next_BxNxD, has_next_B, seg):
        """[prev | current | next] tokens BxTxE and the attention mask hiding absent ones."""
        B, N, _ = x_BxNxE.shape
        M = N // self.cfg.context_pool
        absent = jnp.zeros((B,), bool)
        zeros = jnp.zeros((B, N, self.D), x_BxNxE.dtype)
        has_prev_B = absent if has_prev_B is None else has_prev_B
        has_next_B = absent if has_next_B is None else has_next_B
        prev_BxNxD = zeros if prev_BxNxD is None else prev_BxNxD
        next_BxNxD = zeros if next_BxNxD is None else next_BxNxD

        def tokens(z_BxNxD, segment):
            pooled = rearrange(z_BxNxD, "B (M P) D -> B M (P D)", P=self.cfg.context_pool)
            return self.ctx_proj(pooled) + segment[None, None, :]

        x = jnp.concatenate([tokens(prev_BxNxD, seg[0]), x_BxNxE, tokens(next_BxNxD, seg[2])],
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
