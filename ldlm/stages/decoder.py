"""`make decoder`: fine-tune the seam decoder (the VAE decoder that also sees the previous
VAE block's latents) on the latent cache, then compare it with the VAE decoder on the
validation windows (`decoder/eval.json`, written last: its presence means the stage
finished)."""

from __future__ import annotations

import logging
import time

import jax
from flax import nnx

from ldlm import rundir
from ldlm.config import Config
from ldlm.data.latents import LatentNormaliser, LatentWindowSource
from ldlm.eval.seams import DECODERS, seam_table
from ldlm.inference.textvae import TextVAE
from ldlm.locks import stage_lock
from ldlm.mesh import to_host
from ldlm.train.seam_decoder import STAGE, train_seam_decoder

EVAL_FILE = "eval.json"
log = logging.getLogger("ldlm.decoder")


def run_decoder(cfg: Config, run_dir) -> dict:
    # the VAE decoder to compare with; a missing VAE stage fails before anything is written
    vae = TextVAE.from_run(run_dir, decoder="vae")
    if vae.cfg.vae.kind != "block":  # nothing to fine-tune: make demo goes on
        log.info("make decoder: the %s autoencoder reads each latent on its own, so it has "
                 "no block seams and no seam decoder; skipped", vae.cfg.vae.kind)
        return {"skipped": f"vae.kind={vae.cfg.vae.kind}"}
    with stage_lock(rundir.stage_dir(run_dir, STAGE)):
        result = train_seam_decoder(cfg, run_dir)
        t0 = time.time()
        # on the host's default device, beside the VAE
        graphdef, params = nnx.split(result.model())
        seam = nnx.merge(graphdef, jax.tree.map(to_host, params))
        table = seam_table(vae.model, seam,
                           LatentWindowSource(run_dir, "validation", 2),
                           LatentNormaliser.load(run_dir), seed=cfg.seed)
        report = {"train_seconds": round(result.seconds, 1),
                  "eval_seconds": round(time.time() - t0, 1), "validation": table}
        if rundir.is_main_process():
            rundir.write_json_atomic(rundir.stage_dir(run_dir, STAGE) / EVAL_FILE, report)
        log_table(table)
        return report


def log_table(table: dict) -> None:
    log.info("second block of %d validation windows, token accuracy (its first tokens):",
             table["blocks"])
    for s, row in table.items():
        if s == "blocks":
            continue
        log.info("  latent noise sigma %-4s %s", s, "  ".join(
            f"{d} {100 * row[d]['token_accuracy']:5.1f}% ({100 * row[d]['seam_accuracy']:5.1f}%)"
            for d in DECODERS))
