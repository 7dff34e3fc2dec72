"""Run directory layout: `runs/<run>/<stage>/`, each holding the resolved config.

    runs/<run>/data/        TFDS build of the built-in corpus, split statistics
    runs/<run>/tokenizer/   spm.model, blocks/<split>.array_record, statistics
    runs/<run>/<stage>/     config.json, metrics.jsonl, TensorBoard events, checkpoints

A stage reads the previous stage's output from here and, when it is missing, says which
make target produces it.
"""

from __future__ import annotations

import json
import logging
import os
import pathlib
import sys

import jax

from ldlm.config import Config
from ldlm.distributed import is_main_process  # noqa: F401 - re-exported for the stages

CONFIG_FILE = "config.json"
STATS_FILE = "stats.json"


def stage_dir(run_dir, stage: str) -> pathlib.Path:
    return pathlib.Path(run_dir) / stage


def write_text_atomic(path, text: str) -> None:
    """Writes through a temporary file and a rename: a killed write leaves the old file."""
    path = pathlib.Path(path)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(text)
    tmp.replace(path)


def write_json_atomic(path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def start_stage(cfg: Config, run_dir, stage: str) -> pathlib.Path:
    """Creates the stage directory and writes the resolved config into it (process 0)."""
    setup_logging()
    out = stage_dir(run_dir, stage)
    if is_main_process():
        out.mkdir(parents=True, exist_ok=True)
        write_json_atomic(out / CONFIG_FILE, cfg.to_dict())
    logging.getLogger("ldlm").info("stage %s: %s (experiment %s, preset %s)", stage, out,
                                   cfg.name, cfg.preset)
    return out


def setup_logging(level: int = logging.INFO) -> None:
    """`ldlm` loggers print to stderr; processes other than 0 only print warnings."""
    logger = logging.getLogger("ldlm")
    if logger.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s ldlm %(levelname).1s] %(message)s",
                                           datefmt="%H:%M:%S"))
    logger.addHandler(handler)
    logger.setLevel(level if jax.process_index() == 0 else logging.WARNING)
    logger.propagate = False
