"""Sampling the latent-autoregressive prior chunk by chunk.

Each step runs the backbone at one new position against its rolling key/value cache, the
head draws the chunk's latent (energy: one pass; flow: `spec.steps` Euler steps), the chunk
autoencoder's decoder reads it at once into K tokens, and those tokens are the next
position's input. One jitted step per head, temperature form, guidance and batch shape; the
flow head's step count and the guidance scale are traced.

Temperature. The flow head scales its starting noise by `spec.temperature`. The energy head
has no likelihood to sharpen; at T = 1/n it draws `dit.temperature_samples` latents, decodes
each to its K-token tuple and keeps one of a tuple seen c >= n times with weight C(c, n)
(CALM's algorithm: exact for T = 1/n as the samples grow), with n lowered to the most
repeats seen when no tuple reaches it. With `dit.energy_temperature=shrink` any T pulls the
drawn latent towards the mean of `dit.temperature_samples` draws, z = mean + T (z - mean)
(continuous; no likelihood is behind it). (Scaling the head's noise does nothing: the head
normalises its projection.)

Prompts are tokens, laid out in VAE blocks as the training data is. Every row is aligned so
that its prompt's last block starts at the same step (rows with shorter prompts start
later; their empty slots are hidden from attention), and prompt chunks are fed as given
(teacher forcing): a chunk the prompt fills is the autoencoder's latent of the prompt's
tokens, a chunk it fills in part keeps the prompt's tokens and takes the rest from the
drawn sample (then re-encoded). The stream starts at the prompt's last block, so the
pipeline skips that block's prompt tokens.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.scipy.special import gammaln

from ldlm.data.tokenizer import PAD_ID
from ldlm.diffusion.spec import SamplingSpec
from ldlm.errors import PipelineError
from ldlm.priors.base import LatentSampler
from ldlm.priors.latent_ar.model import KVCache, LatentAR


def temperature_power(temperature: float) -> int:
    """n of T = 1/n (the energy head's temperatures); PipelineError for other T."""
    n = round(1.0 / temperature) if temperature > 0 else 0
    if n < 1 or abs(1.0 / n - temperature) > 1e-6:
        raise PipelineError(f"temperature {temperature} is not of the form 1/n (1, 0.5, "
                            "0.333.., ...): the energy head's temperature counts repeated "
                            "samples")
    return n


def pick_by_repeats(tuples_BxSxK, key, n: int):
    """Index B of one sample per row, chosen among tuples seen c >= n times with weight
    C(c, n) per tuple (C(c, n) / c per sample), n lowered per row to the most repeats."""
    same = jnp.all(tuples_BxSxK[:, :, None, :] == tuples_BxSxK[:, None, :, :], axis=-1)
    count = same.sum(-1).astype(jnp.float32)  # BxS: how often each sample's tuple occurs
    n_eff = jnp.minimum(jnp.float32(n), count.max(-1, keepdims=True))
    log_choose = gammaln(count + 1) - gammaln(n_eff + 1) - gammaln(count - n_eff + 1)
    logw = jnp.where(count >= n_eff, log_choose - jnp.log(count), -jnp.inf)
    return jax.random.categorical(key, logw, axis=-1)


def _decode(vae, stats, z_BxSxD):
    """Tokens and real flags (B x S x K) of normalised latents, each read on its own."""
    B, S, D = z_BxSxD.shape
    z = z_BxSxD * stats["std"][None, None, :] + stats["mean"][None, None, :]
    logits, real = vae.decode(z.reshape(B * S, 1, D))
    K = logits.shape[1]
    return (jnp.argmax(logits, -1).astype(jnp.int32).reshape(B, S, K),
            (real > 0).reshape(B, S, K))


def next_chunk(params, vae_params, stats, cache: KVCache, prev_tokens_BxK, prev_z_BxD,
               first_B, valid_B, pos, forced_tokens_BxK, forced_BxK, label_B, key,
               spec: SamplingSpec, *, graphdef, vae_graphdef, n_pick: int, samples: int,
               guided: bool, forcing: bool = True, shrink: bool = False):
    """One chunk of B texts: (z_BxD normalised, tokens_BxK as fed back (PAD where not
    real), real_BxK, cache). Positions where `forced_BxK` hold the prompt's tokens
    (`forcing` False: none do, and nothing is re-encoded). `shrink`: an energy head's
    temperature pulls the draw towards the mean of `samples` draws
    (dit.energy_temperature=shrink)."""
    model: LatentAR = nnx.merge(graphdef, params)
    vae = nnx.merge(vae_graphdef, vae_params)
    if guided:
        two = lambda x: jnp.concatenate([x, x])  # noqa: E731
        labels = jnp.concatenate([label_B, jnp.full_like(label_B, model.null_label)])
        h, cache = model.step(cache, two(prev_tokens_BxK), two(prev_z_BxD), two(first_B),
                              two(valid_B), pos, labels)
    else:
        h, cache = model.step(cache, prev_tokens_BxK, prev_z_BxD, first_B, valid_B, pos,
                              label_B)
    c = model.head.condition(h)
    k_draw, k_pick = jax.random.split(key)
    if model.cfg.head == "energy":
        if shrink:  # z = mean + T (z - mean) over `samples` draws
            u = model.head.draw_noise(k_draw, c.shape[:-1] + (samples,))

            def pulled(_):
                draws = model.head(c[:, None], u)
                mean = draws.mean(1)
                return mean + spec.temperature * (draws[:, 0] - mean)

            # T = 1 is the first draw alone: one head pass instead of `samples`
            z = jax.lax.cond(spec.temperature == 1.0,
                             lambda _: model.head(c[:, None], u[:, :1])[:, 0], pulled, None)
            tokens, real = (x[:, 0] for x in _decode(vae, stats, z[:, None]))
        elif n_pick == 1:
            z = model.head.sample(c, k_draw, 1)[:, 0]
            tokens, real = (x[:, 0] for x in _decode(vae, stats, z[:, None]))
        else:
            cand = model.head.sample(c, k_draw, samples)
            tok, real_s = _decode(vae, stats, cand)
            i = pick_by_repeats(jnp.where(real_s, tok, -1), k_pick, n_pick)
            take = lambda x: jnp.take_along_axis(  # noqa: E731
                x, i[:, None, None], axis=1)[:, 0]
            z, tokens, real = take(cand), take(tok), take(real_s)
    else:
        z = _flow(model, c, k_draw, spec, guided)
        tokens, real = (x[:, 0] for x in _decode(vae, stats, z[:, None]))
    tokens = jnp.where(real, tokens, PAD_ID)
    if forcing:  # the prompt's tokens where it has them; a chunk it touches is re-encoded
        tokens = jnp.where(forced_BxK, forced_tokens_BxK, tokens)
        real = jnp.where(forced_BxK, forced_tokens_BxK != PAD_ID, real)
        tokens = jnp.where(real, tokens, PAD_ID)
        mean, _ = vae.encode(tokens)
        encoded = (mean[:, 0] - stats["mean"][None, :]) / stats["std"][None, :]
        z = jnp.where(forced_BxK.any(-1, keepdims=True), encoded, z)
    return z, tokens, real, cache


def next_chunks(params, vae_params, stats, cache: KVCache, prev_tokens_BxK, prev_z_BxD,
                start_B, pos0, label_B, key, spec: SamplingSpec, *, count: int, **static):
    """`count` chunks of B texts in one scan, no prompt tokens among them (a row starts at
    position start_B): (z_BxCxD, the last chunk's tokens_BxK, cache); chunk p draws from
    fold_in(key, p) as `next_chunk` does."""
    none_forced = jnp.zeros(prev_tokens_BxK.shape, bool)

    def body(carry, pos):
        cache, tokens, z = carry
        z, tokens, _, cache = next_chunk(
            params, vae_params, stats, cache, tokens, z, start_B == pos, start_B <= pos, pos,
            tokens, none_forced, label_B, jax.random.fold_in(key, pos), spec, forcing=False,
            **static)
        return (cache, tokens, z), z

    (cache, tokens, _), z_CxBxD = jax.lax.scan(body, (cache, prev_tokens_BxK, prev_z_BxD),
                                               pos0 + jnp.arange(count))
    return jnp.swapaxes(z_CxBxD, 0, 1), tokens, cache


def _flow(model: LatentAR, c_BxF, key, spec: SamplingSpec, guided: bool):
    """A flow head's latent per row in spec.steps Euler steps (guided: c holds the B
    conditional rows then the B null-label rows)."""
    if not guided:
        return model.head.sample(c_BxF, key, spec.steps, spec.temperature)[:, 0]
    cond, uncond = jnp.split(c_BxF, 2)
    z = spec.temperature * jax.random.normal(key, (cond.shape[0], model.D))
    dt = 1.0 / spec.steps

    def body(i, z):
        t = jnp.full(z.shape[:-1], i * dt, jnp.float32)
        v_c, v_u = model.head(cond, z, t), model.head(uncond, z, t)
        return z + dt * (v_u + spec.guidance * (v_c - v_u))

    return jax.lax.fori_loop(0, spec.steps, body, z)


_STATIC = ("graphdef", "vae_graphdef", "n_pick", "samples", "guided", "shrink")
_next_chunk = jax.jit(next_chunk, static_argnames=_STATIC + ("forcing",))
_next_chunks = jax.jit(next_chunks, static_argnames=_STATIC + ("count",))


class LatentARSampler(LatentSampler):
    """Chunk-by-chunk sampling of the latent-autoregressive prior (see the module
    docstring); needs the run's chunk autoencoder (`autoencoder`)."""

    kind = "latent_ar"
    OPERATIONS = ("generate", "continue")
    prompt_tokens = True

    def __init__(self, cfg, model: LatentAR, autoencoder=None):
        super().__init__(cfg, model)
        if autoencoder is None:
            raise PipelineError("the latent_ar prior samples through its chunk autoencoder; "
                                "load it with LatentDiffusionPipeline.from_pretrained")
        vae_model, normaliser = autoencoder
        self.vae_graphdef, self.vae_params = nnx.split(vae_model)
        self.stats = {"mean": jnp.asarray(normaliser.mean_D), "std": jnp.asarray(normaliser.std_D)}
        self.K, self.L = model.K, cfg.data.block_len
        self.head = cfg.dit.head
        self.model = model

    def describe(self) -> str:
        return f"latent_ar {self.head}"

    # the heads take no diffusion sampler: its name in a SamplingSpec is ignored
    def table_settings(self, e):
        return [("dpm++", n, self.head) for n in self.sample_budgets(e.head_steps)]

    def long_settings(self, e):
        if self.head == "flow":
            return "dpm++", e.head_long_steps, tuple(e.long_temperatures)
        if self.dcfg.energy_temperature == "repeats":  # T = 1/n only
            return "dpm++", 1, tuple(1.0 / n for n in range(1, len(e.long_temperatures) + 1))
        return "dpm++", 1, tuple(e.long_temperatures)

    def guidance_settings(self, e):
        if self.head == "energy":  # no guidance: the labels alone
            return "dpm++", 1, (1.0,)
        return "dpm++", e.head_long_steps, tuple(e.guidance_scales)

    @property
    def default_steps(self) -> int:
        return 1 if self.head == "energy" else self.cfg.eval.head_long_steps

    def sample_budgets(self, steps):
        return [1] if self.head == "energy" else list(steps)

    def check(self, spec: SamplingSpec, labels_B: np.ndarray) -> int:
        """n of the energy head's temperature 1/n (1 for the flow head); PipelineError for
        settings the head cannot take."""
        if self.head == "energy":
            if int(spec.steps) != 1:
                raise PipelineError(f"steps={spec.steps}: the energy head draws a latent in "
                                    "one pass; use steps=1")
            if self.guided(labels_B, spec):
                raise PipelineError("classifier-free guidance needs the flow head "
                                    "(dit.head=flow); call with guidance=1")
            if self.dcfg.energy_temperature == "shrink":
                return 1
            return temperature_power(float(spec.temperature))
        return 1

    def stream(self, n: int, spec: SamplingSpec, labels_B: np.ndarray,
               prompts: Sequence[Sequence[Sequence[int]]] | None = None
               ) -> Iterator[np.ndarray]:
        """Latents of n texts in order (B x G x D: chunk by chunk through the prompts, then
        up to each VAE block boundary in one jitted scan), from the first chunk of each
        prompt's last VAE block (prompts: each a list of token blocks, the last one
        possibly short)."""
        n_pick = self.check(spec, labels_B)
        guided = self.guided(labels_B, spec)
        forced_tokens, forced, pad = self._layout(n, prompts)
        start = forced.shape[1] - self.model.N if prompts is not None else 0
        key = jax.random.PRNGKey(spec.seed)
        cache = self.model.empty_cache(2 * n if guided else n)
        prev_tokens = jnp.full((n, self.K), PAD_ID, jnp.int32)
        prev_z = jnp.zeros((n, self.D), jnp.float32)
        labels = jnp.asarray(labels_B, jnp.int32)
        traced = spec.traced()
        static = dict(graphdef=self.graphdef, vae_graphdef=self.vae_graphdef, n_pick=n_pick,
                      samples=self.dcfg.temperature_samples, guided=guided,
                      shrink=self.head == "energy" and
                      self.dcfg.energy_temperature == "shrink")
        P = forced_tokens.shape[1]
        for p in range(P):  # the prompts, chunk by chunk, and the rest of their last block
            z, prev_tokens, _, cache = _next_chunk(
                self.params, self.vae_params, self.stats, cache, prev_tokens, prev_z,
                jnp.asarray(pad == p), jnp.asarray(pad <= p), p, forced_tokens[:, p],
                forced[:, p], labels, jax.random.fold_in(key, p), traced, **static)
            prev_z = z
            if p >= start:
                yield np.asarray(z)[:, None, :]
        N, p0 = self.model.N, P
        while True:  # then up to each VAE block boundary in one scan
            count = N - p0 % N
            z, prev_tokens, cache = _next_chunks(
                self.params, self.vae_params, self.stats, cache, prev_tokens, prev_z,
                jnp.asarray(pad), p0, labels, key, traced, count=count, **static)
            prev_z, p0 = z[:, -1], p0 + count
            yield np.asarray(z)

    def _layout(self, n: int, prompts):
        """(forced tokens B x P x K, forced mask B x P x K, first step of each row B):
        each row's prompt chunks right-aligned so that every prompt's last VAE block
        starts at step P - N."""
        N, K = self.model.N, self.K
        if prompts is None:
            return (np.zeros((n, 0, K), np.int32), np.zeros((n, 0, K), bool),
                    np.zeros(n, np.int64))
        before = max(len(p) - 1 for p in prompts) * N  # chunks of the blocks before the last
        P = before + N
        tokens = np.full((n, P * K), PAD_ID, np.int32)
        mask = np.zeros((n, P * K), bool)
        pad = np.zeros(n, np.int64)
        for r, blocks in enumerate(prompts):
            pad[r] = before - (len(blocks) - 1) * N
            at = pad[r] * K
            for b, block in enumerate(blocks):
                last = b == len(blocks) - 1
                ids = list(block)
                tokens[r, at:at + len(ids)] = ids
                # whole blocks before the last are known to their padding; the last block
                # only as far as the prompt goes
                mask[r, at:at + (len(ids) if last else self.L)] = True
                at += self.L
        return tokens.reshape(n, P, K), mask.reshape(n, P, K), pad
