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
from ldlm.data.tokenizer import EOS_ID, Tokenizer, through_eos
from ldlm.errors import LdlmError, MissingStageError
from ldlm.files import read_json
from ldlm.loading import load_stage_model, stage_config
from ldlm.models.seam_decoder import build_seam_decoder
from ldlm.models.vae import build_vae

DECODERS = ("auto", "vae", "seam")  # TextVAE.from_run(decoder=...)


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


class SeamCodec:
    """Jitted steps of the seam decoder (ldlm/models/seam_decoder.py): `read` decodes blocks
    given the previous blocks' history and returns their own history for the next call;
    `history` is the history of blocks read elsewhere (a prompt's last block)."""

    def __init__(self, model):
        graphdef, self.params = nnx.split(model)
        self.empty = model.empty_history

        def read(p, z, history):
            m = nnx.merge(graphdef, p)
            logits, real = m.decode(z, history)
            return (jnp.argmax(logits, -1).astype(jnp.int32), real > 0,
                    m.alone(z)[2])

        self._read = jax.jit(read)
        self._history = jax.jit(lambda p, z, valid: nnx.merge(graphdef, p).alone(z, valid)[2])

    def read(self, z_BxNxD, history):
        return self._read(self.params, z_BxNxD, history)

    def history(self, z_BxNxD, valid_B):
        return self._history(self.params, z_BxNxD, valid_B)


class BlockReader:
    """Decodes the VAE blocks of B texts in order, one block of each per `read`. With a seam
    decoder every block sees the history of the block read before it (kept here between
    calls: the decoder's cache); with the VAE decoder every block is read on its own."""

    def __init__(self, vae: "TextVAE", B: int):
        self.vae, self.B = vae, B
        self._history = vae.seam.empty(B) if vae.seam is not None else None

    def prime(self, z_BxNxD, valid_B=None) -> None:
        """The blocks (un-normalised latents) that come before the first `read`, e.g. each
        prompt's last block; rows where `valid_B` (one bool, or one per row) is False have
        none."""
        if self._history is not None:
            valid = np.broadcast_to(np.asarray(True if valid_B is None else valid_B, bool),
                                    (self.B,))
            self._history = self.vae.seam.history(self.vae.check_latents(z_BxNxD),
                                                  jnp.asarray(valid))

    def read(self, z_BxNxD) -> tuple[np.ndarray, np.ndarray]:
        """Predicted tokens_BxL and real-token mask_BxL of the next block of every text."""
        z = self.vae.check_latents(z_BxNxD)
        if self._history is None:
            return self.vae.decode_tokens(z)
        tokens, real, self._history = self.vae.seam.read(z, self._history)
        return np.asarray(tokens), np.asarray(real)


class TextTooLong(LdlmError):
    """A text does not fit in one block."""


class TextVAE:
    def __init__(self, cfg: Config, model: nnx.Module, tokenizer: Tokenizer,
                 label_names: Sequence[str] = (),
                 normaliser: LatentNormaliser | None = None, seam_model=None):
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
        # the seam decoder (make decoder), which reads a block after the one before it
        self.seam = SeamCodec(seam_model) if seam_model is not None else None

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_run(cls, run_dir, *, step: int | None = None, ema: bool = True,
                 decoder: str = "auto") -> "TextVAE":
        """Loads the VAE checkpoint of `run_dir` (the newest unless `step`), its EMA weights
        when the run kept them and `ema`, onto the first local device. `decoder`: which
        decoder reads texts of several blocks: "vae" (every block on its own), "seam" (the
        seam decoder of `make decoder`, each block seeing the one before), "auto" (the seam
        decoder when the run has one)."""
        if decoder not in DECODERS:
            raise LdlmError(f"decoder={decoder!r}: choose one of {list(DECODERS)}")
        cfg = stage_config(run_dir, "vae", "a trained VAE")
        tokenizer = Tokenizer.load(rundir.stage_dir(pathlib.Path(run_dir), "tokenizer"))
        model = load_stage_model(run_dir, "vae", build_vae(cfg, tokenizer.vocab_size),
                                 cfg.vae_train, step=step, ema=ema)
        seam_model = None
        seam_done = (rundir.stage_dir(pathlib.Path(run_dir), "decoder") / "eval.json").is_file()
        if decoder == "seam" and not seam_done:
            raise MissingStageError("a trained seam decoder", "the decoder stage", "decoder")
        if decoder == "seam" or (decoder == "auto" and seam_done):
            seam_cfg = stage_config(run_dir, "decoder", "a trained seam decoder")
            seam_model = load_stage_model(
                run_dir, "decoder", build_seam_decoder(
                    seam_cfg.replace(vae=cfg.vae, data=cfg.data), tokenizer.vocab_size),
                seam_cfg.decoder_train, ema=ema)
        stats = rundir.stage_dir(pathlib.Path(run_dir), "data") / "stats.json"
        names = read_json(stats, "rerun `make data`").get("label_names", []) \
            if stats.is_file() else []
        try:
            normaliser = LatentNormaliser.load(run_dir)
        except MissingStageError:  # a VAE stage that has not finished its evaluation
            normaliser = None
        return cls(cfg, model, tokenizer, names, normaliser, seam_model)

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

    def check_latents(self, z_BxNxD) -> jax.Array:
        """z as a float32 jax array; a one-line error unless it is B x N x D."""
        z = jnp.asarray(z_BxNxD, jnp.float32)
        if z.ndim != 3 or z.shape[1:] != (self.num_latents, self.latent_dim):
            raise LdlmError(f"latents must have shape (B, {self.num_latents}, "
                            f"{self.latent_dim}), got {tuple(z.shape)}")
        return z

    def decode_tokens(self, z_BxNxD) -> tuple[np.ndarray, np.ndarray]:
        """Predicted tokens_BxL and real-token mask_BxL, every block on its own (the VAE
        decoder)."""
        tokens, real = self._codec.decode(self.check_latents(z_BxNxD))
        return np.asarray(tokens), np.asarray(real)

    def reader(self, B: int) -> BlockReader:
        """A reader of B texts block by block (with the seam decoder when loaded)."""
        return BlockReader(self, B)

    def decode(self, z_BxNxD) -> list[str]:
        """One text per latent block (up to the first EOS, padding positions dropped); z of
        shape B x K x N x D is K consecutive blocks per text, read in order (each seeing the
        one before when the seam decoder is loaded) and joined."""
        z = np.asarray(z_BxNxD, np.float32)
        if z.ndim == 3:
            tokens, real = self.decode_tokens(z)
            return [self.tokenizer.decode(t[m]) for t, m in zip(tokens, real)]
        if z.ndim != 4:
            raise LdlmError(f"latents must have shape (B, N, D) or (B, K, N, D), got "
                            f"{tuple(z.shape)}")
        reader, ids = self.reader(z.shape[0]), [[] for _ in range(z.shape[0])]
        for k in range(z.shape[1]):
            tokens, real = reader.read(z[:, k])
            for i, (t, m) in enumerate(zip(tokens, real)):
                if EOS_ID not in ids[i]:
                    ids[i].extend(through_eos(t[m]))
        return [self.tokenizer.decode(r) for r in ids]
