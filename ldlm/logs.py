"""Training metrics: `metrics.jsonl` and TensorBoard events, written by process 0 only,
and a progress bar for long loops."""

from __future__ import annotations

import json
import math
import os
import pathlib
import time
from typing import Iterable, Mapping

import jax
from tqdm.auto import tqdm

from ldlm import rundir

METRICS_FILE = "metrics.jsonl"


class MetricsWriter:
    """Appends one JSON line per `write` and mirrors scalars to TensorBoard.

    Appending keeps the history of a resumed run in one file; each line carries its step.
    A run resumed from the checkpoint at `resumed_at` trains the steps after it again, so
    the lines of those steps written before the kill are dropped first (one line per step,
    never two histories interleaved).
    """

    def __init__(self, out_dir, tensorboard: bool = True, resumed_at: int | None = None):
        self.enabled = jax.process_index() == 0
        self.path = pathlib.Path(out_dir) / METRICS_FILE
        self._tb = None
        if self.enabled:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            if resumed_at is not None and self.path.is_file():
                _drop_steps_after(self.path, resumed_at)
            self._file = self.path.open("a")
            if tensorboard:
                from tensorboardX import SummaryWriter
                # A unique suffix: a resumed run started within the same second would
                # otherwise overwrite the previous events file.
                self._tb = SummaryWriter(str(pathlib.Path(out_dir) / "tensorboard"),
                                         filename_suffix=f".{os.getpid()}.{time.time_ns()}")

    def write(self, step: int, metrics: Mapping[str, float], split: str = "train") -> None:
        if not self.enabled:
            return
        values = {k: float(v) for k, v in metrics.items()}
        self._file.write(json.dumps({"step": int(step), "split": split, **{
            k: (v if math.isfinite(v) else str(v)) for k, v in values.items()}}) + "\n")
        self._file.flush()
        if self._tb is not None:
            for k, v in values.items():
                self._tb.add_scalar(f"{split}/{k}", v, int(step))

    def close(self) -> None:
        if self.enabled:
            self._file.close()
            if self._tb is not None:
                self._tb.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _drop_steps_after(path: pathlib.Path, step: int) -> None:
    """Rewrites metrics.jsonl (atomically) without the lines past `step`; a torn last line
    of a killed write goes too."""
    kept = []
    for line in path.read_text().splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    rundir.write_text_atomic(path, "".join(line + "\n" for line in kept))


def read_metrics(out_dir) -> list[dict]:
    path = pathlib.Path(out_dir) / METRICS_FILE
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def write_result(out_dir, seconds: float, name: str = "result.json") -> dict:
    """A training stage's last file: its training time and final validation metrics; its
    presence means the stage finished."""
    rows = [r for r in read_metrics(out_dir) if r["split"] == "validation"]
    out = {"train_seconds": round(seconds, 1), "validation": rows[-1] if rows else {}}
    if rundir.is_main_process():
        rundir.write_json_atomic(pathlib.Path(out_dir) / name, out)
    return out


def progress(iterable: Iterable | None = None, total: int | None = None, desc: str = "",
             initial: int = 0):
    """A tqdm bar on process 0, silent elsewhere (and where TQDM_DISABLE=1: tqdm reads its
    environment only for arguments not passed)."""
    silent = {"disable": True} if jax.process_index() != 0 else {}
    return tqdm(iterable, total=total, desc=desc, initial=initial, dynamic_ncols=True,
                leave=True, **silent)
