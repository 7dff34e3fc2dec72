"""Helpers shared by test modules."""

import subprocess
import sys

import jax
import numpy as np
import optax
import pytest
from flax import nnx

# the fault tests' run of the tiny VAE: 60 steps, a checkpoint and a metrics line every 5
FAULT_SETS = ("vae_train.steps=60", "vae_train.checkpoint_every=5", "vae_train.log_every=5")


def assert_trees_close(actual, expected, **tolerances) -> None:
    """Two pytrees have the same structure (paths) and leaves equal within tolerance;
    a missing or extra leaf fails, unlike a zip over leaves."""
    a = dict(jax.tree_util.tree_flatten_with_path(actual)[0])
    b = dict(jax.tree_util.tree_flatten_with_path(expected)[0])
    assert set(map(jax.tree_util.keystr, a)) == set(map(jax.tree_util.keystr, b)), \
        "the trees differ in structure"
    assert jax.tree.structure(actual) == jax.tree.structure(expected)
    for path, leaf in a.items():
        np.testing.assert_allclose(np.asarray(leaf), np.asarray(b[path]),
                                   err_msg=jax.tree_util.keystr(path), **tolerances)


def link_stages(src_run, dst_run, stages=("data", "tokenizer")):
    """A new run directory sharing some finished stages of `src_run` (symlinks)."""
    dst_run.mkdir(parents=True, exist_ok=True)
    for stage in stages:
        (dst_run / stage).symlink_to(src_run / stage)
    return dst_run


def randomize(model, seed=1):
    """Non-zero values in every parameter (the zero-initialised ones included)."""
    graphdef, state = nnx.split(model)
    leaves, tree = jax.tree.flatten(state)
    keys = jax.random.split(jax.random.PRNGKey(seed), len(leaves))
    leaves = [x + 0.1 * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]
    return nnx.merge(graphdef, jax.tree.unflatten(tree, leaves))


def fit(model, loss_fn, steps: int, lr: float):
    """Adam on `loss_fn(model, rng, i) -> (loss, metrics)` for `steps` steps (each step's
    randomness from PRNGKey(i)); returns the trained model."""
    graphdef, params = nnx.split(model)
    tx = optax.adam(lr)
    opt = tx.init(params)

    @jax.jit
    def step(params, opt, i):
        def f(p):
            return loss_fn(nnx.merge(graphdef, p), jax.random.PRNGKey(i), i)
        (_, _), g = jax.value_and_grad(f, has_aux=True)(params)
        u, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, u), opt

    for i in range(steps):
        params, opt = step(params, opt, i)
    return nnx.merge(graphdef, params)


_COMPILES = [0]
jax.monitoring.register_event_duration_secs_listener(
    lambda name, *_, **__: _COMPILES.__setitem__(0, _COMPILES[0] + (
        name == "/jax/core/compile/backend_compile_duration")))
# a program the tests' persistent compilation cache (conftest.py) already holds is loaded,
# not compiled: it counts all the same
jax.monitoring.register_event_listener(
    lambda name, **__: _COMPILES.__setitem__(0, _COMPILES[0] + (
        name == "/jax/compilation_cache/cache_hits")))


def compiles() -> int:
    """Executables XLA built in this process so far, compiled or loaded from the persistent
    compilation cache (JAX's public monitoring events)."""
    return _COMPILES[0]


def continuation_scores(wrote, blocks, pairs):
    """(own, other): how much of each continuation `wrote[k]` of block pairs[k] reproduces
    the document's next block (difflib ratio, 1: all of it in order), and the best it
    reproduces any other pair's next block."""
    import difflib

    real = blocks["mask"]

    def similarity(ids, j):
        return difflib.SequenceMatcher(None, ids, blocks["tokens"][j][real[j]].tolist()).ratio()

    own = np.array([similarity(ids, i + 1) for i, ids in zip(pairs, wrote)])
    other = np.array([max(similarity(ids, j + 1) for j in pairs if j != i)
                      for i, ids in zip(pairs, wrote)])
    return own, other


def ldlm_command(*args) -> list[str]:
    """`python -m ldlm <args>` with this interpreter."""
    return [sys.executable, "-m", "ldlm", *args]


def set_args(sets) -> list[str]:
    """--set k=v for each override."""
    return [a for s in sets for a in ("--set", s)]


def assert_same_end(resumed, straight, resumed_dir, straight_dir) -> None:
    """A resumed run ended exactly where the uninterrupted one did: step, parameters,
    optimizer, EMA weights, and one metrics line per step as if never interrupted."""
    assert int(resumed.state.step) == int(straight.state.step) == 60
    assert_trees_close(resumed.state.params, straight.state.params, rtol=0, atol=0)
    assert_trees_close(resumed.state.opt_state, straight.state.opt_state, rtol=0, atol=0)
    assert_trees_close(resumed.state.ema, straight.state.ema, rtol=0, atol=0)
    assert _history(resumed_dir) == _history(straight_dir)


def _history(run_dir):
    from ldlm.logs import read_metrics

    return [(r["step"], r["split"], r["loss"]) for r in read_metrics(run_dir / "vae")]


def truncate_arrays(step_dir) -> None:
    """Damages an Orbax step: every array data file cut to half its length."""
    for f in (step_dir / "state").rglob("*"):
        if f.is_file() and f.parent.name == "d":
            f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def namespace_prefix() -> list[str]:
    """A command prefix that runs the command in a mount namespace of its own (as root
    inside it: it may mount a tmpfs or bind a directory that only it sees), or pytest.skip
    with the reason."""
    probe = subprocess.run(["unshare", "-rm", "true"], capture_output=True, text=True)
    if probe.returncode != 0:
        pytest.skip(f"no mount namespace for the test (unshare -rm: "
                    f"{probe.stderr.strip() or probe.returncode})")
    return ["unshare", "-rm"]
