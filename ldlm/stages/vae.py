"""`make vae`: train the TextVAE, then evaluate reconstruction and write the latent
statistics that every later stage normalises by (`vae/latent_stats.npz`) and `vae/eval.json`
(written last: its presence means the stage finished)."""

from __future__ import annotations

import time

from ldlm import rundir
from ldlm.config import Config
from ldlm.data.latents import STATS_FILE
from ldlm.data.tokenizer import Tokenizer
from ldlm.eval import reconstruction
from ldlm.locks import stage_lock
from ldlm.train.loop import TrainResult
from ldlm.train.vae import STAGE, train_vae

EVAL_FILE = "eval.json"


def run_vae(cfg: Config, run_dir) -> dict:
    Tokenizer.load(rundir.stage_dir(run_dir, "tokenizer"))  # the evaluation needs it: fail now
    with stage_lock(rundir.stage_dir(run_dir, STAGE)):  # training and evaluation
        return evaluate_trained_vae(cfg, run_dir, train_vae(cfg, run_dir))


def evaluate_trained_vae(cfg: Config, run_dir, result: TrainResult) -> dict:
    """The stage's evaluation of a training result: statistics, report, eval.json."""
    t0 = time.time()
    tokenizer = Tokenizer.load(rundir.stage_dir(run_dir, "tokenizer"))
    report, normaliser = reconstruction.evaluate_vae(cfg, run_dir, result.model(), result.mesh,
                                                     tokenizer)
    report["train_seconds"] = round(result.seconds, 1)
    report["eval_seconds"] = round(time.time() - t0, 1)
    out = rundir.stage_dir(run_dir, STAGE)
    if rundir.is_main_process():
        normaliser.save(out / STATS_FILE)
        rundir.write_json_atomic(out / EVAL_FILE, report)
    reconstruction.log_report(report)
    return report
