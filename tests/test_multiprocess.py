"""Two processes joined by jax.distributed on 127.0.0.1 train the tiny VAE, die after a
checkpoint, resume, and end with the parameters of one process over the same batches."""

import os
import subprocess
import sys

import jax
from flax import nnx
import numpy as np
import pytest

from ldlm.cli.multiprocess import launch
from tests.helpers import assert_trees_close, link_stages

ARGS = ["--preset", "tiny", "--set", "vae_train.steps=6", "--set",
        "vae_train.checkpoint_every=3"]


def _params(run_dir):
    from ldlm.inference.textvae import TextVAE

    return jax.device_get(nnx.state(TextVAE.from_run(run_dir, ema=False).model, nnx.Param))


def test_two_processes_train_die_resume_and_match_one_process(tiny_run, tmp_path):
    src, _ = tiny_run
    multi = link_stages(src, tmp_path / "multi")
    single = link_stages(src, tmp_path / "single")
    module = ["vae", "--run-dir", str(multi), *ARGS]

    killed = launch(module, 2, 2, tmp_path / "logs",
                    extra_env={"LDLM_DEBUG_EXIT_AFTER_STEP": "3"}, timeout=300)
    assert killed == 3, (tmp_path / "logs" / "process_1.log").read_text()[-2000:]
    steps = sorted(p.name for p in (multi / "vae" / "checkpoints").iterdir() if p.is_dir())
    assert steps == ["3"]
    assert launch(module, 2, 2, tmp_path / "logs", timeout=300) == 0
    log = (multi / "vae" / "metrics.jsonl").read_text()
    assert '"step": 6' in log

    env = {**os.environ, "JAX_PLATFORMS": "cpu",
           "XLA_FLAGS": "--xla_force_host_platform_device_count=4"}
    r = subprocess.run([sys.executable, "-m", "ldlm", "vae", "--run-dir", str(single), *ARGS],
                       env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert_trees_close(_params(multi), _params(single), rtol=1e-4, atol=1e-5)


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
