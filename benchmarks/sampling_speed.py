"""Sampling speed of a trained run: latency and tokens/s per step budget and batch size.

For each step budget in --steps and batch size in --batch, times `generate_tokens` end to
end (denoising and VAE decoding to token ids; compilation excluded by a warm-up call) and
prints the median latency of --repeats calls, generated tokens per second (tokens the VAE
decoder emitted, through EOS) and the latency per step. When the run has the AR baseline
(`make ar`), its KV-cache sampling of one block at the same batch size is timed in the same
run, and the ratio ldlm tokens/s / AR tokens/s is printed (> 1: ldlm is faster). Numbers
from one run on one machine are comparable with each other; across runs, compare ratios.

    .venv/bin/python benchmarks/sampling_speed.py [--run-dir runs/bbc_news_cpu]
        [--steps 1,4,16,64] [--batch 1,64] [--sampler dpm++]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run-dir", default="runs/bbc_news_cpu")
    p.add_argument("--steps", default="1,4,16,64")
    p.add_argument("--batch", default="1,64")
    p.add_argument("--sampler", default="dpm++")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from ldlm.inference.generation import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(args.run_dir)
    ar = ar_sampler(args.run_dir, pipe)
    budgets = [int(x) for x in args.steps.split(",")]
    batches = [int(x) for x in args.batch.split(",")]
    print(f"device: {jax.devices()[0].device_kind}; run {args.run_dir}; sampler "
          f"{args.sampler}; block of {pipe.vae.block_len} tokens = {pipe.N} latents x "
          f"{pipe.D}")
    print(f"{'batch':>5} {'steps':>5} {'latency s':>10} {'ms/step':>8} {'tokens/s':>9} "
          f"{'AR tokens/s':>11} {'ldlm/AR':>8}")
    for B in batches:
        ar_tps = time_ar(ar, B, args.repeats) if ar else None
        for steps in budgets:
            pipe.generate_tokens(n=B, steps=steps, sampler=args.sampler, seed=0)  # compile
            times, tokens = [], 0
            for r in range(args.repeats):
                start = time.perf_counter()
                out = pipe.generate_tokens(n=B, steps=steps, sampler=args.sampler, seed=r)
                times.append(time.perf_counter() - start)
                tokens += sum(len(t) for t in out)
            latency = statistics.median(times)
            tps = tokens / sum(times)
            ratio = f"{tps / ar_tps:>8.2f}" if ar_tps else f"{'-':>8}"
            ar_col = f"{ar_tps:>11.0f}" if ar_tps else f"{'(no make ar)':>11}"
            print(f"{B:>5} {steps:>5} {latency:>10.3f} {1000 * latency / steps:>8.1f} "
                  f"{tps:>9.0f} {ar_col} {ratio}")


def ar_sampler(run_dir, pipe):
    """A jitted one-block sampler of the run's AR baseline, or None without one."""
    import jax.numpy as jnp

    from ldlm.data.tokenizer import EOS_ID
    from ldlm.errors import MissingStageError
    from ldlm.loading import load_stage_model, stage_config
    from ldlm.models.ar import sample_tokens
    from ldlm.models.ar import build_ar

    try:
        cfg = stage_config(run_dir, "ar", "the AR baseline")
        model = load_stage_model(run_dir, "ar", build_ar(cfg, pipe.vae.tokenizer.vocab_size),
                                 cfg.ar_train)
    except MissingStageError:
        return None
    L = pipe.vae.block_len
    fn = jax.jit(lambda key, B: sample_tokens(model, jnp.full((B,), EOS_ID, jnp.int32), L, key,
                                              temperature=cfg.ar.temperature,
                                              top_p=cfg.ar.top_p), static_argnums=1)
    return fn


def time_ar(fn, B: int, repeats: int) -> float:
    """AR tokens/s for one block at batch B (tokens through the first EOS, detokenising
    excluded as for ldlm's token count)."""
    import numpy as np

    from ldlm.data.tokenizer import through_eos

    np.asarray(fn(jax.random.PRNGKey(0), B))  # compile
    tokens, seconds = 0, 0.0
    for r in range(repeats):
        start = time.perf_counter()
        out = np.asarray(fn(jax.random.PRNGKey(r), B))
        seconds += time.perf_counter() - start
        tokens += sum(len(through_eos(row)) for row in out)
    return tokens / seconds


if __name__ == "__main__":
    main()
