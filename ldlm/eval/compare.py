"""`make eval`: ldlm at every sampler and step budget beside the AR baseline and real text.

For each system the same number of samples (one block each, unconditional) is scored with
the same metrics (`ldlm.eval.metrics`): generative perplexity under the reference LM with
unigram entropy beside it, MAUVE against held-out validation blocks (features: the
reference LM's mean hidden state), distinct-1/2/3, repeated-4-gram rate, memorisation (8-grams found in
the training split) and the wall-clock seconds per block. Real test blocks are scored the
same way as the reference point. Class-conditional ldlm samples are classified by a
bag-of-words topic classifier trained on the training split, per guidance scale.

The reference LM is `eval.reference`: "ar", the AR baseline itself (scoring the baseline's
own samples with it favours the baseline), or "reference", a larger LM trained longer
(`make reference`); the report names the one used.

Writes eval/results.json and eval/quality_vs_steps.png.
"""

from __future__ import annotations

import logging
import time

import jax
import jax.numpy as jnp
import numpy as np

from ldlm import rundir
from ldlm.config import Config
from ldlm.data import pipeline as data_pipeline
from ldlm.data.blocks import decode_record
from ldlm.data.tokenizer import EOS_ID
from ldlm.eval import metrics
from ldlm.loading import load_stage_model, stage_config
from ldlm.models.ar import sample_tokens
from ldlm.train.ar import build_ar, shift_right

log = logging.getLogger("ldlm.eval")
STAGE = "eval"


def split_blocks(run_dir, role: str, limit: int | None = None):
    """(token lists through EOS, labels) of a split's blocks, in order."""
    src = data_pipeline.block_source(run_dir, role)
    n = len(src) if limit is None else min(limit, len(src))
    seqs, labels = [], []
    for i in range(n):
        r = decode_record(src[i])
        seqs.append([int(t) for t in r["tokens"][r["mask"]]])
        labels.append(int(r["label"]))
    return seqs, labels


def _pad(seqs, length: int):
    tokens = np.zeros((len(seqs), length), np.int32)
    mask = np.zeros((len(seqs), length), bool)
    for i, s in enumerate(seqs):
        s = s[:length]
        tokens[i, :len(s)], mask[i, :len(s)] = s, True
    return tokens, mask


class ReferenceLM:
    """Scores and featurises token sequences of at most one block with a causal LM, in one
    forward pass per set."""

    def __init__(self, model, block_len: int):
        self.block_len = block_len
        self._score = jax.jit(lambda t, m: _nll_and_features(model, t, m))

    def score(self, seqs) -> tuple[float, int, np.ndarray]:
        """Total negative log-likelihood (nats), token count, and mean hidden state per
        sequence (features for MAUVE)."""
        t, m = _pad(seqs, self.block_len)
        nll, features = self._score(t, m)
        return float(nll), int(m.sum()), np.asarray(features)

    def features(self, seqs) -> np.ndarray:
        return self.score(seqs)[2]


def _nll_and_features(model, tokens, mask):
    h = model.hidden(shift_right(jnp.where(mask, tokens, 0)))
    logp = jax.nn.log_softmax(model.embed.attend(h), -1)
    nll = -jnp.take_along_axis(logp, tokens[..., None], -1)[..., 0]
    m = mask[..., None].astype(h.dtype)
    features = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return (nll * mask).sum(), features


def quality(seqs, ref: ReferenceLM, real_features, train_8grams) -> dict:
    nll, n, features = ref.score(seqs)
    return {
        "gen_ppl": metrics.perplexity(nll, n),
        "unigram_entropy": metrics.unigram_entropy(seqs),
        "mauve": metrics.mauve_score(real_features, features),
        "distinct_1": metrics.distinct_n(seqs, 1),
        "distinct_2": metrics.distinct_n(seqs, 2),
        "distinct_3": metrics.distinct_n(seqs, 3),
        "repeat_4": metrics.repeated_ngram_rate(seqs, 4),
        "memorised_8": metrics.memorisation(seqs, train_8grams, 8),
        "mean_tokens": float(np.mean([len(s) for s in seqs])),
    }


def _timed(fn, warm_up: bool = True):
    """(fn(), seconds), after one untimed call that compiles when `warm_up`."""
    if warm_up:
        fn()
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def run_eval(cfg: Config, run_dir) -> dict:
    from ldlm.pipeline import LatentDiffusionPipeline

    e = cfg.eval
    rundir.start_stage(cfg, run_dir, STAGE)
    out_dir = rundir.stage_dir(run_dir, STAGE)
    pipe = LatentDiffusionPipeline.from_pretrained(run_dir)  # MissingStageError -> make dit
    ar_cfg = stage_config(run_dir, "ar", "the AR baseline")
    L = pipe.vae.block_len
    ar = load_stage_model(run_dir, "ar", build_ar(ar_cfg, pipe.vae.tokenizer.vocab_size),
                          ar_cfg.ar_train, ar_cfg.seed)
    if e.reference == "ar":
        ref = ReferenceLM(ar, L)
        ref_name = "the AR baseline itself (make ar); it favours its own samples"
    else:
        ref_cfg = stage_config(run_dir, "reference", "the reference LM")
        ref = ReferenceLM(load_stage_model(
            run_dir, "reference", build_ar(ref_cfg, pipe.vae.tokenizer.vocab_size,
                                           "reference"),
            ref_cfg.reference_train, ref_cfg.seed), L)
        r = ref_cfg.reference
        ref_name = (f"the reference LM (make reference: {r.layers} layers, width {r.width}, "
                    f"{ref_cfg.reference_train.steps} steps)")
    log.info("reference LM: %s", ref_name)
    n = e.num_samples

    train_seqs, train_labels = split_blocks(run_dir, "train")
    train_8grams = metrics.ngram_set(train_seqs, 8)
    classifier = metrics.TopicClassifier(pipe.vae.tokenizer.vocab_size).fit(train_seqs,
                                                                            train_labels)
    real, real_labels = split_blocks(run_dir, "test")
    rng = np.random.default_rng(e.seed)
    pick = rng.choice(len(real), size=min(n, len(real)), replace=False)
    real = [real[i] for i in pick]
    # MAUVE's human side: validation blocks, so the real test blocks are scored like samples
    held_out, _ = split_blocks(run_dir, "validation")
    held_out = [held_out[i] for i in rng.choice(len(held_out), size=min(n, len(held_out)),
                                                replace=False)]
    real_features = ref.features(held_out)
    rows = [{"system": "real text (test split)", "sampler": None, "steps": None,
             "seconds_per_block": None, **quality(real, ref, real_features, train_8grams)}]
    log.info("real text: %s", _brief(rows[-1]))

    # the AR baseline: one block after the start token, through its first EOS; sampled with
    # this evaluation's ar.temperature / ar.top_p (not training settings), so that it can be
    # put beside ldlm at a matched temperature
    sample_ar = jax.jit(lambda key: sample_tokens(
        ar, jnp.full((n,), EOS_ID, jnp.int32), L, key, temperature=cfg.ar.temperature,
        top_p=cfg.ar.top_p))
    ar_tokens, seconds = _timed(lambda: np.asarray(sample_ar(jax.random.PRNGKey(e.seed))))
    ar_seqs = [_through_eos(row) for row in ar_tokens]
    rows.append({"system": "AR baseline (KV cache)", "sampler":
                 f"T={cfg.ar.temperature}, top_p={cfg.ar.top_p}", "steps": L,
                 "seconds_per_block": seconds / n,
                 **quality(ar_seqs, ref, real_features, train_8grams)})
    log.info("AR baseline: %s", _brief(rows[-1]))

    budgets = [int(x) for x in e.steps.split(",")]
    for sampler in [s.strip() for s in e.samplers.split(",")]:
        for i, steps in enumerate(budgets):
            # the step count is traced: one compile per sampler serves every budget
            seqs, seconds = _timed(lambda: pipe.generate_tokens(
                n=n, steps=steps, sampler=sampler, seed=e.seed, temperature=e.temperature),
                warm_up=i == 0)
            rows.append({"system": "ldlm", "sampler": sampler, "steps": steps,
                         "temperature": e.temperature, "seconds_per_block": seconds / n,
                         **quality(seqs, ref, real_features, train_8grams)})
            log.info("ldlm %s %d steps: %s", sampler, steps, _brief(rows[-1]))

    topic = _topic_accuracy(pipe, classifier, e, real, real_labels, pick)
    report = {"reference_lm": ref_name, "ldlm_temperature": e.temperature,
              "num_samples": n, "block_len": L, "device": jax.devices()[0].device_kind,
              "table": rows, "topic_accuracy": topic,
              "examples": {"real": pipe.vae.tokenizer.decode(real[0]),
                           "ar": pipe.vae.tokenizer.decode(ar_seqs[0])}}
    if rundir.is_main_process():
        rundir.write_json_atomic(out_dir / "results.json", report)
        plot(rows, out_dir / "quality_vs_steps.png")
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
    for scale in [float(x) for x in e.guidance_scales.split(",")]:
        seqs = pipe.generate_tokens(n=len(labels), steps=e.guidance_steps,
                                    sampler=e.guidance_sampler, label=labels, guidance=scale,
                                    seed=e.seed, temperature=e.temperature)
        out[f"guidance_{scale:g}"] = classifier.accuracy(seqs, truth)
        log.info("topic accuracy at guidance %g: %.3f", scale, out[f"guidance_{scale:g}"])
    return out


def _through_eos(row) -> list[int]:
    ids = [int(t) for t in row]
    return ids[:ids.index(EOS_ID) + 1] if EOS_ID in ids else ids


def _brief(row: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float))


def plot(rows: list[dict], path) -> None:
    """Gen-PPL, MAUVE and distinct-2 against steps and against seconds per block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("gen_ppl", "gen. perplexity (lower is better)"), ("mauve", "MAUVE"),
            ("distinct_2", "distinct-2")]
    fig, axes = plt.subplots(2, len(keys), figsize=(5 * len(keys), 8))
    ldlm_rows = [r for r in rows if r["system"] == "ldlm"]
    for col, (key, title) in enumerate(keys):
        for x_key, ax in (("steps", axes[0, col]), ("seconds_per_block", axes[1, col])):
            for sampler in sorted({r["sampler"] for r in ldlm_rows}):
                rs = [r for r in ldlm_rows if r["sampler"] == sampler]
                ax.plot([r[x_key] for r in rs], [r[key] for r in rs], "o-",
                        label=f"ldlm {sampler}")
            for r, style in zip([x for x in rows if x["system"] != "ldlm"], ("k--", "r:")):
                if r["system"].startswith("AR") and x_key == "seconds_per_block":
                    ax.plot([r[x_key]], [r[key]], "r*", markersize=12, label=r["system"])
                else:
                    ax.axhline(r[key], color=style[0], linestyle=style[1:], label=r["system"])
            ax.set_xscale("log")
            ax.set_xlabel("denoising steps" if x_key == "steps" else "seconds per block")
            ax.set_title(title)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
