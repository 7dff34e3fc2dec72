"""BrierLM (ldlm/eval/brier.py) of trained priors beside the AR baseline, on the same test
prefixes, in one run: no reference LM needed.

Each --runs entry is a run with a trained prior that continues a text; it is sampled at
temperature 1 with its kind's long-text settings (`long_settings`: --sampler / --steps for a
diffusion prior, --head-steps for a flow head, one step for an energy head). The AR
baseline of --baseline-run (`make ar`) continues the same prefixes (its start token and the
prefix's last half block, temperature 1, no nucleus cut).

    .venv/bin/python benchmarks/brier_table.py --runs runs/bbc_news_cpu,runs/lar_cpu \\
        --baseline-run runs/bbc_news_cpu [--prefixes 256]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="runs/bbc_news_cpu")
    p.add_argument("--baseline-run", default="runs/bbc_news_cpu")
    p.add_argument("--prefixes", type=int, default=256)
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--head-steps", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="", help="write the table as JSON here too")
    args = p.parse_args()

    import jax

    from ldlm.config import EvalConfig
    from ldlm.eval import brier
    from ldlm.inference.causal_lm import load_causal_lm
    from ldlm.inference.generation import LatentDiffusionPipeline

    base = pathlib.Path(args.baseline_run)
    prefixes, truths = brier.held_out_prefixes(base, args.prefixes, args.seed)
    rows = []
    model, cfg = load_causal_lm(base, "ar")
    start = time.perf_counter()
    rows.append({"system": "AR baseline", "run": str(base), **brier.score(
        brier.ar_continuer(model, cfg.data.block_len, jax.random.PRNGKey(args.seed)),
        prefixes, truths), "seconds": time.perf_counter() - start})
    e = EvalConfig(long_sampler=args.sampler, long_steps=args.steps,
                   head_long_steps=args.head_steps)
    for run in args.runs.split(","):
        pipe = LatentDiffusionPipeline.from_pretrained(run)
        if not pipe.has_context:
            print(f"{run}: its prior does not continue a text; skipped")
            continue
        sampler, steps, _ = pipe.sampler.long_settings(e)
        decode = pipe.vae.tokenizer.decode
        start = time.perf_counter()
        out = brier.score(lambda ps: pipe.generate_tokens(
            n=len(ps), steps=steps, sampler=sampler, seed=args.seed, temperature=1.0,
            max_tokens=brier.ORDERS, prompt=[decode(x) for x in ps]), prefixes, truths)
        rows.append({"system": pipe.sampler.describe(), "run": run, "steps": steps, **out,
                     "seconds": time.perf_counter() - start})
    print(f"{len(prefixes)} test prefixes of {base}, each continued twice at temperature 1")
    print("| system | run | BrierLM | Brier-1 | Brier-2 | Brier-3 | Brier-4 |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['system']} | {r['run']} | {r['brier_lm']:.2f} | " +
              " | ".join(f"{r[f'brier_{n}']:.3f}" for n in range(1, 5)) + " |")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
