"""Fault injection on the tiny preset: runs that survive damage.

- SIGKILL at random moments (the first while a checkpoint is being written), N times, then
  the run finishes with exactly the parameters of an uninterrupted one (CI: the kill during
  a save; `make test-slow` runs LDLM_FAULT_KILLS, default 10).
- The newest checkpoint truncated, deleted or garbled: training resumes from the older one
  and moves the damaged one aside; inference loads the older one with a warning, or names the
  `--step` that loads; another architecture is still reported as such.
- Two trainers on one run: the second stops with one line naming the first; a dead
  trainer's lock is taken over.
- A NaN in a batch: the stop names the step, and the last good checkpoint survives.
- Each stage with its input missing or damaged: one line, exit status 2, no traceback.
"""

import hashlib
import json
import logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ldlm.checkpoint import QUARANTINE_DIR, Checkpointer
from ldlm.cli.main import main
from ldlm.errors import CheckpointDamaged, CheckpointMismatch, StageLocked
from ldlm.inference.textvae import TextVAE
from ldlm.locks import LOCK_FILE, read_holder, stage_lock
from ldlm.mesh import make_mesh
from ldlm.train import loop
from ldlm.train.dit import dit_task
from ldlm.train.vae import train_vae
from tests.helpers import (FAULT_SETS, assert_same_end, assert_trees_close, ldlm_command,
                           link_stages, set_args, truncate_arrays)

CKPT = pathlib.Path("vae") / "checkpoints"
# Under pytest, Orbax's leftover failed reads reach pytest's unraisable hook (which replaces
# ours during a test) as warnings; test_sample_from_a_damaged_step_... checks that a real
# process prints none.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@pytest.fixture
def warnings_of_ldlm(caplog):
    """Records of the `ldlm` loggers (which do not propagate to the root logger)."""
    logger = logging.getLogger("ldlm")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)


def _files(directory) -> dict[str, str]:
    """{relative path: sha256} of every file under a directory."""
    root = pathlib.Path(directory)
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


# --------------------------------------------------------------------------- kills
def _last_step(metrics: pathlib.Path):
    lines = metrics.read_text().splitlines() if metrics.is_file() else []
    return json.loads(lines[-1])["step"] if lines else None


def _complete_steps(ckpts: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit()) \
        if ckpts.is_dir() else []


def _kill_at_random_moments(cmd, kills: int, seed: int, stage_dir: pathlib.Path):
    """Runs `cmd` again and again, each time SIGKILLed at a random moment of its training
    (the first kill: while Orbax writes a checkpoint; the others a random 0-1 s after the run
    wrote its first checkpoint, so each makes progress), until `kills` kills or it finishes.
    Returns a line per run: how far it got."""
    rng = random.Random(seed)
    metrics, ckpts = stage_dir / "metrics.jsonl", stage_dir / "checkpoints"
    log = []
    for i in range(kills):
        env = dict(os.environ)
        if i == 0:
            env["LDLM_DEBUG_KILL_IN_SAVE_AT_STEP"] = "20"
        before = _complete_steps(ckpts)
        proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL)
        if i > 0:
            deadline = time.time() + 120
            while proc.poll() is None and _complete_steps(ckpts) == before:
                assert time.time() < deadline, "the run never trained"
                time.sleep(0.02)
            time.sleep(rng.uniform(0.0, 1.0))
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
        rc = proc.wait(timeout=180)
        done = _complete_steps(ckpts)
        log.append(f"run {i}: rc {rc}, checkpoints {done}, "
                   f"metrics up to step {_last_step(metrics)}")
        assert rc in (0, -signal.SIGKILL), log
        if rc == 0:
            break
    return log


@pytest.mark.parametrize("kills", [
    1, pytest.param(int(os.environ.get("LDLM_FAULT_KILLS", "10")), marks=pytest.mark.slow)])
def test_sigkills_at_random_moments_end_with_the_uninterrupted_parameters(
        tiny_run, uninterrupted_vae, tmp_path, kills):
    src, _ = tiny_run
    cfg, straight_dir, straight = uninterrupted_vae
    killed = link_stages(src, tmp_path / "killed")
    cmd = ldlm_command("vae", "--preset", "tiny", "--run-dir", str(killed),
                       *set_args(FAULT_SETS))
    log = _kill_at_random_moments(cmd, kills, seed=kills, stage_dir=killed / "vae")
    print("\n".join(log))
    assert log[0].startswith("run 0: rc -9"), "the first run was not killed in its save"
    resumed = train_vae(cfg, killed)  # finishes the run (or finds it finished)
    assert_same_end(resumed, straight, killed, straight_dir)


# --------------------------------------------------------------------------- damage
def _garble(relative):
    def damage(step_dir):
        path = step_dir / relative
        data = bytearray(path.read_bytes())
        middle = len(data) // 2
        data[middle:middle + 8] = b"\x00garble\xff"
        path.write_bytes(bytes(data))
    return damage


def _delete(relative):
    def damage(step_dir):
        path = step_dir / relative
        shutil.rmtree(path) if path.is_dir() else path.unlink()
    return damage


DAMAGE = {  # kind: (damage(step directory), words of the reason)
    "truncated array files": (truncate_arrays, "array data"),
    "metadata file deleted": (_delete("state/_METADATA"), "file missing: state/_METADATA"),
    "array index garbled": (_garble("state/manifest.ocdbt"), "array data corrupt"),
    "state deleted": (_delete("state"), "file missing: state/_METADATA"),
    # the JSON record (step, config) only training reads; inference needs just the arrays
    "record garbled": (_garble("meta/metadata"), "JSON garbled"),
}
ARRAY_DAMAGE = [kind for kind in DAMAGE if kind != "record garbled"]


def _damaged_copy(trained_tiny, dst: pathlib.Path, damage, steps=(6,)):
    """A copy of the tiny VAE run (checkpoints at steps 3 and 6) with `damage` applied to
    the checkpoints of `steps`; returns (cfg, run directory, hashes of the damaged steps)."""
    cfg, src, _ = trained_tiny
    run = link_stages(src, dst)
    shutil.copytree(src / "vae", run / "vae")
    hashes = {}
    for step in steps:
        damage(run / CKPT / str(step))
        hashes[step] = _files(run / CKPT / str(step))
    return cfg, run, hashes


@pytest.mark.parametrize("kind", ARRAY_DAMAGE)
def test_inference_skips_a_damaged_newest_checkpoint_with_a_warning(
        trained_tiny, tmp_path, kind, warnings_of_ldlm):
    damage, reason = DAMAGE[kind]
    _, run, hashes = _damaged_copy(trained_tiny, tmp_path / "run", damage)
    vae = TextVAE.from_run(run)
    older = TextVAE.from_run(run, step=3)
    assert_trees_close(nnx.state(vae.model), nnx.state(older.model), rtol=0, atol=0)
    warned = " ".join(r.getMessage() for r in warnings_of_ldlm.records
                      if r.levelno == logging.WARNING)
    assert "step 6" in warned and reason in warned and "step 3 instead" in warned
    with pytest.raises(CheckpointDamaged, match=f"step 6 .*damaged .*{reason}.*--step 3"):
        TextVAE.from_run(run, step=6)
    assert _files(run / CKPT / "6") == hashes[6], "a reader changed a damaged checkpoint"


# the deleted metadata only under make test-slow: the loaders' test above takes it in CI
@pytest.mark.parametrize("kind", ["truncated array files", "record garbled",
                                  pytest.param("metadata file deleted", marks=pytest.mark.slow)])
def test_training_resumes_from_the_newest_readable_checkpoint(
        trained_tiny, tmp_path, kind, warnings_of_ldlm):
    damage, reason = DAMAGE[kind]
    cfg, run, hashes = _damaged_copy(trained_tiny, tmp_path / "run", damage)
    result = train_vae(cfg.override(["vae_train.steps=9"]), run)
    assert result.resumed_from == 3 and int(result.state.step) == 9
    warned = " ".join(r.getMessage() for r in warnings_of_ldlm.records)
    assert "step 6" in warned and reason in warned
    # moved aside intact, never deleted or overwritten; training wrote a new step 6
    assert _files(run / "vae" / QUARANTINE_DIR / "6") == hashes[6]
    ckpt = Checkpointer(run / CKPT)
    assert ckpt.steps() == [9, 6]
    ckpt.close()


def test_sample_from_a_damaged_step_is_one_line_without_tracebacks(tiny_dit, tmp_path):
    """In a fresh process: Orbax's leftover failed reads must not print tracebacks either."""
    _, src, _ = tiny_dit
    run = link_stages(src, tmp_path / "run", ("data", "tokenizer", "vae", "latents"))
    shutil.copytree(src / "dit", run / "dit")
    truncate_arrays(run / "dit" / "checkpoints" / "40")
    proc = subprocess.run(
        ldlm_command("sample", "--run-dir", str(run), "--step", "40", "-n", "1"),
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr and "never retrieved" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ldlm: error:")]
    assert len(lines) == 1 and "step 40" in lines[0] and "--step 20" in lines[0], proc.stderr


def test_every_checkpoint_damaged_is_one_clear_error(trained_tiny, tmp_path):
    cfg, run, hashes = _damaged_copy(trained_tiny, tmp_path / "run", truncate_arrays,
                                     steps=(3, 6))
    with pytest.raises(CheckpointDamaged, match="no vae checkpoint .* reads completely"):
        TextVAE.from_run(run)
    with pytest.raises(CheckpointDamaged, match="no checkpoint .* reads completely .*step 6"):
        train_vae(cfg.override(["vae_train.steps=9"]), run)
    for step in (3, 6):
        assert _files(run / "vae" / QUARANTINE_DIR / str(step)) == hashes[step]


def test_another_architecture_is_not_called_damage(trained_tiny, tmp_path):
    cfg, src, _ = trained_tiny
    run = link_stages(src, tmp_path / "run")
    shutil.copytree(src / "vae", run / "vae")
    edited = cfg.override([f"vae.latent_dim={cfg.vae.latent_dim * 2}"])
    (run / "vae" / "config.json").write_text(edited.to_json())
    with pytest.raises(CheckpointMismatch, match="another model than its config.json builds"):
        TextVAE.from_run(run)


# --------------------------------------------------------------------------- two trainers
def test_a_second_trainer_on_the_same_run_stops_with_one_line(tiny_run, tmp_path, capsys):
    src, _ = tiny_run
    run = link_stages(src, tmp_path / "run")
    lock = run / "vae" / LOCK_FILE
    first = subprocess.Popen(ldlm_command("vae", "--preset", "tiny", "--run-dir", str(run),
                                          "--set", "vae_train.steps=100000"),
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.time() + 120
        config = run / "vae" / "config.json"  # written once the first has resumed
        while read_holder(lock).get("pid") != first.pid or not config.is_file():
            assert time.time() < deadline and first.poll() is None, "the first never started"
            time.sleep(0.1)
        config_before = config.read_bytes()
        with pytest.raises(SystemExit) as exit_:
            main(["vae", "--preset", "tiny", "--run-dir", str(run),
                  "--set", "vae.latent_dim=32"])
        assert exit_.value.code == 2
        err = capsys.readouterr().err
        lines = [line for line in err.splitlines() if line.startswith("ldlm: error:")]
        assert "Traceback" not in err and len(lines) == 1
        assert lines[0].startswith("ldlm: error: vae in ")
        assert f"being trained by pid {first.pid} on " in lines[0]
        assert config.read_bytes() == config_before
    finally:
        first.kill()
        first.wait(timeout=30)
    # the killed trainer left its record; the kernel dropped its flock: stale, taken over
    assert read_holder(lock).get("pid") == first.pid
    with stage_lock(run / "vae"):
        assert read_holder(lock).get("pid") == os.getpid()
    assert read_holder(lock) == {}


def test_a_lock_record_of_another_host_is_reported(tmp_path):
    stage = tmp_path / "vae"
    stage.mkdir()
    (stage / LOCK_FILE).write_text('{"pid": 1, "host": "elsewhere", "started": 0, '
                                   '"command": "ldlm vae"}')
    with pytest.raises(StageLocked, match="pid 1 on elsewhere .*another host.*delete"):
        with stage_lock(stage):
            pass


def test_the_lock_is_reentrant_within_a_process(tmp_path):
    with stage_lock(tmp_path / "dit"):
        with stage_lock(tmp_path / "dit"):
            pass
        assert read_holder(tmp_path / "dit" / LOCK_FILE)["pid"] == os.getpid()
    assert read_holder(tmp_path / "dit" / LOCK_FILE) == {}


# --------------------------------------------------------------------------- NaN
class _Poisoned:
    """The task's batches, with NaN latents in the batch of step `at`."""

    def __init__(self, batches, at: int):
        self.batches, self.at, self.step = batches, at, 0

    def __next__(self):
        batch = next(self.batches)
        self.step += 1
        if self.step == self.at:
            batch = {**batch, "z": batch["z"] * jnp.nan}
        return batch

    def get_state(self):
        return self.batches.get_state()

    def set_state(self, state):
        self.batches.set_state(state)


def test_a_nan_batch_stops_naming_the_step_and_the_last_good_checkpoint(tiny_dit, tmp_path):
    cfg, src, _ = tiny_dit
    run = link_stages(src, tmp_path / "nan", ("data", "tokenizer", "vae", "latents"))
    cfg = cfg.override(["dit_train.steps=12", "dit_train.checkpoint_every=4"])
    mesh = make_mesh(cfg.mesh)
    task = dit_task(cfg, run, mesh)
    task.train_batches = _Poisoned(task.train_batches, at=7)
    with pytest.raises(loop.TrainingDiverged, match="at step 7.*checkpoint is at step 4"):
        loop.train(cfg, run, task, mesh)
    ckpt = Checkpointer(run / "dit" / "checkpoints", stage="dit")
    assert ckpt.steps() == [4]
    weights = ckpt.restore_weights(_fresh_params(task, mesh), 4)
    ckpt.close()
    assert all(bool(np.isfinite(np.asarray(x)).all()) for x in jax.tree.leaves(weights))


def _fresh_params(task, mesh):
    _, params = loop.build_model(task, mesh, 0)
    return params


# --------------------------------------------------------------------------- inputs
def _set_key(path, section, key, value):
    d = json.loads(path.read_text())
    (d[section] if section else d)[key] = value
    path.write_text(json.dumps(d))


def _truncate(path):
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


INPUTS = {  # case: (stages copied from the tiny DiT run, damage(run), command, words); the
    # other stages are linked, except the one the command writes
    "latent cache truncated": (
        ("latents",), lambda r: _truncate(r / "latents" / "train.array_record"),
        ["dit"], "latents/train.array_record is damaged"),
    "latent cache record garbled": (
        ("latents",), lambda r: (r / "latents" / "meta.json").write_text("{oops"),
        ["dit"], "latents/meta.json is damaged"),
    "token blocks truncated": (
        ("tokenizer",), lambda r: _truncate(r / "tokenizer" / "blocks" / "train.array_record"),
        ["vae", "--set", "vae_train.steps=1"], "blocks/train.array_record is damaged"),
    "tokenizer model deleted": (
        ("tokenizer",), lambda r: (r / "tokenizer" / "spm.model").unlink(),
        ["latents"], "tokenizer model not found"),
    "config.json with an unknown key": (
        ("dit",), lambda r: _set_key(r / "dit" / "config.json", "dit", "wdth", 3),
        ["sample"], "dit/config.json: unknown config key 'dit.wdth'"),
    "config.json garbled": (
        ("vae",), lambda r: (r / "vae" / "config.json").write_text('{"vae": '),
        ["latents"], "vae/config.json is damaged"),
}


@pytest.mark.parametrize("case", list(INPUTS))
def test_a_stage_with_damaged_input_stops_with_one_line(tiny_dit, tmp_path, capsys, case):
    copied, damage, command, words = INPUTS[case]
    _, src, _ = tiny_dit
    run = tmp_path / "run"
    run.mkdir()
    for stage in ("data", "tokenizer", "vae", "latents", "dit"):
        if stage == command[0]:
            continue
        if stage in copied:
            shutil.copytree(src / stage, run / stage, symlinks=True)
        else:
            (run / stage).symlink_to((src / stage).resolve())
    damage(run)
    args = [command[0], "--run-dir", str(run), *command[1:]]
    if command[0] != "sample":
        args += ["--preset", "tiny"]
    with pytest.raises(SystemExit) as exit_:
        main(args)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.startswith("ldlm: error:")]
    assert len(lines) == 1 and words in lines[0], err[-2000:]
