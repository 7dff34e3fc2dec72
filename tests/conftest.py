"""Test set-up: 8 fake CPU devices (before jax is imported anywhere) and shared tiny runs."""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                           " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# XLA programs compiled once per test session and shared by every test and by the processes
# tests start (the tiny models compile the same programs over and over): a fresh directory
# per session, so no test reads a program an earlier session compiled
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="ldlm-tests-xla-")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], True)
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES", "-1")

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_numpy_rank_promotion", "raise")

from ldlm.config import load_experiment  # noqa: E402
from tests.helpers import FAULT_SETS, link_stages  # noqa: E402


@pytest.fixture(scope="session")
def tiny_cfg():
    return load_experiment("bbc_news", "tiny")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, tiny_cfg):
    """A run directory with the data and tokenizer stages done on the tiny preset."""
    from ldlm.stages.data import run_data, run_tokenizer

    run_dir = tmp_path_factory.mktemp("tiny_run")
    run_data(tiny_cfg, run_dir)
    stats = run_tokenizer(tiny_cfg, run_dir)
    return run_dir, stats


@pytest.fixture(scope="session")
def trained_tiny(tiny_run, tiny_cfg, tmp_path_factory):
    """A tiny VAE trained for a few steps with checkpoints, sharing the tiny data run."""
    from ldlm.stages.vae import evaluate_trained_vae
    from ldlm.train.vae import train_vae

    src, _ = tiny_run
    run_dir = link_stages(src, tmp_path_factory.mktemp("vae_run"))
    cfg = tiny_cfg.override(["vae_train.steps=6", "vae_train.checkpoint_every=3"])
    result = train_vae(cfg, run_dir)
    evaluate_trained_vae(cfg, run_dir, result)  # the latent statistics later stages need
    return cfg, run_dir, result


@pytest.fixture(scope="session")
def tiny_dit(trained_tiny, tmp_path_factory):
    """Latents of the tiny VAE run and a tiny DiT trained on them (with context)."""
    from ldlm.inference.textvae import TextVAE
    from ldlm.stages.dit import sample_dump_hook
    from ldlm.stages.latents import run_latents
    from ldlm.train.dit import train_dit

    cfg, src, _ = trained_tiny
    run_dir = link_stages(src, tmp_path_factory.mktemp("dit_run"), ("data", "tokenizer", "vae"))
    run_latents(cfg, run_dir, batch_size=64)
    vae = TextVAE.from_run(run_dir)
    result = train_dit(cfg, run_dir, sample_dump_hook(cfg, run_dir, vae), vae.model)
    return cfg, run_dir, result


@pytest.fixture(scope="session")
def uninterrupted_vae(tiny_run, tiny_cfg, tmp_path_factory):
    """The tiny VAE trained straight through FAULT_SETS: what every interrupted and resumed
    run must end with. (config, run directory, TrainResult)."""
    from ldlm.train.vae import train_vae

    src, _ = tiny_run
    cfg = tiny_cfg.override(list(FAULT_SETS))
    run_dir = link_stages(src, tmp_path_factory.mktemp("uninterrupted"))
    return cfg, run_dir, train_vae(cfg, run_dir)
