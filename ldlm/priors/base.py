"""The protocol every kind of latent prior implements, and the latents-level sampler it
hands the pipeline.

A kind (`PriorKind`) says how to build its network from a config, which batches it trains
on, its loss, the config keys a resumed run must share, its analytic FLOPs, and its
`LatentSampler`. The training loop, the stages, the pipeline and the benchmarks call these
and never ask which kind they hold. Register a kind with `ldlm.priors.register`; the config
names it in `dit.kind`.

A `LatentSampler` works on normalised latents only (texts are the pipeline's business): it
streams the latents of new texts (optionally after prompts), infills, edits, returns
trajectories and one-pass clean estimates. `OPERATIONS` lists what a kind can do at all;
`missing(op)` says why one model cannot (e.g. a DiT trained without context cannot
continue a prompt).
"""

from __future__ import annotations

from typing import Callable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ldlm.config import Config, EvalConfig
from ldlm.diffusion.spec import SamplingSpec

# generate: texts from noise; continue: after a prompt; infill: between two texts; edit:
# re-noise and denoise texts; trajectory: the clean estimate after every step;
# predict_clean: the one-pass clean estimate of noisy latents
OPERATIONS = ("generate", "continue", "infill", "edit", "trajectory", "predict_clean")


class LatentSampler:
    """Sampling of one trained prior on normalised latents (shape letters: B batch, K VAE
    blocks, N latents per VAE block, G latents per sampled chunk, D latent width, S steps).

    `labels` are label indices (the null label for unconditional rows); every random draw
    comes from `spec.seed`."""

    kind = ""
    OPERATIONS: tuple[str, ...] = ("generate",)
    # prompts end in a VAE block filled up with the mask token (else: cut short)
    fills_prompt_blocks = False
    # prompts reach `stream` as token blocks (lists of token ids, the last possibly short)
    # instead of latents, and the stream starts at the first chunk of each prompt's last
    # block (the pipeline skips that block's prompt tokens)
    prompt_tokens = False

    def __init__(self, cfg: Config, model: nnx.Module, autoencoder=None):
        """`autoencoder`: (the run's VAE model, its LatentNormaliser), for kinds that read
        their own samples as tokens while sampling."""
        self.cfg, self.dcfg = cfg, cfg.dit
        self.N, self.D = model.N, model.D
        self.null_label = model.null_label
        self.graphdef, self.params = nnx.split(model)

    @property
    def blocks_without_history(self) -> int:
        """How many VAE blocks one sample can hold when the prior keeps no history."""
        return 1

    def describe(self) -> str:
        """A short name of the prior for tables (its kind and shape)."""
        return self.kind

    def missing(self, op: str) -> str | None:
        """Why this model cannot serve `op` (None when it can)."""
        if op not in self.OPERATIONS:
            return f"the {self.kind} prior does not support it"
        return None

    # ------------------------------------------------------------------ evaluation sweeps
    def table_settings(self, e: EvalConfig) -> list[tuple[str, int, str]]:
        """(sampler, steps, label) of each setting `make eval`'s per-block table runs (label:
        the sampler's name in the table)."""
        return [(s, n, s) for s in e.samplers for n in e.steps]

    def long_settings(self, e: EvalConfig) -> tuple[str, int, tuple[float, ...]]:
        """(sampler, steps, temperatures) of the long texts at matched entropy."""
        return e.long_sampler, e.long_steps, tuple(e.long_temperatures)

    def guidance_settings(self, e: EvalConfig) -> tuple[str, int, tuple[float, ...]]:
        """(sampler, steps, guidance scales) of the topic-accuracy sweep."""
        return e.guidance_sampler, e.guidance_steps, tuple(e.guidance_scales)

    @property
    def default_steps(self) -> int:
        """The step count `ldlm sample` uses when none is given."""
        return 16

    def sample_budgets(self, steps) -> list[int]:
        """The step budgets among `steps` this prior can sample with (the stage's dumps)."""
        return list(steps)

    def guided(self, labels_B: np.ndarray, spec: SamplingSpec) -> bool:
        """Classifier-free guidance changes the output (a batch of 2B rows)."""
        return bool(spec.guidance != 1.0 and (labels_B != self.null_label).any())

    # ------------------------------------------------------------------ operations
    def stream(self, n: int, spec: SamplingSpec, labels_B: np.ndarray,
               prompts: Sequence[np.ndarray] | None = None) -> Iterator[np.ndarray]:
        """The latents of n new texts, chunk after chunk (B x G x D each, in order), each
        text continuing its prompt (K_i x N x D) when given."""
        raise NotImplementedError

    def infill(self, before_KxNxD, after_NxD, n: int, spec: SamplingSpec,
               labels_B: np.ndarray) -> np.ndarray:
        """n candidate VAE blocks (n x N x D) to go between `before` and `after`."""
        raise NotImplementedError

    def edit(self, texts: Sequence[np.ndarray], strength: float, spec: SamplingSpec,
             labels_B: np.ndarray) -> list[np.ndarray]:
        """Each text's blocks (K_i x N x D) re-noised to time `strength` and denoised."""
        raise NotImplementedError

    def trajectory(self, n: int, spec: SamplingSpec, labels_B: np.ndarray):
        """(the first VAE block's clean estimate after each step, S x n x N x D; the final
        block, n x N x D)."""
        raise NotImplementedError

    def predict_clean(self, z_BxTxD, t_B, labels_B: np.ndarray) -> np.ndarray:
        """The one-pass clean estimate of noisy latents at times t (B x T x D)."""
        raise NotImplementedError


# the dit.* keys both DiT kinds' checkpoints are saved with (a resumed run must match
# them all, so the set stays as existing runs wrote it)
DIT_ARCHITECTURE = ("width", "heads", "mlp_dim", "layers", "use_context", "context_pool",
                    "window", "block_size")


class PriorKind:
    """One kind of latent prior: what the training loop, the stages and the pipeline need.

    `architecture`: the `dit.*` keys of its shape, which a resumed run must share.
    """

    name = ""
    architecture: tuple[str, ...] = ()
    sampler: type[LatentSampler] = LatentSampler

    def validate(self, cfg: Config) -> None:
        """ConfigError naming the key for a setting this kind cannot take."""

    def build(self, cfg: Config, num_latents: int, latent_dim: int, num_classes: int,
              vocab_size: int = 0) -> Callable[[nnx.Rngs], nnx.Module]:
        """rngs -> the network (`vocab_size`: the run's tokenizer's, for kinds that embed
        tokens)."""
        raise NotImplementedError

    def batches(self, cfg: Config, run_dir, mesh, role: str = "train", train: bool = True):
        """Global batches of the latent cache for its loss."""
        raise NotImplementedError

    def loss(self, model, batch, rng, step, train: bool, *, counts: dict, cfg,
             decoder_graphdef=None, frozen=None) -> tuple[jax.Array, dict]:
        """(loss, metrics) of a (micro-)batch, a sum over its rows divided by
        counts["rows"]; with the frozen VAE decoder (`frozen`, `decoder_graphdef`) also its
        token scores of the clean estimate in evaluation."""
        raise NotImplementedError

    def blocks_per_row(self, cfg: Config) -> int:
        """VAE blocks of the corpus in one training row (its epochs count these)."""
        return 1

    def synthetic_batch(self, cfg: Config, B: int, vocab: int, seed: int = 0) -> dict:
        """A batch of B rows with the keys and shapes its loss reads, random values
        (benchmarks, tests)."""
        raise NotImplementedError

    def must_match(self, cfg: Config) -> dict:
        return {f"dit.{k}": getattr(cfg.dit, k) for k in self.architecture}

    def forward_flops(self, cfg: Config, B: int) -> float:
        """Matmul FLOPs of one forward pass of the training step over B rows."""
        raise NotImplementedError

    def train_flops(self, cfg: Config, B: int) -> float:
        """Forward, backward (2x) and the self-conditioning pass it takes with probability
        dit.self_cond_prob (and remat's recomputation)."""
        extra = cfg.dit.self_cond_prob + (1 if cfg.dit_train.remat else 0)
        return self.forward_flops(cfg, B) * (3 + extra)


class WindowKind(PriorKind):
    """A kind trained on windows of `dit.window` consecutive VAE blocks of one document
    (`ldlm.data.latents.window_batches`)."""

    def blocks_per_row(self, cfg: Config) -> int:
        return cfg.dit.window

    def synthetic_batch(self, cfg: Config, B: int, vocab: int, seed: int = 0) -> dict:
        rng = np.random.default_rng(seed)
        L, N, D, K = cfg.data.block_len, cfg.vae.num_latents, cfg.vae.latent_dim, cfg.dit.window
        return {"z": jnp.asarray(rng.standard_normal((B, K * N, D)), jnp.float32),
                "latent_mask": jnp.ones((B, K * N), bool), "label": jnp.zeros(B, jnp.int32),
                "block_index": jnp.zeros(B, jnp.int32),
                "tokens": jnp.asarray(rng.integers(4, vocab, (B, K, L)), jnp.int32),
                "mask": jnp.ones((B, K, L), bool)}
