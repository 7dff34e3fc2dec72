"""Quality of texts longer than one block, per prior, step budget and temperature: the table
behind README's block-size comparison.

Systems: real test text (two consecutive blocks of one document), the AR baseline of --base
(`make ar`; block after block of its context, each starting afresh), the per-block DiT of
--base (continuing its own previous block), and each block-causal run of --runs. Each writes
--n texts of --tokens tokens (unconditional, --sampler, seed 0); every text is scored in
blocks of the scorer's context (`data.block_len` tokens, each block alone) under the AR
baseline: gen-PPL (token-weighted), with unigram entropy, distinct-2 and the repeated-4-gram
rate over the texts. Step budgets --steps at temperature 1, and --temperatures at the
largest budget (the AR baseline samples at the same temperatures, top-p from its config).
`matched` gives each system's gen-PPL interpolated (log-linear in entropy along its
temperature sweep) at a few unigram entropies, None outside the sweep.

    .venv/bin/python benchmarks/block_size_table.py --base runs/bbc_news_cpu \
        --runs runs/bc_g1,runs/bc_g2,runs/bc_g4,runs/bc_g16 \
        --out benchmarks/results/block_size_table.json
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import jax
import numpy as np

from sampling_speed import ar_sampler, ar_texts, prior_name


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="runs/bbc_news_cpu")
    p.add_argument("--runs", default="")
    p.add_argument("--n", type=int, default=256)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--steps", default="4,16,64")
    p.add_argument("--temperatures", default="1.0,0.85,0.7")
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--entropies", default="5.5,5.75,6.0")
    p.add_argument("--out", default="benchmarks/results/block_size_table.json")
    p.add_argument("--merge", default="",
                   help="comma-separated earlier outputs whose rows join this table's")
    p.add_argument("--no-base", action="store_true",
                   help="only the --runs priors (real text, AR and per-block DiT from --merge)")
    args = p.parse_args()

    from ldlm.eval import compare
    from ldlm.eval import sample_metrics as metrics
    from ldlm.eval.long_texts import real_texts
    from ldlm.inference.causal_lm import load_causal_lm
    from ldlm.inference.generation import LatentDiffusionPipeline

    base = LatentDiffusionPipeline.from_pretrained(args.base)
    L = base.vae.block_len
    scorer = compare.ReferenceLM(load_causal_lm(args.base, "ar")[0], L)
    budgets = [int(s) for s in args.steps.split(",")]
    temps = [float(t) for t in args.temperatures.split(",")]

    def score(system, setting, texts, seconds):
        chunks = [t[i:i + L] for t in texts for i in range(0, len(t), L) if t[i:i + L]]
        nll, count, _ = scorer.score(chunks)
        row = {"system": system, **setting, "gen_ppl": metrics.perplexity(nll, count),
               "unigram_entropy": metrics.unigram_entropy(texts),
               "distinct_2": metrics.distinct_n(texts, 2),
               "repeat_4": metrics.repeated_ngram_rate(texts, 4),
               "mean_tokens": float(np.mean([len(t) for t in texts])),
               "seconds": round(seconds, 2)}
        print(json.dumps(row), flush=True)
        rows.append(row)

    rows: list[dict] = [r for f in filter(None, args.merge.split(","))
                        for r in json.loads(pathlib.Path(f).read_text())["rows"]]
    names = list(dict.fromkeys(r["system"] for r in rows if r["system"] != "real text"))
    if not args.no_base:
        score("real text", {}, real_texts(args.base, args.n, args.tokens), 0.0)
    for T in temps if not args.no_base else []:
        fn = ar_sampler(args.base, base, temperature=T)
        start = time.perf_counter()
        texts = ar_texts(fn, jax.random.PRNGKey(0), args.n, args.tokens, L)
        score("AR baseline", {"temperature": T}, texts, time.perf_counter() - start)
    pipes = {} if args.no_base else {"per-block DiT": base}
    for run in filter(None, args.runs.split(",")):
        pipe = LatentDiffusionPipeline.from_pretrained(run)
        pipes[prior_name(pipe)] = pipe
    for name, pipe in pipes.items():
        settings = [(S, 1.0) for S in budgets] + [(budgets[-1], T) for T in temps if T != 1.0]
        for S, T in settings:
            start = time.perf_counter()
            texts = pipe.generate_tokens(n=args.n, steps=S, sampler=args.sampler, seed=0,
                                         max_tokens=args.tokens, temperature=T)
            score(name, {"steps": S, "temperature": T}, texts, time.perf_counter() - start)

    entropies = [float(h) for h in args.entropies.split(",")]
    matched = {name: {str(h): matched_ppl([r for r in rows if r["system"] == name and
                                            r.get("steps", budgets[-1]) == budgets[-1]], h)
                      for h in entropies}
               for name in dict.fromkeys([*names, "AR baseline", *pipes])
               if any(r["system"] == name for r in rows)}
    out = pathlib.Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "device": jax.devices()[0].device_kind,
                               "rows": rows, "matched": matched}, indent=1) + "\n")
    print(markdown(rows, matched, entropies))


def markdown(rows: list[dict], matched: dict, entropies: list[float]) -> str:
    """The rows, then gen-PPL at matched entropy, as markdown tables."""
    out = ["| system | steps | T | gen-PPL | unigram H | distinct-2 | repeated 4-grams |",
           "|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r['system']} | {r.get('steps', '')} | {r.get('temperature', '')} | "
                   f"{r['gen_ppl']:.0f} | {r['unigram_entropy']:.2f} | "
                   f"{r['distinct_2']:.2f} | {100 * r['repeat_4']:.2f}% |")
    out += ["", "| system | " + " | ".join(f"gen-PPL at H={h}" for h in entropies) + " |",
            "|---|" + "---|" * len(entropies)]
    for name, at in matched.items():
        out.append(f"| {name} | " + " | ".join(
            "-" if at[str(h)] is None else f"{at[str(h)]:.0f}" for h in entropies) + " |")
    return "\n".join(out)


def matched_ppl(rows: list[dict], entropy: float):
    """gen-PPL at `entropy` along the rows' temperature sweep (None outside it)."""
    from ldlm.eval import long_texts

    return long_texts.matched(rows, {"h": entropy}, "gen_ppl")["h"]


if __name__ == "__main__":
    main()
