"""Scoring for `make eval` (ldlm/stages/eval.py): ldlm at every sampler and step budget
beside the AR baseline and real text.

For each system the same number of samples (one block each, unconditional) is scored with
the same metrics (`ldlm.eval.sample_metrics`): generative perplexity under the reference LM
with unigram entropy beside it, MAUVE against held-out validation blocks (features: the
reference LM's mean hidden state), distinct-1/2/3, repeated-4-gram rate, memorisation
(8-grams found in the training split) and the wall-clock seconds per block. Real test blocks are scored the
same way as the reference point. Class-conditional ldlm samples are classified by a
bag-of-words topic classifier trained on the training split, per guidance scale.

The scorer is `eval.reference` (ldlm/stages/eval.py): the reference LM of `make reference`
(larger and trained longer than the baseline) where it has been trained, else the AR
baseline itself, which favours its own samples; the report names the one used.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ldlm.data import batches
from ldlm.data.records import pad_rows
from ldlm.eval import sample_metrics as metrics
from ldlm.models.ar import shift_right


def split_blocks(run_dir, role: str, limit: int | None = None):
    """(token lists through EOS, labels) of a split's blocks, in order."""
    src = batches.block_source(run_dir, role)
    n = len(src) if limit is None else min(limit, len(src))
    seqs, labels = [], []
    for i in range(n):
        r = src[i]
        seqs.append([int(t) for t in r["tokens"][r["mask"]]])
        labels.append(int(r["label"]))
    return seqs, labels


class ReferenceLM:
    """Scores and featurises token sequences of at most one block with a causal LM, in one
    forward pass per set."""

    def __init__(self, model, block_len: int):
        self.block_len = block_len
        self._score = jax.jit(lambda t, m: _nll_and_features(model, t, m))
        self._token_nll = jax.jit(lambda t, m: _token_nll(model, t, m)[0])

    def score(self, seqs) -> tuple[float, int, np.ndarray]:
        """Total negative log-likelihood (nats), token count, and mean hidden state per
        sequence (features for MAUVE)."""
        t, m = pad_rows(seqs, self.block_len)
        nll, features = self._score(t, m)
        return float(nll), int(m.sum()), np.asarray(features)

    def features(self, seqs) -> np.ndarray:
        return self.score(seqs)[2]

    def token_nll(self, seqs) -> list[np.ndarray]:
        """Per sequence of at most one block, the negative log-likelihood (nats) of each of
        its tokens given the tokens before it."""
        t, m = pad_rows(seqs, self.block_len)
        nll = np.asarray(self._token_nll(t, m))
        return [row[:len(s)] for row, s in zip(nll, seqs)]

    def long_token_nll(self, seqs) -> list[np.ndarray]:
        """`token_nll` of sequences of any length: the first block in one pass, then each
        next half block given the half block before it (windows of one block, stride
        L/2), so every token past the first block is scored with L/2 tokens of context;
        a sequence that fits in one block is scored in one pass."""
        L, h = self.block_len, self.block_len // 2
        windows, where = [], []  # (sequence, first new token, offset in its window)
        for i, s in enumerate(seqs):
            s = list(s)
            windows.append(s[:L])
            where.append((i, 0, 0))
            for start in range(L, len(s), h):
                windows.append(s[start - h:start + h])
                where.append((i, start, h))
        out = [np.zeros(len(s), np.float32) for s in seqs]
        nlls = self.token_nll(windows) if windows else []
        for (i, first, offset), w, nll in zip(where, windows, nlls):
            out[i][first:first + len(w) - offset] = nll[offset:]
        return out


def _token_nll(model, tokens_BxL, mask_BxL):
    """Per-token NLL BxL (zero on padding) and the hidden states BxLxD."""
    h = model.hidden(shift_right(jnp.where(mask_BxL, tokens_BxL, 0)))
    logp = jax.nn.log_softmax(model.embed.attend(h), -1)
    nll = -jnp.take_along_axis(logp, tokens_BxL[..., None], -1)[..., 0]
    return nll * mask_BxL, h


def _nll_and_features(model, tokens, mask):
    nll, h = _token_nll(model, tokens, mask)
    m = mask[..., None].astype(h.dtype)
    features = (h * m).sum(1) / jnp.maximum(m.sum(1), 1.0)
    return nll.sum(), features


def quality(seqs, ref: ReferenceLM, real_features, train_8grams) -> dict:
    nll, n, features = ref.score(seqs)
    return {
        "gen_ppl": metrics.perplexity(nll, n),
        "unigram_entropy": metrics.unigram_entropy(seqs),
        "mauve": metrics.mauve_score(real_features, features),
        "distinct_1": metrics.distinct_n(seqs, 1),
        "distinct_2": metrics.distinct_n(seqs, 2),
        "distinct_3": metrics.distinct_n(seqs, 3),
        "repeat_4": metrics.repeated_ngram_rate(seqs, 4),
        "memorised_8": metrics.memorisation(seqs, train_8grams, 8),
        "mean_tokens": float(np.mean([len(s) for s in seqs])),
    }


def timed(fn, warm_up: bool = True):
    """(fn(), seconds), after one untimed call that compiles when `warm_up`."""
    if warm_up:
        fn()
    start = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - start


def brief(row: dict) -> str:
    return ", ".join(f"{k} {v:.3f}" for k, v in row.items() if isinstance(v, float))


def plot(rows: list[dict], path) -> None:
    """Gen-PPL, MAUVE and distinct-2 against steps and against seconds per block."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [("gen_ppl", "gen. perplexity (lower is better)"), ("mauve", "MAUVE"),
            ("distinct_2", "distinct-2")]
    fig, axes = plt.subplots(2, len(keys), figsize=(5 * len(keys), 8))
    ldlm_rows = [r for r in rows if r["system"] == "ldlm"]
    for col, (key, title) in enumerate(keys):
        for x_key, ax in (("steps", axes[0, col]), ("seconds_per_block", axes[1, col])):
            for sampler in sorted({r["sampler"] for r in ldlm_rows}):
                rs = [r for r in ldlm_rows if r["sampler"] == sampler]
                ax.plot([r[x_key] for r in rs], [r[key] for r in rs], "o-",
                        label=f"ldlm {sampler}")
            for r, style in zip([x for x in rows if x["system"] != "ldlm"], ("k--", "r:")):
                if r["system"].startswith("AR") and x_key == "seconds_per_block":
                    ax.plot([r[x_key]], [r[key]], "r*", markersize=12, label=r["system"])
                else:
                    ax.axhline(r[key], color=style[0], linestyle=style[1:], label=r["system"])
            ax.set_xscale("log")
            ax.set_xlabel("denoising steps" if x_key == "steps" else "seconds per block")
            ax.set_title(title)
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)
