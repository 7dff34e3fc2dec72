"""The latent cache (`make latents`) read back: normalised block latents with their document
neighbours, and the per-coordinate latent statistics that normalise them.

The cache is `runs/<run>/latents/<split>.array_record`, one `ldlm.data.records` record per
block in block order (header, tokens_L, posterior mean z_NxD), and `meta.json`. The
statistics are the VAE's (`vae/latent_stats.npz`, written by `make vae`): the DiT sees
(z - mean) / std, and its samples are mapped back with the same `LatentNormaliser`.

`LatentSource` serves grain: each item is a block's normalised latents, its document
neighbours (the previous and next block of the same document, zeros and a False flag where
there is none: one model learns unconditional generation, continuation and infilling), and
the block's tokens with their mask.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib

import numpy as np

from ldlm import rundir
from ldlm.config import Config
from ldlm.data import batches
from ldlm.data.records import RecordFormat, RecordSource
from ldlm.errors import ConfigError, MissingStageError
from ldlm.files import read_json

STAGE = "latents"
META_FILE = "meta.json"
STATS_FILE = "latent_stats.npz"  # in the vae stage directory
ROLES = ("train", "validation")


def latents_dir(run_dir) -> pathlib.Path:
    return rundir.stage_dir(run_dir, STAGE)


def split_path(run_dir, role: str) -> pathlib.Path:
    return latents_dir(run_dir) / f"{role}.array_record"


@dataclasses.dataclass(frozen=True)
class LatentNormaliser:
    """Per-coordinate mean and std (D each) of the VAE's posterior means over the training
    blocks: what the diffusion stage normalises by, and what latent noise is measured in."""

    mean_D: np.ndarray
    std_D: np.ndarray

    def normalise(self, z_xD):
        mean, std = self._like(z_xD)
        return ((z_xD - mean) / std).astype(np.float32)

    def denormalise(self, z_xD):
        """Normalised latents (what the DiT sees) -> the VAE's latents (numpy or jax)."""
        mean, std = self._like(z_xD)
        return z_xD * std + mean

    def _like(self, z_xD):
        """mean and std with leading unit axes up to z's rank (explicit broadcasting)."""
        shape = (1,) * (z_xD.ndim - 1) + (-1,)
        return self.mean_D.reshape(shape), self.std_D.reshape(shape)

    @classmethod
    def from_moments(cls, total_D, total_sq_D, count: float) -> "LatentNormaliser":
        mean = total_D / count
        std = np.sqrt(np.maximum(total_sq_D / count - mean ** 2, 1e-12))
        return cls(mean.astype(np.float32), std.astype(np.float32))

    def save(self, path) -> None:
        path = pathlib.Path(path)
        tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
        with open(tmp, "wb") as f:
            np.savez(f, mean=self.mean_D, std=self.std_D)
        tmp.replace(path)

    @classmethod
    def load(cls, run_dir) -> "LatentNormaliser":
        path = rundir.stage_dir(run_dir, "vae") / STATS_FILE
        if not path.is_file():
            raise MissingStageError("latent statistics", path, "vae")
        with np.load(path) as f:
            return cls(f["mean"].astype(np.float32), f["std"].astype(np.float32))


def read_meta(run_dir) -> dict:
    path = latents_dir(run_dir) / META_FILE
    if not path.is_file():
        raise MissingStageError("encoded latents", latents_dir(run_dir), "latents")
    meta = read_json(path, "rerun `make latents`")
    if "block_len" not in meta:  # caches from before the records held tokens
        raise ConfigError(f"the latent cache in {latents_dir(run_dir)} was written by an older "
                          "version (its records hold no tokens): rerun `make latents`")
    return meta


def record_format(meta: dict) -> RecordFormat:
    return RecordFormat(meta["block_len"], (meta["num_latents"], meta["latent_dim"]),
                        logvar=meta.get("logvar", False))


def _open_cache(run_dir, role: str) -> tuple[RecordSource, dict, LatentNormaliser]:
    """(records, meta, normaliser) of one split of the latent cache."""
    meta = read_meta(run_dir)
    path = split_path(run_dir, role)
    if not path.is_file():
        raise MissingStageError(f"{role} latents", path, "latents")
    return RecordSource(path, record_format(meta), "latents"), meta, \
        LatentNormaliser.load(run_dir)


class LatentSource:
    """Random access to normalised block latents with their document neighbours.

    Item i: z (NxD, normalised), prev / next (NxD, zeros where absent), has_prev / has_next
    (bool), label, doc_index, block_index (int32), tokens (L int32) and mask (L bool, True on
    real tokens). Records are in block order, so a block's neighbours are records i - 1 and
    i + 1 when they belong to the same document.
    """

    def __init__(self, run_dir, role: str):
        self._src, meta, self._normaliser = _open_cache(run_dir, role)
        self.N, self.D = meta["num_latents"], meta["latent_dim"]

    def __len__(self) -> int:
        return len(self._src)

    def _read(self, i):
        rec = self._src[i]
        rec["z"] = self._normaliser.normalise(rec["z"])
        return rec

    def _neighbour(self, i, rec, offset):
        j = i + offset
        if 0 <= j < len(self._src):
            other = self._read(j)
            if other["doc_index"] == rec["doc_index"] and \
                    other["block_index"] == rec["block_index"] + offset:
                return other["z"], True
        return np.zeros((self.N, self.D), np.float32), False

    def __getitem__(self, i):
        i = int(i)
        rec = self._read(i)
        rec["prev"], has_prev = self._neighbour(i, rec, -1)
        rec["next"], has_next = self._neighbour(i, rec, +1)
        rec["has_prev"], rec["has_next"] = np.bool_(has_prev), np.bool_(has_next)
        return rec


class LatentWindowSource:
    """Windows of `blocks` consecutive VAE blocks of one document, for a prior over whole
    windows of latents (the block-causal DiT).

    One item per block of the split: the window that starts at it, so every block is seen at
    every position of a window once an epoch. Item i: z (W x D normalised latents, W =
    blocks x N; zeros past the document's end), latent_mask (W bool, True on real latents),
    tokens / mask (blocks x L; all False past the end), label, doc_index and block_index (of
    the first block); with `sigma`, also the posterior's standard deviation in normalised
    units (W x D, zeros past the end), for losses that draw targets from the posterior.
    """

    def __init__(self, run_dir, role: str, blocks: int, sigma: bool = False):
        if blocks < 1:
            raise ConfigError(f"a window holds at least one VAE block, not {blocks}")
        self._src, meta, self._normaliser = _open_cache(run_dir, role)
        if sigma and not meta.get("logvar", False):
            raise ConfigError(f"the latent cache in {latents_dir(run_dir)} holds no posterior "
                              "variance (written by an older version): rerun `make latents`")
        self.sigma = sigma
        self.N, self.D, self.L = meta["num_latents"], meta["latent_dim"], meta["block_len"]
        self.blocks = blocks
        # records are in block order: a document's blocks are one run of records, and the
        # window of record i ends at the first record of another document (or block gap)
        head = [(int(r["doc_index"]), int(r["block_index"]))
                for r in (self._src[i] for i in range(len(self._src)))]
        self._stop = np.empty(len(head), np.int64)
        stop = len(head)
        for i in range(len(head) - 1, -1, -1):
            if i + 1 < len(head) and head[i + 1] != (head[i][0], head[i][1] + 1):
                stop = i + 1
            self._stop[i] = stop

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i):
        i = int(i)
        K, N = self.blocks, self.N
        z = np.zeros((K * N, self.D), np.float32)
        latent_mask = np.zeros((K * N,), bool)
        tokens = np.zeros((K, self.L), np.int32)
        mask = np.zeros((K, self.L), bool)
        sigma = np.zeros((K * N, self.D), np.float32)
        first = None
        for k, r in enumerate(range(i, min(i + K, int(self._stop[i])))):
            rec = self._src[r]
            if first is None:
                first = rec
            z[k * N:(k + 1) * N] = self._normaliser.normalise(rec["z"])
            latent_mask[k * N:(k + 1) * N] = True
            tokens[k], mask[k] = rec["tokens"], rec["mask"]
            if self.sigma:
                sigma[k * N:(k + 1) * N] = np.exp(0.5 * rec["logvar"]) / \
                    self._normaliser.std_D[None, :]
        item = {"z": z, "latent_mask": latent_mask, "tokens": tokens, "mask": mask,
                "label": first["label"], "doc_index": first["doc_index"],
                "block_index": first["block_index"]}
        if self.sigma:
            item["sigma"] = sigma
        return item


def latent_batches(cfg: Config, run_dir, mesh, role: str = "train", train: bool = True,
                   batch_size: int | None = None):
    """Global, mesh-sharded batches of `LatentSource` items (resumable when train)."""
    return _batches(cfg, LatentSource(run_dir, role), mesh, train, batch_size)


def _batches(cfg: Config, source, mesh, train: bool, batch_size: int | None):
    batch_size = batch_size or cfg.data.batch_size
    batches.local_batch_size(batch_size, mesh)
    ds = batches.make_dataset(source, batch_size=batch_size, train=train,
                              seed=cfg.data.shuffle_seed)
    return batches.GlobalBatches(ds, mesh)


def window_batches(cfg: Config, run_dir, mesh, role: str = "train", train: bool = True,
                   batch_size: int | None = None, *, blocks: int, sigma: bool = False):
    """Global, mesh-sharded batches of `LatentWindowSource` items of `blocks` VAE blocks
    (resumable when train; with `sigma` the posterior's spread as well)."""
    source = LatentWindowSource(run_dir, role, blocks, sigma)
    return _batches(cfg, source, mesh, train, batch_size)
