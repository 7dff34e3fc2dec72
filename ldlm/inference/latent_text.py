"""Text <-> normalised latents for sampling: prompts and texts encoded into the latents a
prior sees, latents read back into tokens through the VAE decoder or, block after block, the
seam decoder (`BlockReader`). Samplers (ldlm/priors/) see only latents; the pipeline uses
this module on both sides of them."""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ldlm.data.tokenizer import MASK_ID, through_eos
from ldlm.errors import PipelineError
from ldlm.inference.textvae import BlockReader, TextVAE


class LatentText:
    """A run's TextVAE and latent statistics, as the pipeline needs them (shape letters: B
    texts, K VAE blocks, N latents per block, D latent width)."""

    def __init__(self, vae: TextVAE):
        self.vae, self.normaliser = vae, vae.normaliser
        self.N, self.D = vae.num_latents, vae.latent_dim

    def denormalise(self, z_xD) -> np.ndarray:
        """Normalised latents (what the prior sees) -> the VAE's latents."""
        return self.normaliser.denormalise(np.asarray(z_xD, np.float32)).astype(np.float32)

    def token_blocks(self, text: str, what: str, eos: bool = False) -> list[list[int]]:
        """A text's token ids in VAE blocks as the training data lays them out (the last
        block possibly short). `what` names the text in errors."""
        if not isinstance(text, str) or not text.strip():
            raise PipelineError(f"the {what} text is empty")
        blocks = self.vae.blocks(text, eos=eos)
        if not blocks:
            raise PipelineError(f"the {what} text has no tokens")
        return blocks

    def encode(self, text: str, what: str, eos: bool, fill_last: bool = False) -> np.ndarray:
        """Normalised latents K x N x D of a text's blocks; with `fill_last` a last block
        cut short is filled up with the mask token (see the block-causal sampler's
        `fills_prompt_blocks`). `what` names the text in errors."""
        blocks = self.token_blocks(text, what, eos)
        if fill_last:
            blocks[-1] = blocks[-1] + [MASK_ID] * (self.vae.block_len - len(blocks[-1]))
        return self.normaliser.normalise(self.vae.encode_tokens(self.vae.pad(blocks)[0]))

    def reader(self, prev_BxNxD, valid_B=None) -> BlockReader:
        """A block reader for B texts; `prev_BxNxD` (normalised): the block before each
        text's first, e.g. a prompt's last (rows where `valid_B` is False have none)."""
        reader = self.vae.reader(len(prev_BxNxD))
        reader.prime(self.denormalise(prev_BxNxD), valid_B)
        return reader

    def block_tokens(self, z_BxNxD, reader: BlockReader | None = None) -> list[list[int]]:
        """Token ids of each normalised latent block: real positions, through the first
        EOS; with a `reader`, the next block of each of its texts (seeing the block
        before)."""
        z = self.denormalise(z_BxNxD)
        tokens, real = reader.read(z) if reader is not None else self.vae.decode_tokens(z)
        return [through_eos(t[m]) for t, m in zip(tokens, real)]

    def texts(self, blocks: Sequence[np.ndarray]) -> list[str]:
        """Texts of K_i x N x D blocks each, every block read after the one before it."""
        reader = self.reader(np.zeros((len(blocks), self.N, self.D), np.float32), False)
        tokens = [[] for _ in blocks]
        for k in range(max(len(b) for b in blocks)):
            z = np.stack([b[k] if k < len(b) else np.zeros((self.N, self.D), np.float32)
                          for b in blocks])
            for i, ids in enumerate(self.block_tokens(z, reader)):
                if k < len(blocks[i]):
                    tokens[i].extend(ids)
        return [self.vae.tokenizer.decode(t) for t in tokens]

    def decode(self, z) -> list[str]:
        """Texts of normalised latent blocks; z of shape n x K x N x D holds K consecutive
        blocks per text, read in order (with the seam decoder, each seeing the one before)
        and joined through the first EOS."""
        z = np.asarray(z, np.float32)
        if z.ndim == 4:
            return self.vae.decode(self.denormalise(z))
        return [self.vae.tokenizer.decode(ids) for ids in self.block_tokens(z)]
