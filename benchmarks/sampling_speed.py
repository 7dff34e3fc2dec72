"""Sampling speed of a trained run: latency and tokens/s per step budget and batch size.

For each step budget in --steps and batch size in --batch, times `generate` end to end
(denoising, VAE decoding, detokenisation; compilation excluded by a warm-up call) and
prints the median latency of --repeats calls, generated tokens per second (tokens the VAE
decoder emitted, through EOS) and the latency per step. Numbers from one run on one machine
are comparable with each other; across runs, compare ratios.

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

    from ldlm.pipeline import LatentDiffusionPipeline

    pipe = LatentDiffusionPipeline.from_pretrained(args.run_dir)
    budgets = [int(x) for x in args.steps.split(",")]
    batches = [int(x) for x in args.batch.split(",")]
    print(f"device: {jax.devices()[0].device_kind}; run {args.run_dir}; sampler "
          f"{args.sampler}; block of {pipe.vae.block_len} tokens = {pipe.N} latents x "
          f"{pipe.D}")
    print(f"{'batch':>5} {'steps':>5} {'latency s':>10} {'ms/step':>8} {'tokens/s':>9}")
    for B in batches:
        for steps in budgets:
            pipe.generate_tokens(n=B, steps=steps, sampler=args.sampler, seed=0)  # compile
            times, tokens = [], 0
            for r in range(args.repeats):
                start = time.perf_counter()
                out = pipe.generate_tokens(n=B, steps=steps, sampler=args.sampler, seed=r)
                times.append(time.perf_counter() - start)
                tokens += sum(len(t) for t in out)
            latency = statistics.median(times)
            print(f"{B:>5} {steps:>5} {latency:>10.3f} {1000 * latency / steps:>8.1f} "
                  f"{tokens / sum(times):>9.0f}")


if __name__ == "__main__":
    main()
