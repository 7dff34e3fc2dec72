"""Golden samples: what the pipeline writes for a fixed seed with both kinds of prior (the
per-block DiT and the block-causal DiT, random weights over the tiny VAE), for every
operation: generate (each sampler, guidance, temperature), continuing prompts, texts of
several blocks, infilling, editing, trajectories, latents and clean estimates.

A refactor of the samplers or the pipeline must not change them. Regenerate
`tests/golden/samples.json` only for a deliberate change of what is sampled (another random
stream, another sampler update), say so in the commit, with
`LDLM_REGEN_GOLDEN=1 python -m pytest tests/test_same_samples.py`.
"""

import json
import os
import pathlib

import jax
import numpy as np
import pytest
from flax import nnx

from ldlm import priors
from ldlm.config import MeshConfig
from ldlm.inference.generation import LatentDiffusionPipeline
from ldlm.inference.textvae import TextVAE
from ldlm.mesh import PARAM_RULES, make_mesh
from tests.helpers import randomize

GOLDEN = pathlib.Path(__file__).parent / "golden" / "samples.json"
LABELS = ["a", "b", "c", "d", "e"]
KINDS = {"per_block": [], "block_causal": ["dit.kind=block_causal", "dit.window=2",
                                           "dit.block_size=4"]}
BEFORE, AFTER = "Shares in the bank rose on Monday.", "The team lost again at home."


def _pipe(trained_tiny, overrides):
    cfg, run_dir, _ = trained_tiny
    vae = TextVAE.from_run(run_dir)
    cfg = cfg.override(overrides)
    with jax.set_mesh(make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])), \
            nnx.logical_axis_rules(PARAM_RULES):
        model = priors.get(cfg).build(cfg, vae.model.cfg.num_latents,
                                      vae.model.cfg.latent_dim, len(LABELS))(nnx.Rngs(params=0))
    return LatentDiffusionPipeline(cfg, randomize(model, seed=3), vae, LABELS)


def _round(x) -> list:
    return np.round(np.asarray(x, np.float64), 4).tolist()


def samples(pipe) -> dict:
    out = {}
    for sampler in ("ddpm", "ddim", "dpm++"):
        out[f"generate_{sampler}"] = pipe.generate(n=2, steps=3, sampler=sampler, seed=1,
                                                   temperature=0.9)
    out["guided"] = pipe.generate(n=2, steps=2, label=["a", "c"], guidance=2.0, seed=2)
    out["two_blocks"] = pipe.generate(n=2, steps=2, num_blocks=2, seed=3, eta=0.5,
                                      sampler="ddim", grid="quadratic")
    out["prompt"] = pipe.generate(n=2, steps=2, prompt=[BEFORE, AFTER], max_tokens=40,
                                  seed=4)
    out["infill"] = pipe.infill(BEFORE, AFTER, n=2, steps=2, seed=5)
    out["edit"] = pipe.edit([BEFORE, AFTER + " " + BEFORE * 3], strength=0.6, steps=3,
                            seed=6)
    out["trajectory"] = pipe.trajectory(n=2, steps=3, seed=7, label="b", guidance=1.5)
    z = pipe.sample_latents(n=2, steps=2, seed=8)
    out["latents"] = _round(z)
    out["predict_clean"] = _round(pipe.predict_clean(z, np.array([0.3, 0.7], np.float32)))
    return out


@pytest.mark.parametrize("kind", list(KINDS))
def test_the_same_seed_writes_the_golden_samples(trained_tiny, kind):
    got = samples(_pipe(trained_tiny, KINDS[kind]))
    if os.environ.get("LDLM_REGEN_GOLDEN"):
        golden = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        golden[kind] = got
        GOLDEN.write_text(json.dumps(golden, indent=1) + "\n")
        pytest.skip("golden samples regenerated")
    golden = json.loads(GOLDEN.read_text())[kind]
    assert set(got) == set(golden)
    for op in got:
        if op in ("latents", "predict_clean"):
            np.testing.assert_allclose(got[op], golden[op], atol=2e-3, err_msg=op)
        else:
            assert got[op] == golden[op], op
