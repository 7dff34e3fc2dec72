"""Autoregressive baseline: a causal transformer LM over the same token blocks.

Built from the blocks of `ldlm/models/layers.py`, like the VAE and the DiT. A block of L
tokens is predicted left to right after a start token (EOS, which also separates documents),
so its samples are directly comparable with the DiT's one-block samples. `decode_step`
runs one position against a key/value cache, so generation costs O(L) per token instead of
recomputing the prefix.

Shape letters: B batch, T / L positions, S cache length, V vocabulary, W model width.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from ldlm.config import ARConfig, Config
from ldlm.data.tokenizer import EOS_ID
from ldlm.models import layers


class CausalLM(nnx.Module):
    def __init__(self, cfg: ARConfig, vocab_size: int, *, rngs: nnx.Rngs, dtype=jnp.float32,
                 remat: bool = False):
        self.cfg, self.vocab_size, self.dtype, self.remat = cfg, vocab_size, dtype, remat
        self.embed = layers.Embed(vocab_size, cfg.width, rngs=rngs, dtype=dtype)
        self.blocks = nnx.List([layers.Block(cfg.width, cfg.heads, cfg.mlp_dim, rngs=rngs,
                                             dtype=dtype) for _ in range(cfg.layers)])
        self.norm = layers.RMSNorm(cfg.width, rngs=rngs)

    def hidden(self, tokens_BxT, layer: int = 0) -> jax.Array:
        """Hidden states BxTxW, each position seeing its prefix only: the final normalised
        ones (layer 0), or the residual stream after block `layer` (1..layers)."""
        if not 0 <= layer <= len(self.blocks):
            raise ValueError(f"layer {layer}: this LM has blocks 1..{len(self.blocks)} "
                             "(0: its final states)")
        B, T = tokens_BxT.shape
        causal_BxTxT = jnp.broadcast_to(jnp.tril(jnp.ones((T, T), bool))[None], (B, T, T))
        h = self.embed(tokens_BxT)
        for block in self.blocks[:layer or len(self.blocks)]:
            h = layers.call_block(block, self.remat, h, causal_BxTxT)
        return self.norm(h) if layer == 0 else h

    def __call__(self, tokens_BxT) -> jax.Array:
        """Next-token logits BxTxV (float32) for every prefix."""
        return self.embed.attend(self.hidden(tokens_BxT))

    def init_cache(self, batch: int, length: int) -> list[dict]:
        """An empty key/value cache for `length` positions, one entry per block."""
        heads = self.cfg.heads
        shape = (batch, length, heads, self.cfg.width // heads)
        return [{"k": jnp.zeros(shape, self.dtype), "v": jnp.zeros(shape, self.dtype)}
                for _ in self.blocks]

    def decode_step(self, token_B, cache: list[dict], pos) -> tuple[jax.Array, list[dict]]:
        """Logits BxV for the position after `token_B`, which sits at position `pos`."""
        h = self.embed(token_B[:, None])
        new_cache = []
        for block, c in zip(self.blocks, cache):
            h, c = block.decode_step(h, c, pos)
            new_cache.append(c)
        return self.embed.attend(self.norm(h))[:, 0], new_cache


def build_ar(cfg: Config, vocab_size: int, stage: str = "ar"):
    """rngs -> CausalLM of config section `stage` ("ar": the baseline, "reference": the
    scorer), with the compute dtype and remat of `<stage>_train`."""
    model_cfg, train_cfg = getattr(cfg, stage), getattr(cfg, f"{stage}_train")
    dtype = layers.compute_dtype(train_cfg.compute_dtype)
    return lambda rngs: CausalLM(model_cfg, vocab_size, rngs=rngs, dtype=dtype,
                                 remat=train_cfg.remat)


def shift_right(tokens_BxL):
    """Model inputs: EOS (the start token) followed by all but the last token."""
    start = jnp.full_like(tokens_BxL[:, :1], EOS_ID)
    return jnp.concatenate([start, tokens_BxL[:, :-1]], axis=1)


def sample_tokens(model: CausalLM, start_B, length: int, rng, *, temperature: float = 1.0,
                  top_p: float = 1.0):
    """`length` tokens after the start tokens, BxL, by a jitted-friendly `lax.scan` over
    positions with the KV cache. Temperature 0 is greedy; top_p < 1 keeps the smallest set
    of tokens whose probability reaches top_p."""
    return continue_tokens(model, start_B[:, None], length, rng, temperature=temperature,
                           top_p=top_p)


def continue_tokens(model: CausalLM, prefix_BxP, length: int, rng, *,
                    temperature: float = 1.0, top_p: float = 1.0):
    """`length` tokens after each row's prefix (P tokens, the first usually the start token),
    BxL: one `lax.scan` over the P + length - 1 input positions with the KV cache, the
    prefix fed as given (teacher forcing), then each sampled token fed back."""
    B, P = prefix_BxP.shape
    cache = model.init_cache(B, P + length - 1)

    def step(carry, pos):
        token, cache, key = carry
        key, k = jax.random.split(key)
        logits, cache = model.decode_step(token, cache, pos)
        sampled = sample_logits(logits, k, temperature, top_p)
        # inside the prefix the next input is the prefix's own next token
        nxt = jnp.where(pos + 1 < P, prefix_BxP[:, jnp.minimum(pos + 1, P - 1)], sampled)
        return (nxt, cache, key), sampled

    _, out = jax.lax.scan(step, (prefix_BxP[:, 0], cache, rng), jnp.arange(P + length - 1))
    return out[P - 1:].T


def sample_logits(logits_BxV, rng, temperature: float, top_p: float):
    """One token per row from logits (greedy at temperature 0, nucleus when top_p < 1)."""
    if temperature == 0:
        return jnp.argmax(logits_BxV, -1).astype(jnp.int32)
    logits = logits_BxV / temperature
    if top_p < 1.0:
        logits = jnp.where(nucleus_mask(jax.nn.softmax(logits, -1), top_p), logits, -jnp.inf)
    return jax.random.categorical(rng, logits, axis=-1).astype(jnp.int32)


def nucleus_mask(probs_BxV, top_p: float, iterations: int = 30):
    """Tokens of the smallest set whose probability reaches top_p: those at or above the
    largest threshold that keeps a mass >= top_p, found by bisection (a full sort of the
    vocabulary at every step is several times slower on CPU)."""
    def body(_, bounds):
        lo, hi = bounds
        mid = 0.5 * (lo + hi)
        mass = jnp.sum(jnp.where(probs_BxV >= mid, probs_BxV, 0.0), -1, keepdims=True)
        ok = mass >= top_p
        return jnp.where(ok, mid, lo), jnp.where(ok, hi, mid)

    lo = jnp.zeros(probs_BxV.shape[:-1] + (1,), probs_BxV.dtype)
    hi = jnp.max(probs_BxV, -1, keepdims=True)
    lo, _ = jax.lax.fori_loop(0, iterations, body, (lo, hi))
    return probs_BxV >= lo
