"""Golden numbers: the loss of each model (`tiny` preset, seed 0, a fixed synthetic batch)
at its first three training steps.

A refactor must not change them. Update `tests/golden/losses.json` only for a deliberate
change of the maths (a new loss term, another initialisation, another random stream), say
so in the commit, and regenerate with `python -m tests.test_golden_losses`.
"""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ldlm.config import MeshConfig, load_experiment
from ldlm.mesh import make_mesh
from ldlm.models.ar import build_ar
from ldlm.models.dit import build_dit
from ldlm.models.vae import build_vae
from ldlm.train.ar import ar_loss
from ldlm.train.dit import dit_loss
from ldlm.train.loop import Task, build_model, make_train_step, replicate_unsharded
from ldlm.train.state import init_state, make_optimizer
from ldlm.train.vae import vae_loss

GOLDEN = pathlib.Path(__file__).parent / "golden" / "losses.json"
VOCAB, B = 1000, 8


def _setup(name: str):
    cfg = load_experiment("bbc_news", "tiny")
    L, N, D = cfg.data.block_len, cfg.vae.num_latents, cfg.vae.latent_dim
    rng = np.random.default_rng(0)
    lengths = np.array([L, 1, L // 2, 3, L - 1, L, 7, L // 4])
    mask = jnp.asarray(np.arange(L)[None, :] < lengths[:, None])
    tokens = jnp.asarray(rng.integers(4, VOCAB, (B, L)), jnp.int32)
    if name == "vae":
        return cfg.vae_train, build_vae(cfg, VOCAB), {"tokens": tokens, "mask": mask}, \
            lambda *a, counts: vae_loss(*a, counts=counts, cfg=cfg.vae, total_steps=60)
    if name == "ar":
        return cfg.ar_train, build_ar(cfg, VOCAB), {"tokens": tokens, "mask": mask}, ar_loss
    z = lambda: jnp.asarray(rng.standard_normal((B, N, D)), jnp.float32)  # noqa: E731
    batch = {"z": z(), "prev": z(), "next": z(), "has_prev": jnp.asarray(lengths > 5),
             "has_next": jnp.asarray(lengths > 10), "label": jnp.arange(B) % 6 - 1,
             "tokens": tokens, "mask": mask}
    return cfg.dit_train, build_dit(cfg, N, D, 5), batch, \
        lambda *a, counts: dit_loss(*a, counts=counts, cfg=cfg.dit)


def losses(name: str) -> list[float]:
    """The losses of the first three steps on the same batch (the first update has
    learning rate 0: warm-up starts there)."""
    train_cfg, build, batch, loss_fn = _setup(name)
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    task = Task(stage=name, train_cfg=train_cfg, build_model=build, loss_fn=loss_fn,
                train_batches=None)
    graphdef, params = build_model(task, mesh, 0)
    tx = make_optimizer(train_cfg)
    state = replicate_unsharded(init_state(params, tx, 0, ema=train_cfg.ema_decay > 0), mesh)
    step = make_train_step(graphdef, loss_fn, tx, train_cfg)
    out = []
    with jax.set_mesh(mesh):
        for _ in range(3):
            state, metrics = step(state, batch)
            out.append(float(metrics["loss"]))
    return out


@pytest.mark.parametrize("name", ["vae", "dit", "ar"])
def test_losses_of_one_step_match_the_golden_values(name):
    golden = json.loads(GOLDEN.read_text())[name]
    np.testing.assert_allclose(losses(name), golden, rtol=2e-5)


if __name__ == "__main__":
    import os
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    GOLDEN.write_text(json.dumps({n: losses(n) for n in ("vae", "dit", "ar")}, indent=2) + "\n")
    print(GOLDEN.read_text())
