"""The frozen causal LM that `make vae` aligns the latents to (`vae.align_teacher`).

`vae.align_teacher` names it:
- `ar` / `reference`: this run's AR baseline (`make ar`) or reference LM (`make reference`;
  the scorer of `make eval`, so aligning to it is reported there);
- `<run dir>:ar` / `<run dir>:reference`: another run's, trained on the same tokenizer;
- `python:<module>:<function>`: a user's own LM. `<function>(layer: int)` returns a
  `Teacher`: a pure `apply(params, tokens_BxT) -> hidden_BxTxH` in which each position sees
  its prefix only, its `params` (any pytree of arrays), the width H, and the path of the
  sentencepiece model its token ids come from, which must be the run's (`<run>/tokenizer/
  spm.model`: a teacher reads the very ids the autoencoder reads). For a Flax NNX model:

      graphdef, params = nnx.split(my_lm)
      Teacher(apply=lambda p, t: nnx.merge(graphdef, p).hidden(t, layer), params=params,
              width=H, tokenizer="runs/my_run/tokenizer/spm.model", name="my LM")

The teacher reads EOS followed by the block's tokens, and position j + 1's state (having
read token j) is token j's state. Its parameters reach the jitted step as frozen inputs:
nothing trains them.
"""

from __future__ import annotations

import dataclasses
import hashlib
import importlib
import pathlib
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx

from ldlm import rundir, teacher_spec
from ldlm.config import Config
from ldlm.data.batches import blocks_dir
from ldlm.data.blocks import read_meta
from ldlm.data.tokenizer import EOS_ID
from ldlm.errors import ConfigError
from ldlm.flops import block_flops
from ldlm.loading import load_stage_model, stage_config
from ldlm.models.ar import build_ar



@dataclasses.dataclass(frozen=True)
class Teacher:
    apply: Callable[[Any, jax.Array], jax.Array]  # (params, tokens_BxT) -> hidden_BxTxH
    params: Any
    width: int  # H
    tokenizer: str  # path of the sentencepiece model of its token ids
    name: str
    forward_flops_per_token: float = 0.0  # counted in the autoencoder's training FLOPs
    stage: str | None = None  # "ar" / "reference" when it is a run's LM

    def token_states(self, params, tokens_BxL) -> jax.Array:
        """Each token's state BxLxH (after reading it; EOS first), gradients stopped."""
        start = jnp.full_like(tokens_BxL[:, :1], EOS_ID)
        h = self.apply(params, jnp.concatenate([start, tokens_BxL], axis=1))[:, 1:]
        return jax.lax.stop_gradient(h.astype(jnp.float32))


def load_teacher(spec: str, run_dir, layer: int = 0) -> Teacher:
    """The teacher `spec` names (see the module docstring), its tokenizer checked against
    `run_dir`'s: a one-line ConfigError for a teacher that reads other token ids."""
    kind, where, name = teacher_spec.parse(spec, run_dir)
    if kind == "python":
        teacher = _user_teacher(spec, where, name, layer)
    else:
        teacher = causal_lm_teacher(pathlib.Path(where), name, layer)
    check_tokenizer(teacher, run_dir, spec)
    return teacher


def causal_lm_teacher(run_dir: pathlib.Path, stage: str, layer: int = 0) -> Teacher:
    """A run's AR baseline or reference LM as a teacher (MissingStageError naming
    `make <stage>` if it never trained)."""
    what = teacher_spec.LM_STAGES[stage]
    cfg: Config = stage_config(run_dir, stage, what)
    lm = getattr(cfg, stage)
    if not 0 <= layer <= lm.layers:
        raise ConfigError(f"vae.align_layer={layer}: {what} of {run_dir} has "
                          f"blocks 1..{lm.layers} (0: its final states)")
    model = load_stage_model(run_dir, stage, build_ar(cfg, _vocab_size(run_dir), stage),
                             getattr(cfg, f"{stage}_train"))
    graphdef, params = nnx.split(model)
    blocks = layer or lm.layers
    per_token = blocks * block_flops(1, lm.width, lm.mlp_dim, cfg.data.block_len + 1)
    return Teacher(apply=lambda p, t: nnx.merge(graphdef, p).hidden(t, layer), params=params,
                   width=lm.width, name=f"{what} of {run_dir}",
                   tokenizer=str(rundir.stage_dir(run_dir, "tokenizer") / "spm.model"),
                   forward_flops_per_token=per_token, stage=stage)


def check_tokenizer(teacher: Teacher, run_dir, spec: str) -> None:
    ours = rundir.stage_dir(pathlib.Path(run_dir), "tokenizer") / "spm.model"
    theirs = pathlib.Path(teacher.tokenizer)
    if not theirs.is_file():
        raise ConfigError(f"vae.align_teacher={spec!r}: its tokenizer {theirs} does not exist")
    if _digest(theirs) != _digest(ours):
        raise ConfigError(f"vae.align_teacher={spec!r} reads the token ids of {theirs}, not "
                          f"this run's tokenizer {ours}: align to an LM trained on the "
                          "same tokenizer")


def _user_teacher(spec: str, module: str, function: str, layer: int) -> Teacher:
    try:
        fn = getattr(importlib.import_module(module), function)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"vae.align_teacher={spec!r}: cannot load {module}.{function} "
                          f"({e})") from None
    teacher = fn(layer)
    if not isinstance(teacher, Teacher):
        raise ConfigError(f"vae.align_teacher={spec!r}: {function}(layer) returned "
                          f"{type(teacher).__name__}, not ldlm.train.teacher.Teacher")
    return teacher


def _vocab_size(run_dir) -> int:
    return read_meta(blocks_dir(run_dir))["vocab_size"]


def _digest(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
