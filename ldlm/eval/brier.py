"""BrierLM (CALM, arXiv 2510.27688): a language model's score from two of its samples per
prefix, no likelihood needed, so latent priors and the AR baseline are scored one way.

For a prefix with true continuation y and two independent continuations x1, x2 of the model,
Brier-n = 1{x1 = y} + 1{x2 = y} - 1{x1 = x2} over the first n tokens: an unbiased estimate of
2 p(y) - sum_x p(x)^2 for the model's distribution p of n-token continuations, which is
largest when p is the data's (a strictly proper score). BrierLM = 100 (Brier-1 Brier-2
Brier-3 Brier-4)^(1/4) of the means over prefixes (a mean at or below 0 makes it 0). CALM's
authors report it tracks cross-entropy (Spearman -0.99).

Prefixes are test documents cut at VAE block boundaries (so also at chunk boundaries): the
block before (`context_blocks` whole blocks of one document: one by default, which every
prior's history holds), and y the first tokens of the block after them.
"""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ldlm.data import batches
from ldlm.data.tokenizer import EOS_ID
from ldlm.models.ar import continue_tokens

ORDERS = 4


def brier(x1: Sequence[int], x2: Sequence[int], y: Sequence[int], n: int) -> int:
    """Brier-n of one prefix (sequences shorter than n compare as they are)."""
    a, b, t = tuple(x1[:n]), tuple(x2[:n]), tuple(y[:n])
    return int(a == t) + int(b == t) - int(a == b)


def brier_lm(x1s, x2s, ys, orders: int = ORDERS) -> dict:
    """{"brier_n": mean Brier-n for n = 1..orders, "brier_lm": 100 x their geometric mean}
    over prefixes (x1s, x2s: the two samples of each, ys: the truths)."""
    out = {f"brier_{n}": float(np.mean([brier(a, b, y, n) for a, b, y in zip(x1s, x2s, ys)]))
           for n in range(1, orders + 1)}
    means = np.array([out[f"brier_{n}"] for n in range(1, orders + 1)])
    out["brier_lm"] = float(100 * np.prod(np.maximum(means, 0.0)) ** (1 / orders))
    out["prefixes"] = len(ys)
    return out


def held_out_prefixes(run_dir, count: int, seed: int = 0, context_blocks: int = 1
                      ) -> tuple[list[list[int]], list[list[int]]]:
    """(prefixes, next ORDERS tokens) of up to `count` test-split positions: each prefix the
    real tokens of up to `context_blocks` consecutive blocks of one document (at least half
    a block of them: the AR baseline's context), each truth the first tokens of the block
    after them."""
    src = batches.block_source(run_dir, "test")
    recs = [src[i] for i in range(len(src))]
    min_tokens = len(recs[0]["tokens"]) // 2 if recs else 0

    def same_doc(i, j):
        return recs[i]["doc_index"] == recs[j]["doc_index"] and \
            recs[j]["block_index"] == recs[i]["block_index"] + (j - i)

    candidates = []
    for j in range(1, len(recs)):  # j: the block whose start is predicted
        if not same_doc(j - 1, j) or recs[j]["mask"].sum() < ORDERS:
            continue
        first = j - 1
        while first > 0 and j - first < context_blocks and same_doc(first - 1, j):
            first -= 1
        prefix = [int(t) for r in recs[first:j] for t in r["tokens"][r["mask"]]]
        if len(prefix) >= min_tokens:
            candidates.append((prefix, [int(t) for t in recs[j]["tokens"][:ORDERS]]))
    pick = np.random.default_rng(seed).choice(len(candidates),
                                              size=min(count, len(candidates)), replace=False)
    return [candidates[i][0] for i in pick], [candidates[i][1] for i in pick]


def score(continue_fn: Callable[[list[list[int]]], list[list[int]]], prefixes, truths
          ) -> dict:
    """BrierLM of a system: `continue_fn(prefixes)` returns one continuation (token ids, at
    least ORDERS where the system does not stop) per prefix, drawn independently per call
    position; each prefix is continued twice in one call."""
    P = len(prefixes)
    if not P:
        return {"prefixes": 0}
    outs = continue_fn(list(prefixes) + list(prefixes))
    return brier_lm(outs[:P], outs[P:], truths)


def ar_continuer(model, block_len: int, key) -> Callable[[list[list[int]]], list[list[int]]]:
    """continue_fn of a causal LM whose context is `block_len` tokens (the AR baseline, as
    `ARWriter` continues a text): the start token and the prefix's last half block, then
    ORDERS tokens at temperature 1 with no nucleus cut (the model's own distribution)."""
    h = block_len // 2
    fn = jax.jit(lambda k, prefix: continue_tokens(model, prefix, ORDERS, k))

    def continue_fn(prefixes):
        rows = [[EOS_ID] + list(p[-h:]) for p in prefixes]
        width = max(len(r) for r in rows)
        if any(len(r) != width for r in rows):
            raise ValueError(f"prefixes need at least {h} tokens")
        return np.asarray(fn(key, jnp.asarray(rows, jnp.int32))).tolist()

    return continue_fn
