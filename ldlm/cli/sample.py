"""`python -m ldlm.cli.sample`: generate text from a trained run with a chosen step budget.

Prints each sample, then the wall-clock time and generated tokens per second (VAE decoding
included; the first call's compilation is timed separately).
"""

from __future__ import annotations

import argparse
import pathlib
import time

from ldlm.cli import common


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--run-dir", default="runs/bbc_news_cpu", help="a run with a trained DiT")
    p.add_argument("--steps", type=int, default=16, help="denoising steps, 1 .. 1000")
    p.add_argument("-n", type=int, default=8, help="number of samples")
    p.add_argument("--sampler", default="dpm++", help="ddpm | ddim | dpm++")
    p.add_argument("--guidance", type=float, default=1.0,
                   help="classifier-free guidance scale (with --label; 1 = plain conditional)")
    p.add_argument("--label", default=None, help="class label, e.g. sports")
    p.add_argument("--prompt", default=None, help="text to continue")
    p.add_argument("--num-blocks", type=int, default=1, help="blocks per sample")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--eta", type=float, default=0.0, help="DDIM noise (0 .. 1)")
    p.add_argument("--grid", default="uniform", help="uniform | quadratic")
    p.add_argument("--temperature", type=float, default=1.0,
                   help="scales the starting and injected noise (below 1: likelier, less "
                        "varied text)")
    return p


def main(argv=None) -> None:
    args = parser().parse_args(argv)

    def run():
        from ldlm.pipeline import LatentDiffusionPipeline

        pipe = LatentDiffusionPipeline.from_pretrained(pathlib.Path(args.run_dir))
        kwargs = dict(n=args.n, steps=args.steps, sampler=args.sampler,
                      guidance=args.guidance, label=args.label, prompt=args.prompt,
                      num_blocks=args.num_blocks, eta=args.eta, grid=args.grid,
                      temperature=args.temperature)
        start = time.perf_counter()
        pipe.generate(**kwargs, seed=args.seed)  # compiles; same shapes as the timed call
        compile_s = time.perf_counter() - start
        start = time.perf_counter()
        texts = pipe.generate(**kwargs, seed=args.seed)
        seconds = time.perf_counter() - start
        tokens = sum(len(pipe.vae.tokenizer.encode(t)) for t in texts)
        for i, text in enumerate(texts):
            print(f"--- sample {i} ({args.label or 'unconditional'}, {args.steps} steps, "
                  f"{args.sampler})")
            print(text)
        print(f"--- {len(texts)} samples in {seconds:.2f} s ({tokens / seconds:.0f} tokens/s; "
              f"first call with compilation {compile_s:.2f} s)")

    common.main_guard(run)


if __name__ == "__main__":
    main()
