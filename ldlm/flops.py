"""Analytic model FLOPs of the training steps (the prior's: its kind's, ldlm/priors/), and reference FLOP/s to compare them with
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
    if model == "vae" and cfg.vae.align_dim:  # the frozen teacher and the projector
        v = cfg.vae
        projector = B * v.num_latents * 2 * (v.latent_dim * v.width + v.width * v.align_dim)
        return teacher_flops(cfg, B) + projector + forward_flops("vae_alone", cfg, vocab, B)
    if cfg.vae.kind == "chunk" and model in ("vae", "vae_alone", "encoder"):
        return chunk_vae_flops(cfg.vae, L, vocab, B, decoder=model != "encoder")
    if model in ("vae", "vae_alone"):
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
    raise ValueError(f"no FLOP count for {model!r}: the prior's is its kind's "
                     "(ldlm.priors.get(cfg).forward_flops)")


def chunk_vae_flops(cfg, block_len: int, vocab: int, B: int, *,
                    encoder: bool = True, decoder: bool = True) -> float:
    """Forward matmul FLOPs over B blocks (the encoder, the decoder or both)."""
    W, D, H, L = cfg.width, cfg.latent_dim, cfg.mlp_dim, block_len
    N = cfg.num_latents
    K = L // N
    mlp = 2 * 3 * W * H  # one SwiGLU per position
    flops = 0.0
    if encoder:
        flops += B * (cfg.encoder_layers * (L + N) * mlp + N * 2 * K * W * W + N * 2 * 2 * W * D)
    if decoder:
        flops += B * (N * 2 * D * W + cfg.decoder_layers * (N + L) * mlp + N * 2 * W * K * W
                      + L * 2 * W * (vocab + 1))
    return flops


def teacher_flops(cfg: Config, B: int) -> float:
    """Forward FLOPs of the frozen teacher an aligning autoencoder reads (B blocks: EOS and
    the block's tokens); 0 without alignment."""
    v = cfg.vae
    return B * (cfg.data.block_len + 1) * v.align_teacher_flops if v.align_dim else 0.0


def train_flops(model: str, cfg: Config, vocab: int, B: int) -> float:
    """Forward and backward (2x), and remat's recomputation; a frozen teacher's forward
    once (no gradient flows into it)."""
    remat = getattr(cfg, f"{model}_train").remat
    frozen = teacher_flops(cfg, B) if model == "vae" else 0.0
    return (forward_flops(model, cfg, vocab, B) - frozen) * (3 + (1 if remat else 0)) + frozen


def matmul_flops_per_s(n: int = 2048, repeats: int = 10) -> float:
    a = jnp.asarray(np.random.default_rng(0).standard_normal((n, n)), jnp.float32)
    f = jax.jit(lambda x, y: x @ y)
    f(a, a).block_until_ready()
    t = time.perf_counter()
    for _ in range(repeats):
        out = f(a, a)
    out.block_until_ready()
    return 2 * n ** 3 * repeats / (time.perf_counter() - t)
