"""Loading a trained stage's model from a run directory (for inference, on one device).

A stage directory holds the resolved `config.json` and Orbax checkpoints of the whole train
state; this rebuilds the model from that config and restores only its weights from the
newest (or a given) checkpoint: the EMA weights when the run kept them, else the parameters.
Used by inference and by stages that need a frozen model of an earlier stage.
"""

from __future__ import annotations

import pathlib
from typing import Callable

import jax
from flax import nnx

from ldlm import rundir
from ldlm.checkpoint import Checkpointer
from ldlm.config import Config, MeshConfig, TrainConfig
from ldlm.errors import LdlmError, MissingStageError
from ldlm.mesh import PARAM_RULES, make_mesh


def stage_config(run_dir, stage: str, what: str) -> Config:
    """The config a stage was trained with; MissingStageError (naming `make <stage>`) if the
    stage never ran."""
    path = rundir.stage_dir(pathlib.Path(run_dir), stage) / rundir.CONFIG_FILE
    if not path.is_file():
        raise MissingStageError(what, path.parent, stage)
    return Config.from_json_file(path)


def load_stage_model(run_dir, stage: str, build: Callable[[nnx.Rngs], nnx.Module],
                     train_cfg: TrainConfig, *, step: int | None = None,
                     ema: bool = True) -> nnx.Module:
    """The model of `stage` in `run_dir`, built by `build` and restored from its checkpoint
    (newest unless `step`), with EMA weights when kept and `ema`, on the first local device."""
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.local_devices()[:1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):
        model = build(nnx.Rngs(params=0))
    graphdef, params = nnx.split(model)
    ckpt = Checkpointer(rundir.stage_dir(pathlib.Path(run_dir), stage) / "checkpoints",
                        stage=stage)
    try:
        if ckpt.latest_step() is None:
            raise MissingStageError(f"a {stage} checkpoint", ckpt.directory, stage)
        try:
            weights = ckpt.restore_weights(params, step,
                                           ema=ema and train_cfg.ema_decay > 0)
        except ValueError as e:  # Orbax: the tree or shapes differ from what the config builds
            raise LdlmError(
                f"the {stage} checkpoint in {ckpt.directory} does not match the model its "
                f"config.json builds (written by an incompatible version of the {stage} "
                f"model?); retrain with `make {stage}`. Orbax said: "
                f"{str(e).splitlines()[0]}") from None
    finally:
        ckpt.close()
    return nnx.merge(graphdef, weights)
