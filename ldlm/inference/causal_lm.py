"""A run's causal LMs, ready to sample or score with: the AR baseline (`make ar`) and the
reference scorer (`make reference`), each rebuilt from its stage's config and restored from
its newest checkpoint on one device."""

from __future__ import annotations

from ldlm.config import Config
from ldlm.data.batches import blocks_dir
from ldlm.data.blocks import read_meta as read_blocks_meta
from ldlm.loading import load_stage_model, stage_config
from ldlm.models.ar import CausalLM, build_ar

WHAT = {"ar": "the AR baseline", "reference": "the reference LM"}


def load_causal_lm(run_dir, stage: str = "ar") -> tuple[CausalLM, Config]:
    """(model, the config it was trained with) of stage "ar" or "reference" of `run_dir`;
    MissingStageError naming `make <stage>` if it never ran."""
    if stage not in WHAT:
        raise ValueError(f"causal LM stage {stage!r}: expected one of {sorted(WHAT)}")
    cfg = stage_config(run_dir, stage, WHAT[stage])
    vocab = read_blocks_meta(blocks_dir(run_dir))["vocab_size"]
    model = load_stage_model(run_dir, stage, build_ar(cfg, vocab, stage),
                             getattr(cfg, f"{stage}_train"))
    return model, cfg
