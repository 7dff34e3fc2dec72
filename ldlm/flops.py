"""Analytic model FLOPs of the training steps, and reference FLOP/s to compare them with
(benchmarks/mfu.py, benchmarks/vae_throughput.py)."""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from ldlm.config import Config

# Dense bf16 peak FLOP/s per device, by jax device_kind prefix.
PEAK_BF16 = {"NVIDIA H100": 989e12, "NVIDIA H200": 989e12, "NVIDIA A100": 312e12,
             "NVIDIA L4": 121e12, "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5p": 459e12,
             "TPU v6 lite": 918e12}


def block_flops(tokens: int, width: int, mlp: int, seq: int) -> float:
    """Forward matmul FLOPs of one transformer block over `tokens` positions of sequences of
    length `seq`: q, k, v, o projections, SwiGLU, attention scores and weighted sum."""
    return tokens * (2 * (4 * width * width + 3 * width * mlp) + 2 * 2 * seq * width)


def forward_flops(model: str, cfg: Config, vocab: int, B: int) -> float:
    L = cfg.data.block_len
    if model == "vae":
        v = cfg.vae
        W, D = v.width, v.latent_dim
        flops = (v.encoder_layers + v.decoder_layers) * block_flops(B * L, W, v.mlp_dim, L)
        return flops + B * L * (2 * 2 * W * D + 2 * D * W + 2 * W * vocab)
    if model == "decoder":  # seam decoder, per window: block 1 alone, block 2 seeing it
        v = cfg.vae
        W = v.width
        flops = v.decoder_layers * (block_flops(B * L, W, v.mlp_dim, L) +
                                    block_flops(B * L, W, v.mlp_dim, 2 * L))
        return flops + 2 * B * L * (2 * v.latent_dim * W + 2 * W * vocab)
    if model == "encoder":  # the VAE's encoder alone (make latents), B blocks
        v = cfg.vae
        return (v.encoder_layers * block_flops(B * L, v.width, v.mlp_dim, L) +
                B * L * 2 * 2 * v.width * v.latent_dim)
    if model == "ar":
        a = cfg.ar
        return a.layers * block_flops(B * L, a.width, a.mlp_dim, L) + B * L * 2 * a.width * vocab
    t = cfg.dit
    N, D, W = cfg.vae.num_latents, cfg.vae.latent_dim, t.width
    if t.window:  # block-causal: [clean | noisy] window, adaLN once per block's condition
        Wn = t.window * N
        T, conds = 2 * Wn, 1 + Wn // t.block_size
        flops = t.layers * (block_flops(B * T, W, t.mlp_dim, T) + B * conds * 2 * W * 6 * W)
        return flops + B * (T * 2 * 2 * D * W + conds * 2 * W * 2 * W + Wn * 2 * W * D)
    T = N + 2 * (N // t.context_pool) if t.use_context else N
    flops = t.layers * (block_flops(B * T, W, t.mlp_dim, T) + B * 2 * W * 6 * W)
    return flops + B * (N * 2 * 2 * D * W + T * 2 * D * W + N * 2 * W * D)


def train_flops(model: str, cfg: Config, vocab: int, B: int) -> float:
    fwd = forward_flops(model, cfg, vocab, B)
    extra = cfg.dit.self_cond_prob if model == "dit" else 0.0
    remat = getattr(cfg, f"{model}_train").remat
    return fwd * (3 + extra + (1 if remat else 0))


def matmul_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
        out = f(a, a)
    out.block_until_ready()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)
