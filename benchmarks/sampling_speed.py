"""Sampling speed of trained priors beside the AR baseline: seconds and tokens/s for texts of
--tokens tokens, per prior, step budget and batch size, in one run.

Each --runs entry is a run with a trained prior (a block-causal one is labelled with its
block size G, the per-block DiT "block", a latent_ar one with its head: an energy head takes
1 step only, a flow head each budget); `generate_tokens(max_tokens=--tokens)` is timed
end to end (denoising, KV-cache commits and VAE decoding to token ids; compilation excluded
by a warm-up call), median of --repeats calls. The AR baseline of --baseline-run (`make ar`)
writes the same number of tokens with its KV cache, block after block of its context
(`data.block_len` tokens; each block starts afresh, the cheapest way for it to write past its
context), timed in the same run. Printed: seconds per text, tokens/s (tokens the samples
hold, through EOS) and the ratio of ldlm's tokens/s to the AR baseline's at the same batch
(> 1: ldlm is faster). Numbers from one run on one machine are comparable with each other;
across runs, compare ratios.

    .venv/bin/python benchmarks/sampling_speed.py [--runs runs/bc_g1,runs/bc_g4]
        [--baseline-run runs/bbc_news_cpu] [--steps 4,16,64] [--batch 1,64] [--tokens 128]
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import numpy as np


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs/bbc_news_cpu",
                   help="comma-separated runs with a trained prior")
    p.add_argument("--baseline-run", default="runs/bbc_news_cpu",
                   help="the run whose AR baseline (make ar) is timed")
    p.add_argument("--steps", default="4,16,64")
    p.add_argument("--batch", default="1,64")
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--repeats", type=int, default=3)
    args = p.parse_args()

    from ldlm.inference.generation import LatentDiffusionPipeline

    pipes = {run: LatentDiffusionPipeline.from_pretrained(run) for run in args.runs.split(",")}
    first = next(iter(pipes.values()))
    ar = ar_sampler(args.baseline_run, first)
    budgets = [int(x) for x in args.steps.split(",")]
    batches = [int(x) for x in args.batch.split(",")]
    print(f"device: {jax.devices()[0].device_kind}; {args.tokens} tokens per text; sampler "
          f"{args.sampler}; VAE block of {first.vae.block_len} tokens = {first.N} latents")
    print(f"{'prior':>14} {'batch':>5} {'steps':>5} {'s/text':>8} {'tokens/s':>9} "
          f"{'AR s/text':>9} {'AR tok/s':>9} {'ldlm/AR':>8}")
    for B in batches:
        ar_seconds, ar_tps = time_ar(ar, B, args.tokens, args.repeats) if ar else (None,
                                                                                    None)
        for run, pipe in pipes.items():
            name = prior_name(pipe)
            for steps in pipe.sampler.sample_budgets(budgets):  # an energy head: 1
                seconds, tps = time_ldlm(pipe, B, steps, args.tokens, args.sampler,
                                         args.repeats)
                ratio = f"{tps / ar_tps:>8.2f}" if ar_tps else f"{'-':>8}"
                ar_cols = f"{ar_seconds:>9.3f} {ar_tps:>9.0f}" if ar_tps else \
                    f"{'-':>9} {'(no ar)':>9}"
                print(f"{name:>14} {B:>5} {steps:>5} {seconds:>8.3f} {tps:>9.0f} {ar_cols} "
                      f"{ratio}", flush=True)


def prior_name(pipe) -> str:
    return pipe.sampler.describe()


def time_ldlm(pipe, B: int, steps: int, tokens: int, sampler: str, repeats: int):
    """(median seconds per call, tokens/s) of `repeats` calls writing B texts."""
    def call(seed):
        return pipe.generate_tokens(n=B, steps=steps, sampler=sampler, seed=seed,
                                    max_tokens=tokens)

    call(0)  # compile
    times, written = [], 0
    for r in range(repeats):
        start = time.perf_counter()
        out = call(r)
        times.append(time.perf_counter() - start)
        written += sum(len(t) for t in out)
    return statistics.median(times), written / sum(times)


def ar_sampler(run_dir, pipe, temperature: float | None = None):
    """fn(key, B) -> B x block_len tokens from the run's AR baseline (jitted; at its
    config's temperature unless given), or None without one."""
    import jax.numpy as jnp

    from ldlm.data.tokenizer import EOS_ID
    from ldlm.errors import MissingStageError
    from ldlm.inference.causal_lm import load_causal_lm
    from ldlm.models.ar import sample_tokens

    try:
        model, cfg = load_causal_lm(run_dir, "ar")
    except MissingStageError:
        return None
    L = pipe.vae.block_len
    return jax.jit(lambda key, B: sample_tokens(model, jnp.full((B,), EOS_ID, jnp.int32), L,
                                                key, temperature=cfg.ar.temperature
                                                if temperature is None else temperature,
                                                top_p=cfg.ar.top_p), static_argnums=1)


def ar_texts(fn, key, B: int, tokens: int, block_len: int) -> list[list[int]]:
    """B texts of `tokens` tokens, one AR block after another (each through its first EOS)."""
    from ldlm.data.tokenizer import through_eos

    texts = [[] for _ in range(B)]
    for b in range(-(-tokens // block_len)):
        out = np.asarray(fn(jax.random.fold_in(key, b), B))
        for i, row in enumerate(out):
            texts[i].extend(through_eos(row))
    return [t[:tokens] for t in texts]


def time_ar(fn, B: int, tokens: int, repeats: int):
    """(median seconds per call, tokens/s) of the AR baseline writing B texts."""
    L = int(fn(jax.random.PRNGKey(0), B).shape[1])  # compile
    times, written = [], 0
    for r in range(repeats):
        start = time.perf_counter()
        out = ar_texts(fn, jax.random.PRNGKey(r), B, tokens, L)
        times.append(time.perf_counter() - start)
        written += sum(len(t) for t in out)
    return statistics.median(times), written / sum(times)


if __name__ == "__main__":
    main()
