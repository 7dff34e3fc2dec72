"""Tokenizer round trip and the cutting of documents into blocks."""

import hashlib

import numpy as np
import pytest

from ldlm.data import blocks as blocks_lib
from ldlm.data import sources
from ldlm.data.batches import block_source, blocks_dir
from ldlm.stages.data import run_tokenizer
from ldlm.data.tokenizer import EOS_ID, MASK_ID, PAD_ID, Tokenizer


def test_split_sentences_concatenates_back():
    text = 'He said "Stop." Then left!\n\nNew para? Yes... 3.5% rise (up.) End'
    pieces = blocks_lib.split_sentences(text)
    assert "".join(pieces) == text
    assert pieces[0] == 'He said "Stop." '
    assert pieces[1] == "Then left!\n\n"
    assert "3.5% rise" in pieces[-2] or "3.5% rise" in pieces[-1]  # no cut inside 3.5


@pytest.mark.parametrize("min_fill", [0.0, 0.5, 0.75, 1.0])
def test_pack_blocks_keeps_every_token_in_order(min_fill):
    rng = np.random.default_rng(0)
    units = [list(rng.integers(4, 100, size=n)) for n in rng.integers(1, 30, size=40)]
    packed = blocks_lib.pack_blocks(units, 16, min_fill)
    assert all(0 < len(b) <= 16 for b in packed)
    assert sum(packed, []) == sum(units, [])


def test_pack_blocks_closes_at_sentence_ends_once_full_enough():
    units = [[1] * 10, [2] * 10, [3] * 3]
    # 10 >= 0.5 * 16: close the block at the sentence end rather than cut sentence 2
    assert blocks_lib.pack_blocks(units, 16, 0.5) == [[1] * 10, [2] * 10 + [3] * 3]
    # 10 < 0.75 * 16: fill the block by cutting sentence 2
    assert blocks_lib.pack_blocks(units, 16, 0.75) == [[1] * 10 + [2] * 6, [2] * 4 + [3] * 3]


def test_tokenizer_roundtrip_on_validation_sample(tiny_run, tiny_cfg):
    run_dir, stats = tiny_run
    tok = Tokenizer.load(run_dir / "tokenizer")
    # the stage checked every validation document; check again here on a sample of the full
    # validation split, not only the tiny preset's subset
    full = sources.load_splits(tiny_cfg.override(["data.max_documents=0"]), run_dir)
    texts = full["validation"].texts[::5]
    assert len(texts) >= 20
    for t in texts:
        assert tok.decode(tok.encode(t)) == t
    assert stats["roundtrip_validation"]["exact"] == stats["roundtrip_validation"]["documents"]
    special = "Price: \u00a3300m \u2013 \u201cquoted\u201d \u00e9t\u00e9 \u4e2d\u6587 tab\tend\n\nx"
    assert tok.decode(tok.encode(special)) == special  # byte fallback: nothing lost
    assert tok.decode([5, 6, EOS_ID, 7]) == tok.decode([5, 6])
    assert tok.decode([5, PAD_ID, MASK_ID, 6]) == tok.decode([5, 6])


def _all_blocks(run_dir, role):
    src = block_source(run_dir, role)
    return [src[i] for i in range(len(src))]


def test_blocks_never_cross_documents_and_rebuild_each_document(tiny_run, tiny_cfg):
    run_dir, _ = tiny_run
    tok = Tokenizer.load(run_dir / "tokenizer")
    docs = sources.load_splits(tiny_cfg, run_dir)["validation"]
    blocks = _all_blocks(run_dir, "validation")
    by_doc = {}
    for b in blocks:
        by_doc.setdefault(int(b["doc_index"]), []).append(b)
    assert sorted(by_doc) == list(range(len(docs)))
    for d, bs in by_doc.items():
        assert [int(b["block_index"]) for b in bs] == list(range(len(bs)))
        assert all(int(b["label"]) == docs.labels_N[d] for b in bs)
        tokens = np.concatenate([b["tokens"][b["mask"]] for b in bs])
        # exactly one EOS, the document's last real token
        assert tokens[-1] == EOS_ID and (tokens == EOS_ID).sum() == 1
        assert tok.decode(tokens) == docs.texts[d]


def test_padding_mask_marks_exactly_the_real_tokens(tiny_run):
    run_dir, stats = tiny_run
    blocks = _all_blocks(run_dir, "train")
    L = stats["block_len"]
    padded = 0
    for b in blocks:
        n = int(b["mask"].sum())
        assert b["tokens"].shape == (L,) and 0 < n <= L
        assert b["mask"][:n].all() and not b["mask"][n:].any()  # real tokens first
        assert (b["tokens"][n:] == PAD_ID).all() and (b["tokens"][:n] != PAD_ID).all()
        padded += n < L
    assert padded > 0  # some blocks end a document early
    real = sum(int(b["mask"].sum()) for b in blocks)
    assert real == stats["splits"]["train"]["tokens"]


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_same_seed_same_tokenizer_and_blocks(tiny_run, tiny_cfg, tmp_path):
    run_dir, _ = tiny_run
    # a second run reuses the built TFDS data set and must reproduce every byte
    (tmp_path / "data").symlink_to(run_dir / "data")
    run_tokenizer(tiny_cfg, tmp_path)
    for role in ("train", "validation", "test"):
        assert _digest(blocks_lib.split_path(blocks_dir(tmp_path), role)) == \
            _digest(blocks_lib.split_path(blocks_dir(run_dir), role))
    # the model file also records its own path, so compare the vocabulary and scores
    a, b = Tokenizer.load(tmp_path / "tokenizer"), Tokenizer.load(run_dir / "tokenizer")
    assert a.vocab_size == b.vocab_size
    assert all(a.sp.id_to_piece(i) == b.sp.id_to_piece(i) and a.sp.get_score(i) ==
               b.sp.get_score(i) for i in range(a.vocab_size))
