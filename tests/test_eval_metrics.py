"""Sample-quality metrics on hand-made inputs with known answers."""

import math

import numpy as np
import pytest

from ldlm.eval import sample_metrics as metrics


def test_distinct_n_counts_unique_ngrams():
    assert metrics.distinct_n([[1, 2, 3, 4]], 1) == 1.0
    assert metrics.distinct_n([[1, 1, 1, 1]], 1) == 0.25
    assert metrics.distinct_n([[1, 2, 1, 2]], 2) == pytest.approx(2 / 3)  # (1,2),(2,1),(1,2)
    assert metrics.distinct_n([[1, 2], [1, 2]], 2) == 0.5  # pooled over samples
    assert metrics.distinct_n([[1]], 2) == 0.0


def test_a_text_repeated_three_times_repeats_its_4grams():
    base = list(range(10))
    # 27 4-grams, 10 distinct (the sequence is periodic), so 17 repeat an earlier one
    assert metrics.repeated_ngram_rate([base * 3], 4) == pytest.approx(17 / 27)
    assert metrics.repeated_ngram_rate([base], 4) == 0.0
    # repeats are counted within a sample, not across samples
    assert metrics.repeated_ngram_rate([base, base], 4) == 0.0


def test_unigram_entropy():
    assert metrics.unigram_entropy([[1, 2], [3, 4]]) == pytest.approx(math.log(4))
    assert metrics.unigram_entropy([[7, 7, 7]]) == 0.0


def test_memorisation_of_a_copied_and_of_a_novel_sample():
    train = [list(range(100)), list(range(200, 260))]
    grams = metrics.ngram_set(train, 8)
    assert metrics.memorisation([list(range(20, 50))], grams) == 1.0
    assert metrics.memorisation([list(range(1000, 1030))], grams) == 0.0
    half = list(range(30, 45)) + list(range(1000, 1015))  # 8 of 23 8-grams are copied
    assert metrics.memorisation([half], grams) == pytest.approx(8 / 23)


def test_perplexity_of_a_uniform_guess():
    assert metrics.perplexity(100 * math.log(5), 100) == pytest.approx(5.0)


def test_mauve_of_a_set_against_itself_and_against_another_distribution():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((300, 16))
    assert metrics.mauve_score(p, p) > 0.99
    same = metrics.mauve_score(p, rng.standard_normal((300, 16)))
    shifted = metrics.mauve_score(p, rng.standard_normal((300, 16)) + 3.0)
    assert same > 0.9 and shifted < 0.2


def test_topic_classifier_separates_disjoint_vocabularies():
    rng = np.random.default_rng(0)
    seqs = [list(rng.integers(0, 10, 20)) for _ in range(50)] + \
        [list(rng.integers(10, 20, 20)) for _ in range(50)]
    labels = [0] * 50 + [1] * 50
    clf = metrics.TopicClassifier(vocab_size=20).fit(seqs, labels)
    assert clf.accuracy([[1, 2, 3], [15, 16]], [0, 1]) == 1.0


def test_brier_lm_of_a_toy_model_matches_its_closed_form():
    """Tokens drawn independently from p (the model) and q (the data): the expected Brier-n
    is 2 (sum p q)^n - (sum p^2)^n."""
    from ldlm.eval.brier import brier, brier_lm

    assert brier([1, 2], [1, 3], [1, 2], 2) == 1 + 0 - 0
    assert brier([1, 2], [1, 2], [1, 2], 2) == 1 + 1 - 1
    assert brier([5, 2], [5, 2], [1, 2], 1) == 0 + 0 - 1
    p, q = np.array([0.5, 0.3, 0.2]), np.array([0.6, 0.3, 0.1])
    rng = np.random.default_rng(0)
    P = 40_000
    x1, x2 = (rng.choice(3, size=(P, 4), p=p) for _ in range(2))
    y = rng.choice(3, size=(P, 4), p=q)
    got = brier_lm(x1.tolist(), x2.tolist(), y.tolist())
    want = [2 * (p @ q) ** n - (p @ p) ** n for n in range(1, 5)]
    for n in range(1, 5):
        assert got[f"brier_{n}"] == pytest.approx(want[n - 1], abs=0.015)
    assert got["brier_lm"] == pytest.approx(100 * np.prod(want) ** 0.25, rel=0.05)
    # a model with the data's own distribution scores higher (a proper score)
    right1, right2 = (rng.choice(3, size=(P, 4), p=q) for _ in range(2))
    assert brier_lm(right1.tolist(), right2.tolist(), y.tolist())["brier_lm"] > got["brier_lm"]
