"""Sampling the block-causal prior block by block with a KV cache.

Each diffusion block of G latents is denoised in S steps (`ldlm.diffusion.samplers`, the
step count traced: one compile per sampler, grid, guidance and batch shape) against the
cached keys and values of the committed history, then committed: its clean stream runs once
and its keys and values enter the cache. A prompt is committed the same way (prefix
encoding), right-aligned so that every row of a batch writes on at one position.

Classifier-free guidance runs a batch of 2B rows, the B conditional rows then the same B
with the null label; both halves commit the same latents, so each keeps its own cache (the
clean stream is modulated by the class too).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ldlm.config import DiTConfig
from ldlm.diffusion import samplers, schedules
from ldlm.diffusion.spec import SamplingSpec
from ldlm.priors.base import OPERATIONS, LatentSampler
from ldlm.priors.block_causal.model import BlockCausalDiT, KVCache


def _two(x):
    return jnp.concatenate([x, x])


def _with_null(model, label_B, guided: bool):
    return jnp.concatenate([label_B, jnp.full_like(label_B, model.null_label)]) \
        if guided else label_B


def denoise_block(params, cache: KVCache, pos0, z_T, key, label_B, spec: SamplingSpec,
                  t_start, *, graphdef, dcfg: DiTConfig, guided: bool,
                  trajectory_steps: int | None = None):
    """(z0_BxGxD, cache with the block committed): z (noise at t_start, 1 for pure noise)
    denoised against the cache. With `guided` the cache has 2B rows and label_B holds the B
    conditional labels. With `trajectory_steps` (the scan's length) also the clean estimate
    of every step: (z0, estimates SxBxGxD, cache)."""
    model: BlockCausalDiT = nnx.merge(graphdef, params)
    labels = _with_null(model, label_B, guided)

    def net(z, t, sc):
        if not guided:
            return model.denoise(cache, z, t, pos0, self_cond_BxGxD=sc, label_B=labels)
        out = model.denoise(cache, _two(z), _two(t), pos0, self_cond_BxGxD=_two(sc),
                            label_B=labels)
        cond, uncond = jnp.split(out, 2)
        return samplers.guide(cond, uncond, spec.guidance)

    out = samplers.sample(net, z_T, key, spec, schedule=dcfg.schedule,
                          snr_scale=dcfg.snr_scale, prediction=dcfg.prediction,
                          t_start=t_start, trajectory_steps=trajectory_steps)
    z0 = out[0] if trajectory_steps else out
    cache = model.commit(cache, _two(z0) if guided else z0, pos0, label_B=labels)
    return (z0, out[1], cache) if trajectory_steps else (z0, cache)


def commit(params, cache: KVCache, x0, valid, pos0, label_B, *, graphdef, guided: bool):
    """The cache with x0_BxGxD committed (prefix encoding of a prompt; valid False on
    padding slots)."""
    model: BlockCausalDiT = nnx.merge(graphdef, params)
    if guided:
        x0, valid = _two(x0), _two(valid)
    return model.commit(cache, x0, pos0, valid_BxG=valid,
                        label_B=_with_null(model, label_B, guided))


def estimate_and_commit(params, cache, z, t_B, pos0, label_B, *, graphdef, dcfg: DiTConfig):
    """(the clean estimate of the block from z at times t given the cache, the cache with
    that estimate committed)."""
    model = nnx.merge(graphdef, params)
    a, s = schedules.alpha_sigma(schedules.logsnr(t_B, dcfg.schedule, dcfg.snr_scale))
    x0 = schedules.to_x0(dcfg.prediction, model.denoise(cache, z, t_B, pos0, label_B=label_B),
                         z, a, s)
    return x0, model.commit(cache, x0, pos0, label_B=label_B)


def history_error(params, cache, x0, pos0, label_B, key, times_T, *, graphdef,
                  dcfg: DiTConfig):
    """(mean squared error of the clean estimate of x0_BxGxD over the noise levels times_T,
    cache with x0 committed)."""
    model = nnx.merge(graphdef, params)

    def at(t, k):
        a, s = schedules.alpha_sigma(schedules.logsnr(t, dcfg.schedule, dcfg.snr_scale))
        z = a * x0 + s * jax.random.normal(k, x0.shape)
        out = model.denoise(cache, z, jnp.full((x0.shape[0],), t), pos0, label_B=label_B)
        return jnp.mean((schedules.to_x0(dcfg.prediction, out, z, a, s) - x0) ** 2,
                        axis=(1, 2))

    keys = jax.random.split(key, times_T.shape[0])
    err = jnp.mean(jax.vmap(at)(times_T, keys), axis=0)
    return err, model.commit(cache, x0, pos0, label_B=label_B)


# the keyword-only arguments (model structure, config, modes) are static
_denoise_block = jax.jit(denoise_block, static_argnames=("graphdef", "dcfg", "guided",
                                                         "trajectory_steps"))
_commit = jax.jit(commit, static_argnames=("graphdef", "guided"))
_estimate_and_commit = jax.jit(estimate_and_commit, static_argnames=("graphdef", "dcfg"))
_history_error = jax.jit(history_error, static_argnames=("graphdef", "dcfg"))


def pad_to_blocks(z_BxTxD, G: int) -> np.ndarray:
    """z with zeros appended along T up to a multiple of G (whole diffusion blocks)."""
    B, T, D = z_BxTxD.shape
    padded = np.zeros((B, -(-T // G) * G, D), np.float32)
    padded[:, :T] = z_BxTxD
    return padded


class BlockWriter:
    """One batch written block by block: the KV cache of its clean history, the next
    position, and the jitted block denoiser."""

    def __init__(self, sampler: "BlockCausalSampler", n: int, labels_B, spec: SamplingSpec):
        self.s, self.G, self.n = sampler, sampler.G, n
        self.labels = jnp.asarray(labels_B)
        self.spec = spec.traced()
        self.guided = sampler.guided(np.asarray(labels_B), spec)
        self.cache = sampler.model.empty_cache(2 * n if self.guided else n)
        self.pos = 0

    def commit_latents(self, rows) -> None:
        """Commits one latent sequence per row (normalised, right-aligned: every row ends
        at the same position, shorter ones have empty slots before theirs)."""
        G = self.G
        P = -(-max(len(r) for r in rows) // G) * G
        x0 = np.zeros((len(rows), P, self.s.D), np.float32)
        valid = np.zeros((len(rows), P), bool)
        for i, r in enumerate(rows):
            if len(r):
                x0[i, P - len(r):], valid[i, P - len(r):] = r, True
        for start in range(0, P, G):
            self.cache = _commit(self.s.params, self.cache,
                                 jnp.asarray(x0[:, start:start + G]),
                                 jnp.asarray(valid[:, start:start + G]),
                                 jnp.int32(self.pos + start), self.labels,
                                 graphdef=self.s.graphdef, guided=self.guided)
        self.pos += P

    def next_block(self, key, z_start=None, t_start: float = 1.0,
                   trajectory_steps: int | None = None):
        """The next diffusion block, B x G x D, denoised from noise (or from `z_start` at
        t_start) and committed; with trajectory_steps also every step's clean estimate."""
        if z_start is None:
            z_start = self.spec.temperature * jax.random.normal(key, (self.n, self.G,
                                                                      self.s.D))
        out = _denoise_block(self.s.params, self.cache, jnp.int32(self.pos),
                             jnp.asarray(z_start), jax.random.fold_in(key, 1), self.labels,
                             self.spec, jnp.float32(t_start), graphdef=self.s.graphdef,
                             dcfg=self.s.dcfg, guided=self.guided,
                             trajectory_steps=trajectory_steps)
        self.cache, self.pos = out[-1], self.pos + self.G
        return tuple(np.asarray(o) for o in out[:-1]) if trajectory_steps else \
            np.asarray(out[0])


class BlockCausalSampler(LatentSampler):
    kind = "block_causal"
    OPERATIONS = OPERATIONS
    # a prompt that ends inside a VAE block has that block filled up with the mask token
    # (the encoder learnt to read masked positions): its latents stand for a whole block
    # that begins with the prompt's last tokens, where the prior never saw a block cut
    # short followed by more text (prompts committed as short blocks were continued with
    # empty text on the `cpu` run). The masked positions themselves are not written: the
    # continuation starts at the next block boundary
    fills_prompt_blocks = True

    def __init__(self, cfg, model: BlockCausalDiT, autoencoder=None):
        super().__init__(cfg, model)
        self.model, self.G, self.W = model, model.G, model.W

    @property
    def blocks_without_history(self) -> int:
        return self.W // self.N

    def describe(self) -> str:
        return f"G={self.G}/W={self.W}"

    def missing(self, op: str) -> str | None:
        if op in ("continue", "infill") and self.model.cache_slots == 0:
            return (f"needs a block-causal prior that keeps history; this run's "
                    f"dit.block_size is its whole window ({self.W} latents): retrain with "
                    "a smaller dit.block_size")
        return super().missing(op)

    def _commit_prompts(self, writer: BlockWriter, prompts) -> None:
        """Each prompt's latents into the cache; of a prompt longer than the history the
        prior holds (its window less one diffusion block) the last ones only, as the cache
        keeps them once a text grows past the window."""
        slots = self.model.cache_slots
        writer.commit_latents([p.reshape(-1, self.D)[-slots:] for p in prompts])

    def stream(self, n, spec, labels_B, prompts=None):
        """Diffusion block after diffusion block against the cache of the clean history
        (the prompts' latents first)."""
        writer = BlockWriter(self, n, labels_B, spec)
        if prompts is not None:
            self._commit_prompts(writer, prompts)
        key = jax.random.PRNGKey(spec.seed)
        b = 0
        while True:
            yield writer.next_block(jax.random.fold_in(key, b))
            b += 1

    def infill(self, before_KxNxD, after_NxD, n, spec, labels_B, candidates_per_sample=4):
        """Sample and rerank: candidates for the block after `before` (continuations), each
        scored by how well the prior then predicts `after` (its denoising error at a few
        noise levels, given [before | candidate]); the n best, best first."""
        m = n * candidates_per_sample
        writer = BlockWriter(self, m, np.repeat(labels_B, candidates_per_sample), spec)
        self._commit_prompts(writer, [before_KxNxD] * m)
        key = jax.random.PRNGKey(spec.seed)
        z = np.concatenate([writer.next_block(jax.random.fold_in(key, b))
                            for b in range(-(-self.N // self.G))], axis=1)[:, :self.N]
        error = self._history_fit(writer, np.broadcast_to(after_NxD, (m,) + after_NxD.shape),
                                  jax.random.PRNGKey(spec.seed + 1))
        return z[np.argsort(error)[:n]]

    def _history_fit(self, writer: BlockWriter, x0_BxKxD, key,
                     times=(0.2, 0.4, 0.6, 0.8)) -> np.ndarray:
        """Per row, the prior's mean squared error of the clean estimate of x0 (the latents
        that would come next), teacher-forced block by block against the row's history: low
        where x0 is a likely continuation of it."""
        G, B = self.G, x0_BxKxD.shape[0]
        c = writer.cache  # with guidance its first B rows are the conditional ones
        cache = type(c)(c.k[:, :B], c.v[:, :B], c.valid_BxC[:B])
        padded = pad_to_blocks(x0_BxKxD, G)
        error = np.zeros(B)
        for b in range(padded.shape[1] // G):
            err, cache = _history_error(
                self.params, cache, jnp.asarray(padded[:, b * G:(b + 1) * G]),
                jnp.int32(writer.pos + b * G), writer.labels, jax.random.fold_in(key, b),
                jnp.asarray(times, jnp.float32), graphdef=self.graphdef, dcfg=self.dcfg)
            error += np.asarray(err)
        return error

    def edit(self, texts, strength, spec, labels_B):
        """Each text's latents, diffusion block by diffusion block, re-noised to `strength`
        and denoised given the edited blocks before them."""
        key = jax.random.PRNGKey(spec.seed)
        a, s = schedules.alpha_sigma(schedules.logsnr(strength, self.dcfg.schedule,
                                                      self.dcfg.snr_scale))
        out, G = [], self.G
        for i, x0 in enumerate(texts):
            K = len(x0)
            padded = pad_to_blocks(x0.reshape(1, -1, self.D), G)[0]
            writer = BlockWriter(self, 1, labels_B[i:i + 1], spec)
            edited = []
            for b in range(len(padded) // G):
                k = jax.random.fold_in(jax.random.fold_in(key, i), b)
                eps = spec.temperature * np.asarray(jax.random.normal(k, (1, G, self.D)))
                z = a * padded[None, b * G:(b + 1) * G] + s * eps
                edited.append(writer.next_block(k, z_start=z, t_start=strength))
            out.append(np.concatenate(edited, axis=1)[0, :K * self.N].reshape(K, self.N,
                                                                               self.D))
        return out

    def trajectory(self, n, spec, labels_B):
        """Every diffusion block of the first VAE block shown after that many of its own
        steps (each denoised given the final blocks before it)."""
        writer = BlockWriter(self, n, labels_B, spec)
        key = jax.random.PRNGKey(spec.seed)
        finals, estimates = [], []
        for b in range(-(-self.N // self.G)):
            z, est = writer.next_block(jax.random.fold_in(key, b),
                                       trajectory_steps=spec.steps)
            finals.append(z)
            estimates.append(est)
        return (np.concatenate(estimates, axis=2)[:, :, :self.N],
                np.concatenate(finals, axis=1)[:, :self.N])

    def predict_clean(self, z_BxTxD, t_B, labels_B):
        """Each diffusion block estimated given the estimates of the blocks before it
        (committed as its history)."""
        z = np.asarray(z_BxTxD)
        B, T, G = z.shape[0], z.shape[1], self.G
        padded = pad_to_blocks(z, G)
        cache, out = self.model.empty_cache(B), []
        for start in range(0, padded.shape[1], G):
            x0, cache = _estimate_and_commit(
                self.params, cache, jnp.asarray(padded[:, start:start + G]), t_B,
                jnp.int32(start), jnp.asarray(labels_B), graphdef=self.graphdef,
                dcfg=self.dcfg)
            out.append(np.asarray(x0))
        return np.concatenate(out, axis=1)[:, :T]
