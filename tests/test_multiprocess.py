"""Two processes joined by jax.distributed on 127.0.0.1: damage and a signal that only one
of them sees, the latent cache written once, and training that ends with the parameters of
one process over the same batches."""

import os
import shutil
import subprocess
import sys

import jax
from flax import nnx
import numpy as np
import pytest

from ldlm.checkpoint import QUARANTINE_DIR
from ldlm.cli.multiprocess import launch
from ldlm.train.vae import train_vae
from tests.helpers import (assert_trees_close, link_stages, namespace_prefix, set_args,
                           truncate_arrays)


def _params(run_dir):
    from ldlm.inference.textvae import TextVAE

    return jax.device_get(nnx.state(TextVAE.from_run(run_dir, ema=False).model, nnx.Param))


def test_two_processes_agree_on_damage_and_sigterm_that_one_sees_and_match_one_process(
        trained_tiny, tmp_path, capfd):
    """Process 1 alone sees step 6 damaged (a truncated copy mounted over it in a mount
    namespace of its own): both resume from step 3 and name step 6. Process 1 alone then
    sends itself SIGTERM while step 9 is written: both stop at the same step, saved, with
    status 143. The same command finishes the run, with the parameters of one process
    trained from step 3 over the same batches."""
    prefix = namespace_prefix()
    cfg, src, _ = trained_tiny
    run = link_stages(src, tmp_path / "run")
    shutil.copytree(src / "vae", run / "vae")
    damaged = tmp_path / "damaged_6"
    shutil.copytree(src / "vae" / "checkpoints" / "6", damaged)
    truncate_arrays(damaged)
    mount = 'mount --bind "$1" "$2" || exit 99; shift 2; exec "$@"'
    one = ["env", "LDLM_DEBUG_SIGTERM_IN_SAVE_AT_STEP=9", *prefix, "sh", "-c", mount, "sh",
           str(damaged), str(run / "vae" / "checkpoints" / "6")]
    # the stop comes some steps after the notice (JAX agrees on a step in the background):
    # room for it before the end
    sets = ["vae_train.steps=30", "vae_train.checkpoint_every=3"]
    command = ["vae", "--preset", "tiny", "--run-dir", str(run), *set_args(sets)]
    logs = tmp_path / "logs"
    status = launch(command, 2, 2, logs, timeout=300, prefix={1: one})
    assert status != 99, "the bind mount failed"
    text0 = capfd.readouterr().err  # process 0 writes to this test's stderr
    text1 = (logs / "process_1.log").read_text()
    assert status == 143, text1[-3000:]
    # process 1 read step 6 as damaged; process 0 read it fine and names process 1's verdict
    assert "at step 6 " in text1 and "is damaged (array data truncated)" in text1, text1[-3000:]
    assert "resumed from the checkpoint at step 3 (step 6 was damaged: unreadable on " \
           "another process)" in text0, text0[-3000:]
    assert (run / "vae" / QUARANTINE_DIR / "6" / "state").is_dir()  # moved aside, intact
    stops = [[line for line in text.splitlines() if line.startswith("ldlm: vae: stopped")]
             for text in (text0, text1)]
    assert len(stops[0]) == 1 and stops[0] == stops[1], (stops, text0[-2000:])
    at = int(stops[0][0].split("stopped at step ")[1].split()[0])
    ckpts = run / "vae" / "checkpoints"
    assert 9 <= at == max(int(p.name) for p in ckpts.iterdir() if p.name.isdigit())

    assert launch(command, 2, 2, logs, timeout=300) == 0  # the same command finishes
    single = link_stages(src, tmp_path / "single")
    shutil.copytree(src / "vae", single / "vae")
    shutil.rmtree(single / "vae" / "checkpoints" / "6")
    assert train_vae(cfg.override(sets), single).resumed_from == 3
    assert_trees_close(_params(run), _params(single), rtol=1e-4, atol=1e-5)


def test_two_processes_write_the_latent_cache_once_and_wait_for_it(trained_tiny, tmp_path):
    """`ldlm latents` as two processes: process 0 writes the cache, both return only once it
    is complete, and it holds the records a single process writes."""
    from ldlm.data.latents import LatentSource, read_meta
    from ldlm.stages.latents import run_latents

    cfg, src, _ = trained_tiny
    multi = link_stages(src, tmp_path / "multi", ("data", "tokenizer", "vae"))
    single = link_stages(src, tmp_path / "single", ("data", "tokenizer", "vae"))
    status = launch(["latents", "--preset", "tiny", "--run-dir", str(multi)], 2, 2,
                    tmp_path / "logs", timeout=300)
    assert status == 0, (tmp_path / "logs" / "process_1.log").read_text()[-2000:]
    run_latents(cfg, single, batch_size=64)
    assert read_meta(multi)["blocks"] == read_meta(single)["blocks"]
    a, b = LatentSource(multi, "validation"), LatentSource(single, "validation")
    for i in (0, len(a) // 2, len(a) - 1):
        for key in ("z", "tokens", "mask", "doc_index", "prev", "has_prev"):
            np.testing.assert_allclose(a[i][key], b[i][key], rtol=1e-5, atol=1e-5)


# about 85 s: make test-slow (the two-process VAE test above keeps multi-process training,
# resume and one-process equality in CI)
@pytest.mark.slow
def test_two_processes_train_the_block_causal_prior_as_one_process(tiny_dit, tmp_path):
    """The block-causal prior's stage (windows of latents, two-stream training, sample
    dumps through the KV cache) as two processes: the parameters of one process."""
    from ldlm.inference.generation import LatentDiffusionPipeline

    _, src, _ = tiny_dit
    stages = ("data", "tokenizer", "vae", "latents")
    multi = link_stages(src, tmp_path / "multi", stages)
    single = link_stages(src, tmp_path / "single", stages)
    args = ["--preset", "tiny", "--set", "dit.kind=block_causal", "--set", "dit.window=2",
            "--set", "dit.block_size=4",
            "--set", "dit_train.steps=3", "--set", "dit.sample_steps=2"]
    status = launch(["dit", "--run-dir", str(multi), *args], 2, 2, tmp_path / "logs",
                    timeout=300)
    assert status == 0, (tmp_path / "logs" / "process_1.log").read_text()[-2000:]
    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-m", "ldlm", "dit", "--run-dir", str(single), *args],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]

    def params(run_dir):
        pipe = LatentDiffusionPipeline.from_pretrained(run_dir, ema=False)
        assert pipe.kind == "block_causal"
        return jax.device_get(pipe.sampler.params)

    assert_trees_close(params(multi), params(single), rtol=1e-4, atol=1e-5)
