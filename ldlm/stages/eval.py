"""`make eval`: ldlm beside the AR baseline and real text.

Two comparisons, every gen-PPL under the scorer of `eval.reference` (the reference LM of
`make reference` when it exists) with the baseline's own score as a second column:
- matched entropy, the headline (ldlm/eval/long_texts.py): texts of `eval.long_tokens`
  tokens from each system over a temperature sweep, gen-PPL read at real text's unigram
  entropy and `eval.matched_entropy_gap` below it, and the ratio ldlm / AR there;
- the per-block table (ldlm/eval/compare.py): one block per sample at every sampler and step
  budget, with MAUVE, diversity, memorisation, speed and topic accuracy;
- BrierLM (ldlm/eval/brier.py), no scorer needed: the AR baseline and, where the prior
  continues a text, ldlm, on the same test prefixes.
The sampler settings each sweep uses are the prior kind's (`table_settings`,
`long_settings`, `guidance_settings` of its sampler: a latent_ar prior's head takes its own).
Writes eval/results.json and eval/quality_vs_steps.png."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

import pathlib

from ldlm import rundir, teacher_spec
from ldlm.config import Config
from ldlm.data.tokenizer import EOS_ID, through_eos
from ldlm.errors import ConfigError
from ldlm.eval import brier, compare, long_texts
from ldlm.eval import sample_metrics as metrics
from ldlm.inference.causal_lm import load_causal_lm
from ldlm.inference.generation import LatentDiffusionPipeline
from ldlm.models.ar import sample_tokens

log = logging.getLogger("ldlm.eval")
STAGE = "eval"
SCORERS = ("auto", "reference", "ar")  # eval.reference: which causal LM scores the samples


def run_eval(cfg: Config, run_dir) -> dict:
    e = cfg.eval
    rundir.start_stage(cfg, run_dir, STAGE)
    out_dir = rundir.stage_dir(run_dir, STAGE)
    pipe = LatentDiffusionPipeline.from_pretrained(run_dir)  # MissingStageError -> make dit
    L = pipe.vae.block_len
    ar, _ = load_causal_lm(run_dir, "ar")
    scorers, ref_name = _scorers(cfg, run_dir, ar, L)
    primary = _primary(scorers)
    ref = scorers[primary]
    log.info("scorer: %s", ref_name)
    aligned_to_scorer = _aligned_to_scorer(pipe.vae.cfg.vae, cfg, run_dir, primary)
    if aligned_to_scorer:
        log.warning("the latent space was aligned to the scorer (vae.align_teacher=%s): its "
                    "samples may please the scorer more than they read better; compare "
                    "BrierLM, which needs no scorer", pipe.vae.cfg.vae.align_teacher)
    n = e.num_samples

    train_seqs, train_labels = compare.split_blocks(run_dir, "train")
    train_8grams = metrics.ngram_set(train_seqs, 8)
    classifier = metrics.TopicClassifier(pipe.vae.tokenizer.vocab_size).fit(train_seqs,
                                                                            train_labels)
    real, real_labels = compare.split_blocks(run_dir, "test")
    rng = np.random.default_rng(e.seed)
    pick = rng.choice(len(real), size=min(n, len(real)), replace=False)
    real = [real[i] for i in pick]
    # MAUVE's human side: validation blocks, so the real test blocks are scored like samples
    held_out, _ = compare.split_blocks(run_dir, "validation")
    held_out = [held_out[i] for i in rng.choice(len(held_out), size=min(n, len(held_out)),
                                                replace=False)]
    real_features = ref.features(held_out)
    rows = [{"system": "real text (test split)", "sampler": None, "steps": None,
             "seconds_per_block": None,
             **compare.quality(real, ref, real_features, train_8grams),
             **_baseline_score(real, scorers)}]
    log.info("real text: %s", compare.brief(rows[-1]))

    # the AR baseline: one block after the start token, through its first EOS; sampled with
    # this evaluation's ar.temperature / ar.top_p (not training settings), so that it can be
    # put beside ldlm at a matched temperature
    sample_ar = jax.jit(lambda key: sample_tokens(
        ar, jnp.full((n,), EOS_ID, jnp.int32), L, key, temperature=cfg.ar.temperature,
        top_p=cfg.ar.top_p))
    ar_tokens, seconds = compare.timed(lambda: np.asarray(sample_ar(jax.random.PRNGKey(e.seed))))
    ar_seqs = [through_eos(row) for row in ar_tokens]
    rows.append({"system": "AR baseline (KV cache)", "sampler":
                 f"T={cfg.ar.temperature}, top_p={cfg.ar.top_p}", "steps": L,
                 "seconds_per_block": seconds / n,
                 **compare.quality(ar_seqs, ref, real_features, train_8grams),
                 **_baseline_score(ar_seqs, scorers)})
    log.info("AR baseline: %s", compare.brief(rows[-1]))

    temperature = e.temperature
    warmed = set()
    for sampler, steps, label in pipe.sampler.table_settings(e):
        # the step count is traced: one compile per sampler serves every budget
        seqs, seconds = compare.timed(lambda: pipe.generate_tokens(
            n=n, steps=steps, sampler=sampler, seed=e.seed, temperature=temperature),
            warm_up=sampler not in warmed)
        warmed.add(sampler)
        rows.append({"system": "ldlm", "sampler": label, "steps": steps,
                     "temperature": temperature, "seconds_per_block": seconds / n,
                     **compare.quality(seqs, ref, real_features, train_8grams),
                     **_baseline_score(seqs, scorers)})
        log.info("ldlm %s %d steps: %s", label, steps, compare.brief(rows[-1]))

    topic = _topic_accuracy(pipe, classifier, e, real, real_labels, pick)
    matched = _matched_entropy(cfg, run_dir, pipe, ar, scorers)
    brier_lm = _brier(cfg, run_dir, pipe, ar)
    report = {"reference_lm": ref_name, "scorer": primary, "matched_entropy": matched,
              "aligned_to_scorer": aligned_to_scorer,
              "brier_lm": brier_lm,
              "ldlm_temperature": e.temperature,
              "num_samples": n, "block_len": L, "device": jax.devices()[0].device_kind,
              "table": rows, "topic_accuracy": topic,
              "examples": {"real": pipe.vae.tokenizer.decode(real[0]),
                           "ar": pipe.vae.tokenizer.decode(ar_seqs[0])}}
    if rundir.is_main_process():
        rundir.write_json_atomic(out_dir / "results.json", report)
        compare.plot(rows, out_dir / "quality_vs_steps.png")
    return report


def _scorers(cfg: Config, run_dir, ar, L: int) -> tuple[dict, str]:
    """({"reference": ..., "ar": ...} ReferenceLMs, the primary scorer's description): the
    reference LM of `eval.reference_run` (or this run) unless eval.reference is "ar" or, with
    "auto", it was never trained."""
    e = cfg.eval
    scorers = {"ar": compare.ReferenceLM(ar, L)}
    ref_run = pathlib.Path(e.reference_run) if e.reference_run else pathlib.Path(run_dir)
    trained = (rundir.stage_dir(ref_run, "reference") / "result.json").is_file()
    if e.reference == "ar" or (e.reference == "auto" and not trained):
        why = "" if e.reference == "ar" else f" (no reference LM in {ref_run}: make reference)"
        return scorers, f"the AR baseline itself (make ar), which favours its own samples{why}"
    model, ref_cfg = load_causal_lm(ref_run, "reference")  # MissingStageError -> make reference
    if ref_run.resolve() != pathlib.Path(run_dir).resolve():
        _check_same_tokenizer(ref_run, run_dir)
    scorers["reference"] = compare.ReferenceLM(model, L)
    r = ref_cfg.reference
    return scorers, (f"the reference LM (make reference: {r.layers} layers, width {r.width}, "
                     f"{ref_cfg.reference_train.steps} steps; {ref_run})")


def _check_same_tokenizer(ref_run, run_dir) -> None:
    """A reference LM scores only token ids of its own tokenizer: same vocabulary file."""
    mine, theirs = (rundir.stage_dir(pathlib.Path(r), "tokenizer") / "spm.vocab"
                    for r in (run_dir, ref_run))
    if not theirs.is_file() or mine.read_bytes() != theirs.read_bytes():
        raise ConfigError(f"eval.reference_run={ref_run} was trained on another tokenizer "
                          f"than {run_dir} ({theirs} differs from {mine})")


def _aligned_to_scorer(vae_cfg, cfg: Config, run_dir, primary: str) -> bool:
    """Whether the autoencoder was aligned to the LM that scores this evaluation."""
    if not vae_cfg.align_weight:
        return False
    scorer_run = (cfg.eval.reference_run or run_dir) if primary == "reference" else run_dir
    return teacher_spec.same_lm(vae_cfg.align_teacher, run_dir, scorer_run, primary)


def _primary(scorers: dict) -> str:
    """The scorer every headline number uses: the reference LM when there is one."""
    return "reference" if "reference" in scorers else "ar"


def _baseline_score(seqs, scorers: dict) -> dict:
    """The AR baseline's own gen-PPL, beside the reference LM's."""
    if "reference" not in scorers:
        return {}
    nll, count, _ = scorers["ar"].score(seqs)
    return {"gen_ppl_ar": metrics.perplexity(nll, count)}


def _matched_entropy(cfg: Config, run_dir, pipe, ar, scorers: dict) -> dict:
    """Texts of eval.long_tokens tokens from real text, the AR baseline and ldlm over the
    temperature sweep, each scored by every scorer; gen-PPL of each system at real text's
    unigram entropy and eval.matched_entropy_gap below it, and the ratio ldlm / AR."""
    e = cfg.eval
    n, tokens = e.num_samples, e.long_tokens
    rows = [{"system": "real text", **long_texts.text_row(
        long_texts.real_texts(run_dir, n, tokens, e.seed), scorers)}]
    writer = long_texts.ARWriter(ar, pipe.vae.block_len, top_p=cfg.ar.top_p)
    for T in e.long_temperatures:  # the temperature is static: each compiles, so each warms up
        texts, seconds = compare.timed(
            lambda: writer.texts(n, tokens, jax.random.PRNGKey(e.seed), T))
        rows.append({"system": "AR baseline", "temperature": T, "seconds": seconds,
                     **long_texts.text_row(texts, scorers)})
    sampler, steps, temperatures = pipe.sampler.long_settings(e)
    for i, T in enumerate(temperatures):
        texts, seconds = compare.timed(lambda: pipe.generate_tokens(
            n=n, steps=steps, sampler=sampler, seed=e.seed, max_tokens=tokens,
            temperature=T), warm_up=i == 0)
        rows.append({"system": "ldlm", "temperature": T, "seconds": seconds,
                     **long_texts.text_row(texts, scorers)})
    for r in rows:
        log.info("%d-token texts, %s%s: %s", tokens, r["system"],
                 f" T={r['temperature']}" if "temperature" in r else "", compare.brief(r))
    real_h = rows[0]["unigram_entropy"]
    entropies = {"real_text": real_h, "lower": real_h - e.matched_entropy_gap}
    # {scorer: {system: {"real_text"|"lower": gen-PPL}}}, and the ratios keyed alike
    at = {name: {system: long_texts.matched([r for r in rows if r["system"] == system],
                                            entropies, f"gen_ppl_{name}")
                 for system in ("ldlm", "AR baseline")} for name in scorers}
    ratios = {name: {k: long_texts.ratio(a["ldlm"][k], a["AR baseline"][k])
                     for k in entropies} for name, a in at.items()}
    primary = _primary(scorers)
    for k, h in entropies.items():
        ppl = at[primary]
        log.info("gen-PPL at unigram entropy %.2f: ldlm %s, AR baseline %s, ratio %s", h,
                 _fmt(ppl["ldlm"][k]), _fmt(ppl["AR baseline"][k]),
                 _fmt(ratios[primary][k], "{:.2f}"))
    return {"tokens": tokens, "num_samples": n, "sampler": sampler,
            "steps": steps, "ar_top_p": cfg.ar.top_p, "scorer": primary,
            "entropies": entropies, "gen_ppl_at_entropy": at, "ratio_ldlm_to_ar": ratios,
            "rows": rows}


def _brier(cfg: Config, run_dir, pipe, ar) -> dict:
    """BrierLM (ldlm/eval/brier.py) of the AR baseline and, where its prior continues a
    text, of ldlm (at temperature 1, the long texts' sampler and steps), on the same test
    prefixes."""
    e = cfg.eval
    prefixes, truths = brier.held_out_prefixes(run_dir, e.brier_prefixes, e.seed)
    out = {"prefixes": len(prefixes), "orders": brier.ORDERS,
           "AR baseline": brier.score(brier.ar_continuer(
               ar, pipe.vae.block_len, jax.random.PRNGKey(e.seed)), prefixes, truths)}
    if pipe.has_context:
        sampler, steps, _ = pipe.sampler.long_settings(e)
        decode = pipe.vae.tokenizer.decode
        out["ldlm"] = brier.score(lambda ps: pipe.generate_tokens(
            n=len(ps), steps=steps, sampler=sampler, seed=e.seed, temperature=1.0,
            max_tokens=brier.ORDERS, prompt=[decode(p) for p in ps]), prefixes, truths)
    for system in ("AR baseline", "ldlm"):
        if system in out and out[system]["prefixes"]:
            log.info("BrierLM of %s: %.2f (Brier-1..4: %s) over %d test prefixes", system,
                     out[system]["brier_lm"], ", ".join(
                         f"{out[system][f'brier_{k}']:.3f}" for k in range(1, 5)),
                     len(prefixes))
    return out


def _fmt(x, spec: str = "{:.0f}") -> str:
    """A number, or a note that the temperature sweep does not reach that entropy."""
    return "not reached by the sweep" if x is None else spec.format(x)


def _topic_accuracy(pipe, classifier, e, real, real_labels, pick) -> dict:
    """Classifier accuracy on real test blocks and on class-conditional samples per scale."""
    out = {"real_test_blocks": classifier.accuracy(real, [real_labels[i] for i in pick])}
    names = pipe.label_names
    if not names:
        return out
    per = max(1, e.num_samples // len(names))
    labels = [name for name in names for _ in range(per)]
    truth = [names.index(x) for x in labels]
    sampler, steps, scales = pipe.sampler.guidance_settings(e)
    for scale in scales:
        seqs = pipe.generate_tokens(n=len(labels), steps=steps, sampler=sampler,
                                    label=labels, guidance=scale, seed=e.seed,
                                    temperature=e.temperature)
        out[f"guidance_{scale:g}"] = classifier.accuracy(seqs, truth)
        log.info("topic accuracy at guidance %g: %.3f", scale, out[f"guidance_{scale:g}"])
    return out
