"""The latent-autoregressive prior (`dit.kind=latent_ar`, CALM): a causal backbone over the
chunk latents of a chunk autoencoder (`vae.kind=chunk`) that reads the tokens it wrote, and a
light head that draws each next latent in one (energy) or a few (flow) steps
(model.py, heads.py, objective.py, sampler.py)."""

from __future__ import annotations

import jax.numpy as jnp

from ldlm.config import Config
from ldlm.data import latents as latents_lib
from ldlm.errors import ConfigError
from ldlm.flops import block_flops
from ldlm.priors.base import WindowKind
from ldlm.priors.latent_ar.model import BACKBONE_INPUTS, HEADS, LatentAR, build_latent_ar
from ldlm.priors.latent_ar.objective import energy_score, latent_ar_loss
from ldlm.priors.latent_ar.sampler import LatentARSampler


class LatentARKind(WindowKind):
    name = "latent_ar"
    architecture = ("width", "heads", "mlp_dim", "layers", "window", "head", "head_layers",
                    "head_width", "backbone_input", "noise_dim")
    sampler = LatentARSampler

    def validate(self, cfg: Config) -> None:
        t = cfg.dit
        if cfg.vae.kind != "chunk":
            raise ConfigError("dit.kind=latent_ar reads each chunk's tokens as soon as its "
                              "latent is drawn: it needs vae.kind=chunk (latents that decode "
                              f"one by one), not vae.kind={cfg.vae.kind}")
        if t.window < 1:
            raise ConfigError(f"dit.window={t.window}: the latent_ar prior trains on windows "
                              "of at least 1 VAE block")
        if t.head not in HEADS:
            raise ConfigError(f"dit.head={t.head!r} is not one of {sorted(HEADS)}")
        if t.backbone_input not in BACKBONE_INPUTS:
            raise ConfigError(f"dit.backbone_input={t.backbone_input!r} is not one of "
                              f"{list(BACKBONE_INPUTS)}")
        if t.head_layers < 1 or t.head_width < 0 or t.noise_dim < 1:
            raise ConfigError(f"dit.head_layers={t.head_layers} and dit.noise_dim="
                              f"{t.noise_dim} must be >= 1, dit.head_width={t.head_width} "
                              ">= 0 (0: dit.width)")
        if t.energy_samples < 2 or t.energy_targets < 1 or t.temperature_samples < 2:
            raise ConfigError(f"dit.energy_samples={t.energy_samples} and "
                              f"dit.temperature_samples={t.temperature_samples} must be >= 2, "
                              f"dit.energy_targets={t.energy_targets} >= 1")
        if not 0 < t.energy_alpha < 2:
            raise ConfigError(f"dit.energy_alpha={t.energy_alpha} must lie in (0, 2), where "
                              "the energy score is strictly proper")
        if t.energy_temperature not in ("repeats", "shrink"):
            raise ConfigError(f"dit.energy_temperature={t.energy_temperature!r} is not one of "
                              "['repeats', 'shrink']")
        if t.flow_draws < 1:
            raise ConfigError(f"dit.flow_draws={t.flow_draws} must be >= 1")
        if t.token_loss_weight > 0:
            raise ConfigError("dit.token_loss_weight is not supported by the latent_ar "
                              "prior; set it to 0")

    def build(self, cfg, num_latents, latent_dim, num_classes, vocab_size=0):
        if vocab_size < 1:
            raise ConfigError("the latent_ar prior embeds tokens: build it with the run's "
                              "vocab_size")
        return build_latent_ar(cfg, num_latents, latent_dim, num_classes, vocab_size)

    def batches(self, cfg, run_dir, mesh, role="train", train=True):
        return latents_lib.window_batches(cfg, run_dir, mesh, role, train=train,
                                          blocks=cfg.dit.window,
                                          sigma=cfg.dit.head == "energy")

    def loss(self, model, batch, rng, step, train, *, counts, cfg, decoder_graphdef=None,
             frozen=None):
        return latent_ar_loss(model, batch, rng, step, train, counts=counts, cfg=cfg,
                              decoder_graphdef=decoder_graphdef, frozen=frozen)

    def synthetic_batch(self, cfg, B, vocab, seed=0):
        batch = super().synthetic_batch(cfg, B, vocab, seed)
        return {**batch, "sigma": jnp.full(batch["z"].shape, 0.1, jnp.float32)}

    def forward_flops(self, cfg, B):
        """Backbone over W chunk positions, the head's condition once per position, and
        per position `energy_samples` head passes (energy, with the score's distances) or
        `flow_draws` passes with their own time conditions (flow)."""
        t = cfg.dit
        N, D, E = cfg.vae.num_latents, cfg.vae.latent_dim, t.width
        K = cfg.data.block_len // N
        W, F, depth = t.window * N, t.head_width or t.width, t.head_layers
        per_position = 0.0
        if t.backbone_input in ("tokens", "both"):
            per_position += 2 * K * E * 2 * E + 2 * 2 * E * E
        if t.backbone_input in ("latents", "both"):
            per_position += 2 * D * E
        per_position += 2 * E * F  # the head's condition
        mlp = depth * 2 * 2 * F * F + 2 * F * D  # residual MLPs and output, per pass
        if t.head == "energy":
            ada = depth * 2 * F * 3 * F + 2 * F * 2 * F  # once per position
            S, M = t.energy_samples, t.energy_targets
            per_position += ada + S * (2 * t.noise_dim * F + mlp) + 2 * (S * M + S * S) * D
        else:
            ada = depth * 2 * F * 3 * F + 2 * F * 2 * F  # per draw: time varies
            per_position += t.flow_draws * (ada + 2 * D * F + 2 * 2 * F * F + mlp)
        return t.layers * block_flops(B * W, E, t.mlp_dim, W) + B * W * per_position

    def train_flops(self, cfg, B):
        """Forward and backward (2x), and remat's recomputation (no self-conditioning)."""
        return self.forward_flops(cfg, B) * (3 + (1 if cfg.dit_train.remat else 0))


KIND = LatentARKind()
__all__ = ["KIND", "LatentAR", "LatentARKind", "LatentARSampler", "energy_score",
           "latent_ar_loss"]
