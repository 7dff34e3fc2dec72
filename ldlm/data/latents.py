"""Stage 1.5 (`make latents`): encode the corpus once with the frozen VAE.

Writes `runs/<run>/latents/<split>.array_record` (one record per block, in block order:
int32 [doc_index, block_index, label, num_tokens], int32 tokens_L, then float32 posterior
mean z_NxD; the tokens let the DiT score its estimates through the frozen decoder),
`stats.npz` (per-coordinate mean and std of the training latents) and `meta.json`.

`LatentSource` reads them back for grain: each item is the block's latents normalised per
coordinate, plus its document neighbours (the previous and next block of the same document,
zeros and a False flag where there is none), so one model can learn unconditional
generation, continuation and infilling, and the block's tokens with their padding mask.
"""

from __future__ import annotations

import json
import logging
import pathlib
import time

import grain
import numpy as np

from ldlm import rundir
from ldlm.config import Config
from ldlm.data import blocks as blocks_lib
from ldlm.data import pipeline
from ldlm.errors import ConfigError, MissingStageError

log = logging.getLogger("ldlm.latents")
STAGE = "latents"
HEADER = 4
STATS_FILE = "stats.npz"
META_FILE = "meta.json"
ROLES = ("train", "validation")


def latents_dir(run_dir) -> pathlib.Path:
    return rundir.stage_dir(run_dir, STAGE)


def encode_record(header, tokens_L, z_NxD) -> bytes:
    return (np.asarray(header, "<i4").tobytes() + np.asarray(tokens_L, "<i4").tobytes()
            + np.asarray(z_NxD, "<f4").tobytes())


def decode_record(raw: bytes, block_len: int, num_latents: int, latent_dim: int):
    """(header_4, tokens_L, z_NxD) of one record."""
    ints = np.frombuffer(raw[:4 * (HEADER + block_len)], "<i4")
    z = np.frombuffer(raw[4 * (HEADER + block_len):], "<f4").reshape(num_latents, latent_dim)
    return ints[:HEADER], ints[HEADER:], z


def run_latents(cfg: Config, run_dir, batch_size: int = 256) -> dict:
    """Encodes the train and validation blocks with the trained VAE (posterior means)."""
    from ldlm.textvae import TextVAE

    t0 = time.time()
    vae = TextVAE.from_run(run_dir)  # MissingStageError -> make vae
    if vae.block_len != cfg.data.block_len:
        raise ConfigError(f"the VAE of {run_dir} was trained on blocks of {vae.block_len} "
                          f"tokens but data.block_len={cfg.data.block_len}")
    out = rundir.start_stage(cfg, run_dir, STAGE)
    N, D = vae.num_latents, vae.latent_dim
    counts = {}
    for role in ROLES:
        src = pipeline.block_source(run_dir, role)
        ds = pipeline.make_dataset(src, batch_size=batch_size, train=False, process_index=0,
                                   process_count=1)

        def records():
            for batch in ds:
                rows = batch["doc_index"] >= 0
                z = vae.encode_tokens(batch["tokens"])
                for r in np.flatnonzero(rows):
                    header = (batch["doc_index"][r], batch["block_index"][r], batch["label"][r],
                              batch["mask"][r].sum())
                    yield encode_record(header, batch["tokens"][r], z[r])

        if rundir.is_main_process():
            counts[role] = blocks_lib.write_records(out / f"{role}.array_record", records())
        log.info("%s: %d blocks encoded to %dx%d latents", role, counts.get(role, 0), N, D)
    mean, std = _moments(out / "train.array_record", cfg.data.block_len, N, D)
    if rundir.is_main_process():
        tmp = out / ".stats.tmp.npz"
        with open(tmp, "wb") as f:
            np.savez(f, mean=mean, std=std)
        tmp.replace(out / STATS_FILE)
        meta = {"num_latents": N, "latent_dim": D, "block_len": cfg.data.block_len,
                "blocks": counts,
                "label_names": blocks_lib.read_meta(pipeline.blocks_dir(run_dir))["label_names"],
                "latent_std_mean": float(std.mean()), "seconds": round(time.time() - t0, 1)}
        rundir.write_json_atomic(out / META_FILE, meta)
    log.info("latent std per coordinate: mean %.3f, min %.3f, max %.3f (%.0fs)", std.mean(),
             std.min(), std.max(), time.time() - t0)
    return {"blocks": counts, "seconds": round(time.time() - t0, 1)}


def _moments(path, L, N, D):
    src = grain.sources.ArrayRecordDataSource(str(path))
    z = np.stack([decode_record(src[i], L, N, D)[2] for i in range(len(src))]).reshape(-1, D)
    return z.mean(0).astype(np.float32), z.std(0).astype(np.float32)


def read_meta(run_dir) -> dict:
    path = latents_dir(run_dir) / META_FILE
    if not path.is_file():
        raise MissingStageError("encoded latents", latents_dir(run_dir), "latents")
    meta = json.loads(path.read_text())
    if "block_len" not in meta:  # caches from before the records held tokens
        raise ConfigError(f"the latent cache in {latents_dir(run_dir)} was written by an older "
                          "version (its records hold no tokens): rerun `make latents`")
    return meta


def read_stats(run_dir) -> tuple[np.ndarray, np.ndarray]:
    path = latents_dir(run_dir) / STATS_FILE
    if not path.is_file():
        raise MissingStageError("latent statistics", path, "latents")
    with np.load(path) as f:
        return f["mean"], f["std"]


class LatentSource:
    """Random access to normalised block latents with their document neighbours.

    Item i: z (NxD, (z - mean) / std), prev / next (NxD, zeros where absent), has_prev /
    has_next (bool), label, doc_index, block_index (int32), tokens (L int32) and token_mask
    (L bool, True on real tokens). Records are in block order, so a
    block's neighbours are records i - 1 and i + 1 when they belong to the same document.
    """

    def __init__(self, run_dir, role: str):
        meta = read_meta(run_dir)
        path = latents_dir(run_dir) / f"{role}.array_record"
        if not path.is_file():
            raise MissingStageError(f"{role} latents", path, "latents")
        self._src = grain.sources.ArrayRecordDataSource(str(path))
        self.L, self.N, self.D = meta["block_len"], meta["num_latents"], meta["latent_dim"]
        mean, std = read_stats(run_dir)
        self._mean, self._std = mean[None, :], std[None, :]

    def __len__(self) -> int:
        return len(self._src)

    def _read(self, i):
        header, tokens, z = decode_record(self._src[i], self.L, self.N, self.D)
        return header, tokens, ((z - self._mean) / self._std).astype(np.float32)

    def _neighbour(self, i, header, offset):
        j = i + offset
        if 0 <= j < len(self._src):
            h, _, z = self._read(j)
            if h[0] == header[0] and h[1] == header[1] + offset:
                return z, True
        return np.zeros((self.N, self.D), np.float32), False

    def __getitem__(self, i):
        i = int(i)
        header, tokens, z = self._read(i)
        prev, has_prev = self._neighbour(i, header, -1)
        nxt, has_next = self._neighbour(i, header, +1)
        return {"z": z, "prev": prev, "has_prev": np.bool_(has_prev), "next": nxt,
                "has_next": np.bool_(has_next), "label": np.int32(header[2]),
                "doc_index": np.int32(header[0]), "block_index": np.int32(header[1]),
                "tokens": tokens.astype(np.int32),
                "token_mask": np.arange(self.L) < header[3]}


def latent_batches(cfg: Config, run_dir, mesh, role: str = "train", train: bool = True,
                   batch_size: int | None = None):
    """Global, mesh-sharded batches of `LatentSource` items (resumable when train)."""
    batch_size = batch_size or cfg.data.batch_size
    pipeline.local_batch_size(batch_size, mesh)
    ds = pipeline.make_dataset(LatentSource(run_dir, role), batch_size=batch_size, train=train,
                               seed=cfg.data.shuffle_seed, decode=lambda item: item)
    return pipeline.GlobalBatches(ds, mesh)
