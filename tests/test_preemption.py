"""Runs that survive a cluster, on the tiny preset.

- SIGTERM at random steps (3 in CI; `make test-slow` runs LDLM_FAULT_SIGTERMS, default 10):
  each stop saves the step it stopped at, and the resumed run ends bit-identical to an
  uninterrupted one.
  A second SIGTERM arrives while each stop's checkpoint is written.
- Through the CLI: a SIGTERM while a checkpoint is written ends with exit status 143, one
  line, and that checkpoint complete.
- A full disk (a real tmpfs of a few MB in a mount namespace of the test's own): one line
  naming the directory, its free space and the newest complete step; nothing older deleted;
  the half-written step left as Orbax's temporary directory; the run resumes once there is
  space.
- Two processes, one of which alone sees damage or a signal: tests/test_multiprocess.py.
- Readers while a trainer writes and deletes checkpoints: every load reads a complete one.
"""

import logging
import os
import pathlib
import random
import shutil
import signal
import subprocess
import time

import pytest

from ldlm.checkpoint import QUARANTINE_DIR, Checkpointer
from ldlm.errors import DiskFull, TrainingStopped
from ldlm.inference.textvae import TextVAE
from ldlm.locks import stage_lock
from ldlm.mesh import make_mesh
from ldlm.train import loop
from ldlm.train.vae import train_vae, vae_task
from tests.helpers import (assert_same_end, ldlm_command, link_stages, namespace_prefix,
                           set_args)

pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


def _complete_steps(ckpts: pathlib.Path) -> list[int]:
    return sorted(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())


def _readable(run: pathlib.Path, step: int) -> None:
    """The VAE checkpoint of `step` loads (CheckpointDamaged otherwise) and its record
    names that step."""
    TextVAE.from_run(run, step=step)
    ckpt = Checkpointer(run / "vae" / "checkpoints", read_only=True)
    assert ckpt.read_meta(step)["step"] == step
    ckpt.close()


# --------------------------------------------------------------------------- SIGTERM
class _SignalAtStep:
    """The task's batches; fetching the batch of step `at` sends this process SIGTERM, as a
    scheduler would while that step is prepared. `sent` is set from then on."""

    def __init__(self, batches, start: int, at: int):
        self.batches, self.step, self.at, self.sent = batches, start, at, False

    def __next__(self):
        self.step += 1
        if self.step == self.at:
            os.kill(os.getpid(), signal.SIGTERM)
            self.sent = True
        return next(self.batches)

    def get_state(self):
        return self.batches.get_state()

    def set_state(self, state):
        self.batches.set_state(state)


@pytest.mark.parametrize("signals", [
    3, pytest.param(int(os.environ.get("LDLM_FAULT_SIGTERMS", "10")), marks=pytest.mark.slow)])
def test_sigterm_at_random_steps_saves_that_step_and_resumes_bit_identical(
        tiny_run, uninterrupted_vae, tmp_path, monkeypatch, signals):
    """Each stop: SIGTERM while the batch of a random step is fetched, and a second one while
    the stop's checkpoint is written."""
    src, _ = tiny_run
    cfg, straight_dir, straight = uninterrupted_vae
    run = link_stages(src, tmp_path / "stopped")
    stops = sorted(random.Random(signals).sample(range(1, 60), signals))
    mesh = make_mesh(cfg.mesh)
    start, save = 0, Checkpointer.save

    def save_then_signal_again(ckpt, *args):  # a second SIGTERM while the stop's save runs
        save(ckpt, *args)
        if task.train_batches.sent:
            os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(Checkpointer, "save", save_then_signal_again)
    for at in stops:
        task = vae_task(cfg, run, mesh)
        task.train_batches = _SignalAtStep(task.train_batches, start, at)
        with pytest.raises(TrainingStopped) as stopped:
            loop.train(cfg, run, task, mesh)
        assert (stopped.value.step, stopped.value.signum) == (at, signal.SIGTERM)
        assert stopped.value.exit_status == 143
        assert str(stopped.value) == \
            f"vae: stopped at step {at} on SIGTERM; resume with the same command"
        ckpts = run / "vae" / "checkpoints"
        assert max(_complete_steps(ckpts)) == at, "the step it stopped at was not saved"
        start = at
    monkeypatch.undo()
    # the handlers are gone with the loop: SIGTERM is the default again
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL
    resumed = train_vae(cfg, run)
    assert resumed.resumed_from == stops[-1]  # nothing lost: 0 steps retrained
    assert_same_end(resumed, straight, run, straight_dir)


def test_sigterm_during_a_save_exits_143_with_one_line_and_the_step_saved(
        tiny_run, tmp_path):
    """SIGTERM while Orbax writes step 10 in the background: the stop waits for that save,
    exits with status 143 and one line, and step 10 is complete."""
    src, _ = tiny_run
    run = link_stages(src, tmp_path / "run")
    proc = subprocess.run(
        ldlm_command("vae", "--preset", "tiny", "--run-dir", str(run), *set_args(
            ["vae_train.steps=40", "vae_train.checkpoint_every=10"])),
        env={**os.environ, "LDLM_DEBUG_SIGTERM_IN_SAVE_AT_STEP": "10"},
        capture_output=True, text=True, timeout=300)
    assert proc.returncode == 143, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ldlm:")]
    assert lines == ["ldlm: vae: stopped at step 10 on SIGTERM; resume with the same "
                     "command"], proc.stderr[-2000:]
    ckpts = run / "vae" / "checkpoints"
    assert _complete_steps(ckpts) == [10]
    assert not [p for p in ckpts.iterdir() if not p.name.isdigit()], "a half-written step"
    _readable(run, 10)
    assert not (run / "vae" / "eval.json").exists()  # the stage did not pretend to finish


# --------------------------------------------------------------------------- full disk
def _tree_size(path: pathlib.Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def test_a_full_disk_keeps_the_newest_complete_step_and_says_so(trained_tiny, tmp_path):
    cfg, src, _ = trained_tiny
    run = link_stages(src, tmp_path / "run")
    ckpts, out = run / "vae" / "checkpoints", tmp_path / "after"
    ckpts.mkdir(parents=True)
    # room for two checkpoints (steps 3 and 6 of 12) and half of a third
    size_kb = int(2.5 * _tree_size(src / "vae" / "checkpoints" / "3") / 1024)
    sets = ["vae_train.steps=12", "vae_train.checkpoint_every=3"]
    script = (f'mount -t tmpfs -o size={size_kb}k tmpfs "$1" || exit 99; shift; '
              '"$@"; status=$?; cp -a "$CKPTS/." "$OUT"; exit $status')
    out.mkdir()
    proc = subprocess.run(
        [*namespace_prefix(), "sh", "-c", script, "sh", str(ckpts),
         *ldlm_command("vae", "--preset", "tiny", "--run-dir", str(run), *set_args(sets))],
        env={**os.environ, "CKPTS": str(ckpts), "OUT": str(out)},
        capture_output=True, text=True, timeout=300)
    if proc.returncode == 99:
        pytest.skip(f"no tmpfs in the namespace: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "ERROR" not in proc.stderr, proc.stderr[-3000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("ldlm:")]
    assert len(lines) == 1, proc.stderr[-2000:]
    assert lines[0].startswith(f"ldlm: error: no space left on the device of {ckpts} (")
    assert "free) while writing the vae checkpoint of step 9; the newest complete " \
           "checkpoint, step 6, is intact" in lines[0], lines[0]
    assert lines[0].endswith("run the same command again to resume from step 6")
    # nothing older deleted, the half-written step left as Orbax's temporary directory
    assert _complete_steps(out) == [3, 6]
    assert [p.name for p in out.iterdir() if not p.name.isdigit()] == \
        ["9.orbax-checkpoint-tmp"]
    ckpt = Checkpointer(out, read_only=True)
    assert ckpt.steps() == [6, 3]  # never taken as a checkpoint
    ckpt.close()
    # with space again, the same command resumes from step 6 and finishes
    shutil.rmtree(ckpts)
    shutil.copytree(out, ckpts)
    result = train_vae(cfg.override(sets), run)
    assert result.resumed_from == 6 and int(result.state.step) == 12


def test_a_save_without_space_is_disk_full_in_python_too(trained_tiny, tmp_path,
                                                         monkeypatch):
    """The check that turns Orbax's wrapped ENOSPC into DiskFull, without a file system."""
    cfg, src, _ = trained_tiny
    run = link_stages(src, tmp_path / "run")
    shutil.copytree(src / "vae", run / "vae")
    ckpt = Checkpointer(run / "vae" / "checkpoints")

    def full(*args, **kwargs):
        raise ValueError('RESOURCE_EXHAUSTED: Error writing "params" at "/x/9.orbax-checkpoint'
                         '-tmp/state": Failed to write 10 bytes: No space left on device '
                         "[os_error_code='28']")

    monkeypatch.setattr(ckpt._mgr, "save", full)
    (ckpt.directory / "9.orbax-checkpoint-tmp").mkdir()  # what Orbax leaves
    with pytest.raises(DiskFull, match=r"step 9; the newest complete checkpoint, step 6, is "
                                       r"intact.*resume from step 6"):
        ckpt.save(12, {}, None, {})  # the failure of step 9 surfaces in the next save
    monkeypatch.undo()
    ckpt.close()


# --------------------------------------------------------------------------- readers
def test_readers_during_training_load_only_complete_checkpoints(tiny_run, tmp_path,
                                                                caplog):
    """A trainer saving every step (keeping 2, so it also deletes every step) and a reader
    loading the VAE over and over (the loader `ldlm sample` and `make eval` use): every
    load succeeds without a word of damage; SIGTERM then stops the trainer gracefully."""
    src, _ = tiny_run
    run = link_stages(src, tmp_path / "run")
    trainer = subprocess.Popen(
        ldlm_command("vae", "--preset", "tiny", "--run-dir", str(run),
                     *set_args(["vae_train.steps=100000", "vae_train.checkpoint_every=1"])),
        env={**os.environ, "TQDM_DISABLE": "1"},  # no progress bar to fill the pipe
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    ckpts = run / "vae" / "checkpoints"
    logger = logging.getLogger("ldlm")
    logger.addHandler(caplog.handler)
    try:
        deadline = time.time() + 120
        while not (ckpts.is_dir() and _complete_steps(ckpts)):
            assert time.time() < deadline and trainer.poll() is None, "never trained"
            time.sleep(0.1)
        before = _complete_steps(ckpts)
        for _ in range(12):
            TextVAE.from_run(run)  # raises on a half-written or vanished step
        # the loads overlapped training: it was still running and had saved and deleted
        # steps meanwhile
        assert trainer.poll() is None, "the trainer ended during the loads"
        assert min(_complete_steps(ckpts)) > max(before)
        trainer.send_signal(signal.SIGTERM)
        _, err = trainer.communicate(timeout=120)
    finally:
        logger.removeHandler(caplog.handler)
        if trainer.poll() is None:
            trainer.kill()
            trainer.wait()
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING], \
        [r.getMessage() for r in caplog.records]
    assert not (run / "vae" / QUARANTINE_DIR).exists()
    assert trainer.returncode == 143, err[-2000:]
    with stage_lock(run / "vae"):  # the lock was released
        pass
