"""Corpus reading, de-duplication, splits, and the sources' error messages."""

import json

import numpy as np
import pytest

from ldlm.config import Config, apply_overrides
from ldlm.data import corpus, sources
from ldlm.stages.data import run_data, run_tokenizer
from ldlm.errors import DataError, MissingStageError


def test_cp1252_fallback_keeps_the_pound_sign():
    assert corpus.decode_bytes(b"cost \xa35m", "x") == "cost \u00a35m"
    assert corpus.decode_bytes("caf\u00e9".encode(), "x") == "caf\u00e9"
    with pytest.raises(DataError, match="neither UTF-8 nor cp1252"):
        corpus.decode_bytes(b"\x81\x8d\x8f", "bad.txt")


def test_normalize_text():
    assert corpus.normalize_text("  Title \r\n\r\nBody  \rend \n\n") == "Title\n\nBody\nend"
    # NFC: a decomposed e + combining acute becomes one code point
    assert corpus.normalize_text("e\u0301") == "\u00e9"


def _docs(n_per_label, labels=("a", "b")):
    return [corpus.Document(f"{lab}/{i}", f"text {lab} {i}", lab)
            for lab in labels for i in range(n_per_label)]


def test_splits_are_deterministic_disjoint_and_stratified():
    docs = _docs(100)
    fr = {"train": 0.8, "validation": 0.1, "test": 0.1}
    a = corpus.assign_splits(docs, fr, seed=3)
    b = corpus.assign_splits(list(reversed(docs)), fr, seed=3)  # file order does not matter
    assert a == b
    ids = [set(d.doc_id for d in a[s]) for s in fr]
    assert sum(map(len, ids)) == len(docs) and not (ids[0] & ids[1] or ids[0] & ids[2]
                                                    or ids[1] & ids[2])
    for s, n in (("train", 160), ("validation", 20), ("test", 20)):
        assert len(a[s]) == n
        assert sum(d.label == "a" for d in a[s]) == n // 2
    assert a != corpus.assign_splits(docs, fr, seed=4)


def test_deduplicate_keeps_first():
    docs = [corpus.Document("x", "same"), corpus.Document("y", "other"),
            corpus.Document("z", "same")]
    assert [d.doc_id for d in corpus.deduplicate(docs)] == ["x", "y"]


def test_bbc_news_has_no_text_in_two_splits(tiny_run, tiny_cfg):
    run_dir, _ = tiny_run
    full = tiny_cfg.override(["data.max_documents=0"])
    splits = sources.load_splits(full, run_dir)
    assert splits["train"].label_names == corpus.BBC_TOPICS
    sizes = {k: len(v) for k, v in splits.items()}
    assert sizes == {"train": 1917, "validation": 105, "test": 105}
    # 2,225 articles, 98 exact repeats removed
    assert sum(sizes.values()) == 2225 - 98
    texts = [set(v.texts) for v in splits.values()]
    assert not (texts[0] & texts[1] or texts[0] & texts[2] or texts[1] & texts[2])
    assert sum(map(len, texts)) == sum(sizes.values())  # and no duplicates inside a split
    for d in splits.values():  # every topic appears in every split
        assert set(np.unique(d.labels_N)) == set(range(5))
    # the cp1252 article decoded with its pound sign intact
    texts_by_id = {i: t for d in splits.values() for i, t in zip(d.doc_ids, d.texts)}
    assert "\u00a3" in texts_by_id["sports/199"]


def _plain_cfg(source, path, **extra):
    sets = [f"data.source={source}", f"data.path={path}", "data.block_len=32",
            "tokenizer.vocab_size=400"] + [f"data.{k}={v}" for k, v in extra.items()]
    return apply_overrides(Config(preset="tiny"), sets)


def _sentences(i):
    return " ".join(f"Sentence number {j} of document {i} talks about item {i * j}."
                    for j in range(1 + i % 7))


def test_text_folder_corpus_end_to_end(tmp_path):
    root = tmp_path / "corpus"
    for i in range(30):
        sub = root / ("alpha" if i % 2 else "beta")
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"{i:03d}.txt").write_text(_sentences(i))
    (root / "alpha" / "dup.txt").write_text(_sentences(1))  # duplicate of alpha/001
    run_dir = tmp_path / "run"
    cfg = _plain_cfg("text_folder", root, validation_fraction=0.2, test_fraction=0.2)
    stats = run_data(cfg, run_dir)
    assert stats["label_names"] == ["alpha", "beta"]
    assert sum(s["documents"] for s in stats["splits"].values()) == 30
    tok = run_tokenizer(cfg, run_dir)
    assert tok["roundtrip_validation"]["exact"] == tok["roundtrip_validation"]["documents"] > 0
    assert all(tok["splits"][r]["blocks"] > 0 for r in ("train", "validation", "test"))


def test_jsonl_corpus_end_to_end(tmp_path):
    path = tmp_path / "c.jsonl"
    lines = [json.dumps({"body": _sentences(i), "topic": ["x", "y", "z"][i % 3]})
             for i in range(30)]
    path.write_text("\n".join(lines[:10]) + "\n\n" + "\n".join(lines[10:]) + "\n")
    cfg = _plain_cfg("jsonl", path, text_field="body", label_field="topic")
    stats = run_data(cfg, tmp_path / "run")
    assert stats["label_names"] == ["x", "y", "z"]
    assert sum(s["documents"] for s in stats["splits"].values()) == 30
    run_tokenizer(cfg, tmp_path / "run")
    # unlabelled: label_field empty
    cfg = _plain_cfg("jsonl", path, text_field="body", label_field="")
    splits = sources.load_splits(cfg, tmp_path / "run2")
    assert splits["train"].label_names == () and (splits["train"].labels_N == -1).all()


def test_text_folder_errors(tmp_path):
    with pytest.raises(DataError, match="is not a folder"):
        run_data(_plain_cfg("text_folder", tmp_path / "missing"), tmp_path / "r")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no .txt files"):
        run_data(_plain_cfg("text_folder", tmp_path / "empty"), tmp_path / "r")
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("  \n")
    with pytest.raises(DataError, match="are empty"):
        run_data(_plain_cfg("text_folder", tmp_path / "blank"), tmp_path / "r")
    (tmp_path / "binary").mkdir()
    (tmp_path / "binary" / "a.txt").write_bytes(b"\x81\x8d\x8f\x90")
    with pytest.raises(DataError, match="a.txt: neither UTF-8 nor cp1252"):
        run_data(_plain_cfg("text_folder", tmp_path / "binary"), tmp_path / "r")


def test_jsonl_errors(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "ok"}\n{not json}\n')
    with pytest.raises(DataError, match="bad.jsonl:2: not valid JSON"):
        run_data(_plain_cfg("jsonl", bad), tmp_path / "r")
    bad.write_text('{"content": "ok"}\n')
    with pytest.raises(DataError, match="string field 'text'"):
        run_data(_plain_cfg("jsonl", bad), tmp_path / "r")


def test_missing_tfds_dataset_errors(tmp_path):
    cfg = apply_overrides(Config(), ["data.tfds_name=no_such_corpus"])
    with pytest.raises(DataError, match="no TFDS data set named 'no_such_corpus'"):
        run_data(cfg, tmp_path)
    # a registered data set that is not prepared in the data dir: no download attempted
    cfg = apply_overrides(Config(), ["data.tfds_name=imdb_reviews"])
    with pytest.raises(DataError, match="'imdb_reviews' is not prepared"):
        run_data(cfg, tmp_path)


def test_tokenizer_stage_without_data_stage_names_the_make_target(tmp_path, tiny_cfg):
    with pytest.raises(MissingStageError, match="run `make data` first"):
        run_tokenizer(tiny_cfg, tmp_path)
