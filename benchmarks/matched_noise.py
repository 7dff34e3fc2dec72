"""How far gen-PPL at a matched unigram entropy moves with the sampling seed alone: the error
bar of one point of `benchmarks/scaling.py` (same texts, temperatures and scorer), for a
trained run. It does not include the noise of training: for that, train the system from
another seed (`benchmarks/scaling.py --systems "ldlm seed 1"`).

    .venv/bin/python benchmarks/matched_noise.py --run runs/bbc_news_cpu --seeds 0,1,2,3

For each seed: the temperature sweep's texts, scored by the reference LM of --base, and
gen-PPL read at real text's entropy less --gap nats; then the spread over seeds.
"""

import argparse
import math
import pathlib
import statistics


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--run", required=True, help="a run with a trained latent prior")
    p.add_argument("--base", default="runs/bbc_news_cpu",
                   help="the run with the test split and the reference LM")
    p.add_argument("--seeds", default="0,1,2,3")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--temperatures", default="1.3,1.0,0.85,0.7")
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--gap", type=float, default=0.5)
    args = p.parse_args()

    from ldlm.eval import long_texts
    from ldlm.eval.compare import ReferenceLM
    from ldlm.inference.causal_lm import load_causal_lm
    from ldlm.inference.generation import LatentDiffusionPipeline

    model, ref_cfg = load_causal_lm(pathlib.Path(args.base), "reference")
    scorer = {"reference": ReferenceLM(model, ref_cfg.data.block_len)}
    real = long_texts.text_row(long_texts.real_texts(args.base, args.n, args.tokens), scorer)
    h = real["unigram_entropy"] - args.gap
    pipe = LatentDiffusionPipeline.from_pretrained(args.run)
    values = []
    for seed in (int(s) for s in args.seeds.split(",")):
        rows = []
        for T in (float(t) for t in args.temperatures.split(",")):
            texts = pipe.generate_tokens(n=args.n, steps=args.steps, sampler=args.sampler,
                                         seed=seed, max_tokens=args.tokens, temperature=T)
            rows.append({"temperature": T, **long_texts.text_row(texts, scorer)})
        at = long_texts.matched(rows, {"h": h}, "gen_ppl_reference")["h"]
        print(f"seed {seed}: " + ", ".join(
            f"T={r['temperature']:g} H {r['unigram_entropy']:.2f} gen-PPL "
            f"{r['gen_ppl_reference']:.0f}" for r in rows) +
            f"; at H {h:.2f}: {'not reached' if at is None else f'{at:.0f}'}", flush=True)
        if at is not None:
            values.append(at)
    if len(values) >= 2:
        logs = [math.log(v) for v in values]
        sd = statistics.stdev(logs)
        print(f"{args.run}: gen-PPL at H {h:.2f} over {len(values)} seeds: mean "
              f"{math.exp(statistics.fmean(logs)):.0f}, min {min(values):.0f}, max "
              f"{max(values):.0f}; standard deviation of log gen-PPL {sd:.3f} (one seed's "
              f"value is within about +/-{100 * (math.exp(sd) - 1):.0f}%)")


if __name__ == "__main__":
    main()
