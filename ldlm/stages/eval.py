"""`make eval`: ldlm at every sampler and step budget beside the AR baseline and real text,
scored as described in ldlm/eval/compare.py. Writes eval/results.json and
eval/quality_vs_steps.png."""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
import numpy as np

from ldlm import rundir
from ldlm.config import Config
from ldlm.data.tokenizer import EOS_ID, through_eos
from ldlm.eval import compare
from ldlm.eval import sample_metrics as metrics
from ldlm.inference.generation import LatentDiffusionPipeline
from ldlm.loading import load_stage_model, stage_config
from ldlm.models.ar import build_ar, sample_tokens

log = logging.getLogger("ldlm.eval")
STAGE = "eval"
SCORERS = ("ar", "reference")  # eval.reference: which causal LM scores the samples


def run_eval(cfg: Config, run_dir) -> dict:
    e = cfg.eval
    rundir.start_stage(cfg, run_dir, STAGE)
    out_dir = rundir.stage_dir(run_dir, STAGE)
    pipe = LatentDiffusionPipeline.from_pretrained(run_dir)  # MissingStageError -> make dit
    ar_cfg = stage_config(run_dir, "ar", "the AR baseline")
    L = pipe.vae.block_len
    ar = load_stage_model(run_dir, "ar", build_ar(ar_cfg, pipe.vae.tokenizer.vocab_size),
                          ar_cfg.ar_train)
    if e.reference == "ar":
        ref = compare.ReferenceLM(ar, L)
        ref_name = "the AR baseline itself (make ar); it favours its own samples"
    else:
        ref_cfg = stage_config(run_dir, "reference", "the reference LM")
        ref = compare.ReferenceLM(load_stage_model(
            run_dir, "reference", build_ar(ref_cfg, pipe.vae.tokenizer.vocab_size,
                                           "reference"),
            ref_cfg.reference_train), L)
        r = ref_cfg.reference
        ref_name = (f"the reference LM (make reference: {r.layers} layers, width {r.width}, "
                    f"{ref_cfg.reference_train.steps} steps)")
    log.info("reference LM: %s", ref_name)
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
             **compare.quality(real, ref, real_features, train_8grams)}]
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
                 **compare.quality(ar_seqs, ref, real_features, train_8grams)})
    log.info("AR baseline: %s", compare.brief(rows[-1]))

    for sampler in e.samplers:
        for i, steps in enumerate(e.steps):
            # the step count is traced: one compile per sampler serves every budget
            seqs, seconds = compare.timed(lambda: pipe.generate_tokens(
                n=n, steps=steps, sampler=sampler, seed=e.seed, temperature=e.temperature),
                warm_up=i == 0)
            rows.append({"system": "ldlm", "sampler": sampler, "steps": steps,
                         "temperature": e.temperature, "seconds_per_block": seconds / n,
                         **compare.quality(seqs, ref, real_features, train_8grams)})
            log.info("ldlm %s %d steps: %s", sampler, steps, compare.brief(rows[-1]))

    topic = _topic_accuracy(pipe, classifier, e, real, real_labels, pick)
    report = {"reference_lm": ref_name, "ldlm_temperature": e.temperature,
              "num_samples": n, "block_len": L, "device": jax.devices()[0].device_kind,
              "table": rows, "topic_accuracy": topic,
              "examples": {"real": pipe.vae.tokenizer.decode(real[0]),
                           "ar": pipe.vae.tokenizer.decode(ar_seqs[0])}}
    if rundir.is_main_process():
        rundir.write_json_atomic(out_dir / "results.json", report)
        compare.plot(rows, out_dir / "quality_vs_steps.png")
    return report


def _topic_accuracy(pipe, classifier, e, real, real_labels, pick) -> dict:
    """Classifier accuracy on real test blocks and on class-conditional samples per scale."""
    out = {"real_test_blocks": classifier.accuracy(real, [real_labels[i] for i in pick])}
    names = pipe.label_names
    if not names:
        return out
    per = max(1, e.num_samples // len(names))
    labels = [name for name in names for _ in range(per)]
    truth = [names.index(x) for x in labels]
    for scale in e.guidance_scales:
        seqs = pipe.generate_tokens(n=len(labels), steps=e.guidance_steps,
                                    sampler=e.guidance_sampler, label=labels, guidance=scale,
                                    seed=e.seed, temperature=e.temperature)
        out[f"guidance_{scale:g}"] = classifier.accuracy(seqs, truth)
        log.info("topic accuracy at guidance %g: %.3f", scale, out[f"guidance_{scale:g}"])
    return out
