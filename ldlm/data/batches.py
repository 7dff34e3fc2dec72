"""grain pipeline over the token blocks: deterministic, resumable, sharded global batches.

Every process indexes the same seeded, shuffled stream of blocks and reads only its own
contiguous rows of each global batch, so the *global* batch at each step holds the same
blocks in the same order whatever the number of processes (per-row randomness such as
noise therefore matches too), and no block is read twice.
Each process's local batch becomes its part of a global `jax.Array` sharded over the
mesh's batch axes (`jax.make_array_from_process_local_data`).

A batch is a dict of arrays (B = global batch size):
    tokens_BxL int32, mask_BxL bool (True on real tokens, EOS included),
    doc_index_B, block_index_B, label_B int32.
"""

from __future__ import annotations

import pathlib
from typing import Any, Iterator

import grain
import jax
import numpy as np
from jax.sharding import Mesh

from ldlm.config import Config
from ldlm.data import blocks as blocks_lib
from ldlm.data.records import RecordFormat, RecordSource
from ldlm.errors import ConfigError, MissingStageError
from ldlm.mesh import batch_shards, batch_sharding


def blocks_dir(run_dir) -> pathlib.Path:
    return pathlib.Path(run_dir) / "tokenizer" / "blocks"


def block_source(run_dir, role: str) -> RecordSource:
    """The decoded token blocks of a split (`ldlm.data.records` dicts)."""
    path = blocks_lib.split_path(blocks_dir(run_dir), role)
    if not path.is_file():
        raise MissingStageError(f"{role} token blocks", path, "tokenizer")
    meta = blocks_lib.read_meta(blocks_dir(run_dir))
    return RecordSource(path, RecordFormat(meta["block_len"]), "tokenizer")


def local_batch_size(global_batch: int, mesh: Mesh | None = None) -> int:
    """Rows this process contributes to each global batch; checks divisibility."""
    processes = jax.process_count()
    shards = batch_shards(mesh) if mesh is not None else 1
    for what, n in (("processes", processes), ("batch shards (mesh data x fsdp)", shards)):
        if global_batch % n:
            raise ConfigError(f"data.batch_size={global_batch} is not divisible by the "
                              f"{n} {what}")
    return global_batch // processes


def real_rows(batch) -> Any:
    """Bool_B: the rows of a batch that hold a block (or a window of blocks). Padding rows
    (the end of an evaluation pass) have an all-False token mask; every block has at least
    one real token."""
    mask = batch["mask"]
    return mask.reshape(mask.shape[0], -1).any(-1)


def _empty_like(example: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A padding row for the end of an evaluation pass: zeros, boolean fields (the token
    mask among them) False, indices and labels -1 (see `real_rows`)."""
    out = {k: np.zeros_like(v) for k, v in example.items()}
    for k in ("doc_index", "block_index", "label"):
        if k in out:
            out[k] = np.full_like(example[k], -1)
    return out


def make_dataset(source, *, batch_size: int, train: bool, seed: int = 0,
                 process_index: int | None = None,
                 process_count: int | None = None) -> grain.IterDataset:
    """This process's local batches (`batch_size // process_count` rows each).

    train=True: endless, reshuffled every epoch from `seed`.
    train=False: one ordered pass, padded with empty rows to whole global batches so that
    every process yields the same number of batches.
    `source[i]` is a dict of arrays (one block).
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    if batch_size % process_count:
        raise ConfigError(f"data.batch_size={batch_size} is not divisible by the "
                          f"{process_count} processes")
    local = batch_size // process_count
    if train:
        ds = grain.MapDataset.source(source)
        ds = ds.shuffle(seed=seed).repeat(None)
    else:
        n = len(source)
        empty = _empty_like(source[0]) if n else {}
        ds = grain.MapDataset.range(-(-n // batch_size) * batch_size).map(
            lambda i: source[i] if i < n else empty)
    if process_count > 1:
        ds = _process_rows(ds, batch_size, process_index, process_count)
    ds = ds.batch(local, drop_remainder=True)
    return ds.to_iter_dataset()


def _process_rows(ds: grain.MapDataset, batch_size: int, process_index: int,
                  process_count: int) -> grain.MapDataset:
    """This process's rows of each global batch: rows [p * local, (p + 1) * local) of every
    consecutive `batch_size` elements, read by index (nothing else is decoded), so the
    global batch has the rows of a single-process run in the same order."""
    local = batch_size // process_count

    def element(m: int):
        g, r = divmod(m, local)
        return ds[g * batch_size + process_index * local + r]

    return grain.MapDataset.range(len(ds) // batch_size * local).map(element)


class GlobalBatches:
    """Iterates global, mesh-sharded batches; `get_state`/`set_state` resume exactly."""

    def __init__(self, dataset: grain.IterDataset, mesh: Mesh):
        self._it = iter(dataset)
        self.mesh = mesh
        self._sharding = batch_sharding(mesh)

    def __iter__(self) -> "GlobalBatches":
        return self

    def __next__(self) -> dict[str, jax.Array]:
        local = next(self._it)
        return {k: jax.make_array_from_process_local_data(self._sharding, v)
                for k, v in local.items()}

    def get_state(self) -> dict[str, Any]:
        return self._it.get_state()

    def set_state(self, state: dict[str, Any]) -> None:
        self._it.set_state(state)


def train_batches(cfg: Config, run_dir, mesh: Mesh, role: str = "train") -> GlobalBatches:
    """Endless shuffled global batches of the `role` split."""
    local_batch_size(cfg.data.batch_size, mesh)
    ds = make_dataset(block_source(run_dir, role), batch_size=cfg.data.batch_size, train=True,
                      seed=cfg.data.shuffle_seed)
    return GlobalBatches(ds, mesh)


def eval_batches(cfg: Config, run_dir, mesh: Mesh, role: str = "validation",
                 batch_size: int | None = None) -> Iterator[dict[str, jax.Array]]:
    """One ordered pass over a split; padding rows have an all-False mask."""
    batch_size = batch_size or cfg.data.batch_size
    local_batch_size(batch_size, mesh)
    ds = make_dataset(block_source(run_dir, role), batch_size=batch_size, train=False)
    return GlobalBatches(ds, mesh)
