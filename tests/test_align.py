"""Alignment of the autoencoder's latents to a frozen causal LM (`vae.align_weight`)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ldlm.errors import ConfigError
from ldlm.models import align
from ldlm.models.ar import CausalLM
from ldlm.train import teacher as teacher_lib
from tests.helpers import link_stages

# the tokenizer a test's user-supplied teacher claims (see user_teacher below)
TOKENIZER = {}


def user_teacher(layer: int) -> teacher_lib.Teacher:
    """A user's own Flax LM through the documented protocol (`python:<module>:<function>`):
    a small random causal LM on the tokenizer of TOKENIZER["path"]."""
    from ldlm.config import MeshConfig
    from ldlm.mesh import PARAM_RULES, make_mesh

    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.local_devices()[:1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):  # ldlm's layers shard
        lm = CausalLM(_lm_cfg(), TOKENIZER["vocab"], rngs=nnx.Rngs(params=7))
    graphdef, params = nnx.split(lm)
    return teacher_lib.Teacher(apply=lambda p, t: nnx.merge(graphdef, p).hidden(t, layer),
                               params=params, width=32, tokenizer=TOKENIZER["path"],
                               name="a user's LM")


def _lm_cfg():
    from ldlm.config import ARConfig
    return ARConfig(width=32, heads=2, mlp_dim=64, layers=2)


def test_the_alignment_loss_is_zero_for_exact_targets_and_positive_otherwise():
    rng = np.random.default_rng(0)
    target = jnp.asarray(rng.standard_normal((2, 4, 8)), jnp.float32)
    real = jnp.array([[True, True, True, False], [True, True, True, True]])
    for loss in (align.cosine_loss_B, align.distance_matrix_loss_B):
        np.testing.assert_allclose(loss(target, target, real), 0.0, atol=1e-6)
        np.testing.assert_allclose(loss(3.0 * target, target, real), 0.0, atol=1e-6)
        other = jnp.asarray(rng.standard_normal((2, 4, 8)), jnp.float32)
        assert (loss(other, target, real) > 0.05).all()
    # 1 - cos of a latent without a target (no real token) counts for nothing
    moved = target.at[0, 3].set(-target[0, 3])
    np.testing.assert_allclose(align.cosine_loss_B(moved, target, real)[0], 0.0, atol=1e-6)
    # by hand: orthogonal -> 1, opposite -> 2, margin 0.5 takes 0.5 off
    e = jnp.eye(2)[None]  # 1x2x2: two latents
    pred = jnp.stack([e[0, 1], -e[0, 1]])[None]
    np.testing.assert_allclose(align.cosine_loss_B(pred, e, jnp.ones((1, 2), bool)), [1.5])
    np.testing.assert_allclose(align.cosine_loss_B(pred, e, jnp.ones((1, 2), bool), 0.5),
                               [1.0])


def test_centering_removes_the_direction_every_target_shares():
    rng = np.random.default_rng(1)
    residual = rng.standard_normal((4, 3, 8)).astype(np.float32)
    residual -= residual.reshape(-1, 8).mean(0)
    real = jnp.ones((4, 3), bool)
    common = 10.0 * rng.standard_normal(8).astype(np.float32)
    np.testing.assert_allclose(align.centered(jnp.asarray(residual + common), real), residual,
                               atol=1e-5)
    # a latent without a target does not move the mean
    x, without = jnp.asarray(residual + common), real.at[0, 0].set(False)
    far = align.centered(x.at[0, 0].set(1e6), without)
    near = align.centered(x.at[0, 0].set(-5.0), without)
    np.testing.assert_allclose(far[1:], near[1:], atol=1e-4)
    np.testing.assert_allclose(far[0, 1:], near[0, 1:], atol=1e-4)


def test_targets_pool_the_states_of_each_latents_real_tokens():
    h = jnp.arange(2 * 8 * 1, dtype=jnp.float32).reshape(2, 8, 1)  # B=2, L=8, H=1
    mask = jnp.array([[1] * 8, [1] * 5 + [0] * 3], bool)
    mean, real = align.latent_targets(h, mask, num_latents=2, pool="mean")
    np.testing.assert_allclose(mean[..., 0], [[1.5, 5.5], [9.5, 12.0]])
    last, _ = align.latent_targets(h, mask, num_latents=2, pool="last")
    np.testing.assert_allclose(last[..., 0], [[3.0, 7.0], [11.0, 12.0]])
    assert real.tolist() == [[True, True], [True, True]]
    _, real = align.latent_targets(h, jnp.array([[1] * 8, [1] * 3 + [0] * 5], bool), 2)
    assert real.tolist() == [[True, True], [True, False]]


@pytest.mark.parametrize("kind", ["block", pytest.param("chunk", marks=pytest.mark.slow)])
def test_a_user_teacher_trains_and_adds_only_the_projector_to_the_model(tiny_run, tiny_cfg, tmp_path, kind):
    from ldlm.train.vae import train_vae

    src, _ = tiny_run
    run_dir = link_stages(src, tmp_path / "run")
    TOKENIZER.update(path=str(run_dir / "tokenizer" / "spm.model"), vocab=_vocab(run_dir))
    cfg = tiny_cfg.override([f"vae.kind={kind}", "vae.align_weight=1.0",
                             "vae.align_distance_weight=0.5",
                             "vae.align_teacher=python:tests.test_align:user_teacher",
                             "vae_train.steps=2", "vae_train.log_every=1"])
    result = train_vae(cfg, run_dir)
    model = result.model()
    assert model.align_proj.out.kernel.shape[-1] == 32  # the teacher's width, found by make vae
    metrics = (run_dir / "vae" / "metrics.jsonl").read_text()
    assert '"align_cos"' in metrics
    # the teacher is an input of the step, not part of the trained model (its gradient:
    # test_no_gradient_reaches_the_teacher)
    assert set(nnx.to_pure_dict(nnx.state(model))) == \
        set(nnx.to_pure_dict(nnx.state(build_unaligned(cfg, run_dir)))) | {"align_proj"}
    # the aligned autoencoder loads for inference from its stage's config like any other
    from ldlm.inference.textvae import TextVAE
    z = TextVAE.from_run(run_dir).encode(["Shares rose."])
    assert z.shape == (1, cfg.vae.num_latents, cfg.vae.latent_dim)


def test_no_gradient_reaches_the_teacher(tiny_run, tiny_cfg, tmp_path):
    from ldlm.models.vae import build_vae
    from ldlm.train.vae import vae_loss

    src, _ = tiny_run
    TOKENIZER.update(path=str(src / "tokenizer" / "spm.model"), vocab=_vocab(src))
    teacher = user_teacher(0)
    cfg = tiny_cfg.override(["vae.align_weight=1.0", "vae.align_dim=32"])
    from ldlm.config import MeshConfig
    from ldlm.mesh import PARAM_RULES, make_mesh
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.local_devices()[:1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):
        model = build_vae(cfg, TOKENIZER["vocab"])(nnx.Rngs(params=0))
    L = cfg.data.block_len
    tokens = jax.random.randint(jax.random.PRNGKey(1), (4, L), 5, TOKENIZER["vocab"])
    batch = {"tokens": tokens, "mask": jnp.ones((4, L), bool)}

    def loss(vae_params, teacher_params):
        m = nnx.merge(nnx.graphdef(model), vae_params)
        return vae_loss(m, batch, jax.random.PRNGKey(2), 0, True, counts={
            "tokens": 4 * L, "rows": 4}, cfg=cfg.vae, total_steps=10, teacher=teacher,
            frozen={"teacher": teacher_params})[0]

    g_vae, g_teacher = jax.grad(loss, argnums=(0, 1))(nnx.state(model), teacher.params)
    assert all(float(jnp.abs(x).max()) == 0.0 for x in jax.tree.leaves(g_teacher))
    assert float(jnp.abs(g_vae["align_proj"]["out"]["kernel"][...]).max()) > 0
    assert float(jnp.abs(g_vae["to_mean"]["kernel"][...]).max()) > 0


def test_a_teacher_with_another_tokenizer_is_a_one_line_error(tiny_run, tiny_cfg, tmp_path):
    src, _ = tiny_run
    run_dir = link_stages(src, tmp_path / "run")
    other = tmp_path / "other_spm.model"
    other.write_bytes(b"not the run's tokenizer")
    TOKENIZER.update(path=str(other), vocab=_vocab(run_dir))
    with pytest.raises(ConfigError, match="not this run's tokenizer") as e:
        teacher_lib.load_teacher("python:tests.test_align:user_teacher", run_dir)
    assert "\n" not in str(e.value)
    for spec, match in [("gpt2", "expected ar, reference"),
                        ("python:no_such_module:f", "cannot load"),
                        (f"{tmp_path}:ar", "make ar")]:
        with pytest.raises(Exception, match=match):
            teacher_lib.load_teacher(spec, run_dir)


def build_unaligned(cfg, run_dir):
    """The same autoencoder without alignment (abstract: shapes only)."""
    from ldlm.models.vae import build_vae
    from ldlm.config import MeshConfig
    from ldlm.mesh import PARAM_RULES, make_mesh

    plain = cfg.override(["vae.align_weight=0", "vae.align_dim=0"])
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.local_devices()[:1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):
        return nnx.eval_shape(lambda: build_vae(plain, _vocab(run_dir))(nnx.Rngs(params=0)))


def _vocab(run_dir: pathlib.Path) -> int:
    from ldlm.data.batches import blocks_dir
    from ldlm.data.blocks import read_meta
    return read_meta(blocks_dir(run_dir))["vocab_size"]


def test_eval_knows_when_the_teacher_is_its_scorer(tmp_path):
    from ldlm import teacher_spec

    run, other = tmp_path / "run", tmp_path / "other"
    assert teacher_spec.same_lm("reference", run, run, "reference")
    assert teacher_spec.same_lm(f"{run}:reference", tmp_path / "x", run, "reference")
    assert teacher_spec.same_lm("ar", run, run, "ar")  # scored by the baseline itself
    assert not teacher_spec.same_lm("ar", run, run, "reference")  # the default teacher
    assert not teacher_spec.same_lm(f"{other}:reference", run, run, "reference")
    assert not teacher_spec.same_lm("python:m:f", run, run, "reference")
