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

from ldlm import priors
from ldlm.config import MeshConfig, load_experiment
from ldlm.mesh import make_mesh
from ldlm.models.ar import build_ar
from ldlm.models.vae import build_vae
from ldlm.train.ar import ar_loss
from ldlm.train.loop import Task, init_training
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
    z = lambda *shape: jnp.asarray(rng.standard_normal(shape), jnp.float32)  # noqa: E731
    if name == "dit":  # the per-block DiT
        batch = {"z": z(B, N, D), "prev": z(B, N, D), "next": z(B, N, D),
                 "has_prev": jnp.asarray(lengths > 5), "has_next": jnp.asarray(lengths > 10),
                 "label": jnp.arange(B) % 6 - 1, "tokens": tokens, "mask": mask}
    else:  # the block-causal DiT over windows of 2 VAE blocks, diffusion blocks of 4
        cfg = cfg.override(["dit.kind=block_causal", "dit.window=2", "dit.block_size=4"])
        latent_mask = jnp.asarray(np.arange(2 * N)[None, :] < (lengths[:, None] + 2))
        batch = {"z": z(B, 2 * N, D) * latent_mask[..., None], "latent_mask": latent_mask,
                 "label": jnp.arange(B) % 6 - 1,
                 "mask": jnp.ones((B, 2, 1), bool).at[:, 1].set(lengths[:, None] > 6)}
    kind = priors.get(cfg)
    return cfg.dit_train, kind.build(cfg, N, D, 5), batch, \
        lambda *a, counts: kind.loss(*a, counts=counts, cfg=cfg.dit)


def losses(name: str) -> list[float]:
    """The losses of the first three steps on the same batch (the first update has
    learning rate 0: warm-up starts there)."""
    train_cfg, build, batch, loss_fn = _setup(name)
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    task = Task(stage=name, train_cfg=train_cfg, build_model=build, loss_fn=loss_fn,
                train_batches=None)
    _, state, step = init_training(task, mesh)
    out = []
    with jax.set_mesh(mesh):
        for _ in range(3):
            state, metrics = step(state, batch)
            out.append(float(metrics["loss"]))
    return out


NAMES = ("vae", "dit", "block_causal", "ar")


@pytest.mark.parametrize("name", NAMES)
def test_losses_of_one_step_match_the_golden_values(name):
    golden = json.loads(GOLDEN.read_text())[name]
    np.testing.assert_allclose(losses(name), golden, rtol=2e-5)


if __name__ == "__main__":
    import os
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    GOLDEN.write_text(json.dumps({n: losses(n) for n in NAMES}, indent=2) + "\n")
    print(GOLDEN.read_text())
