"""The latent prior a run's config builds: the per-block DiT (`dit.window = 0`) or the
block-causal DiT over windows of `dit.window` VAE blocks."""

from __future__ import annotations

from ldlm.config import Config
from ldlm.models.block_causal import BlockCausalDiT, build_block_causal
from ldlm.models.dit import build_dit


def is_block_causal(cfg: Config) -> bool:
    return cfg.dit.window > 0


def build_prior(cfg: Config, num_latents: int, latent_dim: int, num_classes: int):
    """rngs -> the run's prior (num_latents: the VAE's latents per block)."""
    build = build_block_causal if is_block_causal(cfg) else build_dit
    return build(cfg, num_latents, latent_dim, num_classes)


__all__ = ["BlockCausalDiT", "build_prior", "is_block_causal"]
