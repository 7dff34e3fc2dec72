"""Attention masks of a block-causal latent prior (a window of W latents in diffusion blocks
of G latents: p(z) = prod_b p(z_b | z_<b)).

Training runs one pass over [clean window | noisy window] (2W positions, BD3-LM's vectorised
form): a clean position of block b sees the clean positions of blocks <= b (what a KV cache
holds once block b is committed); a noisy position of block b sees the clean positions of
blocks < b and the noisy positions of its own block. The loss is taken on the noisy half;
this equals W/G separate passes, one per block, with the same times and noise.
"""

from __future__ import annotations

import numpy as np

from ldlm.errors import ConfigError


def diffusion_blocks(window: int, block_size: int) -> np.ndarray:
    """int_W: the diffusion block of each latent position; ConfigError unless G divides W."""
    if block_size < 1 or window % block_size:
        raise ConfigError(f"dit.block_size={block_size} must divide the window of {window} "
                          "latents")
    return np.arange(window) // block_size


def two_stream_mask(window: int, block_size: int) -> np.ndarray:
    """bool_(2W)x(2W): query (row) may attend to key (column) over [clean | noisy]."""
    b = diffusion_blocks(window, block_size)
    clean_clean = b[:, None] >= b[None, :]
    noisy_clean = b[:, None] > b[None, :]
    noisy_noisy = b[:, None] == b[None, :]
    clean_noisy = np.zeros_like(clean_clean)
    return np.block([[clean_clean, clean_noisy], [noisy_clean, noisy_noisy]])
