"""Loading a trained stage's model from a run directory (for inference, on one device).

A stage directory holds the resolved `config.json` and Orbax checkpoints of the whole train
state; this rebuilds the model from that config and restores only its weights from the
newest (or a given) checkpoint: the EMA weights when the run kept them, else the parameters.
Used by inference and by stages that need a frozen model of an earlier stage.
"""

from __future__ import annotations

import logging
import pathlib
from typing import Callable

import jax
from flax import nnx

from ldlm import rundir
from ldlm.checkpoint import Checkpointer
from ldlm.config import Config, MeshConfig, TrainConfig
from ldlm.errors import CheckpointDamaged, LdlmError, MissingStageError
from ldlm.mesh import PARAM_RULES, make_mesh

log = logging.getLogger("ldlm.loading")


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
    """The model of `stage` in `run_dir`, built by `build` and restored from its checkpoint,
    with EMA weights when kept and `ema`, on the first local device.

    Without `step`: the newest checkpoint that reads completely (a damaged newer one is
    skipped with a warning, and left where it is). With `step`: that one, or a one-line
    CheckpointDamaged naming the step that still loads."""
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.local_devices()[:1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):
        model = build(nnx.Rngs(params=0))
    graphdef, params = nnx.split(model)
    ckpt = Checkpointer(rundir.stage_dir(pathlib.Path(run_dir), stage) / "checkpoints",
                        stage=stage, read_only=True)
    use_ema = ema and train_cfg.ema_decay > 0
    try:
        steps = ckpt.steps()
        if not steps:
            raise ckpt.missing()
        if step is not None and step not in steps:
            raise LdlmError(f"{ckpt.directory} has no {stage} checkpoint of step {step}; "
                            f"it has steps {', '.join(map(str, steps))}")

        def restore(s: int):
            return ckpt.restore_weights(params, s, ema=use_ema)

        # without `step`: the steps are listed again if training deletes one meanwhile
        found, weights, damage = ckpt.restore_newest(
            restore, [step] if step is not None else None, warn=step is None)
        if weights is None and step is not None:
            other, _, _ = ckpt.restore_newest(restore, [s for s in steps if s != step],
                                              warn=False)
            raise CheckpointDamaged(
                f"{damage[0]}; " + (f"step {other} still loads: pass --step {other} "
                                    f"(step={other} from Python)" if other is not None else
                                    f"no other step loads either; retrain with `make {stage}`"),
                step, damage[0].reason)
        if weights is None:
            raise CheckpointDamaged(
                f"no {stage} checkpoint in {ckpt.directory} reads completely ("
                + "; ".join(f"step {d.step}: {d.reason}" for d in damage)
                + f"); retrain with `make {stage}`")
        if damage:
            log.warning("loaded the %s checkpoint of step %d instead", stage, found)
    finally:
        ckpt.close()
    return nnx.merge(graphdef, weights)
