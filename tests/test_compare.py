"""`make eval` end to end on the tiny run: every system scored, table and plot written."""

import json

import pytest

from ldlm.errors import MissingStageError
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
