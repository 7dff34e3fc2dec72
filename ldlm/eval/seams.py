"""How well a VAE block is read back next to the block before it: the VAE decoder against
the seam decoder, alone and with the previous block's history (`make decoder` writes this
table to decoder/eval.json).

On every validation window of two real consecutive blocks, both blocks' normalised latents
get the same Gaussian noise of level sigma (the prior's units: 1 is the spread of the
latents), and the second block is decoded three ways. Reported per level and decoder: token
accuracy over the block's real tokens, and over its first SEAM_TOKENS (the seam).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ldlm.data.latents import LatentNormaliser, LatentWindowSource

SIGMAS = (0.0, 0.2, 0.5, 1.0)
SEAM_TOKENS = 8
DECODERS = ("vae", "seam_alone", "seam_with_history")


def _decode_three(vae_model, seam_model):
    vae_def, vae_params = nnx.split(vae_model)
    seam_def, seam_params = nnx.split(seam_model)

    @jax.jit
    def run(vp, sp, first_BxNxD, second_BxNxD):
        vae, seam = nnx.merge(vae_def, vp), nnx.merge(seam_def, sp)
        _, _, history = seam.alone(first_BxNxD)
        outs = (vae.decode(second_BxNxD)[0], seam.alone(second_BxNxD)[0],
                seam.decode(second_BxNxD, history)[0])
        return jnp.stack([jnp.argmax(o, -1) for o in outs])  # 3 x B x L

    return lambda first, second: np.asarray(run(vae_params, seam_params, first, second))


def seam_table(vae_model, seam_model, windows: LatentWindowSource,
               normaliser: LatentNormaliser, sigmas=SIGMAS, batch_size: int = 64,
               seed: int = 0) -> dict:
    """{"blocks": n, "<sigma>": {decoder: {"token_accuracy", "seam_accuracy"}}} over the
    validation windows whose two blocks are real."""
    decode = _decode_three(vae_model, seam_model)
    N = windows.N
    items = [windows[i] for i in range(len(windows))]
    items = [it for it in items if it["latent_mask"][N:].any()]
    rng = np.random.default_rng(seed)
    # right tokens, tokens, right seam tokens, seam tokens: per sigma and decoder
    counts = np.zeros((len(sigmas), len(DECODERS), 4))
    for start in range(0, len(items), batch_size):
        part = items[start:start + batch_size]
        z = np.stack([it["z"] for it in part])  # B x 2N x D, normalised
        tokens = np.stack([it["tokens"][1] for it in part])
        mask = np.stack([it["mask"][1] for it in part])
        seam = mask & (np.cumsum(mask, -1) <= SEAM_TOKENS)
        eps = rng.standard_normal(z.shape).astype(np.float32)
        for i, s in enumerate(sigmas):
            zv = np.asarray(normaliser.denormalise(z + s * eps))
            preds = decode(zv[:, :N], zv[:, N:])
            for j, pred in enumerate(preds):
                right = pred == tokens
                counts[i, j] += ((right & mask).sum(), mask.sum(), (right & seam).sum(),
                                 seam.sum())
    table = {"blocks": len(items)}
    for i, s in enumerate(sigmas):
        table[str(s)] = {d: {"token_accuracy": float(c[0] / max(c[1], 1)),
                             "seam_accuracy": float(c[2] / max(c[3], 1))}
                         for d, c in zip(DECODERS, counts[i])}
    return table
