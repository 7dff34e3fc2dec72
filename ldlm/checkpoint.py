"""Orbax checkpoints of everything a run needs to resume exactly.

Each checkpoint holds the train state (parameters, optimizer state, EMA weights, step, base
RNG key), the data iterator's state and a small JSON record (step, resolved config). Orbax
writes a step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact; restoring takes the newest complete one.

Restoring goes into abstract targets built from a live state (shape, dtype, sharding), so a
checkpoint saved on one mesh loads onto another.
"""

from __future__ import annotations

import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp

from ldlm.errors import MissingStageError


def abstract_like(tree):
    """ShapeDtypeStructs (with the live shardings) to restore into."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


class Checkpointer:
    """`stage` names the make target that writes these checkpoints (for error messages)."""

    def __init__(self, directory, keep: int = 2, stage: str = "vae"):
        self.directory = pathlib.Path(directory).absolute()
        self.stage = stage
        self._mgr = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def save(self, step: int, state, data_state: dict | None, meta: dict) -> None:
        self._mgr.save(step, args=ocp.args.Composite(
            state=ocp.args.StandardSave(state),
            data=ocp.args.JsonSave(data_state or {}),
            meta=ocp.args.JsonSave(meta)))

    def restore(self, state_like, step: int | None = None) -> tuple[Any, dict, dict]:
        """(state, data iterator state, meta) of `step` (default: the latest)."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingStageError("checkpoint", self.directory, self.stage)
        out = self._mgr.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(state_like)),
            data=ocp.args.JsonRestore(),
            meta=ocp.args.JsonRestore()))
        return out["state"], out["data"], out["meta"]

    def restore_weights(self, params_like, step: int | None = None,
                        ema: bool = False) -> Any:
        """Only the parameters (or, with `ema`, the EMA weights) of a checkpoint, restored into
        the layout of `params_like`: what inference needs, without the optimizer state."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise MissingStageError("checkpoint", self.directory, self.stage)
        name = "ema" if ema else "params"
        target = {name: abstract_like(params_like)}
        out = self._mgr.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
            item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True)))
        return out["state"][name]

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON record of a checkpoint, without loading its arrays."""
        step = self.latest_step() if step is None else step
        return self._mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))[
            "meta"]

    def wait(self) -> None:
        self._mgr.wait_until_finished()

    def close(self) -> None:
        self._mgr.wait_until_finished()
        self._mgr.close()
