"""The per-block DiT (`dit.kind=per_block`): one VAE block at a time, with the previous and
next blocks of its document as optional context (model.py, objective.py, sampler.py)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np

from ldlm.config import Config
from ldlm.data import latents as latents_lib
from ldlm.errors import ConfigError
from ldlm.flops import block_flops
from ldlm.priors.base import DIT_ARCHITECTURE, PriorKind
from ldlm.priors.per_block.model import DiT, build_dit
from ldlm.priors.per_block.objective import dit_loss
from ldlm.priors.per_block.sampler import PerBlockSampler


class PerBlock(PriorKind):
    name = "per_block"
    architecture = DIT_ARCHITECTURE
    sampler = PerBlockSampler

    def validate(self, cfg: Config) -> None:
        t = cfg.dit
        if t.window or t.block_size:
            raise ConfigError(f"dit.window={t.window} and dit.block_size={t.block_size} are "
                              "read by dit.kind=block_causal only; set them to 0 (or "
                              "dit.kind=block_causal)")
        if t.use_context and (t.context_pool < 1 or cfg.vae.num_latents % t.context_pool):
            raise ConfigError(f"dit.context_pool={t.context_pool} must divide "
                              f"vae.num_latents={cfg.vae.num_latents}")

    def build(self, cfg, num_latents, latent_dim, num_classes, vocab_size=0):
        return build_dit(cfg, num_latents, latent_dim, num_classes)

    def batches(self, cfg, run_dir, mesh, role="train", train=True):
        return latents_lib.latent_batches(cfg, run_dir, mesh, role, train=train)

    def loss(self, model, batch, rng, step, train, *, counts, cfg, decoder_graphdef=None,
             frozen=None):
        return dit_loss(model, batch, rng, step, train, counts=counts, cfg=cfg,
                        decoder_graphdef=decoder_graphdef, frozen=frozen)

    def synthetic_batch(self, cfg, B, vocab, seed=0):
        rng = np.random.default_rng(seed)
        L, N, D = cfg.data.block_len, cfg.vae.num_latents, cfg.vae.latent_dim
        z = lambda: jnp.asarray(rng.standard_normal((B, N, D)), jnp.float32)  # noqa: E731
        return {"z": z(), "prev": z(), "next": z(), "has_prev": jnp.ones(B, bool),
                "has_next": jnp.ones(B, bool), "label": jnp.zeros(B, jnp.int32),
                "doc_index": jnp.zeros(B, jnp.int32),
                "tokens": jnp.asarray(rng.integers(4, vocab, (B, L)), jnp.int32),
                "mask": jnp.ones((B, L), bool)}

    def forward_flops(self, cfg, B):
        t = cfg.dit
        N, D, E = cfg.vae.num_latents, cfg.vae.latent_dim, t.width
        T = N + 2 * (N // t.context_pool) if t.use_context else N
        flops = t.layers * (block_flops(B * T, E, t.mlp_dim, T) + B * 2 * E * 6 * E)
        return flops + B * (N * 2 * 2 * D * E + T * 2 * D * E + N * 2 * E * D)


KIND = PerBlock()
__all__ = ["DiT", "KIND", "PerBlock", "PerBlockSampler", "build_dit", "dit_loss"]
