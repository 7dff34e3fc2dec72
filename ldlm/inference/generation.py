"""Text generation from a trained run, with a step budget chosen at call time.

    pipe = LatentDiffusionPipeline.from_pretrained("runs/bbc_news_cpu")
    pipe.generate(n=4, steps=16, sampler="dpm++", label="sport", guidance=2.0, seed=0)

The pipeline checks a request once (a `SamplingSpec` and the text arguments), encodes
prompts and texts into normalised latents (`LatentText`), hands them to the sampler of the
run's prior kind (`dit.kind`, ldlm/priors/; EMA weights) and reads the latents it returns
back into text. The denoising loops are jitted once per sampler, grid, guided or not and
batch shape: the step count, the guidance scale, eta and the temperature are traced, so
changing them never recompiles. `temperature` (default 1) scales the starting noise and the
noise the stochastic samplers add; below 1 it trades diversity for likelier text.

- `generate`: unconditional or class-conditional (classifier-free guidance), optionally
  continuing a prompt, `num_blocks` VAE blocks or `max_tokens` tokens; a sample that emits
  EOS stops.
- `infill`: the block between two texts.
- `edit`: re-noise the latents of texts to `strength` and denoise again (SDEdit).
- `trajectory`: the decoded clean-text estimate at every step.
- `predict_clean`: the prior's one-step clean estimate from noisy latents (diagnostics).

An operation the run's prior cannot serve (continuing a prompt with a DiT trained without
context, an operation its kind lacks) is a one-line error that says why. Texts of several
VAE blocks are read block after block through the run's seam decoder when it has one (`make
decoder`: each block sees the history of the one before), else each block by the VAE
decoder alone.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import jax.numpy as jnp
import numpy as np
from flax import nnx

from ldlm import priors
from ldlm.data import latents as latents_lib
from ldlm.data.tokenizer import EOS_ID
from ldlm.diffusion.spec import SamplingSpec
from ldlm.errors import MissingStageError, PipelineError
from ldlm.inference.latent_text import LatentText
from ldlm.inference.textvae import TextVAE
from ldlm.loading import load_stage_model, stage_config

__all__ = ["LatentDiffusionPipeline", "PipelineError", "SamplingSpec"]


def _positive_int(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PipelineError(f"{name} must be a positive integer, got {value!r}")


class LatentDiffusionPipeline:
    def __init__(self, cfg, dit: nnx.Module, vae: TextVAE, label_names: Sequence[str]):
        """`dit`: a prior of the kind `cfg.dit.kind` names; `vae` must carry its latent
        statistics (`vae.normaliser`, written by make vae)."""
        if vae.normaliser is None:
            raise MissingStageError("latent statistics", "the VAE stage", "vae")
        self.cfg, self.vae = cfg, vae
        self.label_names = list(label_names)
        self.sampler = priors.get(cfg).sampler(cfg, dit, autoencoder=(vae.model, vae.normaliser))
        self.text = LatentText(vae)
        self.N, self.D = self.sampler.N, self.sampler.D
        self._null = self.sampler.null_label

    @classmethod
    def from_pretrained(cls, run_dir, *, step: int | None = None,
                        ema: bool = True) -> "LatentDiffusionPipeline":
        """The prior of `run_dir` (newest checkpoint unless `step`) with its VAE and latent
        statistics; a missing stage is an error naming the make target that produces it."""
        run_dir = pathlib.Path(run_dir)
        cfg = priors.check(stage_config(run_dir, "dit", "a trained DiT"))
        meta = latents_lib.read_meta(run_dir)
        names = meta["label_names"]
        vae = TextVAE.from_run(run_dir)
        build = priors.get(cfg).build(cfg, meta["num_latents"], meta["latent_dim"],
                                      max(1, len(names)), vocab_size=vae.tokenizer.vocab_size)
        dit = load_stage_model(run_dir, "dit", build, cfg.dit_train, step=step, ema=ema)
        return cls(cfg, dit, vae, names)

    @property
    def kind(self) -> str:
        """The name of the run's prior kind (`dit.kind`)."""
        return self.sampler.kind

    @property
    def has_context(self) -> bool:
        """Can it continue a text?"""
        return self.sampler.missing("continue") is None

    # ------------------------------------------------------------------ public API
    def generate(self, n: int = 8, steps: int | None = None, sampler: str = "dpm++",
                 guidance: float = 1.0, label: str | Sequence[str] | None = None,
                 prompt: str | Sequence[str] | None = None, num_blocks: int = 1,
                 max_tokens: int | None = None, seed: int = 0, eta: float = 0.0,
                 grid: str = "uniform", temperature: float = 1.0) -> list[str]:
        """n texts of `num_blocks` VAE blocks each, or of `max_tokens` tokens (fewer where a
        sample ends with EOS). With a prompt (one for all, or one per sample), the texts
        continue it (the prompt itself is not repeated). `steps=None`: the prior's own
        default (16 for a diffusion prior, 1 for an energy head)."""
        spec = self.spec(self._steps(steps), sampler, grid, eta, temperature, guidance, label,
                         seed)
        tokens = self.generate_tokens_with(spec, n=n, prompt=prompt, num_blocks=num_blocks,
                                           max_tokens=max_tokens)
        return [self.vae.tokenizer.decode(t) for t in tokens]

    def generate_tokens(self, n: int = 8, steps: int | None = None, sampler: str = "dpm++",
                        guidance: float = 1.0, label=None,
                        prompt: str | Sequence[str] | None = None, num_blocks: int = 1,
                        max_tokens: int | None = None, seed: int = 0, eta: float = 0.0,
                        grid: str = "uniform", temperature: float = 1.0) -> list[list[int]]:
        """`generate` as token ids (through the first EOS, where a sample has one)."""
        spec = self.spec(self._steps(steps), sampler, grid, eta, temperature, guidance, label,
                         seed)
        return self.generate_tokens_with(spec, n=n, prompt=prompt, num_blocks=num_blocks,
                                         max_tokens=max_tokens)

    @staticmethod
    def spec(steps=16, sampler="dpm++", grid="uniform", eta=0.0, temperature=1.0,
             guidance=1.0, label=None, seed=0) -> SamplingSpec:
        """A checked `SamplingSpec` (PipelineError naming a bad setting)."""
        return SamplingSpec(steps=steps, sampler=sampler, grid=grid, eta=eta,
                            temperature=temperature, guidance=guidance, label=label,
                            seed=seed)

    def generate_tokens_with(self, spec: SamplingSpec, n: int = 8, prompt=None,
                             num_blocks: int = 1, max_tokens: int | None = None):
        """`generate_tokens` with its sampling settings as one `SamplingSpec`: diffusion
        chunk after chunk from the prior's sampler, each VAE block read as soon as its
        latents are complete; a sample stops at EOS."""
        if max_tokens is not None:
            _positive_int("max_tokens", max_tokens)
            num_blocks = -(-max_tokens // self.vae.block_len)
        self._check_batch(n, num_blocks)
        labels = self._labels(spec, n)
        prompts = self._prompts(prompt, n)
        # prompt tokens at the start of the first block read (samplers that take prompts
        # as tokens restart at the prompt's last block); that block is read on top
        as_tokens = prompts is not None and self.sampler.prompt_tokens
        skip = [len(p[-1]) for p in prompts] if as_tokens else [0] * n
        primed = prompts is not None and not as_tokens  # the seam decoder sees the prompt
        reader = self.text.reader(np.stack([p[-1] for p in prompts]) if primed else
                                  np.zeros((n, self.N, self.D), np.float32), primed)
        blocks = num_blocks + (1 if any(skip) else 0)
        tokens, done = [[] for _ in range(n)], np.zeros(n, bool)
        pending = np.zeros((n, 0, self.D), np.float32)  # latents of an unfinished VAE block
        written = 0  # VAE blocks read
        for z in self.sampler.stream(n, spec, labels, prompts):
            pending = np.concatenate([pending, z], axis=1)
            while pending.shape[1] >= self.N and written < blocks:
                for i, ids in enumerate(self.text.block_tokens(pending[:, :self.N], reader)):
                    if written == 0:
                        ids = ids[skip[i]:]
                    if not done[i]:
                        tokens[i].extend(ids)
                        done[i] = EOS_ID in ids
                pending, written = pending[:, self.N:], written + 1
            if done.all() or written == blocks:
                break
        most = max_tokens if max_tokens is not None else num_blocks * self.vae.block_len
        return [t[:most] for t in tokens]

    def sample_latents(self, n: int = 8, steps: int | None = None, sampler: str = "dpm++",
                       guidance: float = 1.0, label=None, seed: int = 0, eta: float = 0.0,
                       grid: str = "uniform", temperature: float = 1.0,
                       num_blocks: int = 1) -> np.ndarray:
        """n normalised latent blocks, n x N x D, or with num_blocks K > 1 n texts of K
        consecutive blocks, n x K x N x D (what `generate` decodes; decode them with
        `decode`)."""
        spec = self.spec(self._steps(steps), sampler, grid, eta, temperature, guidance, label,
                         seed)
        self._check_batch(n, num_blocks)
        count, chunks = num_blocks * self.N, []
        for z in self.sampler.stream(n, spec, self._labels(spec, n)):
            chunks.append(z)
            if sum(c.shape[1] for c in chunks) >= count:
                break
        z = np.concatenate(chunks, axis=1)[:, :count].reshape(n, num_blocks, self.N, self.D)
        return z[:, 0] if num_blocks == 1 else z

    def infill(self, before: str, after: str, n: int = 1, steps: int = 16,
               sampler: str = "dpm++", guidance: float = 1.0, label=None, seed: int = 0,
               eta: float = 0.0, grid: str = "uniform", temperature: float = 1.0) -> list[str]:
        """n candidate blocks to go between `before` and `after`."""
        spec = self.spec(steps, sampler, grid, eta, temperature, guidance, label, seed)
        self._check_batch(n, 1)
        priors.require(self.sampler, "infill", "infilling")
        labels = self._labels(spec, n)
        before_z = self.text.encode(before, "before", eos=False,
                                    fill_last=self.sampler.fills_prompt_blocks)
        after_z = self.text.encode(after, "after", eos=True)[0]
        z = self.sampler.infill(before_z, after_z, n, spec, labels)
        reader = self.text.reader(np.broadcast_to(before_z[-1], (n,) + before_z[-1].shape))
        return [self.vae.tokenizer.decode(ids) for ids in self.text.block_tokens(z, reader)]

    def edit(self, texts: str | Sequence[str], strength: float = 0.5, steps: int = 16,
             sampler: str = "ddim", guidance: float = 1.0, label=None, seed: int = 0,
             eta: float = 0.0, grid: str = "uniform", temperature: float = 1.0) -> list[str]:
        """Each text re-noised to time `strength` in [0, 1] and denoised in `steps` steps
        (long texts block by block, each seeing its neighbours as the prior allows).
        Strength 0 returns the texts unchanged; 1 keeps nothing of them."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        spec = self.spec(steps, sampler, grid, eta, temperature, guidance, label, seed)
        self._check_batch(len(texts), 1)
        priors.require(self.sampler, "edit", "editing")
        if not 0.0 <= strength <= 1.0:
            raise PipelineError(f"strength must be in [0, 1], got {strength}")
        if strength == 0.0:
            return texts
        labels = self._labels(spec, len(texts))
        blocks = [self.text.encode(t, f"text {i}", eos=True) for i, t in enumerate(texts)]
        return self.text.texts(self.sampler.edit(blocks, strength, spec, labels))

    def trajectory(self, n: int = 1, steps: int = 16, sampler: str = "dpm++",
                   guidance: float = 1.0, label=None, seed: int = 0, eta: float = 0.0,
                   grid: str = "uniform", temperature: float = 1.0) -> list[list[str]]:
        """The decoded clean-latent estimate after each step: steps lists of n texts; the
        last is what `generate` returns for the same arguments."""
        spec = self.spec(steps, sampler, grid, eta, temperature, guidance, label, seed)
        self._check_batch(n, 1)
        priors.require(self.sampler, "trajectory", "a trajectory")
        estimates, final = self.sampler.trajectory(n, spec, self._labels(spec, n))
        return [self.decode(e) for e in estimates[:-1]] + [self.decode(final)]

    def predict_clean(self, z_t_BxNxD, t_B, label=None) -> np.ndarray:
        """The prior's one-pass estimate of the clean normalised latents from noisy ones at
        times t (no self-conditioning, no guidance, no context): B x N x D (with a
        block-causal prior, each diffusion block given the estimates before it)."""
        priors.require(self.sampler, "predict_clean", "a clean estimate")
        z = np.asarray(z_t_BxNxD, np.float32)
        labels = self._labels(SamplingSpec(label=label), z.shape[0])
        t = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (z.shape[0],))
        return self.sampler.predict_clean(z, t, labels)

    def denormalise(self, z_BxNxD) -> np.ndarray:
        """Normalised latents (what the prior sees) -> the VAE's latents."""
        return self.text.denormalise(z_BxNxD)

    def decode(self, z_BxNxD) -> list[str]:
        """Texts of normalised latent blocks; z of shape n x K x N x D holds K consecutive
        blocks per text, read in order (with the seam decoder, each seeing the one before)
        and joined through the first EOS."""
        return self.text.decode(z_BxNxD)

    # ------------------------------------------------------------------ checks
    def _steps(self, steps: int | None) -> int:
        return self.sampler.default_steps if steps is None else steps

    def _check_batch(self, n: int, num_blocks: int) -> None:
        _positive_int("n", n)
        _positive_int("num_blocks", num_blocks)
        most = self.sampler.blocks_without_history
        if num_blocks > most:
            priors.require(self.sampler, "continue", f"generating more than {most} block(s)")

    def _prompts(self, prompt, n: int) -> list | None:
        """Each sample's prompt as normalised latents K_i x N x D, or as its token blocks
        where the sampler takes tokens (None: no prompt)."""
        if prompt is None:
            return None
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise PipelineError(f"got {len(prompts)} prompts for n={n} samples")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise PipelineError("the prompt text is empty" if isinstance(prompt, str)
                                    else f"prompt {i} is empty")
        priors.require(self.sampler, "continue", "continuing a prompt")
        if self.sampler.prompt_tokens:
            return [self.text.token_blocks(p, "prompt") for p in prompts]
        return [self.text.encode(p, "prompt", eos=False,
                                 fill_last=self.sampler.fills_prompt_blocks)
                for p in prompts]

    def _labels(self, spec: SamplingSpec, n: int) -> np.ndarray:
        """Label indices n (the null label where unconditional)."""
        names = spec.labels_for(n)
        if names is None:
            return np.full(n, self._null, np.int32)
        if not self.label_names:
            raise PipelineError("this run's data set has no labels; call without label=")
        out = []
        for name in names:
            if name is None:
                out.append(self._null)
            elif name not in self.label_names:
                raise PipelineError(f"unknown label {name!r}; this run knows "
                                    f"{', '.join(self.label_names)}")
            else:
                out.append(self.label_names.index(name))
        return np.asarray(out, np.int32)
