"""Texts of any length from every system, scored one way, and compared at matched unigram
entropy: the headline comparison of `make eval` and of the scaling study.

Each system writes n unconditional texts of up to `tokens` tokens (through its first EOS):
- real text: consecutive test blocks of one document (`real_texts`);
- the AR baseline: its first block after the start token, then half a block at a time given
  the half block before it (`ARWriter`), the same windows the scorer reads with;
- ldlm: `LatentDiffusionPipeline.generate_tokens(max_tokens=tokens)`.
Every text is scored under a causal LM by `ReferenceLM.long_token_nll` (the first block in
one pass, then each next half block given the half block before it), gen-PPL token-weighted
over all texts (`text_row`). A temperature sweep gives each system a curve of gen-PPL
against unigram entropy; `matched` reads the curves at common entropies (log-linear
between the two neighbouring temperatures around it), since lowering the temperature lowers
both and gen-PPL alone rewards dull text.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from ldlm.data import batches
from ldlm.data.tokenizer import EOS_ID, through_eos
from ldlm.eval import sample_metrics as metrics
from ldlm.models.ar import continue_tokens, sample_tokens


def real_texts(run_dir, n: int, tokens: int, seed: int = 0) -> list[list[int]]:
    """n texts of up to `tokens` tokens, each from consecutive test blocks of one document
    (starting at a block that has a successor in its document; drawn with `seed`)."""
    src = batches.block_source(run_dir, "test")
    recs = [src[i] for i in range(len(src))]
    starts = [i for i in range(len(recs) - 1) if recs[i]["doc_index"] == recs[i + 1][
        "doc_index"] and recs[i + 1]["block_index"] == recs[i]["block_index"] + 1]
    pick = np.random.default_rng(seed).choice(len(starts), size=min(n, len(starts)),
                                              replace=False)
    texts = []
    for s in pick:
        ids: list[int] = []
        for r in recs[starts[s]:]:
            if r["doc_index"] != recs[starts[s]]["doc_index"] or len(ids) >= tokens:
                break
            ids.extend(int(t) for t in r["tokens"][r["mask"]])
        texts.append(ids[:tokens])
    return texts


class ARWriter:
    """Texts of any length from a causal LM whose context is `block_len` tokens (jitted
    once per shape and temperature)."""

    def __init__(self, model, block_len: int, top_p: float = 1.0):
        self.block_len = block_len
        self._first = jax.jit(lambda key, start_B, length, T: sample_tokens(
            model, start_B, length, key, temperature=T, top_p=top_p), static_argnums=(2, 3))
        self._next = jax.jit(lambda key, prefix_BxP, length, T: continue_tokens(
            model, prefix_BxP, length, key, temperature=T, top_p=top_p), static_argnums=(2, 3))

    def texts(self, n: int, tokens: int, key, temperature: float = 1.0) -> list[list[int]]:
        """n texts of up to `tokens` tokens: the first block after the start token (EOS),
        then each next half block given the start token and the half block before it;
        each text through its first EOS."""
        h, T = self.block_len // 2, float(temperature)
        key, k = jax.random.split(key)
        out_BxT = np.asarray(self._first(k, jnp.full((n,), EOS_ID, jnp.int32),
                                         min(self.block_len, tokens), T))
        while out_BxT.shape[1] < tokens and not all(EOS_ID in row for row in out_BxT):
            key, k = jax.random.split(key)
            prefix = np.concatenate([np.full((n, 1), EOS_ID, np.int32), out_BxT[:, -h:]], 1)
            more = np.asarray(self._next(k, jnp.asarray(prefix),
                                         min(h, tokens - out_BxT.shape[1]), T))
            out_BxT = np.concatenate([out_BxT, more], axis=1)
        return [through_eos(row) for row in out_BxT]


def text_row(texts: Sequence[Sequence[int]], scorers: dict) -> dict:
    """Metrics of a set of texts: `gen_ppl_<name>` under each ReferenceLM of `scorers`
    (token-weighted over all texts), unigram entropy, distinct-2, repeated 4-grams, mean
    length in tokens."""
    row = {}
    count = sum(len(t) for t in texts)
    for name, scorer in scorers.items():
        nll = sum(float(x.sum()) for x in scorer.long_token_nll(texts))
        row[f"gen_ppl_{name}"] = metrics.perplexity(nll, count)
    row.update(unigram_entropy=metrics.unigram_entropy(texts),
               distinct_2=metrics.distinct_n(texts, 2),
               repeat_4=metrics.repeated_ngram_rate(texts, 4),
               mean_tokens=float(np.mean([len(t) for t in texts])) if texts else 0.0)
    return row


def matched(rows: Iterable[dict], entropies: dict[str, float], key: str) -> dict:
    """{name: value of `key` read at the named unigram entropy along the rows' temperature
    sweep, None outside it}."""
    points = [(r["temperature"], r["unigram_entropy"], r[key]) for r in rows]
    return {name: metrics.value_at_entropy(points, h) for name, h in entropies.items()}


def ratio(a: float | None, b: float | None) -> float | None:
    """a / b, None when either is missing."""
    return None if a is None or b is None else a / b
