"""Scoring texts with a causal LM: texts longer than its context are scored window after
window, each next half block given the half block before it; curves of gen-PPL against
unigram entropy are read at a matched entropy."""

import math

import numpy as np
import pytest

from ldlm.eval.compare import ReferenceLM
from ldlm.eval.sample_metrics import value_at_entropy
from tests.test_ar import VOCAB, _lm

L = 8


def _seqs(lengths, seed=0):
    rng = np.random.default_rng(seed)
    return [list(rng.integers(3, VOCAB, n)) for n in lengths]


def test_sequences_that_fit_are_scored_in_one_pass():
    ref = ReferenceLM(_lm(), L)
    seqs = _seqs([8, 5, 1])
    for long, one in zip(ref.long_token_nll(seqs), ref.token_nll(seqs)):
        np.testing.assert_allclose(long, one, rtol=1e-6)
    nll, count, _ = ref.score(seqs)
    assert count == 14
    np.testing.assert_allclose(sum(x.sum() for x in ref.long_token_nll(seqs)), nll, rtol=1e-5)


def test_longer_sequences_give_every_token_half_a_block_of_context():
    ref = ReferenceLM(_lm(), L)
    (s,) = _seqs([21])
    (nll,) = ref.long_token_nll([s])
    assert nll.shape == (21,) and (nll > 0).all()
    np.testing.assert_allclose(nll[:L], ref.token_nll([s[:L]])[0], rtol=1e-6)
    # token p >= L: scored in the window that starts half a block before its half block
    for p in (8, 11, 12, 15, 16, 20):
        start = L + (p - L) // (L // 2) * (L // 2)
        window = s[start - L // 2:start + L // 2]
        want = ref.token_nll([window])[0][p - (start - L // 2)]
        np.testing.assert_allclose(nll[p], want, rtol=1e-6)
    # context matters: the same token scored from the start of a window differs
    assert not np.isclose(nll[12], ref.token_nll([s[12:]])[0][0])


def test_gen_ppl_is_read_at_matched_entropy_on_hand_made_curves():
    sweep = [(1.0, 6.0, 1000.0), (0.7, 5.0, 100.0), (0.85, 5.5, 400.0)]  # unsorted
    assert value_at_entropy(sweep, 5.25) == pytest.approx(200.0)  # log-linear: sqrt(100*400)
    assert value_at_entropy(sweep, 5.75) == pytest.approx(math.sqrt(400 * 1000))
    assert value_at_entropy(sweep, 5.5) == pytest.approx(400.0)
    assert value_at_entropy(sweep, 6.5) is None and value_at_entropy(sweep, 4.0) is None
    assert value_at_entropy([(1.0, 5.0, 100.0)], 5.0) == pytest.approx(100.0)
    assert value_at_entropy([], 5.0) is None


def test_matched_entropy_pairs_neighbouring_temperatures_where_entropy_turns_back():
    # entropy falls from T = 1 to 0.3, then rises again: 5.9 lies between T = 0.5 and 0.3,
    # not between 0.5 and 0.2 (the neighbours in entropy)
    sweep = [(1.0, 6.8, 3900.0), (0.5, 5.9, 1300.0), (0.3, 5.5, 1600.0), (0.2, 5.7, 3200.0)]
    assert value_at_entropy(sweep, 5.8) == pytest.approx(1300.0 * (1600.0 / 1300.0) ** 0.25)


def test_ar_writer_continues_each_half_block_from_the_half_block_before_it():
    import jax
    import jax.numpy as jnp

    from ldlm.data.tokenizer import EOS_ID
    from ldlm.eval.long_texts import ARWriter

    model = _lm()
    texts = ARWriter(model, L).texts(3, 20, jax.random.PRNGKey(0), temperature=1e-6)
    for t in texts:
        assert len(t) == 20 or (EOS_ID in t and t[-1] == EOS_ID and len(t) <= 20)

    def greedy(prefix, n):  # full recompute, no cache
        seq = list(prefix)
        for _ in range(n):
            seq.append(int(jnp.argmax(model(jnp.asarray([seq]))[0, -1])))
        return seq[len(prefix):]

    h = L // 2
    for t in texts:
        full = t + [None] * (20 - len(t))  # compare what was written, through EOS
        expect = greedy([EOS_ID], L)
        for start in range(L, 20, h):
            expect += greedy([EOS_ID] + expect[start - h:start], min(h, 20 - start))
        assert [x for x, y in zip(expect, full) if y is not None] == \
            [y for y in full if y is not None]


def test_text_row_scores_every_token_with_every_scorer():
    from ldlm.eval.long_texts import matched, ratio, text_row

    refs = {"reference": ReferenceLM(_lm(0), L), "ar": ReferenceLM(_lm(1), L)}
    texts = _seqs([20, 3, 9])
    row = text_row(texts, refs)
    for name, ref in refs.items():
        nll = sum(float(x.sum()) for x in ref.long_token_nll(texts))
        assert row[f"gen_ppl_{name}"] == pytest.approx(math.exp(nll / 32))
    assert row["gen_ppl_reference"] != row["gen_ppl_ar"] and row["mean_tokens"] == 32 / 3
    rows = [{"temperature": 0.7, "unigram_entropy": 5.0, "gen_ppl": 100.0},
            {"temperature": 1.0, "unigram_entropy": 6.0, "gen_ppl": 400.0}]
    assert matched(rows, {"low": 5.5, "high": 6.5}, "gen_ppl") == {
        "low": pytest.approx(200.0), "high": None}
    assert ratio(400.0, 100.0) == 4.0 and ratio(None, 100.0) is None
