"""The one on-disk record of a block, shared by the token blocks and the latent cache.

A record is a little-endian numpy structured scalar: int32 doc_index, block_index, label,
num_tokens, then int32 tokens_L (padded with PAD_ID after num_tokens), and, in the latent
cache, float32 z_NxD (the block's posterior mean) and, in caches written since the
posterior's spread is kept, float32 logvar_NxD (its log-variance). `doc_index` is the document's index in
its split and `block_index` the block's index in the document, so later stages can find a
block's neighbours. Files are array_record, one record per block, in block order.
"""

from __future__ import annotations

import pathlib
from typing import Iterator, Sequence

import grain
import numpy as np
from array_record.python.array_record_module import ArrayRecordWriter

from ldlm.data.tokenizer import PAD_ID
from ldlm.errors import DataError

HEADER_FIELDS = ("doc_index", "block_index", "label", "num_tokens")


def pad_rows(rows: Sequence[Sequence[int]], length: int) -> tuple[np.ndarray, np.ndarray]:
    """Token rows -> tokens_BxL int32 (PAD_ID after each row) and mask_BxL (True on real
    tokens); rows longer than `length` are cut."""
    tokens = np.full((len(rows), length), PAD_ID, np.int32)
    mask = np.zeros((len(rows), length), bool)
    for r, ids in enumerate(rows):
        ids = list(ids)[:length]
        tokens[r, :len(ids)] = ids
        mask[r, :len(ids)] = True
    return tokens, mask


class RecordFormat:
    """Encodes and decodes block records of `block_len` tokens (and latents of
    `latent_shape` = (N, D) in the latent cache)."""

    def __init__(self, block_len: int, latent_shape: tuple[int, int] | None = None,
                 logvar: bool = False):
        fields = [(name, "<i4") for name in HEADER_FIELDS] + [("tokens", "<i4", (block_len,))]
        if latent_shape is not None:
            fields.append(("z", "<f4", tuple(latent_shape)))
            if logvar:
                fields.append(("logvar", "<f4", tuple(latent_shape)))
        self.dtype = np.dtype(fields)
        self.block_len = block_len

    def encode(self, *, doc_index: int, block_index: int, label: int, tokens: Sequence[int],
               z=None, logvar=None) -> bytes:
        """One record; `tokens` are the block's real tokens (padded here)."""
        rec = np.zeros((), self.dtype)
        rec["doc_index"], rec["block_index"], rec["label"] = doc_index, block_index, label
        rec["num_tokens"] = len(tokens)
        rec["tokens"] = pad_rows([tokens], self.block_len)[0][0]
        if z is not None:
            rec["z"] = z
        if logvar is not None:
            rec["logvar"] = logvar
        return rec.tobytes()

    def decode(self, raw: bytes) -> dict[str, np.ndarray]:
        """tokens_L int32, mask_L (True on real tokens, EOS included), the scalars doc_index,
        block_index, label (int32), and z_NxD (and logvar_NxD) float32 when the records
        hold latents."""
        if len(raw) != self.dtype.itemsize:
            raise ValueError(f"a record of {len(raw)} bytes, expected {self.dtype.itemsize} "
                             f"(blocks of {self.block_len} tokens)")
        rec = np.frombuffer(raw, self.dtype)[0]
        out = {"tokens": rec["tokens"].astype(np.int32),
               "mask": np.arange(self.block_len) < rec["num_tokens"],
               **{k: np.int32(rec[k]) for k in ("doc_index", "block_index", "label")}}
        for name in ("z", "logvar"):
            if name in self.dtype.names:
                out[name] = rec[name].astype(np.float32)
        return out


class RecordSource:
    """Random access to the decoded records of one array_record file (a grain source).
    `producer` names the make target that writes the file: a truncated or garbled file is
    a DataError naming the file and that target."""

    def __init__(self, path, fmt: RecordFormat, producer: str):
        self.path, self.format, self.producer = pathlib.Path(path), fmt, producer
        try:
            self._src = grain.sources.ArrayRecordDataSource(str(path))
        except Exception as e:  # noqa: BLE001 - array_record: RuntimeError, ValueError, ...
            raise self._damaged(e) from None

    def _damaged(self, e: Exception) -> DataError:
        first = str(e).splitlines()[0][:160] if str(e) else type(e).__name__
        return DataError(f"{self.path} is damaged (truncated or garbled: {first}); rerun "
                         f"`make {self.producer}`")

    def __len__(self) -> int:
        return len(self._src)

    def __getitem__(self, i) -> dict[str, np.ndarray]:
        try:
            return self.format.decode(self._src[int(i)])
        except Exception as e:  # noqa: BLE001
            raise self._damaged(e) from None


def write_records(path, records: Iterator[bytes]) -> int:
    """Writes records to an array_record file atomically (temp file, then rename)."""
    path = pathlib.Path(path)
    tmp = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(tmp), "group_size:1")
    n = 0
    for r in records:
        writer.write(r)
        n += 1
    writer.close()
    tmp.replace(path)
    return n
