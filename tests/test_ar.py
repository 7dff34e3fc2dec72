"""The autoregressive baseline: causality, KV-cache decoding, sampling, its training stage."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ldlm.config import ARConfig, MeshConfig
from ldlm.mesh import PARAM_RULES, make_mesh
from ldlm.models import layers
from ldlm.models.ar import CausalLM, continue_tokens, sample_logits, sample_tokens
from tests.helpers import link_stages

VOCAB = 50


def _lm(seed=0):
    with jax.set_mesh(make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])), \
            nnx.logical_axis_rules(PARAM_RULES):
        return CausalLM(ARConfig(width=32, heads=2, mlp_dim=64, layers=2), VOCAB,
                        rngs=nnx.Rngs(params=seed))


def test_logits_depend_only_on_the_prefix():
    model = _lm()
    a = jax.random.randint(jax.random.PRNGKey(0), (2, 10), 0, VOCAB)
    b = a.at[:, 6:].set((a[:, 6:] + 1) % VOCAB)
    la, lb = model(a), model(b)
    np.testing.assert_allclose(la[:, :6], lb[:, :6], atol=1e-5)
    assert not np.allclose(la[:, 6:], lb[:, 6:], atol=1e-3)


def test_kv_cache_decoding_gives_the_tokens_of_a_full_recompute():
    model = _lm()
    start = jnp.array([2, 5, 7], jnp.int32)
    L = 12
    cached = np.asarray(jax.jit(lambda s: sample_tokens(model, s, L, jax.random.PRNGKey(0),
                                                        temperature=0.0))(start))
    seq = np.asarray(start)[:, None]
    for _ in range(L):  # greedy, recomputing the whole prefix every time
        nxt = np.asarray(jnp.argmax(model(jnp.asarray(seq))[:, -1], -1))
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    np.testing.assert_array_equal(cached, seq[:, 1:])
    assert len(set(cached.ravel().tolist())) > 1  # not a constant sequence


def test_continuing_a_prefix_gives_the_tokens_of_a_full_recompute():
    model = _lm()
    prefix = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, VOCAB)
    L = 7
    cached = np.asarray(jax.jit(lambda p: continue_tokens(model, p, L, jax.random.PRNGKey(0),
                                                          temperature=0.0))(prefix))
    seq = np.asarray(prefix)
    for _ in range(L):
        nxt = np.asarray(jnp.argmax(model(jnp.asarray(seq))[:, -1], -1))
        seq = np.concatenate([seq, nxt[:, None]], axis=1)
    assert cached.shape == (3, L)
    np.testing.assert_array_equal(cached, seq[:, 5:])
    # the prefix matters: another prefix, other tokens
    other = np.asarray(continue_tokens(model, (prefix + 1) % VOCAB, L, jax.random.PRNGKey(0),
                                       temperature=0.0))
    assert not np.array_equal(cached, other)


def test_top_p_keeps_the_nucleus_and_temperature_zero_is_greedy():
    logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
    keys = jax.random.split(jax.random.PRNGKey(0), 400)
    draws = np.array([int(sample_logits(logits, k, 1.0, 0.7)[0]) for k in keys[:200]])
    assert set(draws) == {0, 1}  # 0.5 + 0.3 reaches 0.7; 2 and 3 are cut
    assert int(sample_logits(logits, keys[0], 0.0, 1.0)[0]) == 0
    free = np.array([int(sample_logits(logits, k, 1.0, 1.0)[0]) for k in keys[200:]])
    assert set(free) == {0, 1, 2, 3}


def test_ar_stage_trains_and_writes_its_result(tiny_run, tiny_cfg, tmp_path):
    from ldlm.stages.ar import run_ar

    src, _ = tiny_run
    run_dir = link_stages(src, tmp_path / "ar_run")
    out = run_ar(tiny_cfg, run_dir)
    rows = [json.loads(l) for l in (run_dir / "ar" / "metrics.jsonl").read_text().splitlines()]
    train = [r["loss"] for r in rows if r["split"] == "train"]
    assert np.isfinite(train).all() and train[-1] < train[0]
    assert json.loads((run_dir / "ar" / "result.json").read_text()) == out
    assert out["validation"]["loss"] < np.log(tiny_cfg.tokenizer.vocab_size)


def _softmax_attention(q, k, v, mask):
    """Reference: attention written out (float32 softmax, masked logits to -inf)."""
    logits = jnp.einsum("BTHK,BSHK->BHTS", q, k) / jnp.sqrt(jnp.float32(q.shape[-1]))
    logits = jnp.where(mask[:, None], logits, -jnp.inf)
    return jnp.einsum("BHTS,BSHK->BTHK", jax.nn.softmax(logits, -1), v)


@pytest.mark.parametrize("kind", ["padding", "causal", "block_causal"])
def test_attention_matches_written_out_softmax_attention(kind):
    """Attention goes through jax.nn.dot_product_attention; with the masks the models use
    (padding, causal, block-causal) it equals the written-out formula on CPU."""
    B, T, H, K = 2, 12, 2, 8
    q, k, v = (jax.random.normal(jax.random.PRNGKey(i), (B, T, H, K)) for i in range(3))
    t, s = jnp.arange(T)[:, None], jnp.arange(T)[None, :]
    if kind == "padding":
        mask = jnp.broadcast_to(jnp.arange(T)[None, None, :] < jnp.array([T, 5])[:, None, None],
                                (B, T, T))
    elif kind == "causal":
        mask = jnp.broadcast_to(s <= t, (B, T, T))
    else:  # blocks of 4: a position sees every earlier block and its own
        mask = jnp.broadcast_to(s // 4 <= t // 4, (B, T, T))
    np.testing.assert_allclose(np.asarray(layers.dot_product_attention(q, k, v, mask)),
                               np.asarray(_softmax_attention(q, k, v, mask)), rtol=1e-5,
                               atol=1e-5)
