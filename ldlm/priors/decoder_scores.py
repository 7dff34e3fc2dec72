"""How well the frozen VAE decoder reads a prior's clean-latent estimate: per-example token
cross-entropy and accuracy (reported by every prior in validation)."""

from __future__ import annotations

import jax.numpy as jnp
import optax


def decoder_token_scores(decode, z_BxNxD, tokens_BxL, mask_BxL):
    """Per-example token cross-entropy and accuracy (over real tokens) of decoding the
    un-normalised latents z with `decode(z) -> (logits_BxLxV, real_BxL)`."""
    logits, _ = decode(z_BxNxD)
    maskf = mask_BxL.astype(jnp.float32)
    n_B = jnp.maximum(maskf.sum(-1), 1.0)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, tokens_BxL)
    hit = (jnp.argmax(logits, -1) == tokens_BxL).astype(jnp.float32)
    return (ce * maskf).sum(-1) / n_B, (hit * maskf).sum(-1) / n_B
