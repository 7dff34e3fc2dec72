"""Block-by-block sampling of the block-causal prior with a KV cache.

Each diffusion block of G latents is denoised in S steps (`ldlm.diffusion.samplers`, the step
count traced: one compile per sampler, grid, guidance and batch shape) against the cached
keys and values of the committed history, then committed: its clean stream runs once and
its keys and values enter the cache. A prompt is committed the same way (prefix encoding).

Classifier-free guidance runs a batch of 2B rows, the B conditional rows then the same B
with the null label; both halves commit the same latents, so each keeps its own cache (the
clean stream is modulated by the class too).
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from ldlm.config import DiTConfig
from ldlm.diffusion import samplers
from ldlm.models.block_causal import BlockCausalDiT, KVCache


def _two(x):
    return jnp.concatenate([x, x])


def block_denoiser(graphdef, dcfg: DiTConfig, sampler: str, grid: str, guided: bool,
                   trajectory_steps: int | None = None):
    """fn(params, cache, pos0, z_BxGxD, key, label_B, guidance, steps, eta, temperature,
    t_start) -> (z0_BxGxD, cache with the block committed): z (noise at t_start, 1 for
    pure noise) denoised against the cache. With `guided` the cache has 2B rows and label_B
    holds the B conditional labels. With `trajectory_steps` (a Python int: the scan's
    length) also the clean estimate of every step: (z0, estimates SxBxGxD, cache)."""

    def run(params, cache: KVCache, pos0, z_T, key, label_B, guidance, steps, eta,
            temperature, t_start=1.0):
        model: BlockCausalDiT = nnx.merge(graphdef, params)
        labels = jnp.concatenate([label_B, jnp.full_like(label_B, model.null_label)]) \
            if guided else label_B

        def net(z, t, sc):
            if not guided:
                return model.denoise(cache, z, t, pos0, self_cond_BxGxD=sc, label_B=labels)
            out = model.denoise(cache, _two(z), _two(t), pos0, self_cond_BxGxD=_two(sc),
                                label_B=labels)
            cond, uncond = jnp.split(out, 2)
            return samplers.guide(cond, uncond, guidance)

        out = samplers.sample(net, z_T, trajectory_steps or steps, key, sampler=sampler,
                              schedule=dcfg.schedule, snr_scale=dcfg.snr_scale,
                              prediction=dcfg.prediction, eta=eta, grid=grid,
                              t_start=t_start, trajectory=trajectory_steps is not None,
                              temperature=temperature)
        z0 = out[0] if trajectory_steps else out
        cache = model.commit(cache, _two(z0) if guided else z0, pos0, label_B=labels)
        return (z0, out[1], cache) if trajectory_steps else (z0, cache)

    return run


def committer(graphdef, guided: bool):
    """fn(params, cache, x0_BxGxD, valid_BxG, pos0, label_B) -> cache with x0 committed
    (prefix encoding of a prompt; valid False on padding slots)."""

    def run(params, cache: KVCache, x0, valid, pos0, label_B):
        model: BlockCausalDiT = nnx.merge(graphdef, params)
        if guided:
            label_B = jnp.concatenate([label_B, jnp.full_like(label_B, model.null_label)])
            x0, valid = _two(x0), _two(valid)
        return model.commit(cache, x0, pos0, valid_BxG=valid, label_B=label_B)

    return run
