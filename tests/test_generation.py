"""The Python sampling API (LatentDiffusionPipeline) and `ldlm sample`."""

import re
import subprocess
import sys

import numpy as np
import pytest

from ldlm.errors import MissingStageError
from ldlm.inference.generation import LatentDiffusionPipeline, PipelineError
from tests.helpers import compiles, link_stages

PROMPT = "Shares in the firm rose on Monday after it reported higher profits."


@pytest.fixture(scope="module")
def pipe(tiny_dit):
    _, run_dir, _ = tiny_dit
    return LatentDiffusionPipeline.from_pretrained(run_dir)


def test_from_a_run_without_a_dit_names_make_dit(trained_tiny, tmp_path):
    _, src, _ = trained_tiny
    run_dir = link_stages(src, tmp_path / "no_dit", ("data", "tokenizer", "vae"))
    with pytest.raises(MissingStageError, match="make dit"):
        LatentDiffusionPipeline.from_pretrained(run_dir)


@pytest.mark.parametrize("sampler", ["ddpm", "ddim", "dpm++"])
def test_same_seed_same_texts(pipe, sampler):
    a = pipe.generate(n=3, steps=4, sampler=sampler, seed=1)
    assert len(a) == 3 and all(isinstance(t, str) for t in a)
    assert pipe.generate(n=3, steps=4, sampler=sampler, seed=1) == a
    za = pipe.sample_latents(n=3, steps=4, sampler=sampler, seed=1)
    zb = pipe.sample_latents(n=3, steps=4, sampler=sampler, seed=2)
    assert not np.allclose(za, zb)


def test_one_compile_serves_every_step_budget(pipe):
    pipe.sample_latents(n=5, steps=1, sampler="ddim", seed=0)
    before = compiles()
    for steps in (3, 7, 1000):
        pipe.sample_latents(n=5, steps=steps, sampler="ddim", seed=0)
    assert compiles() == before  # a new budget, same batch shape: no new compile


def test_temperature_narrows_the_samples_without_recompiling(pipe):
    z1 = pipe.sample_latents(n=64, steps=8, sampler="ddpm", seed=0)
    np.testing.assert_array_equal(
        z1, pipe.sample_latents(n=64, steps=8, sampler="ddpm", seed=0, temperature=1.0))
    before = compiles()
    z_half = pipe.sample_latents(n=64, steps=8, sampler="ddpm", seed=0, temperature=0.5)
    assert compiles() == before  # traced, like the step count
    spread = lambda z: float(np.std(z - z.mean(0)))  # noqa: E731
    assert spread(z_half) < 0.9 * spread(z1)


def test_guidance_zero_is_unconditional_and_one_is_conditional(pipe):
    label = pipe.label_names[1]
    uncond = pipe.sample_latents(n=2, steps=3, seed=0)
    cond = pipe.sample_latents(n=2, steps=3, seed=0, label=label)
    g0 = pipe.sample_latents(n=2, steps=3, seed=0, label=label, guidance=0.0)
    g1 = pipe.sample_latents(n=2, steps=3, seed=0, label=label, guidance=1.0)
    g3 = pipe.sample_latents(n=2, steps=3, seed=0, label=label, guidance=3.0)
    gap = np.abs(cond - uncond).max()
    assert gap > 1e-4  # the label reaches the (barely trained) network
    np.testing.assert_allclose(g0, uncond, rtol=0, atol=0.05 * gap)
    np.testing.assert_array_equal(g1, cond)
    assert np.abs(g3 - cond).max() > 0.5 * gap


def test_edit_strength_zero_is_the_identity_and_one_ignores_the_input(pipe):
    texts = [PROMPT, "The match ended in a draw."]
    assert pipe.edit(texts, strength=0.0) == texts
    edited = pipe.edit(texts, strength=0.5, steps=4)
    assert len(edited) == 2 and all(isinstance(t, str) for t in edited)
    # at strength 1 the input is drowned in noise: two texts give what the seed alone gives
    a = pipe.edit([PROMPT], strength=1.0, steps=4, seed=3)
    b = pipe.edit(["The match ended in a draw."], strength=1.0, steps=4, seed=3)
    assert a == b
    assert pipe.edit([PROMPT], strength=1.0, steps=4, seed=4) != a  # and the seed matters


def test_continuation_infilling_and_trajectory(pipe):
    out = pipe.generate(n=2, steps=3, prompt=PROMPT, num_blocks=2, seed=0)
    assert len(out) == 2
    plain = pipe.generate(n=2, steps=3, seed=0)
    first_block = pipe.generate(n=2, steps=3, prompt=PROMPT, seed=0)
    assert first_block != plain  # the prompt conditions the first block
    # block 1 is the same draw with or without a second block after it (the last
    # characters may differ where a byte-fallback character spans the two blocks)
    assert all(o.startswith(f[:-3]) for o, f in zip(out, first_block))
    assert len(pipe.infill(PROMPT, "The match ended in a draw.", n=2, steps=3)) == 2
    steps = pipe.trajectory(n=2, steps=4, seed=5)
    assert len(steps) == 4 and all(len(s) == 2 for s in steps)
    assert steps[-1] == pipe.generate(n=2, steps=4, seed=5)
    before = compiles()
    assert pipe.trajectory(n=2, steps=4, seed=6) != steps  # another draw, no new compile
    assert compiles() == before


@pytest.mark.parametrize("kwargs,match", [
    ({"steps": 0}, "steps must be an integer from 1 to 1000"),
    ({"steps": 1001}, "steps must be an integer from 1 to 1000"),
    ({"sampler": "euler"}, "unknown sampler 'euler'"),
    ({"label": "gardening"}, "unknown label 'gardening'; this run knows"),
    ({"n": 0}, "n must be a positive integer"),
    ({"prompt": "   "}, "prompt text is empty"),
    ({"label": ["sports"]}, "got 1 labels for n=2"),
    ({"temperature": 0.0}, r"temperature must be a number in \(0, 2\]"),
])
def test_bad_requests_are_named(pipe, kwargs, match):
    with pytest.raises(PipelineError, match=match):
        pipe.generate(**{"n": 2, **kwargs})


def test_edit_strength_outside_zero_one_is_refused(pipe):
    with pytest.raises(PipelineError, match=r"strength must be in \[0, 1\]"):
        pipe.edit(PROMPT, strength=1.5)


def test_a_model_without_context_refuses_prompts(pipe):
    no_ctx = LatentDiffusionPipeline(pipe.cfg.override(["dit.use_context=false"]),
                                     _untrained_dit(pipe, use_context=False), pipe.vae,
                                     pipe.label_names)
    assert no_ctx.generate(n=1, steps=2) == no_ctx.decode(no_ctx.sample_latents(n=1, steps=2))
    for call in (lambda: no_ctx.generate(n=1, prompt=PROMPT),
                 lambda: no_ctx.generate(n=1, num_blocks=2),
                 lambda: no_ctx.infill(PROMPT, PROMPT)):
        with pytest.raises(PipelineError, match="dit.use_context=false"):
            call()


def _untrained_dit(pipe, use_context):
    import jax
    from flax import nnx

    from ldlm.config import MeshConfig
    from ldlm.mesh import PARAM_RULES, make_mesh
    from ldlm.priors.per_block import build_dit

    cfg = pipe.cfg.override([f"dit.use_context={str(use_context).lower()}"])
    with jax.set_mesh(make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])), \
            nnx.logical_axis_rules(PARAM_RULES):
        return build_dit(cfg, pipe.N, pipe.D, len(pipe.label_names))(nnx.Rngs(params=0))


def test_sample_cli_prints_samples_and_speed(tiny_dit):
    _, run_dir, _ = tiny_dit
    r = subprocess.run([sys.executable, "-m", "ldlm", "sample", "--run-dir", str(run_dir),
                        "--steps", "3", "-n", "2", "--sampler", "ddim"],
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("--- sample") == 2 and "tokens/s" in r.stdout
    # each sample says its length, and whether the prior ended it (EOS) before max_tokens
    lengths = re.findall(r"--- sample \d \(.*; (\d+) tokens(; ended with EOS)?\)", r.stdout)
    block_len = LatentDiffusionPipeline.from_pretrained(run_dir).vae.block_len
    assert len(lengths) == 2 and all(int(n) <= block_len for n, _ in lengths)
    bad = subprocess.run([sys.executable, "-m", "ldlm", "sample", "--run-dir", str(run_dir),
                          "--steps", "0"], capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "steps must be" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_denoising_accuracy_of_the_clean_estimate(pipe, tiny_dit):
    from ldlm.diffusion import schedules
    from ldlm.eval.denoising import denoising_accuracy, validation_latents

    _, run_dir, _ = tiny_dit
    z0 = validation_latents(run_dir, 16)
    assert z0.shape == (16, pipe.N, pipe.D)
    rows = denoising_accuracy(pipe, z0, times=(0.02, 0.5, 0.98))
    assert [r["t"] for r in rows] == [0.02, 0.5, 0.98]
    # almost no noise: both decode mostly like the clean latents (the tiny VAE is fragile);
    # the estimate is almost exact
    assert rows[0]["accuracy_noisy"] > 0.85 and rows[0]["accuracy_estimate"] > 0.85
    assert rows[0]["mse_estimate"] < 0.05
    # nearly pure noise: the rescaled latents decode to little of the text
    assert rows[2]["accuracy_noisy"] < rows[0]["accuracy_noisy"] - 0.3
    _, sigma = schedules.alpha_sigma(schedules.logsnr(0.5, pipe.cfg.dit.schedule,
                                                      pipe.cfg.dit.snr_scale))
    assert rows[1]["mse_linear"] == pytest.approx(float(sigma) ** 2, rel=1e-5)
    # at t=0.5 the trained DiT's estimate beats both the noisy latents rescaled (squared
    # error sigma^2/alpha^2 = 1) and the noisy latents as they are (about 0.59)
    assert rows[1]["mse_estimate"] < 0.56
    # at t ~ 0 the estimate is the input itself
    x0 = pipe.predict_clean(z0, np.full(16, 1e-4, np.float32))
    assert np.abs(x0 - z0).max() < 0.1
