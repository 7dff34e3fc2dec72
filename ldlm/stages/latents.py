"""`make latents`: encode the train and validation blocks once with the frozen VAE.

Writes `latents/<split>.array_record` (`ldlm.data.records` with the posterior mean z_NxD and
log-variance of each block, in block order; the tokens let the DiT score its estimates through the frozen
decoder) and `meta.json`, written last. Process 0 encodes and writes; every process waits at
a barrier until the cache is complete, so none goes on to read a half-written file.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ldlm import rundir
from ldlm.config import Config
from ldlm.data import batches
from ldlm.data.blocks import read_meta as read_blocks_meta
from ldlm.data.latents import META_FILE, ROLES, STAGE, record_format, split_path
from ldlm.data.records import write_records
from ldlm.distributed import barrier
from ldlm.errors import ConfigError
from ldlm.inference.textvae import TextVAE
from ldlm.locks import stage_lock

log = logging.getLogger("ldlm.latents")


def run_latents(cfg: Config, run_dir, batch_size: int = 256) -> dict:
    t0 = time.time()
    vae = TextVAE.from_run(run_dir)  # MissingStageError -> make vae
    if vae.block_len != cfg.data.block_len:
        raise ConfigError(f"the VAE of {run_dir} was trained on blocks of {vae.block_len} "
                          f"tokens but data.block_len={cfg.data.block_len}")
    with stage_lock(rundir.stage_dir(run_dir, STAGE)):  # one writer of the cache
        return _write_cache(cfg, run_dir, vae, t0, batch_size)


def _write_cache(cfg: Config, run_dir, vae: TextVAE, t0: float, batch_size: int) -> dict:
    out = rundir.start_stage(cfg, run_dir, STAGE)
    N, D = vae.num_latents, vae.latent_dim
    meta = {"num_latents": N, "latent_dim": D, "block_len": cfg.data.block_len,
            "logvar": True,
            "label_names": read_blocks_meta(batches.blocks_dir(run_dir))["label_names"]}
    fmt = record_format(meta)
    counts = {}
    for role in ROLES:
        ds = batches.make_dataset(batches.block_source(run_dir, role), batch_size=batch_size,
                                  train=False, process_index=0, process_count=1)

        def records():
            for batch in ds:
                z, logvar = vae.posterior_tokens(batch["tokens"])
                for r in np.flatnonzero(batches.real_rows(batch)):
                    yield fmt.encode(doc_index=batch["doc_index"][r],
                                     block_index=batch["block_index"][r],
                                     label=batch["label"][r],
                                     tokens=batch["tokens"][r][batch["mask"][r]], z=z[r],
                                     logvar=logvar[r])

        if rundir.is_main_process():
            counts[role] = write_records(split_path(run_dir, role), records())
            log.info("%s: %d blocks encoded to %dx%d latents", role, counts[role], N, D)
    if rundir.is_main_process():
        rundir.write_json_atomic(out / META_FILE, {**meta, "blocks": counts,
                                                   "seconds": round(time.time() - t0, 1)})
    barrier("latent cache written")
    return {"blocks": counts, "seconds": round(time.time() - t0, 1)}
