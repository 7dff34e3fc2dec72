"""The `data` and `tokenizer` stages, as plain functions the CLI, notebooks and tests call.

data:       make the corpus readable (build the TFDS data set), report split sizes.
tokenizer:  train sentencepiece on the training split, cut every split into blocks of L
            tokens (array_record), report tokens, blocks and compression, and check that
            decode(encode(text)) gives back every validation document.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from ldlm import rundir
from ldlm.config import Config
from ldlm.data import blocks as blocks_lib
from ldlm.data import sources
from ldlm.data.batches import blocks_dir
from ldlm.data.records import write_records
from ldlm.data.tokenizer import Tokenizer, train_tokenizer
from ldlm.distributed import barrier
from ldlm.errors import DataError, MissingStageError

log = logging.getLogger("ldlm.data")
ROLES = ("train", "validation", "test")


def run_data(cfg: Config, run_dir) -> dict:
    """Prepares the source and writes `data/stats.json`; returns the statistics."""
    t0 = time.time()
    out = rundir.start_stage(cfg, run_dir, "data")
    sources.prepare(cfg, run_dir)
    splits = sources.load_splits(cfg, run_dir)
    if len(splits["train"]) == 0:
        raise DataError("the training split is empty: the corpus has too few documents")
    label_names = splits["train"].label_names
    stats = {"source": cfg.data.source, "label_names": list(label_names), "splits": {}}
    for role in ROLES:
        docs = splits[role]
        counts = np.bincount(docs.labels_N[docs.labels_N >= 0], minlength=len(label_names))
        stats["splits"][role] = {
            "documents": len(docs),
            "characters": int(sum(len(t) for t in docs.texts)),
            "documents_per_label": {n: int(c) for n, c in zip(label_names, counts)},
        }
    stats["seconds"] = round(time.time() - t0, 2)
    if rundir.is_main_process():
        rundir.write_json_atomic(out / rundir.STATS_FILE, stats)
    for role in ROLES:
        s = stats["splits"][role]
        log.info("%-10s %6d documents %10d characters", role, s["documents"], s["characters"])
    if label_names:
        log.info("labels (id order): %s", ", ".join(label_names))
    return stats


def run_tokenizer(cfg: Config, run_dir) -> dict:
    """Trains the tokenizer, writes the token blocks of every split, returns statistics."""
    t0 = time.time()
    data_stats = rundir.stage_dir(run_dir, "data") / rundir.STATS_FILE
    if not data_stats.is_file():
        raise MissingStageError("prepared data", data_stats.parent, "data")
    out = rundir.start_stage(cfg, run_dir, "tokenizer")
    splits = sources.load_splits(cfg, run_dir)
    tokenizer = train_tokenizer(splits["train"].texts, cfg.tokenizer, out) \
        if rundir.is_main_process() else None
    barrier("tokenizer trained")
    tokenizer = tokenizer or Tokenizer.load(out)
    log.info("tokenizer: %d pieces (%s) trained in %.1fs", tokenizer.vocab_size,
             cfg.tokenizer.model_type, time.time() - t0)

    bdir = blocks_dir(run_dir)
    bdir.mkdir(parents=True, exist_ok=True)
    L = cfg.data.block_len
    stats = {"block_len": L, "vocab_size": tokenizer.vocab_size,
             "label_names": list(splits["train"].label_names), "splits": {}}
    for role in ROLES:
        docs = splits[role]
        real_tokens = []

        def records():
            for record, n in blocks_lib.iter_split_records(
                    docs.texts, docs.labels_N, tokenizer, L, cfg.data.block_min_fill):
                real_tokens.append(n)
                yield record

        n_blocks = write_records(blocks_lib.split_path(bdir, role), records()) \
            if rundir.is_main_process() else 0
        chars = sum(len(t) for t in docs.texts)
        tokens = int(sum(real_tokens))  # includes one EOS per document
        stats["splits"][role] = {
            "documents": len(docs),
            "characters": chars,
            "tokens": tokens,
            "blocks": n_blocks,
            "padding_fraction": round(1 - tokens / max(1, n_blocks * L), 4),
            "characters_per_token": round(chars / max(1, tokens - len(docs)), 3),
        }
    barrier("blocks written")
    stats["roundtrip_validation"] = roundtrip_check(tokenizer, splits["validation"].texts)
    stats["seconds"] = round(time.time() - t0, 2)
    if rundir.is_main_process():
        rundir.write_json_atomic(bdir / blocks_lib.META_FILE, stats)
        rundir.write_json_atomic(out / rundir.STATS_FILE, stats)
    for role in ROLES:
        s = stats["splits"][role]
        log.info("%-10s %6d documents %9d tokens %7d blocks of %d (%.1f%% padding), "
                 "%.2f characters/token", role, s["documents"], s["tokens"], s["blocks"], L,
                 100 * s["padding_fraction"], s["characters_per_token"])
    rt = stats["roundtrip_validation"]
    log.info("decode(encode(text)) == text on %d/%d validation documents", rt["exact"],
             rt["documents"])
    return stats


def roundtrip_check(tokenizer: Tokenizer, texts) -> dict:
    """How many documents come back exactly from decode(encode(text))."""
    exact = sum(tokenizer.decode(tokenizer.encode(t)) == t for t in texts)
    return {"documents": len(texts), "exact": int(exact)}

