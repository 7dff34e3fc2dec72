"""Orbax checkpoints of everything a run needs to resume exactly, and what to do when one is
damaged.

Each checkpoint holds the train state (parameters, optimizer state, EMA weights, step, base
RNG key), the data iterator's state and a small JSON record (step, resolved config). Orbax
writes a step into a temporary directory and renames it when complete, so a run killed
mid-save leaves the previous checkpoint intact.

A step directory can still be damaged afterwards (a full disk, a partial copy, a stray
edit). Restoring tells the two failures apart: a checkpoint whose tree metadata is readable
but lists other arrays or shapes than the model being restored holds *another model*
(`CheckpointMismatch`: a config or code change, no use trying older steps); anything else
that stops a complete read is *damage* (`CheckpointDamaged`), and `restore_newest` goes on to
the next older step. Training moves a damaged step aside (`quarantine`: into
`<stage>/damaged_checkpoints/`, never deleted, so Orbax cannot delete or overwrite it either);
readers only skip it.

A save that fails for lack of space (`DiskFull`) names the directory, its free space and the
newest complete step. Orbax deletes old steps (`max_to_keep`) only after a newer one is
complete, and leaves the half-written one as `<step>.orbax-checkpoint-tmp`, which is never
listed as a checkpoint and is replaced when that step is saved again.

Readers (`read_only`) never delete or create anything, and a step that training deletes
while a reader is loading it is not damage: the reader moves on to the newer steps.

Restoring goes into abstract targets built from a live state (shape, dtype, sharding), so a
checkpoint saved on one mesh loads onto another.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import pathlib
import re
import shutil
import sys
from typing import Any, Callable, TypeVar

import jax
import numpy as np
import orbax.checkpoint as ocp

from ldlm.distributed import all_processes_agree, barrier, is_main_process
from ldlm.errors import CheckpointDamaged, CheckpointMismatch, DiskFull, MissingStageError

log = logging.getLogger("ldlm.checkpoint")
QUARANTINE_DIR = "damaged_checkpoints"  # beside checkpoints/, in the stage directory
T = TypeVar("T")


def abstract_like(tree):
    """ShapeDtypeStructs (with the live shardings) to restore into."""
    return jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def layout(tree) -> dict[str, tuple[tuple[int, ...], str]]:
    """{array name, as Orbax names it: (shape, dtype)} of a tree of arrays or metadata."""
    return {name: (tuple(x.shape), np.dtype(x.dtype).name)
            for name, x in ocp.tree.to_flat_dict(tree, sep=".").items()}


def layout_difference(saved: dict, wanted: dict, limit: int = 3) -> str:
    """A few words on how two layouts differ ('' when they agree)."""
    missing = sorted(set(wanted) - set(saved))
    extra = sorted(set(saved) - set(wanted))
    shapes = sorted(k for k in set(saved) & set(wanted) if saved[k] != wanted[k])
    parts = []
    if missing:
        parts.append(f"{len(missing)} arrays the model has are not in it ({missing[0]}, ...)")
    if extra:
        parts.append(f"{len(extra)} arrays in it are not in the model ({extra[0]}, ...)")
    for k in shapes[:limit]:
        parts.append(f"{k} is {saved[k][0]} {saved[k][1]} there, {wanted[k][0]} "
                     f"{wanted[k][1]} now")
    return "; ".join(parts)


def damage_reason(e: BaseException) -> str:
    """What an exception from reading a checkpoint says about the files, in a few words."""
    text = str(e).splitlines()[0] if str(e) else type(e).__name__
    for code, words in (("OUT_OF_RANGE", "array data truncated"),
                        ("DATA_LOSS", "array data corrupt"),
                        ("NOT_FOUND", "array data missing")):
        if code in text:
            return words
    if "reading array index" in text:
        return "array data unreadable"
    if isinstance(e, FileNotFoundError):
        name = getattr(e, "filename", None)
        if name:
            return f"file missing: {pathlib.Path(name).name}"
        named = re.search(r"named (\S+)\) does not exist at (\S+?)\.?$", text)
        return (f"file missing: {pathlib.Path(named[2]).name}/{named[1]}" if named
                else text[:160])
    if isinstance(e, json.JSONDecodeError):
        return f"JSON garbled ({text})"
    if isinstance(e, UnicodeDecodeError):
        return "JSON garbled (not UTF-8)"
    if isinstance(e, KeyError):
        return f"incomplete ({text.strip(chr(39) + chr(34))})"
    return f"{type(e).__name__}: {text[:120]}"


def _from_failed_read(text: str) -> bool:
    return any(w in text for w in ("TensorStore", "OCDBT", "reading array index"))


_NO_SPACE = ("No space left on device", "os_error_code='28'")


def is_no_space(e: BaseException | None) -> bool:
    """Whether an exception (or one it was raised from) is a write that found no space:
    ENOSPC itself, or TensorStore's RESOURCE_EXHAUSTED that Orbax wraps it in."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if any(w in str(e) for w in _NO_SPACE):
            return True
        e = e.__cause__ or e.__context__
    return False


def _human_bytes(n: int) -> str:
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if n < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024


class _FailedWriteNoise(logging.Filter):
    """Drops Orbax's tracebacks of a save that found no space (reported as one line)."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        if record.exc_info and record.exc_info[1] is not None:
            text += str(record.exc_info[1])
        return not any(w in text for w in _NO_SPACE)


class _FailedReadNoise(logging.Filter):
    """Drops asyncio's 'exception was never retrieved' for reads of a damaged checkpoint."""

    def filter(self, record: logging.LogRecord) -> bool:
        text = record.getMessage()
        return not ("never retrieved" in text and _from_failed_read(text))


def _quiet_failed_io_leftovers() -> None:
    """After one read of a damaged checkpoint fails (or one write finds no space), Orbax's
    other pending reads (writes) fail too, while and after the error is handled: their
    coroutines are collected with their exceptions unretrieved, and TensorStore completes
    some into Orbax's closed event loop. Python reports each with a traceback (the
    unraisable hook, asyncio's logger) around the one-line report. Silence exactly those;
    everything else still reaches the old hook."""
    previous = sys.unraisablehook
    if getattr(previous, "_ldlm_quiet", False):
        return

    def hook(unraisable):
        e = unraisable.exc_value
        closed_loop = isinstance(e, RuntimeError) and str(e) == "Event loop is closed"
        # a failed save's writes, collected at exit
        shutting_down = isinstance(e, ImportError) and "shutting down" in str(e)
        if not (closed_loop or shutting_down or _from_failed_read(str(e)) or is_no_space(e)):
            previous(unraisable)

    hook._ldlm_quiet = True
    sys.unraisablehook = hook
    logging.getLogger("asyncio").addFilter(_FailedReadNoise())
    logging.getLogger("absl").addFilter(_FailedWriteNoise())


class Checkpointer:
    """`stage` names the make target that writes these checkpoints (for error messages);
    `read_only`: a reader's, which never creates, deletes or writes anything."""

    def __init__(self, directory, keep: int = 2, stage: str = "vae", read_only: bool = False):
        self.directory = pathlib.Path(directory).absolute()
        self.stage = stage
        self._saving: int | None = None  # the newest step whose save may still be running
        # a reader's manager creates nothing and, never saving, deletes nothing (Orbax's own
        # read_only mode would do the same, with a warning on every load)
        self._mgr = ocp.CheckpointManager(self.directory, options=ocp.CheckpointManagerOptions(
            max_to_keep=None if read_only else keep, create=not read_only))
        # Reads go through a manager of this process alone: Orbax ends a restore with a
        # barrier of every process, which a process whose read failed (damage that only
        # it sees) would never reach, and the others would wait at it forever. Each
        # process reads only its own shards anyway; `restore_newest` agrees afterwards.
        self._reader = self._mgr if jax.process_count() == 1 else ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(
                max_to_keep=None, create=False,
                multiprocessing_options=ocp.options.MultiprocessingOptions(
                    primary_host=jax.process_index(),
                    active_processes={jax.process_index()},
                    barrier_sync_key_prefix=f"read{jax.process_index()}")))

    def latest_step(self) -> int | None:
        return self._mgr.latest_step()

    def steps(self) -> list[int]:
        """Every complete (renamed) step, newest first."""
        return sorted(self._mgr.all_steps(), reverse=True)

    def step_dir(self, step: int) -> pathlib.Path:
        return self.directory / str(step)

    def save(self, step: int, state, data_state: dict | None, meta: dict) -> None:
        """Starts writing `step` (Orbax finishes it in the background); DiskFull if this
        save, or the one still running before it, finds no space."""
        _quiet_failed_io_leftovers()
        with self._writing(step):
            self._mgr.save(step, args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=ocp.args.JsonSave(data_state or {}),
                meta=ocp.args.JsonSave(meta)))
            self._saving = step

    @contextlib.contextmanager
    def _writing(self, step: int | None):
        """Context in which an Orbax write that finds no space becomes DiskFull."""
        try:
            yield
        except Exception as e:  # noqa: BLE001 - Orbax wraps ENOSPC in several types
            if is_no_space(e):
                raise self.disk_full(step) from None
            raise

    def disk_full(self, step: int | None) -> DiskFull:
        """The one-line report of a save that found no space; `step` is the step being
        saved when the error surfaced, which may be the one after the step that failed."""
        names = [p.name for p in self.directory.iterdir()] if self.directory.is_dir() else []
        complete = sorted((int(n) for n in names if n.isdigit()), reverse=True)
        newest = complete[0] if complete else None
        # the half-written step: the newest of Orbax's temporary directories past `newest`
        half = [int(m[1]) for n in names if (m := re.match(r"(\d+)\.orbax-checkpoint-tmp", n))]
        half = [h for h in half if newest is None or h > newest]
        step = max(half) if half else step
        free = _human_bytes(shutil.disk_usage(self.directory).free)
        which = f"the {self.stage} checkpoint of step {step}" if step is not None else \
            f"a {self.stage} checkpoint"
        kept = (f"the newest complete checkpoint, step {newest}, is intact"
                if newest is not None else "no complete checkpoint was written yet")
        return DiskFull(f"no space left on the device of {self.directory} ({free} free) "
                        f"while writing {which}; {kept}. Free some space and run the same "
                        "command again to resume"
                        + (f" from step {newest}" if newest is not None else ""))

    def _damaged(self, step: int, e: BaseException) -> CheckpointDamaged:
        reason = damage_reason(e)
        return CheckpointDamaged(f"the {self.stage} checkpoint at step {step} in "
                                 f"{self.directory} is damaged ({reason})", step, reason)

    def _read(self, step: int, read: Callable[[], T]) -> T:
        _quiet_failed_io_leftovers()  # before: the leftovers race the error's handling
        try:
            return read()
        except (CheckpointMismatch, CheckpointDamaged):
            raise
        except Exception as e:  # noqa: BLE001 - any failure to read the files is damage
            raise self._damaged(step, e) from None

    def check_layout(self, step: int, target, prefix: str = "") -> None:
        """CheckpointMismatch if the step's tree metadata is readable and its arrays (under
        `prefix`, e.g. 'params') differ from `target`'s; CheckpointDamaged if unreadable."""
        def read():
            handler = ocp.PyTreeCheckpointHandler()
            try:
                return handler.metadata(self.step_dir(step) / "state").tree
            finally:
                handler.close()

        saved = layout(self._read(step, read))
        wanted = layout(target)
        if prefix:
            saved = {k: v for k, v in saved.items() if k.startswith(prefix + ".")}
            wanted = {f"{prefix}.{k}": v for k, v in wanted.items()}
        diff = layout_difference(saved, wanted)
        if diff:
            raise CheckpointMismatch(
                f"the {self.stage} checkpoint at step {step} in {self.directory} holds "
                f"another model than its config.json builds ({diff}): was config.json edited, "
                f"or the model code changed? Use another RUN, or retrain with "
                f"`make {self.stage}`")

    def _step_or_latest(self, step: int | None) -> int:
        step = self.latest_step() if step is None else step
        if step is None:
            raise self.missing()
        return step

    def read_meta(self, step: int | None = None) -> dict:
        """The JSON record of a checkpoint, without loading its arrays."""
        step = self._step_or_latest(step)
        return self._read(step, lambda: self._reader.restore(
            step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])

    def restore(self, state_like, step: int | None = None,
                check_meta: Callable[[dict], None] | None = None) -> tuple[Any, dict, dict]:
        """(state, data iterator state, meta) of `step` (default: the newest);
        `check_meta(meta)` runs first, before any array is read (it raises if the checkpoint
        was trained with other settings)."""
        step = self._step_or_latest(step)
        meta = self.read_meta(step)
        if check_meta is not None:
            check_meta(meta)
        self.check_layout(step, state_like)
        out = self._read(step, lambda: self._reader.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_like(state_like)),
            data=ocp.args.JsonRestore())))
        return out["state"], out["data"], meta

    def restore_weights(self, params_like, step: int | None = None, ema: bool = False) -> Any:
        """Only the parameters (or, with `ema`, the EMA weights) of a checkpoint (default: the
        newest), restored into the layout of `params_like`: what inference needs, without the
        optimizer state."""
        step = self._step_or_latest(step)
        name = "ema" if ema else "params"
        self.check_layout(step, params_like, prefix=name)
        target = {name: abstract_like(params_like)}
        out = self._read(step, lambda: self._reader.restore(step, args=ocp.args.Composite(
            state=ocp.args.PyTreeRestore(
                item=target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
                partial_restore=True))))
        return out["state"][name]

    def restore_newest(self, restore_one: Callable[[int], T], steps: list[int] | None = None,
                       warn: bool = True
                       ) -> tuple[int | None, T | None, list[CheckpointDamaged]]:
        """(step, restore_one(step)) for the newest of `steps` (default: all) that reads
        completely, and the damage met on newer ones, each logged as a warning (`warn`).
        (None, None, damage) when none reads. With several processes, a step counts as read
        only when every process read it. Without `steps`, a step that disappears while it is
        read (training deleted it, keeping its newest ones) is not damage: the steps are
        listed again."""
        damage: list[CheckpointDamaged] = []
        todo = self.steps() if steps is None else list(steps)
        while todo:
            step = todo.pop(0)
            try:
                value, error = restore_one(step), None
            except CheckpointDamaged as e:
                value, error = None, e
            if all_processes_agree(error is None):
                return step, value, damage
            if steps is None and all_processes_agree(not self.step_dir(step).exists()):
                self._mgr.reload()  # deleted by a trainer: newer steps exist now
                self._reader.reload()
                known = {d.step for d in damage}
                todo = [s for s in self.steps() if s not in known]
                continue
            error = error or CheckpointDamaged(
                f"the {self.stage} checkpoint at step {step} in {self.directory} is damaged "
                "(unreadable on another process)", step, "unreadable on another process")
            if warn:
                log.warning("%s; skipping it", error)
            damage.append(error)
        return None, None, damage

    def quarantine(self, step: int) -> pathlib.Path:
        """Moves a damaged step out of Orbax's reach (never deleted): into
        <stage>/damaged_checkpoints/<step>[.k]. Returns the new place."""
        place = self.directory.parent / QUARANTINE_DIR / str(step)
        k = 0
        while place.exists():
            k += 1
            place = place.with_name(f"{step}.{k}")
        if is_main_process():
            place.parent.mkdir(parents=True, exist_ok=True)
            self.step_dir(step).rename(place)
        barrier(f"quarantine {self.stage} step {step}")
        self._mgr.reload()
        self._reader.reload()
        log.warning("moved the damaged %s checkpoint of step %d to %s", self.stage, step, place)
        return place

    def missing(self) -> MissingStageError:
        return MissingStageError(f"a {self.stage} checkpoint", self.directory, self.stage)

    def wait(self) -> None:
        with self._writing(self._saving):
            self._mgr.wait_until_finished()

    def close(self) -> None:
        try:
            self.wait()
        finally:
            self._mgr.close()
            if self._reader is not self._mgr:
                self._reader.close()

