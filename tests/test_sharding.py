"""Sharding on 8 fake CPU devices: parameter layouts, equal training steps on every mesh,
gradient accumulation, rematerialisation, and checkpoints restored onto another mesh."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import NamedSharding, PartitionSpec as P

from ldlm.checkpoint import Checkpointer
from ldlm.config import MeshConfig, load_experiment
from ldlm.mesh import RULE_SETS, batch_sharding, make_mesh
from ldlm.train.ar import ar_loss, build_ar
from ldlm.train.dit import build_dit
from ldlm.train.loop import Task, build_model, make_train_step, replicate_unsharded
from ldlm.train.state import init_state, make_optimizer
from ldlm.train.vae import build_vae, vae_loss

GOLDEN = pathlib.Path(__file__).parent / "golden" / "partition_specs.json"
VOCAB = 1000


def _cfg(overrides=()):
    return load_experiment("bbc_news", "tiny", list(overrides))


def _builders(cfg):
    return {"vae": build_vae(cfg, VOCAB), "dit": build_dit(cfg, cfg.vae.num_latents,
                                                         cfg.vae.latent_dim, 5),
            "ar": build_ar(cfg, VOCAB)}


def _specs(model_name, rules_name, mesh):
    task = Task(stage=model_name, train_cfg=None, build_model=_builders(_cfg())[model_name],
                loss_fn=None, train_batches=None, eval_batches=None)
    _, params = build_model(task, mesh, 0, RULE_SETS[rules_name])
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): str(leaf.sharding.spec) for path, leaf in flat}


def test_parameter_layouts_match_the_golden_specs():
    mesh = make_mesh(MeshConfig(2, 2, 2))
    got = {f"{m}/{r}": _specs(m, r, mesh) for m in ("vae", "dit", "ar") for r in RULE_SETS}
    golden = json.loads(GOLDEN.read_text())
    assert got == golden
    # spot checks by hand: width over fsdp, heads / MLP / vocabulary over tensor
    ar = got["ar/fsdp_tp"]
    assert ar["['embed']['table'].value"] == "P('tensor', 'fsdp')"
    assert ar["['blocks'][0]['attn']['wq'].value"] == "P('fsdp', 'tensor', None)"
    assert ar["['blocks'][0]['mlp']['down']['kernel'].value"] == "P('tensor', 'fsdp')"
    assert all("fsdp" not in v and "tensor" not in v for v in got["dit/replicated"].values())
    assert all("tensor" not in v for v in got["vae/fsdp"].values())


def _vae_step_result(mesh_cfg, rules="fsdp_tp", overrides=()):
    cfg = _cfg(["vae.latent_noise_max=0", *overrides])
    mesh = make_mesh(mesh_cfg, devices=jax.devices()[:int(np.prod([mesh_cfg.data,
                                                                    mesh_cfg.fsdp,
                                                                    mesh_cfg.tensor]))])
    task = Task(stage="vae", train_cfg=cfg.vae_train, build_model=build_vae(cfg, VOCAB),
                loss_fn=None, train_batches=None, eval_batches=None)
    graphdef, params = build_model(task, mesh, 0, RULE_SETS[rules])
    tx = make_optimizer(cfg.vae_train)
    state = replicate_unsharded(init_state(params, tx, 0, ema=False), mesh)
    tokens = jax.random.randint(jax.random.PRNGKey(1), (8, cfg.data.block_len), 4, VOCAB)
    batch = {"tokens": tokens, "mask": jnp.ones_like(tokens, bool)}
    batch = jax.device_put(batch, batch_sharding(mesh))

    def loss_fn(model, b, rng, step, train):
        return vae_loss(model, b, rng, step, train, cfg=cfg.vae, total_steps=10)

    step = make_train_step(graphdef, loss_fn, tx, cfg.vae_train)
    with jax.set_mesh(mesh):
        state, metrics = step(state, batch)
    return float(metrics["loss"]), jax.device_get(state.params)


@pytest.mark.parametrize("shape,rules", [((8, 1, 1), "fsdp_tp"), ((2, 4, 1), "fsdp_tp"),
                                         ((2, 2, 2), "fsdp_tp"), ((2, 2, 2), "fsdp"),
                                         ((4, 1, 2), "replicated")])
def test_one_training_step_is_the_same_on_every_mesh(shape, rules):
    ref_loss, ref_params = _vae_step_result(MeshConfig(1, 1, 1))
    loss, params = _vae_step_result(MeshConfig(*shape), rules)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def _ar_grads(overrides):
    cfg = _cfg(overrides)
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    task = Task(stage="ar", train_cfg=cfg.ar_train, build_model=build_ar(cfg, VOCAB),
                loss_fn=None, train_batches=None, eval_batches=None)
    graphdef, params = build_model(task, mesh, 0)
    tx = make_optimizer(cfg.ar_train)
    state = init_state(params, tx, 0, ema=False)
    tokens = jax.random.randint(jax.random.PRNGKey(2), (8, cfg.data.block_len), 4, VOCAB)
    mask = jnp.arange(cfg.data.block_len)[None, :] < cfg.data.block_len - 2  # same count/row
    batch = {"tokens": tokens, "mask": jnp.broadcast_to(mask, tokens.shape)}
    state, metrics = make_train_step(graphdef, ar_loss, tx, cfg.ar_train)(state, batch)
    return float(metrics["loss"]), jax.device_get(state.params)


@pytest.mark.parametrize("overrides", [["ar_train.grad_accum=4"], ["ar_train.remat=true"]])
def test_accumulation_and_remat_change_memory_not_results(overrides):
    ref_loss, ref_params = _ar_grads([])
    loss, params = _ar_grads(overrides)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    for a, b in zip(jax.tree.leaves(ref_params), jax.tree.leaves(params)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=2e-5)


def test_a_checkpoint_restores_onto_another_mesh(tmp_path):
    cfg = _cfg()
    states = {}
    for name, mesh_cfg, n in (("saved", MeshConfig(8, 1, 1), 8),
                              ("restored", MeshConfig(1, 2, 2), 4)):
        mesh = make_mesh(mesh_cfg, devices=jax.devices()[:n])
        task = Task(stage="dit", train_cfg=cfg.dit_train,
                    build_model=_builders(cfg)["dit"], loss_fn=None, train_batches=None,
                    eval_batches=None)
        _, params = build_model(task, mesh, 0 if name == "saved" else 1)
        states[name] = replicate_unsharded(
            init_state(params, make_optimizer(cfg.dit_train), 0, ema=True), mesh)
    ckpt = Checkpointer(tmp_path / "ckpt", stage="dit")
    ckpt.save(3, states["saved"], {}, {"step": 3})
    restored, _, meta = ckpt.restore(states["restored"])
    ckpt.close()
    assert meta["step"] == 3
    for a, b, target in zip(jax.tree.leaves(states["saved"]), jax.tree.leaves(restored),
                            jax.tree.leaves(states["restored"])):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
        assert b.sharding == target.sharding  # laid out as on the new mesh
    assert any(isinstance(x.sharding, NamedSharding) and x.sharding.spec != P()
               for x in jax.tree.leaves(restored))
