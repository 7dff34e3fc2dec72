"""Sampling the per-block DiT: each VAE block denoised in one jitted loop (the step count,
guidance, eta and temperature traced: one compile per sampler, grid, guided or not and
batch shape), block after block, each seeing the block before as context (and the block
after, for infilling) when the DiT was trained with `dit.use_context`."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ldlm.config import DiTConfig
from ldlm.diffusion import samplers, schedules
from ldlm.diffusion.spec import SamplingSpec
from ldlm.priors.base import OPERATIONS, LatentSampler


@dataclasses.dataclass
class Context:
    """Neighbour latents (normalised) for a batch; zeros and False where absent."""
    prev_BxNxD: np.ndarray
    has_prev_B: np.ndarray
    next_BxNxD: np.ndarray
    has_next_B: np.ndarray

    @classmethod
    def empty(cls, B: int, N: int, D: int) -> "Context":
        z = np.zeros((B, N, D), np.float32)
        return cls(z, np.zeros(B, bool), z.copy(), np.zeros(B, bool))

    def arrays(self) -> dict:
        return {k: jnp.asarray(v) for k, v in dataclasses.asdict(self).items()}


def _two(x):
    return jnp.concatenate([x, x])


@functools.partial(jax.jit, static_argnames=("graphdef", "dcfg", "guided",
                                             "trajectory_steps"))
def denoise(params, z_BxNxD, key, label_B, ctx: dict, spec: SamplingSpec, t_start, *,
            graphdef, dcfg: DiTConfig, guided: bool, trajectory_steps: int | None = None):
    """z (noise at t_start) denoised into clean latents BxNxD (with trajectory_steps also
    every step's clean estimate). With `guided` each step runs 2B rows: the conditional
    ones, then the same with the null label."""
    model = nnx.merge(graphdef, params)

    def net(z, t, sc):
        if not guided:
            return model(z, t, self_cond_BxNxD=sc, label_B=label_B, **ctx)
        out = model(_two(z), _two(t), self_cond_BxNxD=_two(sc),
                    label_B=jnp.concatenate([label_B, jnp.full_like(label_B,
                                                                    model.null_label)]),
                    **{k: _two(v) for k, v in ctx.items()})
        cond, uncond = jnp.split(out, 2)
        return samplers.guide(cond, uncond, spec.guidance)

    return samplers.sample(net, z_BxNxD, key, spec, schedule=dcfg.schedule,
                           snr_scale=dcfg.snr_scale, prediction=dcfg.prediction,
                           t_start=t_start, trajectory_steps=trajectory_steps)


@functools.partial(jax.jit, static_argnames=("graphdef", "dcfg"))
def _predict(params, z, t, label_B, *, graphdef, dcfg: DiTConfig):
    a, s = schedules.alpha_sigma(schedules.logsnr(t, dcfg.schedule, dcfg.snr_scale))
    out = nnx.merge(graphdef, params)(z, t, label_B=label_B)
    return schedules.to_x0(dcfg.prediction, out, z, a, s)


class PerBlockSampler(LatentSampler):
    kind = "per_block"
    OPERATIONS = OPERATIONS

    def describe(self) -> str:
        return "per-block DiT"

    def missing(self, op: str) -> str | None:
        if op in ("continue", "infill") and not self.dcfg.use_context:
            return ("needs a DiT trained with neighbouring-block context; this run was "
                    "trained with dit.use_context=false (retrain with "
                    "SET=\"dit.use_context=true\")")
        return super().missing(op)

    def _run(self, key, z, spec, labels_B, ctx: Context, t_start=1.0, trajectory_steps=None):
        guided = self.guided(labels_B, spec)
        return denoise(self.params, jnp.asarray(z, jnp.float32), jax.random.fold_in(key, 2),
                       jnp.asarray(labels_B), ctx.arrays(), spec.traced(),
                       jnp.float32(t_start), graphdef=self.graphdef, dcfg=self.dcfg,
                       guided=guided, trajectory_steps=trajectory_steps)

    def _from_noise(self, key, n, spec, labels_B, ctx, trajectory_steps=None):
        z_T = spec.temperature * jax.random.normal(key, (n, self.N, self.D))
        return self._run(key, z_T, spec, labels_B, ctx, trajectory_steps=trajectory_steps)

    def stream(self, n, spec, labels_B, prompts=None):
        """Block after block, each seeing the one before (a prompt's last block first)."""
        ctx = Context.empty(n, self.N, self.D)
        if prompts is not None:
            for i, p in enumerate(prompts):
                ctx.prev_BxNxD[i] = p[-1]
            ctx.has_prev_B[:] = True
        key = jax.random.PRNGKey(spec.seed)
        b = 0
        while True:
            z = np.asarray(self._from_noise(jax.random.fold_in(key, b), n, spec, labels_B,
                                            ctx))
            yield z
            ctx.prev_BxNxD[:], ctx.has_prev_B[:] = z, True
            b += 1

    def infill(self, before_KxNxD, after_NxD, n, spec, labels_B):
        ctx = Context.empty(n, self.N, self.D)
        ctx.prev_BxNxD[:], ctx.has_prev_B[:] = before_KxNxD[-1], True
        ctx.next_BxNxD[:], ctx.has_next_B[:] = after_NxD, True
        return np.asarray(self._from_noise(jax.random.PRNGKey(spec.seed), n, spec, labels_B,
                                           ctx))

    def edit(self, texts, strength, spec, labels_B):
        """All blocks of all texts at once, each seeing its original neighbours (with
        context)."""
        owners = np.concatenate([np.full(len(x), i) for i, x in enumerate(texts)])
        x0 = np.concatenate(texts)
        ctx = Context.empty(len(x0), self.N, self.D)
        use = self.dcfg.use_context
        for j in range(len(x0)):
            if j > 0 and owners[j - 1] == owners[j]:
                ctx.prev_BxNxD[j], ctx.has_prev_B[j] = x0[j - 1], use
            if j + 1 < len(x0) and owners[j + 1] == owners[j]:
                ctx.next_BxNxD[j], ctx.has_next_B[j] = x0[j + 1], use
        key = jax.random.PRNGKey(spec.seed)
        a, s = schedules.alpha_sigma(schedules.logsnr(strength, self.dcfg.schedule,
                                                      self.dcfg.snr_scale))
        eps = spec.temperature * jax.random.normal(jax.random.fold_in(key, 1), x0.shape)
        out = np.asarray(self._run(key, a * x0 + s * eps, spec, labels_B[owners], ctx,
                                   t_start=strength))
        return [out[owners == i] for i in range(len(texts))]

    def trajectory(self, n, spec, labels_B):
        key = jax.random.fold_in(jax.random.PRNGKey(spec.seed), 0)
        # the scan's length is the step count, so a trajectory compiles once per budget
        z, estimates = self._from_noise(key, n, spec, labels_B,
                                        Context.empty(n, self.N, self.D),
                                        trajectory_steps=spec.steps)
        return np.asarray(estimates), np.asarray(z)

    def predict_clean(self, z_BxTxD, t_B, labels_B):
        return np.asarray(_predict(self.params, jnp.asarray(z_BxTxD), t_B,
                                   jnp.asarray(labels_B), graphdef=self.graphdef,
                                   dcfg=self.dcfg))
