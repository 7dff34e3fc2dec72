"""Sample-quality metrics, each a pure function of token sequences (lists of token ids).

- `distinct_n`: distinct n-grams / all n-grams over the whole sample set (diversity).
- `repeated_ngram_rate`: the fraction of n-grams that repeat an earlier n-gram of the same
  sample (do samples fall into loops?).
- `unigram_entropy`: entropy in nats of the pooled token distribution; reported beside
  generative perplexity, which alone rewards repetitive text.
- `memorisation`: the fraction of sampled n-grams (n = 8) found verbatim in the training set.
- `perplexity`: exp of the mean token negative log-likelihood under a reference LM.
- `mauve_score`: MAUVE between two sets of feature vectors (the `mauve-text` package, on
  features that the caller computed, so nothing is downloaded).
- `TopicClassifier`: logistic regression on bag-of-words counts, trained on the training
  split, to measure whether class-conditional samples carry their topic.
"""

from __future__ import annotations

import collections
import math
from typing import Iterable, Sequence

import numpy as np

Seq = Sequence[int]


def ngrams(seq: Seq, n: int) -> list[tuple]:
    return [tuple(seq[i:i + n]) for i in range(len(seq) - n + 1)]


def distinct_n(seqs: Iterable[Seq], n: int) -> float:
    """Distinct n-grams over all n-grams of all sequences (0 when there are none)."""
    grams = [g for s in seqs for g in ngrams(s, n)]
    return len(set(grams)) / len(grams) if grams else 0.0


def repeated_ngram_rate(seqs: Iterable[Seq], n: int = 4) -> float:
    """Fraction of n-grams that already occurred earlier in the same sequence."""
    repeats = total = 0
    for s in seqs:
        seen = set()
        for g in ngrams(s, n):
            repeats += g in seen
            seen.add(g)
            total += 1
    return repeats / total if total else 0.0


def unigram_entropy(seqs: Iterable[Seq]) -> float:
    """Entropy (nats) of the pooled unigram distribution of all tokens."""
    counts = collections.Counter(t for s in seqs for t in s)
    n = sum(counts.values())
    if not n:
        return 0.0
    p = np.array(list(counts.values()), np.float64) / n
    return float(-(p * np.log(p)).sum())


def ngram_set(seqs: Iterable[Seq], n: int) -> set:
    return {g for s in seqs for g in ngrams(s, n)}


def memorisation(seqs: Iterable[Seq], train_ngrams: set, n: int = 8) -> float:
    """Fraction of the sequences' n-grams that occur in `train_ngrams` (built with the same
    n by `ngram_set` over the training split)."""
    grams = [g for s in seqs for g in ngrams(s, n)]
    return sum(g in train_ngrams for g in grams) / len(grams) if grams else 0.0


def perplexity(nll_sum: float, tokens: int) -> float:
    """exp(total negative log-likelihood / tokens)."""
    return math.exp(nll_sum / tokens) if tokens else float("nan")


def mauve_score(p_features: np.ndarray, q_features: np.ndarray, seed: int = 25) -> float:
    """MAUVE between feature sets p (e.g. human text) and q (samples), rows = texts."""
    import mauve

    out = mauve.compute_mauve(p_features=np.asarray(p_features, np.float32),
                              q_features=np.asarray(q_features, np.float32), seed=seed,
                              verbose=False,
                              num_buckets=max(2, min(len(p_features), len(q_features)) // 10))
    return float(out.mauve)


class TopicClassifier:
    """Logistic regression on bag-of-words token counts (token ids as words)."""

    def __init__(self, vocab_size: int, seed: int = 0):
        from sklearn.linear_model import LogisticRegression

        self.vocab_size = vocab_size
        self._model = LogisticRegression(max_iter=1000, C=1.0, random_state=seed)

    def _features(self, seqs: Sequence[Seq]):
        from scipy.sparse import csr_matrix

        rows, cols = [], []
        for r, s in enumerate(seqs):
            rows.extend([r] * len(s))
            cols.extend(int(t) for t in s)
        data = np.ones(len(rows), np.float32)
        x = csr_matrix((data, (rows, cols)), shape=(len(seqs), self.vocab_size))
        x.data = np.log1p(x.data)  # duplicates were summed: log counts
        return x

    def fit(self, seqs: Sequence[Seq], labels: Sequence[int]) -> "TopicClassifier":
        self._model.fit(self._features(seqs), np.asarray(labels))
        return self

    def predict(self, seqs: Sequence[Seq]) -> np.ndarray:
        return self._model.predict(self._features(seqs))

    def accuracy(self, seqs: Sequence[Seq], labels: Sequence[int]) -> float:
        return float((self.predict(seqs) == np.asarray(labels)).mean()) if len(seqs) else 0.0


def value_at_entropy(points: Iterable[tuple[float, float, float]],
                     entropy: float) -> float | None:
    """A gen-PPL curve from a temperature sweep, points (temperature, unigram entropy,
    gen-PPL), read at `entropy`: log-linear between the two neighbouring temperatures whose
    entropies bracket it, the first such pair from the hottest down; None when the sweep does
    not reach it. This is how systems are compared at matched entropy: a sampler that lowers
    its temperature lowers both. Neighbours in temperature, not in entropy: a sampler whose
    entropy rises again at the coldest temperatures (a flow head's) would otherwise pair
    points of temperatures far apart."""
    pts = sorted(((float(t), float(h), float(np.log(p))) for t, h, p in points), reverse=True)
    for (_, h0, l0), (_, h1, l1) in zip(pts, pts[1:]):
        if min(h0, h1) <= entropy <= max(h0, h1):
            if h0 == h1:
                return float(np.exp(l0))
            return float(np.exp(l0 + (l1 - l0) * (entropy - h0) / (h1 - h0)))
    if any(h == entropy for _, h, _ in pts):
        return float(np.exp(next(l for _, h, l in pts if h == entropy)))
    return None
