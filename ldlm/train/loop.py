"""One training loop for every stage (VAE, DiT, baseline LM).

A stage describes itself with a `Task` (how to build its model, its loss, its batches); the
loop does the rest: model built under the mesh (weights born sharded), a pure jitted train
step, automatic resume from the newest checkpoint (parameters, optimizer, EMA, step, RNG,
data position), checkpoints every K steps and at the end, metrics to metrics.jsonl and
TensorBoard, a progress bar with loss and tokens/s, a clear stop on a NaN/Inf loss, and a
graceful stop on SIGTERM / SIGINT (the step in flight saved; `ldlm.train.preemption`).

Randomness of step t is `fold_in(base_key, t)`, and the data iterator resumes at exactly the
next batch, so a resumed run computes the same updates as an uninterrupted one; the metrics
of the steps since the last metrics line travel in the checkpoint, so its metrics.jsonl
reads the same too.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import signal
import time
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from ldlm import rundir
from ldlm.checkpoint import QUARANTINE_DIR, Checkpointer
from ldlm.config import Config, TrainConfig
from ldlm.data.batches import real_rows
from ldlm.errors import CheckpointDamaged, ConfigError, LdlmError, TrainingStopped
from ldlm.logs import MetricsWriter, progress
from ldlm.mesh import PARAM_RULES, param_rules
from ldlm.train.preemption import StopSignals
from ldlm.train.state import TrainState, init_state, learning_rate_schedule, make_optimizer

# Fault injection in tests: while the checkpoint of this step is being written, the process
# kills itself with SIGKILL, or sends itself SIGTERM.
_DEBUG_KILL_IN_SAVE_AT_STEP = int(os.environ.get("LDLM_DEBUG_KILL_IN_SAVE_AT_STEP", "0"))
_DEBUG_SIGTERM_IN_SAVE_AT_STEP = int(os.environ.get("LDLM_DEBUG_SIGTERM_IN_SAVE_AT_STEP", "0"))
log = logging.getLogger("ldlm.train")

Batch = dict[str, jax.Array]
# loss_fn(model, batch, rng, step, train, *, counts) -> (scalar loss, dict of scalar
# metrics). `train` is a Python bool (augmentations on). `counts` holds the denominators of
# the whole global batch ("tokens": real tokens, "rows": real rows; see `batch_counts`): a
# loss is a sum over the rows it is given divided by these, so the losses of micro-batches
# add up to the loss of their batch exactly, whatever padding each row carries.
# A task with `frozen` inputs gets them as a keyword too: loss_fn(..., frozen=frozen).
LossFn = Callable[..., tuple[jax.Array, dict]]


class TrainingDiverged(LdlmError):
    """The loss became NaN or Inf."""


@dataclasses.dataclass
class Task:
    stage: str  # run sub-directory, e.g. "vae"
    train_cfg: TrainConfig
    build_model: Callable[[nnx.Rngs], nnx.Module]  # called under the mesh and rules
    loss_fn: LossFn
    train_batches: Any  # GlobalBatches: iterator with get_state / set_state
    eval_batches: Callable[[], Iterator[Batch]] | None = None  # a fresh validation pass
    rules: tuple | None = None  # logical-axis rules; None: the config's mesh.rules
    # Config values a checkpoint must have been trained with to be resumed (model shape,
    # vocabulary, block length): a mismatch is reported instead of failing inside Orbax.
    must_match: dict = dataclasses.field(default_factory=dict)
    # hook(step, graphdef, params) every `hook_every` steps and at the end (e.g. sample
    # dumps); params are the EMA weights when the run keeps them.
    hook: Callable[[int, Any, Any], None] | None = None
    hook_every: int = 0
    # Arrays the loss reads but nothing trains (the DiT's frozen VAE decoder), laid out on
    # the mesh; passed to the jitted steps as an argument, not baked in as a constant.
    frozen: Any = None


@dataclasses.dataclass
class TrainResult:
    graphdef: Any
    state: TrainState
    mesh: Mesh
    resumed_from: int | None
    seconds: float

    def model(self, ema: bool = True) -> nnx.Module:
        """The trained model (EMA weights when the run kept them and `ema`)."""
        params = self.state.ema if (ema and self.state.ema is not None) else self.state.params
        return nnx.merge(self.graphdef, params)


def build_model(task: Task, mesh: Mesh, seed: int, rules: tuple = PARAM_RULES):
    """(graphdef, params) with parameters created directly in their sharded layout."""
    with jax.set_mesh(mesh), nnx.logical_axis_rules(task.rules or rules):
        model = task.build_model(nnx.Rngs(params=seed))
    return nnx.split(model)


def init_training(task: Task, mesh: Mesh, seed: int = 0, rules: tuple = PARAM_RULES):
    """(graphdef, fresh TrainState on `mesh`, jitted train step) of a task: one training
    step outside `train`, for benchmarks and golden tests."""
    graphdef, params = build_model(task, mesh, seed, rules)
    tx = make_optimizer(task.train_cfg)
    state = replicate_unsharded(
        init_state(params, tx, 0, ema=task.train_cfg.ema_decay > 0), mesh)
    return graphdef, state, make_train_step(graphdef, task.loss_fn, tx, task.train_cfg)


def replicate_unsharded(tree, mesh: Mesh):
    """Leaves not yet laid out on `mesh` (step, RNG, optimizer counters) are replicated over
    it, so that restored checkpoints and fresh states have the same shardings."""
    replicated = NamedSharding(mesh, P())

    def place(x):
        s = getattr(x, "sharding", None)
        if isinstance(s, NamedSharding) and s.mesh == mesh:
            return x
        return jax.device_put(x, replicated)

    return jax.tree.map(place, tree)


def batch_counts(batch: Batch) -> dict[str, jax.Array]:
    """The denominators of a global batch's losses: real tokens and real rows (at least 1)."""
    return {"tokens": jnp.maximum(batch["mask"].sum().astype(jnp.float32), 1.0),
            "rows": jnp.maximum(real_rows(batch).sum().astype(jnp.float32), 1.0)}


def _with_frozen(loss_fn: LossFn, frozen) -> LossFn:
    """loss_fn with the task's frozen inputs bound (itself for a task without any)."""
    if frozen is None:
        return loss_fn
    return lambda *args, **kw: loss_fn(*args, **kw, frozen=frozen)


def make_train_step(graphdef, loss_fn: LossFn, tx: optax.GradientTransformation,
                    cfg: TrainConfig):
    """jitted train_step(state, batch, frozen=None) -> (state, metrics)."""
    schedule = learning_rate_schedule(cfg)

    def train_step(state: TrainState, batch: Batch, frozen=None) -> tuple[TrainState, dict]:
        rng = jax.random.fold_in(state.rng, state.step)
        loss_of = _with_frozen(loss_fn, frozen)
        counts = batch_counts(batch)

        def objective(params):
            return loss_of(nnx.merge(graphdef, params), batch, rng, state.step, True,
                           counts=counts)

        if cfg.grad_accum == 1:
            (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        else:
            loss, metrics, grads = _accumulated_grads(loss_of, graphdef, state, batch, rng,
                                                      cfg.grad_accum, counts)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        params = optax.apply_updates(state.params, updates)
        ema = state.ema
        if ema is not None:
            # warm-up: early on the average follows the weights closely, so that a short
            # run's EMA is not dominated by its first, poor steps
            d = jnp.minimum(cfg.ema_decay, (1.0 + state.step) / (10.0 + state.step))
            ema = jax.tree.map(lambda e, p: d * e + (1 - d) * p, ema, params)
        metrics = {**metrics, "loss": loss, "grad_norm": optax.tree.norm(grads),
                   "lr": schedule(state.step), "tokens": counts["tokens"]}
        return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                             ema=ema), metrics

    return jax.jit(train_step, donate_argnums=0)


def _accumulated_grads(loss_fn: LossFn, graphdef, state: TrainState, batch: Batch, rng,
                       k: int, counts: dict):
    """Loss, metrics and gradients of `batch` as the sums over k equal micro-batches,
    computed one after the other (memory of one micro-batch). Each micro-batch's loss is
    normalised by the whole batch's `counts`, so the sums are the batch's loss and gradient
    exactly; each micro-batch gets its own RNG."""
    micro = jax.tree.map(lambda x: x.reshape((k, x.shape[0] // k) + x.shape[1:]), batch)

    def one(i, mb):
        def objective(params):
            return loss_fn(nnx.merge(graphdef, params), mb, jax.random.fold_in(rng, i),
                           state.step, True, counts=counts)

        (loss, metrics), grads = jax.value_and_grad(objective, has_aux=True)(state.params)
        return loss, metrics, grads

    def add(total, inputs):
        return jax.tree.map(jnp.add, total, one(*inputs)), None

    first = one(0, jax.tree.map(lambda x: x[0], micro))
    (loss, metrics, grads), _ = jax.lax.scan(
        add, first, (jnp.arange(1, k), jax.tree.map(lambda x: x[1:], micro)))
    return loss, metrics, grads


def make_eval_step(graphdef, loss_fn: LossFn):
    def eval_step(params, batch: Batch, rng, frozen=None):
        counts = batch_counts(batch)
        loss, metrics = _with_frozen(loss_fn, frozen)(nnx.merge(graphdef, params), batch, rng,
                                                      jnp.int32(0), False, counts=counts)
        return {**metrics, "loss": loss, "tokens": counts["tokens"]}

    return jax.jit(eval_step)


def train(cfg: Config, run_dir, task: Task, mesh: Mesh) -> TrainResult:
    """Trains `task` to `task.train_cfg.steps`, resuming from the newest checkpoint that reads
    completely; writes the stage's config.json once the checkpoints are known to fit it.
    The caller holds the stage's lock (`ldlm.locks.stage_lock`)."""
    t0 = time.time()
    tcfg = task.train_cfg
    out = rundir.stage_dir(run_dir, task.stage)
    graphdef, params = build_model(task, mesh, cfg.seed, param_rules(cfg.mesh.rules))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    tx = make_optimizer(tcfg)
    state = replicate_unsharded(init_state(params, tx, cfg.seed, ema=tcfg.ema_decay > 0),
                                mesh)
    ckpt = Checkpointer(out / "checkpoints", keep=tcfg.keep_checkpoints, stage=task.stage)
    try:
        state, resumed_from, resumed_meta = resume(ckpt, task, state)
    except BaseException:
        ckpt.close()
        raise
    rundir.start_stage(cfg, run_dir, task.stage)  # config.json: only once resumable
    start = int(state.step)
    log.info("%s: %.2fM parameters, steps %d -> %d, batch %d, mesh %s", task.stage,
             n_params / 1e6, start, tcfg.steps, cfg.data.batch_size, dict(mesh.shape))
    train_step = make_train_step(graphdef, task.loss_fn, tx, tcfg)
    eval_step = make_eval_step(graphdef, task.loss_fn)

    def save(step: int):
        # the metrics of the steps since the last metrics line go along, so that a run
        # stopped between two lines writes the same lines as one never stopped
        ckpt.save(step, state, task.train_batches.get_state(),
                  {"step": step, "config": cfg.to_dict(), "must_match": task.must_match,
                   "metrics_window": window})

    def stop_at(step: int, saved: bool):
        """A signal asked to stop: the step just trained is saved (if not yet), the save
        is waited for, and TrainingStopped says so."""
        nonlocal pending
        if pending is not None:
            consume(*pending)
            pending = None
        if not saved:
            save(step)
        ckpt.wait()  # the handlers are still installed: more signals change nothing
        raise TrainingStopped(task.stage, step, stops.signum)

    writer = MetricsWriter(out, resumed_at=start)
    window: list[dict] = list(resumed_meta.get("metrics_window", []))
    pending = None  # (step, device metrics): read after the next step is dispatched
    bar = progress(total=tcfg.steps, initial=start, desc=task.stage)
    t_window = time.time()

    def consume(step: int, device_metrics: dict):
        nonlocal t_window
        m = {k: float(v) for k, v in jax.device_get(device_metrics).items()}
        if not math.isfinite(m["loss"]):
            last = ckpt.latest_step()
            raise TrainingDiverged(
                f"{task.stage}: the loss became {m['loss']} at step {step}; stopping. "
                f"The last good checkpoint is at step {last}. Lower {task.stage}_train.lr "
                "or check the input data." if last is not None else
                f"{task.stage}: the loss became {m['loss']} at step {step}; stopping before "
                f"any checkpoint. Lower {task.stage}_train.lr or check the input data.")
        window.append(m)
        if step % tcfg.log_every == 0 or step == tcfg.steps:
            dt = time.time() - t_window
            avg = {k: sum(w[k] for w in window) / len(window) for k in window[0]}
            avg["tokens_per_s"] = sum(w.get("tokens", 0.0) for w in window) / max(dt, 1e-9)
            avg.pop("tokens", None)
            writer.write(step, avg)
            bar.set_postfix(loss=f"{avg['loss']:.3f}", tok_s=f"{avg['tokens_per_s']:.0f}")
            window.clear()
            t_window = time.time()

    stops = StopSignals()
    try:
        with stops:  # SIGTERM / SIGINT: the step in flight is finished and saved
            for step in range(start + 1, tcfg.steps + 1):
                batch = next(task.train_batches)
                with jax.set_mesh(mesh):  # activation constraints refer to this mesh
                    state, metrics = train_step(state, batch, task.frozen)
                if pending is not None:
                    consume(*pending)
                pending = (step, metrics)
                bar.update(1)
                periodic = step % tcfg.checkpoint_every == 0 or step == tcfg.steps
                if periodic:
                    consume(*pending)
                    pending = None
                    save(step)
                    if step == _DEBUG_KILL_IN_SAVE_AT_STEP:  # Orbax is still writing it
                        os.kill(os.getpid(), signal.SIGKILL)
                    if step == _DEBUG_SIGTERM_IN_SAVE_AT_STEP:
                        os.kill(os.getpid(), signal.SIGTERM)
                if stops.requested(step):
                    stop_at(step, saved=periodic)
                if tcfg.eval_every and step % tcfg.eval_every == 0 and task.eval_batches:
                    writer.write(step, evaluate(eval_step, state, task, cfg.seed), "validation")
                if task.hook and task.hook_every and step % task.hook_every == 0 \
                        and step != tcfg.steps:
                    task.hook(step, graphdef, _weights(state))
        if pending is not None:
            consume(*pending)
        if task.hook:
            task.hook(int(state.step), graphdef, _weights(state))
        if task.eval_batches:
            final = evaluate(eval_step, state, task, cfg.seed)
            if not (tcfg.eval_every and int(state.step) % tcfg.eval_every == 0):
                writer.write(int(state.step), final, "validation")  # not written just above
            log.info("%s validation: %s", task.stage,
                     ", ".join(f"{k} {v:.4g}" for k, v in final.items()))
    finally:
        bar.close()
        writer.close()
        ckpt.close()
    return TrainResult(graphdef, state, mesh, resumed_from, time.time() - t0)


def _weights(state: TrainState):
    return state.ema if state.ema is not None else state.params


def resume(ckpt: Checkpointer, task: Task, state: TrainState
           ) -> tuple[TrainState, int | None, dict]:
    """The state (and data position) of the newest checkpoint that reads completely, its
    step (None: no checkpoint, start afresh) and its JSON record ({} when none). Damaged
    newer steps are moved aside with a warning, never deleted or overwritten; if every
    checkpoint is damaged, that is an error (rerunning then starts from step 0)."""
    step, restored, damage = ckpt.restore_newest(lambda s: ckpt.restore(
        state, s, check_meta=lambda meta: check_resumable(meta, task, ckpt.directory)))
    for d in damage:
        ckpt.quarantine(d.step)
    if restored is None:
        if damage:
            raise CheckpointDamaged(
                f"{task.stage}: no checkpoint in {ckpt.directory} reads completely ("
                + "; ".join(f"step {d.step}: {d.reason}" for d in damage)
                + f"); they were moved to {ckpt.directory.parent / QUARANTINE_DIR}. Run again "
                "to train from step 0")
        return state, None, {}
    state, data_state, meta = restored
    task.train_batches.set_state(data_state)
    log.info("resumed from the checkpoint at step %d%s", step, "".join(
        f" (step {d.step} was damaged: {d.reason})" for d in damage))
    return state, step, meta


def check_resumable(meta: dict, task: Task, where) -> None:
    saved, now = meta.get("must_match", {}), task.must_match
    diff = sorted(k for k in set(saved) | set(now) if saved.get(k) != now.get(k))
    if diff:
        details = ", ".join(f"{k}: {saved.get(k)!r} there, {now.get(k)!r} now"
                            for k in diff)
        raise ConfigError(f"the checkpoints in {where} were trained with another "
                          f"configuration ({details}); use another RUN, or delete them to "
                          "start over")


def task_mesh(batch) -> Mesh:
    """The mesh a global batch lives on."""
    return jax.tree.leaves(batch)[0].sharding.mesh


def evaluate(eval_step, state: TrainState, task: Task, seed: int) -> dict[str, float]:
    """Mean of the loss metrics over `eval_batches` validation batches (EMA weights if kept),
    weighted by real tokens."""
    params = _weights(state)
    totals: dict[str, float] = {}
    weight = 0.0
    rng = jax.random.PRNGKey(seed + 1)
    for i, batch in zip(range(task.train_cfg.eval_batches), task.eval_batches()):
        with jax.set_mesh(task_mesh(batch)):
            m = jax.device_get(eval_step(params, batch, jax.random.fold_in(rng, i),
                                         task.frozen))
        w = float(m.get("tokens", 1.0))
        for k, v in m.items():
            if k != "tokens":
                totals[k] = totals.get(k, 0.0) + float(v) * w
        weight += w
    return {k: v / max(weight, 1e-9) for k, v in totals.items()}
