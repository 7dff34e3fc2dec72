"""Documents -> fixed blocks of L tokens, stored as array_record files.

A block never spans two documents. Blocks are filled sentence by sentence; a block is closed
at a sentence end once it is at least `min_fill` full, otherwise the next sentence is cut to
fill it (sentence-aligned starts where that costs little padding). The document's last
sentence carries EOS. The rest of the last block is padding, marked by `num_tokens`.

Each record keeps the document's index in its split and the block's index in the document,
so later stages can pair a block with its neighbours (continuation, infilling).

Record layout, int32 little-endian: [doc_index, block_index, label, num_tokens, tokens x L].
"""

from __future__ import annotations

import json
import pathlib
import re
from typing import Iterator, Sequence

import numpy as np

from ldlm.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from ldlm.errors import MissingStageError

HEADER = 4  # doc_index, block_index, label, num_tokens
META_FILE = "meta.json"

# A sentence ends after . ! ? (and any closing quotes/brackets) plus the white space that
# follows, or after a run of newlines. The white space stays with the sentence before it.
_SENTENCE_END = re.compile(r"[.!?][\"'’”)\]]*\s+|\n+")


def split_sentences(text: str) -> list[str]:
    """Pieces of `text` ending at sentence ends; their concatenation is `text`."""
    pieces, start = [], 0
    for m in _SENTENCE_END.finditer(text):
        pieces.append(text[start:m.end()])
        start = m.end()
    if start < len(text):
        pieces.append(text[start:])
    return pieces


def pack_blocks(units: Sequence[Sequence[int]], block_len: int,
                min_fill: float) -> list[list[int]]:
    """Packs token units (sentences) into blocks of at most `block_len` tokens."""
    blocks: list[list[int]] = []
    cur: list[int] = []
    for unit in units:
        unit = list(unit)
        while unit:
            room = block_len - len(cur)
            if len(unit) <= room:
                cur.extend(unit)
                unit = []
            elif cur and len(cur) >= min_fill * block_len:
                blocks.append(cur)
                cur = []
            else:  # cut the unit to fill the block
                cur.extend(unit[:room])
                unit = unit[room:]
                blocks.append(cur)
                cur = []
    if cur:
        blocks.append(cur)
    return blocks


def document_blocks(text: str, tokenizer: Tokenizer, block_len: int,
                    min_fill: float) -> list[list[int]]:
    """Blocks of one document; the last sentence ends with EOS."""
    units = tokenizer.encode_batch(split_sentences(text)) if text else []
    units = [u for u in units if u]
    if units:
        units[-1] = units[-1] + [EOS_ID]
    else:
        units = [[EOS_ID]]
    return pack_blocks(units, block_len, min_fill)


def encode_record(doc_index: int, block_index: int, label: int, tokens: Sequence[int],
                  block_len: int) -> bytes:
    row = np.full(HEADER + block_len, PAD_ID, np.int32)
    row[:HEADER] = (doc_index, block_index, label, len(tokens))
    row[HEADER:HEADER + len(tokens)] = tokens
    return row.astype("<i4").tobytes()


def decode_record(raw: bytes) -> dict[str, np.ndarray]:
    """One block as arrays: tokens_L, mask_L (True on real tokens, EOS included), and the
    scalars doc_index, block_index, label."""
    row = np.frombuffer(raw, dtype="<i4")
    tokens = row[HEADER:].astype(np.int32)
    return {
        "tokens": tokens,
        "mask": np.arange(tokens.shape[0]) < row[3],
        "doc_index": row[0].astype(np.int32),
        "block_index": row[1].astype(np.int32),
        "label": row[2].astype(np.int32),
    }


def iter_split_records(texts: Sequence[str], labels: Sequence[int], tokenizer: Tokenizer,
                       block_len: int, min_fill: float) -> Iterator[tuple[bytes, int]]:
    """(record, number of real tokens) for every block of every document, in order."""
    for doc_index, (text, label) in enumerate(zip(texts, labels)):
        for block_index, tokens in enumerate(
                document_blocks(text, tokenizer, block_len, min_fill)):
            yield encode_record(doc_index, block_index, int(label), tokens, block_len), len(tokens)


def split_path(blocks_dir, role: str) -> pathlib.Path:
    return pathlib.Path(blocks_dir) / f"{role}.array_record"


def write_records(path, records: Iterator[bytes]) -> int:
    """Writes records to an array_record file atomically (temp file, then rename)."""
    from array_record.python.array_record_module import ArrayRecordWriter

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


def read_meta(blocks_dir) -> dict:
    path = pathlib.Path(blocks_dir) / META_FILE
    if not path.is_file():
        raise MissingStageError("token blocks", pathlib.Path(blocks_dir), "tokenizer")
    return json.loads(path.read_text())
