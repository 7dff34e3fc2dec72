"""`make ar` / `make reference`: train (or resume) a causal LM, then write its training time
and validation loss to <stage>/result.json (written last)."""

from __future__ import annotations

from ldlm import rundir
from ldlm.config import Config
from ldlm.locks import stage_lock
from ldlm.logs import write_result
from ldlm.train.ar import train_ar


def run_ar(cfg: Config, run_dir, stage: str = "ar") -> dict:
    with stage_lock(rundir.stage_dir(run_dir, stage)):
        result = train_ar(cfg, run_dir, stage)
        return write_result(rundir.stage_dir(run_dir, stage), result.seconds)


def run_reference(cfg: Config, run_dir) -> dict:
    return run_ar(cfg, run_dir, "reference")
