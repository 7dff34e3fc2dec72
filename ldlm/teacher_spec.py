"""What `vae.align_teacher` names (ldlm/train/teacher.py loads it; `make eval` checks it
against its scorer): `ar` / `reference` of this run, `<run dir>:ar` / `<run dir>:reference`,
or `python:<module>:<function>`."""

from __future__ import annotations

import pathlib

from ldlm.errors import ConfigError

LM_STAGES = {"ar": "the AR baseline", "reference": "the reference LM"}


def parse(spec: str, run_dir) -> tuple[str, str, str]:
    """("lm", run dir, stage) or ("python", module, function); a one-line ConfigError for
    anything else."""
    if spec.startswith("python:"):
        parts = spec.split(":")
        if len(parts) != 3 or not all(parts[1:]):
            raise ConfigError(f"vae.align_teacher={spec!r}: expected "
                              "python:<module>:<function>")
        return "python", parts[1], parts[2]
    other, _, stage = spec.rpartition(":")
    if stage not in LM_STAGES:
        raise ConfigError(f"vae.align_teacher={spec!r}: expected ar, reference, <run dir>:ar, "
                          "<run dir>:reference or python:<module>:<function>")
    return "lm", str(pathlib.Path(other) if other else pathlib.Path(run_dir)), stage


def same_lm(spec: str, run_dir, lm_run, lm_stage: str) -> bool:
    """Whether `spec` (read in `run_dir`) names the causal LM `lm_stage` of `lm_run`."""
    kind, where, stage = parse(spec, run_dir)
    return kind == "lm" and stage == lm_stage and \
        pathlib.Path(where).resolve() == pathlib.Path(lm_run).resolve()
