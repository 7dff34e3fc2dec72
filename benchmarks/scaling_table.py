"""One row per system at one budget of the scaling study (`benchmarks/results/scaling.json`):
training FLOPs, the autoencoder's token accuracy, the prior's validation loss, gen-PPL at T = 1
and at a matched unigram entropy, the ratio to the AR baseline's line at the same FLOPs (and,
for a system aligned to a teacher trained for it, at its FLOPs without the teacher's training),
and BrierLM. Reads the results only: `benchmarks/scaling.py` trains and scores.

    .venv/bin/python benchmarks/scaling_table.py --budget 1 \\
        --systems "ldlm,ldlm aligned 0.1,ldlm aligned 0.5,ldlm aligned 1"
"""

import argparse
import json
import math
import pathlib

BASELINE = "AR baseline"


def rows(results: dict, systems: list[str], budget: float, key: str) -> list[dict]:
    """The table's rows (dicts of numbers, None where not measured) in `systems`' order."""
    ar = results["fits"][key][BASELINE]
    out = []
    for system in systems:
        p = next((p for p in results["points"]
                  if p["system"] == system and p["budget"] == budget), None)
        if p is None:
            raise SystemExit(f"{system!r} has no point at budget {budget:g} in the results")
        t1 = next((r for r in p["rows"] if r["temperature"] == 1.0), {})
        stages, brier = p.get("stages", {}), p.get("brier", {})
        matched = p["matched"][key]
        ar_ppl = 10 ** (ar["a"] + ar["b"] * math.log10(p["flops"]))
        teacher = p.get("flops_by_stage", {}).get("teacher")
        ar_ppl_no_teacher = ar_ppl if teacher is None else \
            10 ** (ar["a"] + ar["b"] * math.log10(p["flops"] - teacher))
        out.append({"system": system, "flops": p["flops"],
                    "ae_clean": stages.get("autoencoder_accuracy"),
                    "ae_noise": stages.get("autoencoder_accuracy_noise_0.5"),
                    "prior_loss": stages.get("prior_validation_loss"),
                    "h_t1": t1.get("unigram_entropy"), "ppl_t1": t1.get("gen_ppl_reference"),
                    "ppl_matched": matched, "ar_matched": ar_ppl,
                    "ratio": None if matched is None else matched / ar_ppl,
                    "teacher_flops": teacher,
                    "ratio_no_teacher": None if matched is None else matched / ar_ppl_no_teacher,
                    "brier_1": brier.get("brier_1"),
                    "brier_lm": brier.get("brier_lm") if brier.get("prefixes") else None})
    return out


def markdown(table: list[dict], entropy: float) -> str:
    def f(x, spec):
        return "-" if x is None else spec.format(x)

    lines = ["| system | training FLOPs | autoencoder accuracy (clean / sigma 0.5) | prior "
             f"validation loss | H at T=1 | gen-PPL at T=1 | gen-PPL at H {entropy:.2f} | "
             "/ AR at equal FLOPs | / AR without the teacher's training | Brier-1 | BrierLM |",
             "|---" * 11 + "|"]
    for r in table:
        ae = "-" if r["ae_clean"] is None else \
            f"{100 * r['ae_clean']:.2f}% / {100 * r['ae_noise']:.2f}%"
        flops = f"{r['flops']:.3g}" + (
            "" if r["teacher_flops"] is None else f" ({r['teacher_flops']:.2g})")
        lines.append(
            f"| {r['system']} | {flops} | {ae} | {f(r['prior_loss'], '{:.4f}')} | "
            f"{f(r['h_t1'], '{:.2f}')} | {f(r['ppl_t1'], '{:,.0f}')} | "
            f"{f(r['ppl_matched'], '{:,.0f}')} | {f(r['ratio'], '{:.1f}')} | "
            f"{f(r['ratio_no_teacher'], '{:.1f}')} | "
            f"{f(r['brier_1'], '{:.3f}')} | {f(r['brier_lm'], '{:.2f}')} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--results", default="benchmarks/results/scaling.json")
    p.add_argument("--systems", required=True, help="comma-separated, in the table's order")
    p.add_argument("--budget", type=float, default=1.0)
    p.add_argument("--gap", default="real_text_minus_0.5",
                   help="which matched entropy (a key of the results' entropies)")
    args = p.parse_args()
    results = json.loads(pathlib.Path(args.results).read_text())
    if args.gap not in results["entropies"]:
        raise SystemExit(f"--gap {args.gap!r}: the results have {list(results['entropies'])}")
    table = rows(results, [s.strip() for s in args.systems.split(",")], args.budget, args.gap)
    print(markdown(table, results["entropies"][args.gap]))


if __name__ == "__main__":
    main()
