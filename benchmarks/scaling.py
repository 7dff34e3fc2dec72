"""Where the lines cross: ldlm and the AR baseline trained at several compute budgets on the
same data, scored by the same reference LM at matched unigram entropy.

ldlm is the system the preset ships (VAE, latents, seam decoder, block-causal prior); the
AR baseline is the preset's `ar`. Budget f multiplies the steps of every training stage of
the preset (vae_train, decoder_train, dit_train for ldlm; ar_train for the baseline; the
learning-rate schedules follow the steps); data and tokenizer are those of --base, whose
reference LM (`make reference`, trained once) scores every text. Each budget's run is
--out-dir/f<f>, trained through the stage entry points (`ldlm <stage> --run-dir ...`):
finished stages are skipped and unfinished ones resume from their checkpoints, and every
scored point is written to --results as soon as it is done, so a killed study picks up where
it stopped.

Compute: analytic training FLOPs (ldlm/flops.py: matmuls, forward x 3, self-conditioning's
extra pass) of every step of every stage, plus one encoder pass over the corpus for the
latents (ldlm); the VAE counts towards ldlm. Wall time is printed, not fitted (the machine
is shared). Quality: for each system and budget, --n texts of --tokens tokens at each of
--temperatures (ldlm: --sampler, --steps), gen-PPL under the reference LM and unigram entropy
(ldlm/eval/long_texts.py), read at real text's entropy and at each of --gaps nats below it
(a point whose temperature sweep does not reach an entropy has no value there, and is left
out of that entropy's fit).

Fit, per system and entropy: log gen-PPL = a + b log10 FLOPs by least squares over the
budgets, with the slope's standard error; the budget where the lines would meet (if they
converge) from 10,000 draws of both lines' parameters (normal, from the fits' covariances):
median and 16-84% range, and the fraction of draws in which they converge at all.

Small priors barely move their entropy with the temperature, so a fixed entropy may lie
outside their sweep. `at_ldlm_entropy` compares where every ldlm point has a value: ldlm at
temperature 1 against the baseline at the same unigram entropy (each baseline budget's sweep
read there) and the same FLOPs (the baseline's line through its budgets read at ldlm's
FLOPs); the ratio's line against FLOPs and where it would reach 1 are fitted as above.

    .venv/bin/python benchmarks/scaling.py --base runs/bbc_news_cpu \\
        --budgets 0.111,0.333,1 --out-dir runs/scaling \\
        --results benchmarks/results/scaling.json --plot benchmarks/results/scaling.png
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import pathlib
import subprocess
import sys
import time

import numpy as np

# stage -> (the file it writes last, the train sections its steps come from)
LDLM_STAGES = (("vae", "vae/eval.json", ("vae_train",)),
               ("latents", "latents/meta.json", ()),
               ("decoder", "decoder/eval.json", ("decoder_train",)),
               ("dit", "dit/result.json", ("dit_train",)))
CHUNK_STAGES = (("vae", "vae/eval.json", ("vae_train",)),  # no seam decoder
                ("latents", "latents/meta.json", ()),
                ("dit", "dit/result.json", ("dit_train",)))
AR_STAGES = (("ar", "ar/result.json", ("ar_train",)),)
BASELINE = "AR baseline"


@dataclasses.dataclass(frozen=True)
class System:
    """One line of the study: the experiment it trains (None: --exp), its run directory's
    suffix, its stages and config overrides; `own_sweep`: it samples with its experiment's
    eval settings (else the study's --sampler, --steps, --temperatures); `shares`: the
    stages it takes finished from another system's run at the same budget (the same
    settings, trained once; their FLOPs still count towards this system)."""
    exp: str | None
    suffix: str
    stages: tuple
    sets: tuple = ()
    own_sweep: bool = False
    shares: tuple = ()  # (system, (stage, ...))
    # the autoencoder aligns to --base's AR baseline (`vae.align_weight` in `sets`), linked
    # as the run's `ar`; the baseline's training FLOPs count towards this system
    teacher: bool = False


LAR = "bbc_news_latent_ar"
CHUNK = ("latent_ar", ("vae", "latents"))  # the 1x table's variants share its autoencoder
# "ldlm" is the preset's system (block-causal prior); the latent_ar systems train a chunk
# autoencoder and the latent-autoregressive prior at the same training FLOPs; the others
# are latent_ar's variants (its head, its backbone's input) and the block-causal prior on
# the chunk autoencoder's latents
SYSTEMS = {
    "ldlm": System(None, "", LDLM_STAGES),
    "latent_ar": System(LAR, "_latent_ar", CHUNK_STAGES, own_sweep=True),
    "latent_ar flow": System(LAR, "_latent_ar_flow", CHUNK_STAGES, ("dit.head=flow",),
                             own_sweep=True, shares=CHUNK),
    "latent_ar latent input": System(LAR, "_latent_ar_latents", CHUNK_STAGES,
                                     ("dit.backbone_input=latents",), own_sweep=True,
                                     shares=CHUNK),
    "block-causal on chunk latents": System(
        LAR, "_chunk_block_causal", CHUNK_STAGES,
        ("dit.kind=block_causal", "dit.block_size=1"),
        shares=CHUNK),
    BASELINE: System(None, "", AR_STAGES),
    # the preset's system trained from another seed (initialisation and noise; the same
    # batches): how far a point moves with training alone
    "ldlm seed 1": System(None, "_seed1", LDLM_STAGES, ("seed=1",)),
    # the preset's system with its autoencoder aligned to the AR baseline (weight 0: "ldlm")
    **{f"ldlm aligned {w}": System(None, f"_align{w}", LDLM_STAGES,
                                   (f"vae.align_weight={w}",), teacher=True)
       for w in ("0.1", "0.5", "1")},
    # at weight 1: a latent's target the last of its tokens' states instead of their mean
    "ldlm aligned 1 last": System(None, "_align1_last", LDLM_STAGES,
                                  ("vae.align_weight=1", "vae.align_pool=last"), teacher=True),
    # latent_ar's flow head on a chunk autoencoder aligned at weight 1
    "latent_ar flow aligned 1": System(LAR, "_latent_ar_flow_align1", CHUNK_STAGES,
                                       ("dit.head=flow", "vae.align_weight=1"),
                                       own_sweep=True, teacher=True),
}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--base", default="runs/bbc_news_cpu",
                   help="run with the data, tokenizer and reference LM")
    p.add_argument("--exp", default="bbc_news")
    p.add_argument("--preset", default="cpu")
    p.add_argument("--budgets", default="0.111,0.333,1")
    p.add_argument("--out-dir", default="runs/scaling")
    p.add_argument("--n", type=int, default=128)
    p.add_argument("--tokens", type=int, default=128)
    p.add_argument("--temperatures", default="1.3,1.0,0.85,0.7", help="ldlm's sweep")
    p.add_argument("--ar-temperatures", default="1.3,1.0,0.85,0.7,0.55,0.4",
                   help="the baseline's sweep (down to the low entropies of small budgets)")
    p.add_argument("--sampler", default="ddpm")
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--gaps", default="0.5,1.0",
                   help="read the curves at real text's entropy and these many nats below")
    p.add_argument("--results", default="benchmarks/results/scaling.json")
    p.add_argument("--plot", default="benchmarks/results/scaling.png")
    p.add_argument("--head-steps", type=int, default=4, help="a flow head's steps")
    p.add_argument("--systems", default="ldlm,AR baseline",
                   help=f"comma-separated, of {', '.join(SYSTEMS)}")
    p.add_argument("--brier-prefixes", type=int, default=256,
                   help="test prefixes of each point's BrierLM (0: none)")
    p.add_argument("--train-only", action="store_true", help="train, do not score")
    args = p.parse_args()

    from ldlm.config import load_experiment

    base = pathlib.Path(args.base)
    systems = [x.strip() for x in args.systems.split(",")]
    unknown = [x for x in systems if x not in SYSTEMS]
    if unknown:
        p.error(f"unknown systems {unknown}; choose from {list(SYSTEMS)}")
    results_path = pathlib.Path(args.results)
    results = json.loads(results_path.read_text()) if results_path.exists() else {}
    results.setdefault("points", [])
    results["args"] = {k: v for k, v in vars(args).items() if k != "train_only"}
    ar_temps = [float(t) for t in args.ar_temperatures.split(",")]
    scorer = None
    for f in sorted(float(b) for b in args.budgets.split(",")):
        for system in systems:
            sy = SYSTEMS[system]
            exp = sy.exp or args.exp
            cfg = load_experiment(exp, args.preset, list(sy.sets))
            run = pathlib.Path(args.out_dir) / f"f{f:g}{sy.suffix}"
            sets = list(sy.sets) + budget_sets(cfg, f)
            if sy.shares:
                other, shared = sy.shares
                # the stages trained once, in the other system's run (trained first)
                train(pathlib.Path(args.out_dir) / f"f{f:g}{SYSTEMS[other].suffix}", base,
                      [st for st in SYSTEMS[other].stages if st[0] in shared],
                      list(SYSTEMS[other].sets) + budget_sets(cfg, f), args,
                      SYSTEMS[other].exp or args.exp)
                link_stages(run, pathlib.Path(args.out_dir) /
                            f"f{f:g}{SYSTEMS[other].suffix}", shared)
            if sy.teacher:
                link_stages(run, base, ("ar",))
            wall = train(run, base, sy.stages, sets, args, exp)
            if args.train_only:
                continue
            point = next((pt for pt in results["points"] if pt["system"] == system and
                          pt["budget"] == f), None)
            if point is None:
                point = {"system": system, "budget": f, "train_wall_s": wall,
                         **compute(run, system, cfg.override(sets), sy.teacher),
                         "rows": []}
                results["points"].append(point)
            point["train_wall_s"] = wall
            if system != BASELINE:
                point["stages"] = stage_metrics(run)
            # a latent system sweeps its kind's temperatures: the preset's system the study's
            # --temperatures, a system of its own experiment that experiment's eval settings
            writer = None if system == BASELINE else LatentWriter(run, args, sy.own_sweep)
            sweep = ar_temps if writer is None else list(writer.temperatures)
            todo = [T for T in sweep if T not in {r["temperature"] for r in point["rows"]}]
            if todo:
                scorer = scorer or load_scorer(base)
                results["real_text"] = results.get("real_text") or real_row(base, scorer,
                                                                            args)
                point["rows"] += score(run, system, scorer, todo, args, writer)
                write_json(results_path, results)
            if args.brier_prefixes and "brier" not in point:
                point["brier"] = brier_point(base, run, system, args, writer)
                write_json(results_path, results)
    if args.train_only:
        return
    summarise(results, args)
    write_json(results_path, results)
    plot(results, args.plot)
    print(markdown(results))
    print()
    print(markdown_own(results))


def budget_sets(cfg, f: float) -> list[str]:
    """Config overrides for budget f: every train section's steps times f (at least 10),
    checkpoints and validation no further apart than the run."""
    out = []
    for name in ("vae_train", "decoder_train", "dit_train", "ar_train"):
        t = getattr(cfg, name)
        steps = max(10, round(t.steps * f))
        out += [f"{name}.steps={steps}",
                f"{name}.checkpoint_every={min(t.checkpoint_every, steps)}",
                f"{name}.eval_every=0"]
    return out


def train(run: pathlib.Path, base: pathlib.Path, stages, sets, args, exp: str) -> float:
    """Runs each unfinished stage of `stages` in `run` (data and tokenizer linked from
    --base); the wall seconds its stages took by their own records."""
    run.mkdir(parents=True, exist_ok=True)
    for shared in ("data", "tokenizer"):
        if not (run / shared).exists():
            (run / shared).symlink_to((base / shared).resolve())
    ldlm = pathlib.Path(sys.executable).with_name("ldlm")
    for stage, done, _ in stages:
        if (run / done).exists():
            continue
        cmd = [str(ldlm), stage, "--exp", exp, "--preset", args.preset,
               "--run-dir", str(run)] + [x for s in sets for x in ("--set", s)]
        print("$", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True, env={**os.environ, "TQDM_DISABLE": "1"})
    seconds = 0.0
    for stage, done, _ in stages:  # each stage's own record of its time
        d = json.loads((run / done).read_text())
        seconds += d.get("train_seconds", d.get("seconds", 0.0))
    return seconds


def stage_metrics(run: pathlib.Path) -> dict:
    """What a latent system's stages recorded: the autoencoder's token accuracy on the
    validation blocks, clean and at latent noise 0.5, and the prior's validation loss."""
    rec = json.loads((run / "vae" / "eval.json").read_text())["validation"]
    prior = json.loads((run / "dit" / "result.json").read_text()).get("validation", {})
    return {"autoencoder_accuracy": rec["0.0"]["token_accuracy"],
            "autoencoder_accuracy_noise_0.5": rec["0.5"]["token_accuracy"],
            "prior_validation_loss": prior.get("loss")}


def link_stages(run: pathlib.Path, source: pathlib.Path, stages) -> None:
    """`run`'s `stages` as links to the finished ones of `source`."""
    run.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        if not (run / stage).exists():
            (run / stage).symlink_to((source / stage).resolve())


def compute(run: pathlib.Path, system: str, c, teacher: bool = False) -> dict:
    """Training FLOPs of the system at this budget (config `c`; the autoencoder's as its
    stage recorded them, with an aligning one's teacher), and epochs over the training
    blocks; `teacher`: the AR baseline's training FLOPs count too."""
    from ldlm import priors
    from ldlm.config import Config
    from ldlm.flops import train_flops

    meta = json.loads((run / "tokenizer" / "stats.json").read_text())
    vocab = json.loads((run / "tokenizer" / "blocks" / "meta.json").read_text())["vocab_size"]
    train_blocks = meta["splits"]["train"]["blocks"]
    B = c.data.batch_size
    parts = {}
    if system != BASELINE:
        vae_cfg = Config.from_json_file(run / "vae" / "config.json")  # the teacher's width
        parts["vae"] = train_flops("vae", vae_cfg, vocab, B) * c.vae_train.steps
        if teacher:
            ar_cfg = Config.from_json_file(run / "ar" / "config.json")
            parts["teacher"] = train_flops("ar", ar_cfg, vocab, B) * ar_cfg.ar_train.steps
        encoded = sum(json.loads((run / "latents" / "meta.json").read_text())["blocks"]
                      .values())
        from ldlm.flops import forward_flops
        parts["latents"] = forward_flops("encoder", c, vocab, 1) * encoded
        if c.vae.kind == "block":  # the seam decoder
            parts["decoder"] = train_flops("decoder", c, vocab, B) * c.decoder_train.steps
        kind = priors.get(c)
        parts["dit"] = kind.train_flops(c, B) * c.dit_train.steps
        epochs = {"vae": c.vae_train.steps * B / train_blocks,
                  "dit": c.dit_train.steps * B * kind.blocks_per_row(c) / train_blocks}
    else:
        parts["ar"] = train_flops("ar", c, vocab, B) * c.ar_train.steps
        epochs = {"ar": c.ar_train.steps * B / train_blocks}
    return {"flops": sum(parts.values()), "flops_by_stage": parts, "epochs": epochs}


def load_scorer(base: pathlib.Path):
    from ldlm.eval.compare import ReferenceLM
    from ldlm.inference.causal_lm import load_causal_lm

    model, ref_cfg = load_causal_lm(base, "reference")
    return ReferenceLM(model, ref_cfg.data.block_len)


class LatentWriter:
    """A latent system's trained pipeline with the sampler settings its kind takes for the
    long texts (`long_settings`). The preset's system takes the study's --sampler, --steps
    and --temperatures; a system of its own experiment (`own_sweep`) takes that
    experiment's eval settings (the latent_ar energy head: 1 step, its shrink sweep), and
    --head-steps for a flow head."""

    def __init__(self, run: pathlib.Path, args, own_sweep: bool = False):
        import dataclasses

        from ldlm.inference.generation import LatentDiffusionPipeline

        self.pipe = LatentDiffusionPipeline.from_pretrained(run)
        e = dataclasses.replace(self.pipe.cfg.eval, head_long_steps=args.head_steps)
        if not own_sweep:  # the preset's system: the study's sampler, steps and sweep
            e = dataclasses.replace(e, long_sampler=args.sampler, long_steps=args.steps,
                                    long_temperatures=tuple(float(t) for t in
                                                            args.temperatures.split(",")))
        self.sampler, self.steps, self.temperatures = self.pipe.sampler.long_settings(e)

    def texts(self, n: int, tokens: int, T: float, prompt=None):
        return self.pipe.generate_tokens(n=n, steps=self.steps, sampler=self.sampler, seed=0,
                                         max_tokens=tokens, temperature=T, prompt=prompt)


def score(run: pathlib.Path, system: str, scorer, temps, args, writer=None) -> list[dict]:
    """One row per temperature: the texts' metrics under the reference LM."""
    import jax

    from ldlm.eval import long_texts

    rows = []
    if system != BASELINE:
        def write(T):
            return writer.texts(args.n, args.tokens, T)
    else:
        from ldlm.inference.causal_lm import load_causal_lm

        model, cfg = load_causal_lm(run, "ar")
        writer = long_texts.ARWriter(model, cfg.data.block_len, top_p=cfg.ar.top_p)

        def write(T):
            return writer.texts(args.n, args.tokens, jax.random.PRNGKey(0), T)
    for T in temps:
        start = time.perf_counter()
        texts = write(T)
        seconds = time.perf_counter() - start
        row = {"temperature": T, "seconds": seconds,
               **long_texts.text_row(texts, {"reference": scorer})}
        print(f"{run.name} {system} T={T}: gen-PPL {row['gen_ppl_reference']:.0f} at H "
              f"{row['unigram_entropy']:.2f}", flush=True)
        rows.append(row)
    return rows


def brier_point(base: pathlib.Path, run: pathlib.Path, system: str, args, writer) -> dict:
    """BrierLM (ldlm/eval/brier.py) of the system on --brier-prefixes test prefixes; a latent
    system at temperature 1 with its long texts' steps (a prior that cannot continue a text
    has none)."""
    import jax

    from ldlm.eval import brier

    prefixes, truths = brier.held_out_prefixes(base, args.brier_prefixes)
    if system == BASELINE:
        from ldlm.inference.causal_lm import load_causal_lm

        model, cfg = load_causal_lm(run, "ar")
        fn = brier.ar_continuer(model, cfg.data.block_len, jax.random.PRNGKey(0))
    elif writer.pipe.has_context:
        decode = writer.pipe.vae.tokenizer.decode

        def fn(ps):
            return writer.texts(len(ps), brier.ORDERS, 1.0, [decode(p) for p in ps])
    else:
        return {"prefixes": 0}
    out = brier.score(fn, prefixes, truths)
    print(f"{run.name} {system}: BrierLM {out['brier_lm']:.2f}", flush=True)
    return out


def real_row(base: pathlib.Path, scorer, args) -> dict:
    from ldlm.eval import long_texts

    texts = long_texts.real_texts(base, args.n, args.tokens)
    return long_texts.text_row(texts, {"reference": scorer})


def summarise(results: dict, args) -> None:
    """Matched gen-PPL per point at fixed entropies with the fitted lines and where they
    would meet, and the ratio at ldlm's own entropy (`at_ldlm_entropy`)."""
    from ldlm.eval import long_texts

    real_h = results["real_text"]["unigram_entropy"]
    entropies = {"real_text": real_h, **{f"real_text_minus_{g}": real_h - float(g)
                                         for g in args.gaps.split(",")}}
    results["entropies"] = entropies
    for pt in results["points"]:
        pt["matched"] = long_texts.matched(pt["rows"], entropies, "gen_ppl_reference")
    latent = latent_systems(results)
    results["fits"] = {}
    for k in entropies:
        fits = {s: fit_line([(p["flops"], p["matched"][k]) for p in results["points"]
                             if p["system"] == s and p["matched"][k]])
                for s in latent + [BASELINE]}
        # "meet": the preset's system (ldlm) and the baseline; "meet <system>" the others
        meets = {("meet" if s == "ldlm" else f"meet {s}"): meeting_point(fits[s],
                                                                         fits[BASELINE])
                 for s in latent}
        results["fits"][k] = {**fits, **meets}
    results["at_own_entropy"] = {s: at_ldlm_entropy(results, s) for s in latent}
    if "ldlm" in results["at_own_entropy"]:
        results["at_ldlm_entropy"] = results["at_own_entropy"]["ldlm"]


def latent_systems(results: dict) -> list[str]:
    """The systems of the points other than the baseline, the preset's (ldlm) first."""
    names = {p["system"] for p in results["points"]} - {BASELINE}
    return sorted(names, key=lambda s: (s != "ldlm", s))


def at_ldlm_entropy(results: dict, system: str = "ldlm") -> dict:
    """Per ldlm budget: the unigram entropy and gen-PPL of its texts at temperature 1, the
    baseline's gen-PPL at that entropy and at ldlm's training FLOPs (each baseline budget's
    sweep read at that entropy, then the line fitted through them read at those FLOPs), and
    their ratio; then the ratio's line against FLOPs and where it would reach 1. This
    compares at matched entropy even where ldlm's temperature barely moves its entropy."""
    from ldlm.eval import long_texts

    ar_points = [p for p in results["points"] if p["system"] == BASELINE]
    rows = []
    for p in sorted((p for p in results["points"] if p["system"] == system),
                    key=lambda p: p["flops"]):
        own = next((r for r in p["rows"] if r["temperature"] == 1.0), None)
        if own is None:
            continue
        h, ppl = own["unigram_entropy"], own["gen_ppl_reference"]
        ar_at_h = [(a["flops"], long_texts.matched(a["rows"], {"h": h},
                                                   "gen_ppl_reference")["h"])
                   for a in ar_points]
        ar_at_h = [(f, v) for f, v in ar_at_h if v]
        line = fit_line(ar_at_h)
        ar = 10 ** (line["a"] + line["b"] * np.log10(p["flops"])) if line else None
        rows.append({"budget": p["budget"], "flops": p["flops"], "unigram_entropy": h,
                     "gen_ppl": ppl, "ar_budgets_at_entropy": len(ar_at_h),
                     "ar_gen_ppl": ar, "ratio": None if ar is None else ppl / ar})
    fit = fit_line([(r["flops"], r["ratio"]) for r in rows if r["ratio"]])
    parity = {"a": 0.0, "b": 0.0, "cov": [[0.0, 0.0], [0.0, 0.0]]}  # ratio 1 at any FLOPs
    return {"rows": rows, "fit": fit, "parity": meeting_point(fit, parity)}


def fit_line(points) -> dict | None:
    """log10 gen-PPL = a + b log10 FLOPs, least squares; None with fewer than 2 points.
    cov: the parameters' covariance (None with 2 points: no residual to estimate it)."""
    if len(points) < 2:
        return None
    x = np.log10([p[0] for p in points])
    y = np.log10([p[1] for p in points])
    X = np.stack([np.ones_like(x), x], 1)
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    dof = len(x) - 2
    cov = None
    if dof > 0:
        s2 = float(((y - X @ coef) ** 2).sum() / dof)
        cov = (s2 * np.linalg.inv(X.T @ X)).tolist()
    return {"a": float(coef[0]), "b": float(coef[1]), "points": len(x), "cov": cov,
            "b_se": None if cov is None else float(np.sqrt(cov[1][1]))}


def meeting_point(ldlm: dict | None, ar: dict | None, draws: int = 10_000) -> dict | None:
    """FLOPs where the fitted lines cross: the point estimate and, from draws of both lines'
    parameters, the fraction that converge (ldlm's line falls faster) and the median and
    16-84% range of the crossing among them."""
    if not ldlm or not ar:
        return None
    out = {"converge": ldlm["b"] < ar["b"]}
    if out["converge"]:
        out["log10_flops"] = (ar["a"] - ldlm["a"]) / (ldlm["b"] - ar["b"])
    if ldlm["cov"] is None or ar["cov"] is None:
        return out
    rng = np.random.default_rng(0)
    pl = rng.multivariate_normal([ldlm["a"], ldlm["b"]], ldlm["cov"], draws)
    pa = rng.multivariate_normal([ar["a"], ar["b"]], ar["cov"], draws)
    conv = pl[:, 1] < pa[:, 1]
    cross = (pa[conv, 0] - pl[conv, 0]) / (pl[conv, 1] - pa[conv, 1])
    out["fraction_converging"] = float(conv.mean())
    if conv.any():
        out["log10_flops_median"], out["log10_flops_16"], out["log10_flops_84"] = (
            float(np.median(cross)), float(np.percentile(cross, 16)),
            float(np.percentile(cross, 84)))
    return out


def plot(results: dict, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = 1 + len(results["entropies"])
    fig, axes = plt.subplots(1, n, figsize=(5.5 * n, 4.2), squeeze=False)
    ax, axes = axes[0][0], axes[0][1:]
    latent = latent_systems(results)
    for system in latent:
        own = results["at_own_entropy"][system]
        pts = [(r["flops"], r["ratio"], r["unigram_entropy"]) for r in own["rows"]
               if r["ratio"]]
        if not pts:
            continue
        ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-",
                label=f"{system} / AR baseline")
        for x, y, h in pts:
            ax.annotate(f"H {h:.2f}", (x, y), fontsize=7)
        if own["fit"]:
            f = own["fit"]
            xs = np.logspace(np.log10(pts[0][0]) - 0.5, np.log10(pts[-1][0]) + 2, 20)
            ax.plot(xs, 10 ** (f["a"] + f["b"] * np.log10(xs)), ":",
                    color=ax.lines[-1].get_color(), label=f"fit, slope {f['b']:.2f}")
    ax.axhline(1.0, color="k", linestyle="--", label="parity")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("training FLOPs of the latent system")
    ax.set_ylabel("gen-PPL ratio at its entropy and FLOPs")
    ax.set_title("latent system / AR baseline (temperature 1)", fontsize=9)
    ax.legend(fontsize=8)
    for ax, (k, h) in zip(axes, results["entropies"].items()):
        for system, style in [(s, "o-") for s in latent] + [(BASELINE, "s-")]:
            pts = sorted((p["flops"], p["matched"][k]) for p in results["points"]
                         if p["system"] == system and p["matched"][k])
            if pts:
                ax.plot(*zip(*pts), style, label=system)
            f = results["fits"][k][system]
            if f:
                xs = np.logspace(np.log10(pts[0][0]) - 0.5, np.log10(pts[-1][0]) + 1.5, 20)
                ax.plot(xs, 10 ** (f["a"] + f["b"] * np.log10(xs)), ":",
                        color=ax.lines[-1].get_color(),
                        label=f"{system} fit, slope {f['b']:.2f}")
        ax.axhline(results["real_text"]["gen_ppl_reference"], color="k", linestyle="--",
                   label="real text")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("training FLOPs (VAE included for ldlm)")
        ax.set_ylabel("gen-PPL under the reference LM")
        ax.set_title(f"at unigram entropy {h:.2f} ({k.replace('_', ' ')})", fontsize=9)
        ax.legend(fontsize=8)
    fig.tight_layout()
    pathlib.Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=80)
    plt.close(fig)


def markdown(results: dict) -> str:
    ks = list(results["entropies"])
    hs = results["entropies"]
    out = ["| system | budget | training FLOPs | epochs | " +
           " | ".join(f"gen-PPL at H={hs[k]:.2f}" for k in ks) + " | BrierLM |",
           "|---|---|---|---|" + "---|" * len(ks) + "---|"]
    for p in sorted(results["points"], key=lambda p: (p["system"], p["budget"])):
        ep = ", ".join(f"{k} {v:.2f}" for k, v in p["epochs"].items())
        b = p.get("brier", {})
        brier = f"{b['brier_lm']:.2f}" if b.get("prefixes") else "-"
        out.append(f"| {p['system']} | {p['budget']:g}x | {p['flops']:.2e} | {ep} | " +
                   " | ".join("-" if p["matched"][k] is None else f"{p['matched'][k]:.0f}"
                              for k in ks) + f" | {brier} |")
    for k in ks:
        for system in latent_systems(results):
            out.append(_fits_line(results, k, system))
    return "\n".join(out)


def _fits_line(results: dict, k: str, system: str) -> str:
    hs = results["entropies"]
    fits = results["fits"][k]
    parts = []
    for s in (system, BASELINE):
        f = fits[s]
        if f:
            se = "" if f["b_se"] is None else f" ± {f['b_se']:.2f}"
            parts.append(f"{s} slope {f['b']:.3f}{se}")
    m = fits["meet" if system == "ldlm" else f"meet {system}"]
    if m and m.get("converge"):
        meet = f"lines meet at 1e{m['log10_flops']:.1f} FLOPs"
        if "log10_flops_median" in m:
            meet += (f" (draws: {100 * m['fraction_converging']:.0f}% converge, median "
                     f"1e{m['log10_flops_median']:.1f}, 16-84% 1e{m['log10_flops_16']:.1f}"
                     f"-1e{m['log10_flops_84']:.1f})")
    elif m:
        meet = "lines do not converge"
        if "fraction_converging" in m:
            meet += f" ({100 * m['fraction_converging']:.0f}% of draws do)"
    else:
        meet = f"too few points of {system} to fit"
    return f"\nAt H={hs[k]:.2f}: " + "; ".join(parts) + f"; {meet}."


def markdown_own(results: dict) -> str:
    return "\n\n".join(_markdown_own(results, s) for s in latent_systems(results))


def _markdown_own(results: dict, system: str) -> str:
    own = results["at_own_entropy"][system]
    out = [f"| {system} budget | training FLOPs | unigram H (T=1) | gen-PPL | AR gen-PPL at "
           "that H and FLOPs | ratio |", "|---|---|---|---|---|---|"]
    for r in own["rows"]:
        ar = "-" if r["ar_gen_ppl"] is None else f"{r['ar_gen_ppl']:.0f}"
        ratio = "-" if r["ratio"] is None else f"{r['ratio']:.2f}"
        out.append(f"| {r['budget']:g}x | {r['flops']:.2e} | {r['unigram_entropy']:.2f} | "
                   f"{r['gen_ppl']:.0f} | {ar} | {ratio} |")
    f, m = own["fit"], own["parity"]
    if f:
        se = "" if f["b_se"] is None else f" ± {f['b_se']:.2f}"
        line = f"\nRatio against FLOPs: slope {f['b']:.3f}{se} (log-log)"
        if m and m.get("converge"):
            line += f"; it would reach 1 at 1e{m['log10_flops']:.1f} FLOPs"
            if "log10_flops_median" in m:
                line += (f" ({100 * m['fraction_converging']:.0f}% of draws fall, median "
                         f"1e{m['log10_flops_median']:.1f}, 16-84% 1e{m['log10_flops_16']:.1f}"
                         f"-1e{m['log10_flops_84']:.1f})")
        else:
            line += "; it does not fall"
        out.append(line + ".")
    return "\n".join(out)


def write_json(path: pathlib.Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1) + "\n")
    tmp.replace(path)


if __name__ == "__main__":
    main()
