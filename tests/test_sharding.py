"""Sharding on 8 fake CPU devices: parameter layouts, equal training steps on every mesh,
gradient accumulation, rematerialisation, and checkpoints restored onto another mesh."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ldlm.checkpoint import Checkpointer
from ldlm.config import MeshConfig, load_experiment
from ldlm.mesh import RULE_SETS, batch_sharding, make_mesh
from ldlm.models.ar import build_ar
from ldlm.train.ar import ar_loss
from ldlm.priors.block_causal import build_block_causal
from ldlm.priors.per_block import build_dit
from ldlm.train.loop import (Task, _accumulated_grads, batch_counts, build_model,
                             make_train_step, replicate_unsharded)
from ldlm.train.state import init_state, make_optimizer
from ldlm.models.seam_decoder import build_seam_decoder
from ldlm.models.vae import build_vae
from ldlm.train.vae import vae_loss
from tests.helpers import assert_trees_close

GOLDEN = pathlib.Path(__file__).parent / "golden" / "partition_specs.json"
VOCAB = 1000


def _cfg(overrides=()):
    return load_experiment("bbc_news", "tiny", list(overrides))


def _builders(cfg):
    return {"vae": build_vae(cfg, VOCAB), "dit": build_dit(cfg, cfg.vae.num_latents,
                                                         cfg.vae.latent_dim, 5),
            "ar": build_ar(cfg, VOCAB),
            "block_causal": build_block_causal(
                cfg.override(["dit.kind=block_causal", "dit.window=2", "dit.block_size=4"]),
                cfg.vae.num_latents, cfg.vae.latent_dim, 5),
            "seam_decoder": build_seam_decoder(cfg, VOCAB)}


def _specs(model_name, rules_name, mesh):
    task = Task(stage=model_name, train_cfg=None, build_model=_builders(_cfg())[model_name],
                loss_fn=None, train_batches=None, eval_batches=None)
    _, params = build_model(task, mesh, 0, RULE_SETS[rules_name])
    flat = jax.tree_util.tree_flatten_with_path(params)[0]
    return {jax.tree_util.keystr(path): str(leaf.sharding.spec) for path, leaf in flat}


def test_parameter_layouts_match_the_golden_specs():
    mesh = make_mesh(MeshConfig(2, 2, 2))
    got = {f"{m}/{r}": _specs(m, r, mesh) for m in ("vae", "dit", "ar", "block_causal",
                                                          "seam_decoder")
           for r in RULE_SETS}
    golden = json.loads(GOLDEN.read_text())
    assert got == golden
    # spot checks by hand: width over fsdp, heads / MLP / vocabulary over tensor
    ar = got["ar/fsdp_tp"]
    assert ar["['embed']['table'].value"] == "P('tensor', 'fsdp')"
    assert ar["['blocks'][0]['attn']['wq'].value"] == "P('fsdp', 'tensor', None)"
    assert ar["['blocks'][0]['mlp']['down']['kernel'].value"] == "P('tensor', 'fsdp')"
    assert all("fsdp" not in v and "tensor" not in v for v in got["dit/replicated"].values())
    assert all("tensor" not in v for v in got["vae/fsdp"].values())
    bc = got["block_causal/fsdp_tp"]
    assert bc["['blocks'][1]['attn']['wk'].value"] == "P('fsdp', 'tensor', None)"
    assert bc["['stream'].value"] == "P(None, 'fsdp')"
    # the seam decoder is laid out as the VAE decoder whose weights it starts from
    for rules in RULE_SETS:
        seam, vae = got[f"seam_decoder/{rules}"], got[f"vae/{rules}"]
        assert seam == {k: vae[k] for k in seam}


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

    def loss_fn(model, b, rng, step, train, *, counts):
        return vae_loss(model, b, rng, step, train, counts=counts, cfg=cfg.vae, total_steps=10)

    step = make_train_step(graphdef, loss_fn, tx, cfg.vae_train)
    with jax.set_mesh(mesh):
        state, metrics = step(state, batch)
    return float(metrics["loss"]), jax.device_get(state.params)


@pytest.fixture(scope="module")
def one_device_vae_step():
    return _vae_step_result(MeshConfig(1, 1, 1))


@pytest.mark.parametrize("shape,rules", [((8, 1, 1), "fsdp_tp"), ((2, 4, 1), "fsdp_tp"),
                                         ((2, 2, 2), "fsdp_tp"), ((2, 2, 2), "fsdp"),
                                         ((4, 1, 2), "replicated")])
def test_one_training_step_is_the_same_on_every_mesh(shape, rules, one_device_vae_step):
    ref_loss, ref_params = one_device_vae_step
    loss, params = _vae_step_result(MeshConfig(*shape), rules)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_trees_close(params, ref_params, atol=2e-5)


def _ragged_batch(cfg, rows: int = 8, seed: int = 2):
    """Token rows of very different lengths (1 .. L real tokens) and one padding row."""
    L = cfg.data.block_len
    tokens = jax.random.randint(jax.random.PRNGKey(seed), (rows, L), 4, VOCAB)
    lengths = jnp.array([L, 1, L // 2, 3, L - 1, 0, 7, L // 4])[:rows]
    return {"tokens": tokens, "mask": jnp.arange(L)[None, :] < lengths[:, None]}


def _ar_setup(overrides=(), mesh_shape=(1, 1, 1)):
    cfg = _cfg(list(overrides))
    n = int(np.prod(mesh_shape))
    mesh = make_mesh(MeshConfig(*mesh_shape), devices=jax.devices()[:n])
    task = Task(stage="ar", train_cfg=cfg.ar_train, build_model=build_ar(cfg, VOCAB),
                loss_fn=None, train_batches=None, eval_batches=None)
    graphdef, params = build_model(task, mesh, 0)
    state = replicate_unsharded(init_state(params, make_optimizer(cfg.ar_train), 0, ema=False),
                                mesh)
    batch = jax.device_put(_ragged_batch(cfg), batch_sharding(mesh))
    return cfg, mesh, graphdef, state, batch


def _full_batch_grads(graphdef, state, batch, mesh):
    counts = batch_counts(batch)

    @jax.jit
    def grads(params):
        return jax.value_and_grad(lambda p: ar_loss(nnx.merge(graphdef, p), batch, None, 0,
                                                    True, counts=counts)[0])(params)

    with jax.set_mesh(mesh):
        return jax.device_get(grads(state.params))


@pytest.fixture(scope="module")
def one_device_grads():
    """The AR baseline on one device, its ragged batch, and the full batch's gradients."""
    _, mesh, graphdef, state, batch = _ar_setup()
    return graphdef, state, batch, _full_batch_grads(graphdef, state, batch, mesh)


def test_accumulated_gradients_equal_the_full_batch_with_ragged_rows(one_device_grads):
    """k=4 micro-batches with different amounts of padding each: the same loss and
    gradients as one pass over the batch (averaging per-micro-batch means would not be)."""
    graphdef, state, batch, (loss, grads) = one_device_grads

    @jax.jit
    def accumulated(state, batch):
        return _accumulated_grads(ar_loss, graphdef, state, batch, jax.random.PRNGKey(0), 4,
                                  batch_counts(batch))

    acc_loss, _, acc_grads = jax.device_get(accumulated(state, batch))
    assert float(acc_loss) == pytest.approx(float(loss), rel=1e-6)
    assert_trees_close(acc_grads, grads, rtol=1e-5, atol=1e-7)


def test_gradients_on_eight_devices_equal_one_device_with_ragged_rows(one_device_grads):
    loss1, grads1 = one_device_grads[3]
    _, mesh8, graphdef8, state8, batch8 = _ar_setup(mesh_shape=(4, 2, 1))
    loss8, grads8 = _full_batch_grads(graphdef8, state8, batch8, mesh8)
    assert float(loss8) == pytest.approx(float(loss1), rel=1e-6)
    assert_trees_close(grads8, grads1, rtol=1e-5, atol=1e-7)


def _ar_step(overrides):
    cfg, mesh, graphdef, state, batch = _ar_setup(overrides)
    step = make_train_step(graphdef, ar_loss, make_optimizer(cfg.ar_train), cfg.ar_train)
    with jax.set_mesh(mesh):
        state, metrics = step(state, batch)
    return float(metrics["loss"]), jax.device_get(state.params)


@pytest.fixture(scope="module")
def plain_step():
    return _ar_step([])


@pytest.mark.parametrize("overrides", [["ar_train.grad_accum=4"], ["ar_train.remat=true"]])
def test_accumulation_and_remat_change_memory_not_results(overrides, plain_step):
    ref_loss, ref_params = plain_step
    loss, params = _ar_step(overrides)
    assert loss == pytest.approx(ref_loss, rel=1e-5)
    assert_trees_close(params, ref_params, atol=2e-5)


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
    assert_trees_close(restored, states["saved"], rtol=0, atol=0)
    for b, target in zip(jax.tree.leaves(restored), jax.tree.leaves(states["restored"])):
        assert b.sharding == target.sharding  # laid out as on the new mesh
    assert any(isinstance(x.sharding, NamedSharding) and x.sharding.spec != P()
               for x in jax.tree.leaves(restored))
