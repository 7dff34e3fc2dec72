"""`make eval` end to end on the tiny run: every system scored, table and plot written."""

import json

import shutil

import pytest

from ldlm.errors import ConfigError, MissingStageError
from tests.helpers import link_stages


def test_eval_without_the_baseline_names_make_ar(tiny_dit, tiny_cfg, tmp_path):
    from ldlm.stages.eval import run_eval

    _, src, _ = tiny_dit
    run_dir = link_stages(src, tmp_path / "no_ar", ("data", "tokenizer", "vae", "latents", "dit"))
    with pytest.raises(MissingStageError, match="make ar"):
        run_eval(tiny_cfg, run_dir)


def test_eval_scores_every_system_and_writes_table_and_plot(tiny_dit, tiny_cfg):
    from ldlm.stages.eval import run_eval
    from ldlm.stages.ar import run_ar

    _, run_dir, _ = tiny_dit
    run_ar(tiny_cfg, run_dir)
    report = run_eval(tiny_cfg, run_dir)
    rows = report["table"]
    systems = [r["system"] for r in rows]
    assert systems[:2] == ["real text (test split)", "AR baseline (KV cache)"]
    ldlm = [(r["sampler"], r["steps"]) for r in rows if r["system"] == "ldlm"]
    assert ldlm == [("ddim", 1), ("ddim", 4), ("dpm++", 1), ("dpm++", 4)]
    for r in rows:
        assert r["gen_ppl"] > 1 and 0 <= r["mauve"] <= 1 and 0 <= r["distinct_2"] <= 1
        assert 0 <= r["memorised_8"] <= 1 and 0 <= r["repeat_4"] <= 1
    assert set(report["topic_accuracy"]) == {"real_test_blocks", "guidance_0",
                                             "guidance_2"}
    _check_matched_entropy(report["matched_entropy"], tiny_cfg)
    brier_lm = report["brier_lm"]  # the tiny DiT has context: both systems continue
    assert brier_lm["prefixes"] >= 1
    for system in ("AR baseline", "ldlm"):
        b = brier_lm[system]
        assert b["prefixes"] == brier_lm["prefixes"] and 0 <= b["brier_lm"] <= 100
        assert all(-1 <= b[f"brier_{k}"] <= 2 for k in range(1, 5))
    out = run_dir / "eval"
    assert json.loads((out / "results.json").read_text())["num_samples"] == 8
    assert (out / "quality_vs_steps.png").stat().st_size > 10_000


def test_eval_can_score_with_the_reference_lm(tiny_dit, tiny_cfg):
    from ldlm.stages.eval import run_eval
    from ldlm.stages.ar import run_ar, run_reference

    _, run_dir, _ = tiny_dit
    if not (run_dir / "ar" / "result.json").exists():
        run_ar(tiny_cfg, run_dir)
    cfg = tiny_cfg.override(["eval.reference=reference", "eval.samplers=dpm++",
                             "eval.steps=2", "eval.guidance_scales=1", "eval.temperature=0.8",
                             "ar.temperature=0.8"])
    with pytest.raises(MissingStageError, match="make reference"):
        run_eval(cfg, run_dir)
    out = run_reference(cfg, run_dir)
    assert (run_dir / "reference" / "result.json").exists() and out["validation"]
    report = run_eval(cfg, run_dir)
    assert report["reference_lm"].startswith("the reference LM (make reference: 3 layers")
    assert report["ldlm_temperature"] == 0.8
    assert [r["temperature"] for r in report["table"] if r["system"] == "ldlm"] == [0.8]
    assert report["table"][1]["sampler"] == "T=0.8, top_p=0.95"  # the AR at a matched T
    # the baseline's own score beside the reference LM's
    assert report["scorer"] == "reference" and not report["aligned_to_scorer"]
    assert all(r["gen_ppl_ar"] > 1 for r in report["table"])
    matched = report["matched_entropy"]
    _check_matched_entropy(matched, cfg)
    assert all(r["gen_ppl_reference"] > 1 and r["gen_ppl_ar"] > 1 for r in matched["rows"])
    # "auto" (the default) takes the trained reference LM (the scorers alone: the evaluation
    # is the same as above)
    from ldlm.inference.causal_lm import load_causal_lm
    from ldlm.stages.eval import _primary, _scorers

    ar, _ = load_causal_lm(run_dir, "ar")
    scorers, name = _scorers(tiny_cfg, run_dir, ar, tiny_cfg.data.block_len)
    assert _primary(scorers) == "reference" and name == report["reference_lm"]


def test_eval_takes_a_reference_lm_of_another_run_only_with_the_same_tokenizer(
        tiny_dit, tiny_cfg, tmp_path):
    from ldlm.stages.ar import run_ar, run_reference
    from ldlm.stages.eval import run_eval

    _, run_dir, _ = tiny_dit
    for stage, train in (("ar", run_ar), ("reference", run_reference)):
        if not (run_dir / stage / "result.json").exists():
            train(tiny_cfg, run_dir)
    other = link_stages(run_dir, tmp_path / "other", ("reference",))
    shutil.copytree(run_dir / "tokenizer", other / "tokenizer")
    vocab = other / "tokenizer" / "spm.vocab"
    vocab.write_text(vocab.read_text().replace("\n", "\nextra\t0\n", 1))
    cfg = tiny_cfg.override([f"eval.reference_run={other}"])
    with pytest.raises(ConfigError, match="eval.reference_run=.* another tokenizer"):
        run_eval(cfg, link_stages(run_dir, tmp_path / "mine", ("data", "tokenizer", "vae",
                                                                "latents", "dit", "ar")))


def _check_matched_entropy(m: dict, cfg) -> None:
    """Real text, the baseline and ldlm at every temperature; the curves read at real text's
    entropy and below it; the ratio is ldlm's value over the baseline's."""
    temps = list(cfg.eval.long_temperatures)
    rows = m["rows"]
    assert [r["system"] for r in rows] == ["real text"] + ["AR baseline"] * len(temps) + \
        ["ldlm"] * len(temps)
    assert [r["temperature"] for r in rows[1:]] == temps * 2
    assert all(0 < r["mean_tokens"] <= cfg.eval.long_tokens for r in rows)
    real_h = rows[0]["unigram_entropy"]
    assert m["entropies"] == {"real_text": real_h,
                              "lower": real_h - cfg.eval.matched_entropy_gap}
    at = m["gen_ppl_at_entropy"][m["scorer"]]
    for k, h in m["entropies"].items():
        for system in ("ldlm", "AR baseline"):
            curve = sorted(r["unigram_entropy"] for r in rows if r["system"] == system)
            inside = curve[0] <= h <= curve[-1]
            assert (at[system][k] is not None) == inside
        expected = (at["ldlm"][k] / at["AR baseline"][k] if at["ldlm"][k] and
                    at["AR baseline"][k] else None)
        assert m["ratio_ldlm_to_ar"][m["scorer"]][k] == expected
