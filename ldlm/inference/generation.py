"""Text generation from a trained run, with a step budget chosen at call time.

    pipe = LatentDiffusionPipeline.from_pretrained("runs/bbc_news_cpu")
    pipe.generate(n=4, steps=16, sampler="dpm++", label="sport", guidance=2.0, seed=0)

Every call samples normalised latents with the DiT (EMA weights), un-normalises them with
the VAE's per-coordinate latent statistics (`TextVAE.normaliser`) and decodes them. The denoising
loop is jitted once per (sampler, grid, guided or not, batch shape): the step count, the
guidance scale, eta, the temperature and the start time are traced, so changing them never
recompiles. `temperature` (default 1) scales the starting noise and the noise the
stochastic samplers add; below 1 it trades diversity for likelier text.

- `generate`: unconditional or class-conditional (classifier-free guidance), optionally
  continuing a prompt, block after block (`num_blocks`); a sample that emits EOS stops.
- `infill`: the block between two texts.
- `edit`: re-noise the latents of texts to `strength` and denoise again (SDEdit).
- `trajectory`: the decoded clean-text estimate at every step.
- `predict_clean`: the DiT's one-step clean estimate from noisy latents (diagnostics).
Continuation and infilling need a DiT trained with `dit.use_context=true`, or a block-causal
prior (`dit.window > 0`) whose diffusion blocks are smaller than its window. With the
block-causal prior, texts are written diffusion block after diffusion block against a KV
cache of the clean history (`_BlockWriter`, ldlm/inference/block_sampling.py), prompts are
committed into that cache first, `max_tokens` sets the length, and infilling samples
continuations of the text before and keeps those after which the prior best predicts the
text after. Texts of several VAE blocks are read block after block through the run's seam
decoder when it has one (`make decoder`: each block sees the history of the one before), else
each block by the VAE decoder alone.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ldlm.data import latents as latents_lib
from ldlm.data.tokenizer import EOS_ID, MASK_ID, through_eos
from ldlm.diffusion import samplers, schedules
from ldlm.errors import LdlmError, MissingStageError
from ldlm.inference import block_sampling
from ldlm.inference.textvae import BlockReader, TextVAE
from ldlm.loading import load_stage_model, stage_config
from ldlm.models.block_causal import BlockCausalDiT
from ldlm.models.prior import build_prior


class PipelineError(LdlmError):
    """A generation request that cannot be served (bad argument, missing capability)."""


@dataclasses.dataclass
class _Context:
    """Neighbour latents (normalised) for a batch; zeros and False where absent."""
    prev_BxNxD: np.ndarray
    has_prev_B: np.ndarray
    next_BxNxD: np.ndarray
    has_next_B: np.ndarray

    @classmethod
    def empty(cls, B: int, N: int, D: int) -> "_Context":
        z = np.zeros((B, N, D), np.float32)
        return cls(z, np.zeros(B, bool), z.copy(), np.zeros(B, bool))

    def arrays(self) -> dict:
        return {k: jnp.asarray(v) for k, v in dataclasses.asdict(self).items()}


def _history_error_fn(graphdef, dcfg, times_T):
    """fn(params, cache, x0_BxGxD, pos0, label_B, key) -> (mean squared error of the clean
    estimate of x0 over the noise levels times_T, cache with x0 committed)."""

    def run(params, cache, x0, pos0, label_B, key):
        model = nnx.merge(graphdef, params)

        def at(t, k):
            a, s = schedules.alpha_sigma(schedules.logsnr(t, dcfg.schedule, dcfg.snr_scale))
            z = a * x0 + s * jax.random.normal(k, x0.shape)
            t_B = jnp.full((x0.shape[0],), t)
            out = model.denoise(cache, z, t_B, pos0, label_B=label_B)
            return jnp.mean((schedules.to_x0(dcfg.prediction, out, z, a, s) - x0) ** 2,
                            axis=(1, 2))

        keys = jax.random.split(key, times_T.shape[0])
        err = jnp.mean(jax.vmap(at)(times_T, keys), axis=0)
        return err, model.commit(cache, x0, pos0, label_B=label_B)

    return run


def _pad_to_blocks(z_BxTxD, G: int) -> np.ndarray:
    """z with zeros appended along T up to a multiple of G (whole diffusion blocks)."""
    B, T, D = z_BxTxD.shape
    padded = np.zeros((B, -(-T // G) * G, D), np.float32)
    padded[:, :T] = z_BxTxD
    return padded


def _estimate_and_commit_fn(graphdef, dcfg):
    """fn(params, cache, z_BxGxD, t_B, pos0, label_B) -> (the clean estimate of the block
    from z at times t given the cache, the cache with that estimate committed)."""

    def run(params, cache, z, t_B, pos0, label_B):
        model = nnx.merge(graphdef, params)
        a, s = schedules.alpha_sigma(schedules.logsnr(t_B, dcfg.schedule, dcfg.snr_scale))
        x0 = schedules.to_x0(dcfg.prediction, model.denoise(cache, z, t_B, pos0,
                                                            label_B=label_B), z, a, s)
        return x0, model.commit(cache, x0, pos0, label_B=label_B)

    return run


class _BlockWriter:
    """One batch written block by block with the block-causal prior: the KV cache of its
    clean history, the next position, and the jitted block denoiser."""

    def __init__(self, pipe: "LatentDiffusionPipeline", n: int, labels, guidance: float):
        self.pipe, self.model = pipe, pipe._block_causal
        self.G, self.n = self.model.G, n
        self.labels, self.guidance = jnp.asarray(labels), jnp.float32(guidance)
        self.guided = pipe._guided(labels, guidance)
        self.cache = self.model.empty_cache(2 * n if self.guided else n)
        self.pos = 0

    def commit_texts(self, texts) -> np.ndarray:
        """Each row's text encoded by the VAE and committed, right-aligned: every row's
        text ends at the same position (shorter ones have empty slots before theirs), so
        writing goes on at one position for the whole batch.

        A text that ends inside a VAE block has that block filled up with the mask token
        (the encoder learnt to read masked positions): its latents stand for a whole block
        that begins with the text's last tokens, where the prior never saw a block cut
        short followed by more text (prompts committed as short blocks were continued with
        empty text on the `cpu` run). The masked positions themselves are not written: the
        decoder fills an 85%-masked block with noise, so the continuation starts at the next
        block boundary. Returns each text's last VAE block (normalised, B x N x D), the
        block the text written next follows."""
        pipe, model = self.pipe, self.model
        blocks = [pipe._encode_blocks(t, "prompt", eos=False, fill_last=True) for t in texts]
        rows = [b.reshape(-1, pipe.D) for b in blocks]
        longest = max(len(r) for r in rows)
        if longest > model.cache_slots:
            raise PipelineError(
                f"the prompt takes {longest} latents ({longest // pipe.N} VAE blocks); this "
                f"prior's history holds {model.cache_slots} (its window less one diffusion "
                "block): shorten the prompt")
        self.commit_latents(rows)
        return np.stack([b[-1] for b in blocks])

    def commit_latents(self, rows) -> None:
        """Commits one latent sequence per row (normalised, right-aligned as above)."""
        G = self.G
        P = -(-max(len(r) for r in rows) // G) * G
        x0 = np.zeros((len(rows), P, self.pipe.D), np.float32)
        valid = np.zeros((len(rows), P), bool)
        for i, r in enumerate(rows):
            if len(r):
                x0[i, P - len(r):], valid[i, P - len(r):] = r, True
        fn = self.pipe._jitted_fn(("commit", self.guided), lambda: jax.jit(
            block_sampling.committer(self.pipe._graphdef, self.guided)))
        for start in range(0, P, G):
            self.cache = fn(self.pipe._params, self.cache, jnp.asarray(x0[:, start:start + G]),
                            jnp.asarray(valid[:, start:start + G]),
                            jnp.int32(self.pos + start), self.labels)
        self.pos += P

    def next_block(self, key, sampler, grid, steps, eta, temperature, z_start=None,
                   t_start: float = 1.0, trajectory_steps: int | None = None):
        """The next diffusion block, B x G x D, denoised from noise (or from `z_start` at
        t_start) and committed; with trajectory_steps also every step's clean estimate."""
        fn = self.pipe._jitted_fn(
            ("window", sampler, grid, self.guided, trajectory_steps), lambda: jax.jit(
                block_sampling.block_denoiser(self.pipe._graphdef, self.pipe.cfg.dit,
                                              sampler, grid, self.guided, trajectory_steps)))
        if z_start is None:
            z_start = temperature * jax.random.normal(key, (self.n, self.G, self.pipe.D))
        out = fn(self.pipe._params, self.cache, jnp.int32(self.pos), jnp.asarray(z_start),
                 jax.random.fold_in(key, 1), self.labels, self.guidance, jnp.int32(steps),
                 jnp.float32(eta), jnp.float32(temperature), jnp.float32(t_start))
        self.cache, self.pos = out[-1], self.pos + self.G
        return tuple(np.asarray(o) for o in out[:-1]) if trajectory_steps else \
            np.asarray(out[0])


class LatentDiffusionPipeline:
    def __init__(self, cfg, dit: nnx.Module, vae: TextVAE, label_names: Sequence[str]):
        """`vae` must carry its latent statistics (`vae.normaliser`, written by make vae)."""
        if vae.normaliser is None:
            raise MissingStageError("latent statistics", "the VAE stage", "vae")
        self.cfg, self.vae = cfg, vae
        self.label_names = list(label_names)
        self.N, self.D = dit.N, dit.D
        self._null = dit.null_label
        self._normaliser = vae.normaliser
        self._graphdef, self._params = nnx.split(dit)
        self._block_causal = dit if isinstance(dit, BlockCausalDiT) else None
        self._predict = None
        self._jitted: dict = {}

    @classmethod
    def from_pretrained(cls, run_dir, *, step: int | None = None,
                        ema: bool = True) -> "LatentDiffusionPipeline":
        """The DiT of `run_dir` (newest checkpoint unless `step`) with its VAE and latent
        statistics; a missing stage is an error naming the make target that produces it."""
        run_dir = pathlib.Path(run_dir)
        cfg = stage_config(run_dir, "dit", "a trained DiT")
        meta = latents_lib.read_meta(run_dir)
        names = meta["label_names"]
        dit = load_stage_model(
            run_dir, "dit", build_prior(cfg, meta["num_latents"], meta["latent_dim"],
                                        max(1, len(names))),
            cfg.dit_train, step=step, ema=ema)
        return cls(cfg, dit, TextVAE.from_run(run_dir), names)

    @property
    def has_context(self) -> bool:
        """Can it continue a text? (the per-block DiT with neighbour context, or a
        block-causal prior that keeps history)"""
        if self._block_causal is not None:
            return self._block_causal.cache_slots > 0
        return self.cfg.dit.use_context

    @property
    def is_block_causal(self) -> bool:
        return self._block_causal is not None

    # ------------------------------------------------------------------ public API
    def generate(self, n: int = 8, steps: int = 16, sampler: str = "dpm++",
                 guidance: float = 1.0, label: str | Sequence[str] | None = None,
                 prompt: str | Sequence[str] | None = None, num_blocks: int = 1,
                 max_tokens: int | None = None, seed: int = 0, eta: float = 0.0,
                 grid: str = "uniform", temperature: float = 1.0) -> list[str]:
        """n texts of `num_blocks` VAE blocks each, or of `max_tokens` tokens (fewer where a
        sample ends with EOS). With a prompt (one for all, or one per sample), the texts
        continue it (the prompt itself is not repeated)."""
        tokens = self.generate_tokens(n=n, steps=steps, sampler=sampler, guidance=guidance,
                                      label=label, prompt=prompt, num_blocks=num_blocks,
                                      max_tokens=max_tokens, seed=seed, eta=eta, grid=grid,
                                      temperature=temperature)
        return [self.vae.tokenizer.decode(t) for t in tokens]

    def generate_tokens(self, n: int = 8, steps: int = 16, sampler: str = "dpm++",
                        guidance: float = 1.0, label=None,
                        prompt: str | Sequence[str] | None = None, num_blocks: int = 1,
                        max_tokens: int | None = None, seed: int = 0, eta: float = 0.0,
                        grid: str = "uniform", temperature: float = 1.0) -> list[list[int]]:
        """`generate` as token ids (through the first EOS, where a sample has one)."""
        if max_tokens is not None:
            if isinstance(max_tokens, bool) or not isinstance(max_tokens, int) or \
                    max_tokens < 1:
                raise PipelineError(f"max_tokens must be a positive integer, got "
                                    f"{max_tokens!r}")
            num_blocks = -(-max_tokens // self.vae.block_len)
        self._check(n=n, steps=steps, sampler=sampler, grid=grid, num_blocks=num_blocks,
                    temperature=temperature)
        labels = self._labels(label, n)
        prompts = self._prompts(prompt, n)
        if self.is_block_causal:
            tokens = self._generate_windows(n, steps, sampler, guidance, labels, prompts,
                                            num_blocks, seed, eta, grid, temperature)
        else:
            tokens = self._generate_blocks(n, steps, sampler, guidance, labels, prompts,
                                           num_blocks, seed, eta, grid, temperature)
        return [t[:max_tokens] for t in tokens] if max_tokens is not None else tokens

    def _prompts(self, prompt, n: int) -> list[str] | None:
        if prompt is None:
            return None
        prompts = [prompt] * n if isinstance(prompt, str) else list(prompt)
        if len(prompts) != n:
            raise PipelineError(f"got {len(prompts)} prompts for n={n} samples")
        for i, p in enumerate(prompts):
            if not isinstance(p, str) or not p.strip():
                raise PipelineError("the prompt text is empty" if isinstance(prompt, str)
                                    else f"prompt {i} is empty")
        self._need_context("continuing a prompt")
        return prompts

    def _generate_blocks(self, n, steps, sampler, guidance, labels, prompts, num_blocks,
                         seed, eta, grid, temperature) -> list[list[int]]:
        """The per-block DiT: block after block, each seeing the previous one as context."""
        ctx = _Context.empty(n, self.N, self.D)
        if prompts is not None:
            for i, p in enumerate(prompts):
                ctx.prev_BxNxD[i] = self._last_block(p, "prompt")
            ctx.has_prev_B[:] = True
        reader = self._reader(ctx.prev_BxNxD, ctx.has_prev_B)
        key = jax.random.PRNGKey(seed)
        tokens = [[] for _ in range(n)]
        done = np.zeros(n, bool)
        for b in range(num_blocks):
            z = self._denoise(jax.random.fold_in(key, b), n, steps, sampler, grid, labels,
                              guidance, ctx, eta, temperature)
            for i, ids in enumerate(self._block_tokens(z, reader)):
                if not done[i]:
                    tokens[i].extend(ids)
                    done[i] = EOS_ID in ids
            if done.all():
                break
            ctx.prev_BxNxD[:], ctx.has_prev_B[:] = z, True
        return tokens

    def _generate_windows(self, n, steps, sampler, guidance, labels, prompts, num_blocks,
                          seed, eta, grid, temperature) -> list[list[int]]:
        """The block-causal prior: diffusion block after diffusion block against a KV cache
        of the clean history (the prompt's latents first); each VAE block is decoded as
        soon as its latents are complete, and a sample stops at EOS."""
        writer = _BlockWriter(self, n, labels, guidance)
        last = writer.commit_texts(prompts) if prompts is not None else None
        reader = self._reader(last if last is not None else np.zeros((n, self.N, self.D)),
                              last is not None)
        key = jax.random.PRNGKey(seed)
        tokens = [[] for _ in range(n)]
        done = np.zeros(n, bool)
        pending = np.zeros((n, 0, self.D), np.float32)  # latents of an unfinished VAE block
        written = 0  # VAE blocks decoded
        for b in range(-(-num_blocks * self.N // writer.G)):
            z = writer.next_block(jax.random.fold_in(key, b), sampler, grid, steps, eta,
                                  temperature)
            pending = np.concatenate([pending, z], axis=1)
            while pending.shape[1] >= self.N and written < num_blocks:
                for i, ids in enumerate(self._block_tokens(pending[:, :self.N], reader)):
                    if not done[i]:
                        tokens[i].extend(ids)
                        done[i] = EOS_ID in ids
                pending, written = pending[:, self.N:], written + 1
            if done.all() or written == num_blocks:
                break
        return tokens

    def _window_latents(self, writer: "_BlockWriter", key, count: int, sampler, grid, steps,
                        eta, temperature) -> np.ndarray:
        """The next `count` latents of every row, B x count x D."""
        zs = [writer.next_block(jax.random.fold_in(key, b), sampler, grid, steps, eta,
                                temperature) for b in range(-(-count // writer.G))]
        return np.concatenate(zs, axis=1)[:, :count]

    def _predict_clean_windows(self, z_BxNxD, t_B, labels) -> np.ndarray:
        model = self._block_causal
        B, n_latents, G = z_BxNxD.shape[0], z_BxNxD.shape[1], model.G
        fn = self._jitted_fn(("predict_window",), lambda: jax.jit(
            _estimate_and_commit_fn(self._graphdef, self.cfg.dit)))
        padded = _pad_to_blocks(z_BxNxD, G)
        cache, out = model.empty_cache(B), []
        for start in range(0, padded.shape[1], G):
            x0, cache = fn(self._params, cache, jnp.asarray(padded[:, start:start + G]), t_B,
                           jnp.int32(start), jnp.asarray(labels))
            out.append(np.asarray(x0))
        return np.concatenate(out, axis=1)[:, :n_latents]

    def _trajectory_windows(self, n, steps, sampler, guidance, labels, seed, eta, grid,
                            temperature) -> list[list[str]]:
        """The first VAE block's clean estimate after each step: every diffusion block of
        it shown after that many of its own steps (each denoised given the final blocks
        before it); the last entry is what `generate` writes."""
        writer = _BlockWriter(self, n, labels, guidance)
        key = jax.random.PRNGKey(seed)
        finals, estimates = [], []
        for b in range(-(-self.N // writer.G)):
            z, est = writer.next_block(jax.random.fold_in(key, b), sampler, grid, steps, eta,
                                       temperature, trajectory_steps=steps)
            finals.append(z)
            estimates.append(est)
        est = np.concatenate(estimates, axis=2)[:, :, :self.N]
        return [self.decode(e) for e in est[:-1]] + [
            self.decode(np.concatenate(finals, axis=1)[:, :self.N])]

    def _edit_windows(self, texts, strength, steps, sampler, guidance, labels, seed, eta,
                      grid, temperature) -> list[str]:
        """SDEdit with the block-causal prior: each text's latents, diffusion block by
        diffusion block, re-noised to `strength` and denoised given the edited blocks
        before them."""
        key = jax.random.PRNGKey(seed)
        a, s = schedules.alpha_sigma(schedules.logsnr(strength, self.cfg.dit.schedule,
                                                      self.cfg.dit.snr_scale))
        out = []
        for i, text in enumerate(texts):
            x0 = self._encode_blocks(text, f"text {i}", eos=True)
            K = len(x0)
            G = self._block_causal.G
            padded = _pad_to_blocks(x0.reshape(1, -1, self.D), G)[0]
            writer = _BlockWriter(self, 1, labels[i:i + 1], guidance)
            edited = []
            for b in range(len(padded) // G):
                k = jax.random.fold_in(jax.random.fold_in(key, i), b)
                eps = temperature * np.asarray(jax.random.normal(k, (1, G, self.D)))
                z = a * padded[None, b * G:(b + 1) * G] + s * eps
                edited.append(writer.next_block(k, sampler, grid, steps, eta, temperature,
                                                z_start=z, t_start=strength))
            z = np.concatenate(edited, axis=1)[0, :K * self.N].reshape(K, self.N, self.D)
            reader = self._reader(np.zeros((1, self.N, self.D)), [False])
            out.append(self.vae.tokenizer.decode(
                [t for k in range(K) for t in self._block_tokens(z[k:k + 1], reader)[0]]))
        return out

    def _infill_windows(self, before, after, n, steps, sampler, guidance, labels, seed, eta,
                        grid, temperature, candidates_per_sample: int = 4) -> list[str]:
        """Sample and rerank: candidates for the block after `before` (continuations), each
        scored by how well the prior then predicts `after`'s first block (its denoising
        error at a few noise levels, given [before | candidate]); the n best, best first."""
        m = n * candidates_per_sample
        writer = _BlockWriter(self, m, np.repeat(labels, candidates_per_sample), guidance)
        last = writer.commit_texts([before] * m)
        z = self._window_latents(writer, jax.random.PRNGKey(seed), self.N, sampler, grid,
                                 steps, eta, temperature)
        target = self._first_block(after, "after")
        error = self._history_fit(writer, np.broadcast_to(target, (m,) + target.shape),
                                  jax.random.PRNGKey(seed + 1))
        best = np.argsort(error)[:n]
        return [self.vae.tokenizer.decode(ids)
                for ids in self._block_tokens(z[best], self._reader(last[best]))]

    def _history_fit(self, writer: "_BlockWriter", x0_BxKxD, key,
                     times=(0.2, 0.4, 0.6, 0.8)) -> np.ndarray:
        """Per row, the prior's mean squared error of the clean estimate of x0 (the latents
        that would come next), teacher-forced block by block against the row's history: low
        where x0 is a likely continuation of it."""
        G, B = writer.G, x0_BxKxD.shape[0]
        fn = self._jitted_fn(("history_fit",), lambda: jax.jit(_history_error_fn(
            self._graphdef, self.cfg.dit, jnp.asarray(times, jnp.float32))))
        c = writer.cache  # with guidance its first B rows are the conditional ones
        cache = type(c)(c.k[:, :B], c.v[:, :B], c.valid_BxC[:B])
        padded = _pad_to_blocks(x0_BxKxD, G)
        error = np.zeros(B)
        for b in range(padded.shape[1] // G):
            block = jnp.asarray(padded[:, b * G:(b + 1) * G])
            err, cache = fn(self._params, cache, block, jnp.int32(writer.pos + b * G),
                            writer.labels, jax.random.fold_in(key, b))
            error += np.asarray(err)
        return error

    def _jitted_fn(self, cache_key, make):
        if cache_key not in self._jitted:
            self._jitted[cache_key] = make()
        return self._jitted[cache_key]

    def infill(self, before: str, after: str, n: int = 1, steps: int = 16,
               sampler: str = "dpm++", guidance: float = 1.0, label=None, seed: int = 0,
               eta: float = 0.0, grid: str = "uniform", temperature: float = 1.0) -> list[str]:
        """n candidate blocks to go between `before` and `after`."""
        self._check(n=n, steps=steps, sampler=sampler, grid=grid, temperature=temperature)
        self._need_context("infilling")
        if self.is_block_causal:
            return self._infill_windows(before, after, n, steps, sampler, guidance,
                                        self._labels(label, n), seed, eta, grid, temperature)
        ctx = _Context.empty(n, self.N, self.D)
        ctx.prev_BxNxD[:], ctx.has_prev_B[:] = self._last_block(before, "before"), True
        ctx.next_BxNxD[:], ctx.has_next_B[:] = self._first_block(after, "after"), True
        z = self._denoise(jax.random.PRNGKey(seed), n, steps, sampler, grid,
                          self._labels(label, n), guidance, ctx, eta, temperature)
        return [self.vae.tokenizer.decode(ids)
                for ids in self._block_tokens(z, self._reader(ctx.prev_BxNxD))]

    def edit(self, texts: str | Sequence[str], strength: float = 0.5, steps: int = 16,
             sampler: str = "ddim", guidance: float = 1.0, label=None, seed: int = 0,
             eta: float = 0.0, grid: str = "uniform", temperature: float = 1.0) -> list[str]:
        """Each text re-noised to time `strength` in [0, 1] and denoised in `steps` steps
        (long texts block by block, each seeing its original neighbours when the model uses
        context). Strength 0 returns the texts unchanged; 1 keeps nothing of them."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        self._check(n=len(texts), steps=steps, sampler=sampler, grid=grid,
                    temperature=temperature)
        if not 0.0 <= strength <= 1.0:
            raise PipelineError(f"strength must be in [0, 1], got {strength}")
        if strength == 0.0:
            return texts
        if self.is_block_causal:
            return self._edit_windows(texts, strength, steps, sampler, guidance,
                                      self._labels(label, len(texts)), seed, eta, grid,
                                      temperature)
        owners, x0, ctx = self._text_blocks(texts)
        B = len(owners)
        labels = self._labels(label, len(texts))[owners]
        key = jax.random.PRNGKey(seed)
        a, s = schedules.alpha_sigma(schedules.logsnr(strength, self.cfg.dit.schedule,
                                                      self.cfg.dit.snr_scale))
        eps = temperature * jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
        z = a * x0 + s * eps
        out = self._run(key, z, steps, sampler, grid, labels, guidance, ctx, eta, temperature,
                        strength)
        out = np.asarray(out)[:B]
        # each edited block read after the edited block before it in its text
        prev = np.concatenate([np.zeros_like(out[:1]), out[:-1]])
        reader = self._reader(prev, np.r_[False, owners[1:] == owners[:-1]])
        tokens = [[] for _ in texts]
        for owner, ids in zip(owners, self._block_tokens(out, reader)):
            tokens[owner].extend(ids)
        return [self.vae.tokenizer.decode(t) for t in tokens]

    def trajectory(self, n: int = 1, steps: int = 16, sampler: str = "dpm++",
                   guidance: float = 1.0, label=None, seed: int = 0, eta: float = 0.0,
                   grid: str = "uniform", temperature: float = 1.0) -> list[list[str]]:
        """The decoded clean-latent estimate after each step: steps lists of n texts; the
        last is what `generate` returns for the same arguments."""
        self._check(n=n, steps=steps, sampler=sampler, grid=grid, temperature=temperature)
        labels = self._labels(label, n)
        if self.is_block_causal:
            return self._trajectory_windows(n, steps, sampler, guidance, labels, seed, eta,
                                            grid, temperature)
        key = jax.random.fold_in(jax.random.PRNGKey(seed), 0)
        z_T = temperature * jax.random.normal(key, (n, self.N, self.D))
        guided = self._guided(labels, guidance)
        # the scan's length is the step count, so a trajectory compiles once per budget
        fn = self._jitted_fn((sampler, grid, guided, "trajectory", steps), lambda: jax.jit(
            self._denoiser(sampler, grid, guided, trajectory_steps=steps)))
        z, estimates = fn(self._params, z_T, steps, jax.random.fold_in(key, 2),
                          jnp.asarray(labels), jnp.float32(guidance),
                          _Context.empty(n, self.N, self.D).arrays(), jnp.float32(1.0),
                          jnp.float32(eta), jnp.float32(temperature))
        estimates = np.asarray(estimates)
        out = [self.decode(e) for e in estimates[:-1]]
        return out + [self.decode(np.asarray(z))]

    def sample_latents(self, n: int = 8, steps: int = 16, sampler: str = "dpm++",
                       guidance: float = 1.0, label=None, seed: int = 0, eta: float = 0.0,
                       grid: str = "uniform", temperature: float = 1.0,
                       num_blocks: int = 1) -> np.ndarray:
        """n normalised latent blocks, n x N x D, or with num_blocks K > 1 n texts of K
        consecutive blocks, n x K x N x D (what `generate` decodes; decode them with
        `decode`)."""
        self._check(n=n, steps=steps, sampler=sampler, grid=grid, temperature=temperature,
                    num_blocks=num_blocks)
        labels, key = self._labels(label, n), jax.random.PRNGKey(seed)
        if self.is_block_causal:
            writer = _BlockWriter(self, n, labels, guidance)
            z = self._window_latents(writer, key, num_blocks * self.N, sampler, grid, steps,
                                     eta, temperature)
            z = z.reshape(n, num_blocks, self.N, self.D)
        else:
            ctx, blocks = _Context.empty(n, self.N, self.D), []
            for b in range(num_blocks):  # as `generate`: each block after the one before
                blocks.append(np.asarray(self._denoise(jax.random.fold_in(key, b), n, steps,
                                                       sampler, grid, labels, guidance, ctx,
                                                       eta, temperature)))
                ctx.prev_BxNxD[:], ctx.has_prev_B[:] = blocks[-1], self.has_context
            z = np.stack(blocks, axis=1)
        return z[:, 0] if num_blocks == 1 else z

    def predict_clean(self, z_t_BxNxD, t_B, label=None) -> np.ndarray:
        """The DiT's one-pass estimate of the clean normalised latents from noisy ones at
        times t (no self-conditioning, no guidance, no context): B x N x D. With the
        block-causal prior, each diffusion block is estimated given the estimates of the
        blocks before it (committed as its history)."""
        z = jnp.asarray(z_t_BxNxD, jnp.float32)
        labels = self._labels(label, z.shape[0])
        t = jnp.broadcast_to(jnp.asarray(t_B, jnp.float32), (z.shape[0],))
        if self.is_block_causal:
            return self._predict_clean_windows(np.asarray(z), t, labels)
        if self._predict is None:
            dcfg, graphdef = self.cfg.dit, self._graphdef

            def predict(params, z, t, label_B):
                a, s = schedules.alpha_sigma(schedules.logsnr(t, dcfg.schedule,
                                                              dcfg.snr_scale))
                out = nnx.merge(graphdef, params)(z, t, label_B=label_B)
                return schedules.to_x0(dcfg.prediction, out, z, a, s)

            self._predict = jax.jit(predict)
        return np.asarray(self._predict(self._params, z, t, jnp.asarray(labels)))

    def denormalise(self, z_BxNxD) -> np.ndarray:
        """Normalised latents (what the DiT sees) -> the VAE's latents."""
        return self._normaliser.denormalise(np.asarray(z_BxNxD, np.float32)).astype(np.float32)

    def decode(self, z_BxNxD) -> list[str]:
        """Texts of normalised latent blocks; z of shape n x K x N x D holds K consecutive
        blocks per text, read in order (with the seam decoder, each seeing the one before)
        and joined through the first EOS."""
        z = np.asarray(z_BxNxD, np.float32)
        if z.ndim == 4:
            return self.vae.decode(self.denormalise(z))
        return [self.vae.tokenizer.decode(ids) for ids in self._block_tokens(z)]

    # ------------------------------------------------------------------ denoising
    def _denoiser(self, sampler: str, grid: str, guided: bool, trajectory_steps=None):
        dcfg, graphdef, null = self.cfg.dit, self._graphdef, self._null

        def run(params, z, steps, key, label_B, guidance, ctx, t_start, eta, temperature):
            model = nnx.merge(graphdef, params)

            def net(z, t, sc):
                if not guided:
                    return model(z, t, self_cond_BxNxD=sc, label_B=label_B, **ctx)
                two = lambda x: jnp.concatenate([x, x])  # noqa: E731
                out = model(two(z), two(t), self_cond_BxNxD=two(sc),
                            label_B=jnp.concatenate([label_B, jnp.full_like(label_B, null)]),
                            **{k: two(v) for k, v in ctx.items()})
                cond, uncond = jnp.split(out, 2)
                return samplers.guide(cond, uncond, guidance)

            return samplers.sample(
                net, z, trajectory_steps or steps, key, sampler=sampler,
                schedule=dcfg.schedule, snr_scale=dcfg.snr_scale, prediction=dcfg.prediction,
                eta=eta, grid=grid, t_start=t_start, trajectory=trajectory_steps is not None,
                temperature=temperature)

        return run

    def _run(self, key, z, steps, sampler, grid, labels, guidance, ctx: _Context, eta,
             temperature, t_start=1.0):
        guided = self._guided(labels, guidance)
        fn = self._jitted_fn((sampler, grid, guided), lambda: jax.jit(
            self._denoiser(sampler, grid, guided)))
        return fn(
            self._params, jnp.asarray(z, jnp.float32), jnp.int32(steps),
            jax.random.fold_in(key, 2), jnp.asarray(labels), jnp.float32(guidance),
            ctx.arrays(), jnp.float32(t_start), jnp.float32(eta), jnp.float32(temperature))

    def _denoise(self, key, n, steps, sampler, grid, labels, guidance, ctx, eta,
                 temperature) -> np.ndarray:
        z_T = temperature * jax.random.normal(key, (n, self.N, self.D))
        return np.asarray(self._run(key, z_T, steps, sampler, grid, labels, guidance, ctx,
                                    eta, temperature))

    def _guided(self, labels, guidance) -> bool:
        return bool(guidance != 1.0 and (labels != self._null).any())

    # ------------------------------------------------------------------ text <-> latents
    def _block_tokens(self, z_BxNxD, reader: BlockReader | None = None) -> list[list[int]]:
        """Token ids of each normalised latent block: real positions, through the first EOS;
        with a `reader`, the next block of each of its texts (seeing the block before)."""
        z = self.denormalise(z_BxNxD)
        tokens, real = reader.read(z) if reader is not None else self.vae.decode_tokens(z)
        return [through_eos(t[m]) for t, m in zip(tokens, real)]

    def _reader(self, prev_BxNxD, valid_B=None) -> BlockReader:
        """A block reader for a batch of B texts; `prev_BxNxD` (normalised): the block
        before each text's first, e.g. a prompt's last (rows where `valid_B` is False have
        none)."""
        reader = self.vae.reader(len(prev_BxNxD))
        reader.prime(self.denormalise(prev_BxNxD), valid_B)
        return reader

    def _encode_blocks(self, text: str, what: str, eos: bool,
                       fill_last: bool = False) -> np.ndarray:
        """Normalised latents K x N x D of a text's blocks; with `fill_last` a last block
        cut short is filled up with the mask token (see `_BlockWriter.commit_texts`)."""
        if not isinstance(text, str) or not text.strip():
            raise PipelineError(f"the {what} text is empty")
        blocks = self.vae.blocks(text, eos=eos)
        if not blocks:
            raise PipelineError(f"the {what} text has no tokens")
        if fill_last:
            blocks[-1] = blocks[-1] + [MASK_ID] * (self.vae.block_len - len(blocks[-1]))
        return self._normaliser.normalise(self.vae.encode_tokens(self.vae.pad(blocks)[0]))

    def _last_block(self, text: str, what: str) -> np.ndarray:
        return self._encode_blocks(text, what, eos=False)[-1]

    def _first_block(self, text: str, what: str) -> np.ndarray:
        return self._encode_blocks(text, what, eos=True)[0]

    def _text_blocks(self, texts: Sequence[str]):
        """All blocks of all texts: owner index per block, normalised latents, context."""
        owners, zs, prev, has_prev, nxt, has_next = [], [], [], [], [], []
        for i, text in enumerate(texts):
            z = self._encode_blocks(text, f"text {i}", eos=True)
            K = len(z)
            for k in range(K):
                owners.append(i)
                zs.append(z[k])
                prev.append(z[k - 1] if k > 0 else np.zeros_like(z[k]))
                nxt.append(z[k + 1] if k + 1 < K else np.zeros_like(z[k]))
                has_prev.append(k > 0 and self.has_context)
                has_next.append(k + 1 < K and self.has_context)
        ctx = _Context(np.stack(prev), np.array(has_prev), np.stack(nxt), np.array(has_next))
        return np.array(owners), np.stack(zs), ctx

    # ------------------------------------------------------------------ checks
    def _check(self, *, n: int, steps, sampler: str, grid: str, num_blocks: int = 1,
               temperature: float = 1.0) -> None:
        try:
            samplers.check_sampler_args(sampler, steps, grid)
        except ValueError as e:
            raise PipelineError(str(e)) from None
        if not (isinstance(temperature, (int, float)) and 0 < temperature <= 2):
            raise PipelineError(f"temperature must be a number in (0, 2], got {temperature!r}")
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise PipelineError(f"n must be a positive integer, got {n!r}")
        if isinstance(num_blocks, bool) or not isinstance(num_blocks, int) or num_blocks < 1:
            raise PipelineError(f"num_blocks must be a positive integer, got {num_blocks!r}")
        one_window = self.is_block_causal and num_blocks * self.N <= self._block_causal.W
        if num_blocks > 1 and not self.has_context and not one_window:
            self._need_context(f"generating more than "
                               f"{self._block_causal.W // self.N if self.is_block_causal else 1}"
                               " block(s)")

    def _need_context(self, what: str) -> None:
        if not self.has_context and self.is_block_causal:
            raise PipelineError(
                f"{what} needs a block-causal prior that keeps history; this run's "
                f"dit.block_size is its whole window ({self._block_causal.W} latents): "
                "retrain with a smaller dit.block_size")
        if not self.has_context:
            raise PipelineError(
                f"{what} needs a DiT trained with neighbouring-block context; this run was "
                "trained with dit.use_context=false (retrain with "
                "SET=\"dit.use_context=true\")")

    def _labels(self, label, n: int) -> np.ndarray:
        """Label indices n (the null label where unconditional)."""
        if label is None:
            return np.full(n, self._null, np.int32)
        names = [label] * n if isinstance(label, str) else list(label)
        if len(names) != n:
            raise PipelineError(f"got {len(names)} labels for n={n} samples")
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
