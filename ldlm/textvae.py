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
from ldlm.checkpoint import Checkpointer
from ldlm.config import Config, MeshConfig
from ldlm.data.blocks import document_blocks
from ldlm.data.corpus import normalize_text
from ldlm.data.tokenizer import EOS_ID, PAD_ID, Tokenizer
from ldlm.errors import LdlmError, MissingStageError
from ldlm.eval.reconstruction import Codec
from ldlm.mesh import PARAM_RULES, make_mesh
from ldlm.train.state import init_state, make_optimizer


class TextTooLong(LdlmError):
    """A text does not fit in one block."""


class TextVAE:
    def __init__(self, cfg: Config, model: nnx.Module, tokenizer: Tokenizer):
        self.cfg = cfg
        self.tokenizer = tokenizer
        self.block_len = cfg.data.block_len
        self.num_latents, self.latent_dim = cfg.vae.num_latents, cfg.vae.latent_dim
        self._codec = Codec(model)

    # ------------------------------------------------------------------ loading
    @classmethod
    def from_run(cls, run_dir, *, step: int | None = None, ema: bool = True) -> "TextVAE":
        """Loads the VAE checkpoint of `run_dir` (the newest unless `step`), its EMA weights
        when the run kept them and `ema`, onto the first local device."""
        from ldlm.train.vae import build_vae

        run_dir = pathlib.Path(run_dir)
        config_path = rundir.stage_dir(run_dir, "vae") / rundir.CONFIG_FILE
        if not config_path.is_file():
            raise MissingStageError("a trained VAE", rundir.stage_dir(run_dir, "vae"), "vae")
        cfg = Config.from_json_file(config_path)
        tokenizer = Tokenizer.load(rundir.stage_dir(run_dir, "tokenizer"))
        mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.local_devices()[:1])
        with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):
            model = build_vae(cfg, tokenizer.vocab_size)(nnx.Rngs(params=0))
        graphdef, params = nnx.split(model)
        like = init_state(params, make_optimizer(cfg.vae_train), cfg.seed,
                          ema=cfg.vae_train.ema_decay > 0)
        ckpt = Checkpointer(rundir.stage_dir(run_dir, "vae") / "checkpoints")
        if ckpt.latest_step() is None:
            raise MissingStageError("a VAE checkpoint", ckpt.directory, "vae")
        state, _, _ = ckpt.restore(like, step)
        ckpt.close()
        weights = state.ema if (ema and state.ema is not None) else state.params
        return cls(cfg, nnx.merge(graphdef, weights), tokenizer)

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
        return self._pad(rows)

    def _pad(self, rows: Sequence[Sequence[int]]) -> tuple[np.ndarray, np.ndarray]:
        tokens = np.full((len(rows), self.block_len), PAD_ID, np.int32)
        mask = np.zeros((len(rows), self.block_len), bool)
        for r, ids in enumerate(rows):
            tokens[r, :len(ids)] = ids
            mask[r, :len(ids)] = True
        return tokens, mask

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
            blocks = document_blocks(normalize_text(text), self.tokenizer, self.block_len,
                                     self.cfg.data.block_min_fill)
            out.append(self.encode_tokens(self._pad(blocks)[0]))
        return out

    def encode_tokens(self, tokens_BxL) -> np.ndarray:
        return np.asarray(self._codec.encode(jnp.asarray(tokens_BxL, jnp.int32)))

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
