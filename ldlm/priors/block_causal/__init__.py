"""The block-causal DiT (`dit.kind=block_causal`, Cola DLM): windows of `dit.window` VAE
blocks in diffusion blocks of `dit.block_size` latents, each denoised given the clean blocks
before it; sampled block by block against a KV cache, so texts have any length
(model.py, objective.py, sampler.py)."""

from __future__ import annotations


from ldlm.config import Config
from ldlm.data import latents as latents_lib
from ldlm.errors import ConfigError
from ldlm.flops import block_flops
from ldlm.priors.base import DIT_ARCHITECTURE, WindowKind
from ldlm.priors.block_causal.model import (BlockCausalDiT, build_block_causal,
                                            diffusion_blocks)
from ldlm.priors.block_causal.objective import block_causal_loss
from ldlm.priors.block_causal.sampler import BlockCausalSampler


class BlockCausal(WindowKind):
    name = "block_causal"
    architecture = DIT_ARCHITECTURE
    sampler = BlockCausalSampler

    def validate(self, cfg: Config) -> None:
        t, N = cfg.dit, cfg.vae.num_latents
        if t.window < 1:
            raise ConfigError(f"dit.window={t.window}: the block-causal prior needs windows "
                              "of at least 1 VAE block (or dit.kind=per_block)")
        diffusion_blocks(t.window * N, t.block_size)  # the model's own check of G | W
        if t.token_loss_weight > 0:
            raise ConfigError("dit.token_loss_weight is not supported by the block-causal "
                              "prior; set it to 0")

    def build(self, cfg, num_latents, latent_dim, num_classes, vocab_size=0):
        return build_block_causal(cfg, num_latents, latent_dim, num_classes)

    def batches(self, cfg, run_dir, mesh, role="train", train=True):
        return latents_lib.window_batches(cfg, run_dir, mesh, role, train=train,
                                          blocks=cfg.dit.window)

    def loss(self, model, batch, rng, step, train, *, counts, cfg, decoder_graphdef=None,
             frozen=None):
        return block_causal_loss(model, batch, rng, step, train, counts=counts, cfg=cfg,
                                 decoder_graphdef=decoder_graphdef, frozen=frozen)

    def forward_flops(self, cfg, B):
        """[clean | noisy] window, adaLN once per block's condition."""
        t = cfg.dit
        N, D, E = cfg.vae.num_latents, cfg.vae.latent_dim, t.width
        Wn = t.window * N
        T, conds = 2 * Wn, 1 + Wn // t.block_size
        flops = t.layers * (block_flops(B * T, E, t.mlp_dim, T) + B * conds * 2 * E * 6 * E)
        return flops + B * (T * 2 * 2 * D * E + conds * 2 * E * 2 * E + Wn * 2 * E * D)


KIND = BlockCausal()
__all__ = ["BlockCausal", "BlockCausalDiT", "BlockCausalSampler", "KIND",
           "block_causal_loss", "build_block_causal"]
