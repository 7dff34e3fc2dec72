"""The TextVAE from Python: text <-> latents with a trained run.

    vae = TextVAE.from_run("runs/bbc_news_cpu")
    z_BxNxD = vae.encode(["Shares rose sharply on Monday.", "The match ended 2-2."])
    texts = vae.decode(z_BxNxD)

A text is one block: normalised, tokenised, followed by EOS, at most `block_len` tokens.
Longer texts are an error, unless `split=True`, which cuts them into blocks exactly as the
data pipeline does and returns one latent array per text.
"""

from __future__ import annotations

import pathlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from ldlm import rundir
from ldlm.config import Config
from ldlm.data.blocks import document_blocks
from ldlm.data.corpus import normalize_text
from ldlm.data.latents import LatentNormaliser
from ldlm.data.records import pad_rows
from ldlm.data.tokenizer import EOS_ID, Tokenizer
from ldlm.errors import LdlmError, MissingStageError
from ldlm.files import read_json
from ldlm.loading import load_stage_model, stage_config
from ldlm.models.vae import build_vae


class Codec:
    """Jitted encode (tokens -> posterior mean) and decode (latents -> tokens, real mask)."""

    def __init__(self, model):
        graphdef, self.params = nnx.split(model)
        self._posterior = jax.jit(lambda p, t: nnx.merge(graphdef, p).encode(t))

        def decode(p, z):
            logits, real = nnx.merge(graphdef, p).decode(z)
            return jnp.argmax(logits, -1).astype(jnp.int32), real > 0

        self._decode = jax.jit(decode)

    def encode(self, tokens_BxL):
        return self._posterior(self.params, tokens_BxL)[0]

    def posterior(self, tokens_BxL):
        """Posterior mean and log-variance, each BxNxD."""
        return self._posterior(self.params, tokens_BxL)

    def decode(self, z_BxNxD):
        return self._decode(self.params, z_BxNxD)


class TextTooLong(LdlmError):
    """A text does not fit in one block."""


class TextVAE:
    def __init__(self, cfg: Config, model: nnx.Module, tokenizer: Tokenizer,
                 label_names: Sequence[str] = (),
                 normaliser: LatentNormaliser | None = None):
        self.cfg = cfg
        # per-coordinate latent statistics (what the DiT normalises by); None before the
        # VAE stage has written them
        self.normaliser = normaliser
        self.label_names = list(label_names)  # topic names of the run's data, by label id
        self.tokenizer = tokenizer
        self.block_len = cfg.data.block_len
        self.num_latents, self.latent_dim = cfg.vae.num_latents, cfg.vae.latent_dim
        self.model = model  # the TextVAEModel (nnx)
        self._codec = Codec(model)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_run(cls, run_dir, *, step: int | None = None, ema: bool = True) -> "TextVAE":
        """Loads the VAE checkpoint of `run_dir` (the newest unless `step`), its EMA weights
        when the run kept them and `ema`, onto the first local device."""
        cfg = stage_config(run_dir, "vae", "a trained VAE")
        tokenizer = Tokenizer.load(rundir.stage_dir(pathlib.Path(run_dir), "tokenizer"))
        model = load_stage_model(run_dir, "vae", build_vae(cfg, tokenizer.vocab_size),
                                 cfg.vae_train, step=step, ema=ema)
        stats = rundir.stage_dir(pathlib.Path(run_dir), "data") / "stats.json"
        names = read_json(stats, "rerun `make data`").get("label_names", []) \
            if stats.is_file() else []
        try:
            normaliser = LatentNormaliser.load(run_dir)
        except MissingStageError:  # a VAE stage that has not finished its evaluation
            normaliser = None
        return cls(cfg, model, tokenizer, names, normaliser)

    # ------------------------------------------------------------------ text -> tokens
    def tokenize(self, texts: Sequence[str], *, eos: bool = True) -> tuple[np.ndarray, np.ndarray]:
        """tokens_BxL (int32, padded) and mask_BxL; raises TextTooLong naming the text."""
        if isinstance(texts, str):
            texts = [texts]
        rows = []
        for i, text in enumerate(texts):
            ids = self.tokenizer.encode(normalize_text(text)) + ([EOS_ID] if eos else [])
            if len(ids) > self.block_len:
                raise TextTooLong(
                    f"text {i} has {len(ids)} tokens{' with EOS' if eos else ''}, but a block "
                    f"holds {self.block_len}: shorten it, or encode(..., split=True) to cut "
                    "it into blocks")
            rows.append(ids)
        return self.pad(rows)

    def pad(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        """tokens_BxL (PAD_ID after each row) and mask_BxL of token rows."""
        return pad_rows(rows, self.block_len)

    # ------------------------------------------------------------------ latents
    def encode(self, texts: Sequence[str], *, split: bool = False, eos: bool = True):
        """Posterior means: z_BxNxD (float32 numpy), or with `split=True` a list with one
        z_KxNxD per text (K blocks, cut as in the data pipeline)."""
        if not split:
            return self.encode_tokens(self.tokenize(texts, eos=eos)[0])
        if isinstance(texts, str):
            texts = [texts]
        out = []
        for text in texts:
            blocks = self.blocks(text, eos=eos)
            out.append(self.encode_tokens(self.pad(blocks)[0]))
        return out

    def blocks(self, text: str, *, eos: bool = True) -> list[list[int]]:
        """Token blocks of one text, cut as in the data pipeline; without `eos` the text is
        left open (a prompt to continue), so its last block carries no EOS."""
        blocks = document_blocks(normalize_text(text), self.tokenizer, self.block_len,
                                 self.cfg.data.block_min_fill)
        if not eos:
            blocks[-1] = [i for i in blocks[-1] if i != EOS_ID]
            blocks = [b for b in blocks if b]
        return blocks

    def encode_tokens(self, tokens_BxL) -> np.ndarray:
        return np.asarray(self._codec.encode(jnp.asarray(tokens_BxL, jnp.int32)))

    def posterior_tokens(self, tokens_BxL) -> tuple[np.ndarray, np.ndarray]:
        """Posterior mean and log-variance (z_BxNxD each) of token blocks."""
        mean, logvar = self._codec.posterior(jnp.asarray(tokens_BxL, jnp.int32))
        return np.asarray(mean), np.asarray(logvar)

    def decode_tokens(self, z_BxNxD) -> tuple[np.ndarray, np.ndarray]:
        """Predicted tokens_BxL and real-token mask_BxL."""
        z = jnp.asarray(z_BxNxD, jnp.float32)
        if z.ndim != 3 or z.shape[1:] != (self.num_latents, self.latent_dim):
            raise LdlmError(f"latents must have shape (B, {self.num_latents}, "
                            f"{self.latent_dim}), got {tuple(z.shape)}")
        tokens, real = self._codec.decode(z)
        return np.asarray(tokens), np.asarray(real)

    def decode(self, z_BxNxD) -> list[str]:
        """One text per latent block (up to the first EOS, padding positions dropped)."""
        tokens, real = self.decode_tokens(z_BxNxD)
        return [self.tokenizer.decode(t[m]) for t, m in zip(tokens, real)]
