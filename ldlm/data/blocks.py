"""Documents -> fixed blocks of L tokens, stored as array_record files.

A block never spans two documents. Blocks are filled sentence by sentence; a block is closed
at a sentence end once it is at least `min_fill` full, otherwise the next sentence is cut to
fill it (sentence-aligned starts where that costs little padding). The document's last
sentence carries EOS. The rest of the last block is padding, marked by `num_tokens`.

Each record keeps the document's index in its split and the block's index in the document,
so later stages can pair a block with its neighbours (continuation, infilling).

Records: `ldlm.data.records` (the same layout as the latent cache's, without latents).
"""

from __future__ import annotations

import pathlib
import re
from typing import Iterator, Sequence

from ldlm.data.records import RecordFormat
from ldlm.data.tokenizer import EOS_ID, Tokenizer
from ldlm.errors import MissingStageError
from ldlm.files import read_json

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


def iter_split_records(texts: Sequence[str], labels: Sequence[int], tokenizer: Tokenizer,
                       block_len: int, min_fill: float) -> Iterator[tuple[bytes, int]]:
    """(record, number of real tokens) for every block of every document, in order."""
    fmt = RecordFormat(block_len)
    for doc_index, (text, label) in enumerate(zip(texts, labels)):
        for block_index, tokens in enumerate(
                document_blocks(text, tokenizer, block_len, min_fill)):
            yield fmt.encode(doc_index=doc_index, block_index=block_index, label=int(label),
                             tokens=tokens), len(tokens)


def split_path(blocks_dir, role: str) -> pathlib.Path:
    return pathlib.Path(blocks_dir) / f"{role}.array_record"


def read_meta(blocks_dir) -> dict:
    path = pathlib.Path(blocks_dir) / META_FILE
    if not path.is_file():
        raise MissingStageError("token blocks", pathlib.Path(blocks_dir), "tokenizer")
    return read_json(path, "rerun `make tokenizer`")
