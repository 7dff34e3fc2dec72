"""Latent cache, DiT model, DiT training stage."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from ldlm.checkpoint import Checkpointer
from ldlm.config import DiTConfig, MeshConfig
from ldlm.data import latents as latents_lib
from ldlm.errors import ConfigError, MissingStageError
from ldlm.mesh import PARAM_RULES, make_mesh
from ldlm.models.dit_trunk import timestep_embedding
from ldlm.inference.textvae import TextVAE
from ldlm.priors.decoder_scores import decoder_token_scores
from ldlm.priors.per_block.model import DiT
from ldlm.priors.per_block.objective import dit_loss
from ldlm.train.dit import frozen_decoder, train_dit
from ldlm.diffusion import samplers
from ldlm.diffusion.spec import SamplingSpec
from ldlm.train.loop import batch_counts, replicate_unsharded
from ldlm.train.state import init_state, make_optimizer
from tests.helpers import assert_trees_close, fit, randomize

CFG = DiTConfig(width=64, heads=2, mlp_dim=128, layers=2)


def _dit(cfg=CFG, N=4, D=8, classes=3, seed=0):
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):
        return DiT(cfg, N, D, classes, rngs=nnx.Rngs(params=seed))


def test_residual_branches_are_exactly_zero_at_init():
    model = _dit()
    x = jax.random.normal(jax.random.PRNGKey(0), (2, 12, 64))
    c = jax.random.normal(jax.random.PRNGKey(1), (2, 64))
    mask = jnp.ones((2, 12, 12), bool)
    for block in model.blocks:
        assert np.array_equal(np.asarray(block(x, c, mask)), np.asarray(x))
    z = jax.random.normal(jax.random.PRNGKey(2), (2, 4, 8))
    out = model(z, jnp.array([0.3, 0.7]), label_B=jnp.array([0, 1]))
    assert not np.asarray(out).any()  # zero-initialised output layer and modulation


def _inputs(seed=0, B=3, N=4, D=8):
    ks = jax.random.split(jax.random.PRNGKey(seed), 4)
    return (jax.random.normal(ks[0], (B, N, D)), jax.random.uniform(ks[1], (B,)),
            jax.random.normal(ks[2], (B, N, D)), jax.random.normal(ks[3], (B, N, D)))


def test_dropping_a_conditioning_input_removes_only_its_contribution():
    model = randomize(_dit())
    z, t, prev, nxt = _inputs()
    yes, no = jnp.ones(3, bool), jnp.zeros(3, bool)
    label = jnp.array([0, 1, 2])
    base = model(z, t, label_B=label, prev_BxNxD=prev, has_prev_B=no, next_BxNxD=nxt,
                 has_next_B=yes)
    # an absent previous block: its values do not matter, and equal not giving it at all
    other = model(z, t, label_B=label, prev_BxNxD=prev * 5 + 1, has_prev_B=no,
                  next_BxNxD=nxt, has_next_B=yes)
    given_none = model(z, t, label_B=label, next_BxNxD=nxt, has_next_B=yes)
    assert np.array_equal(np.asarray(base), np.asarray(other))
    assert np.array_equal(np.asarray(base), np.asarray(given_none))
    # present, it does matter; so do the next block and the label
    with_prev = model(z, t, label_B=label, prev_BxNxD=prev, has_prev_B=yes, next_BxNxD=nxt,
                      has_next_B=yes)
    assert not np.allclose(np.asarray(base), np.asarray(with_prev))
    no_next = model(z, t, label_B=label, next_BxNxD=nxt, has_next_B=no)
    assert np.array_equal(np.asarray(no_next), np.asarray(model(z, t, label_B=label)))
    assert not np.allclose(np.asarray(no_next), np.asarray(base))
    null = model(z, t, label_B=jnp.full(3, model.null_label), next_BxNxD=nxt, has_next_B=yes)
    assert np.array_equal(np.asarray(null), np.asarray(model(z, t, next_BxNxD=nxt,
                                                              has_next_B=yes)))
    assert not np.allclose(np.asarray(null), np.asarray(base))
    # rows are independent: changing row 0's neighbour leaves rows 1 and 2 alone
    prev2 = prev.at[0].add(3.0)
    a = model(z, t, prev_BxNxD=prev, has_prev_B=yes)
    b = model(z, t, prev_BxNxD=prev2, has_prev_B=yes)
    assert np.array_equal(np.asarray(a[1:]), np.asarray(b[1:]))
    assert not np.allclose(np.asarray(a[0]), np.asarray(b[0]))


def test_timestep_embedding_distinguishes_times():
    e = timestep_embedding(jnp.array([0.0, 0.001, 0.5, 1.0]), 64)
    assert e.shape == (4, 64)
    d = np.linalg.norm(np.asarray(e[:, None] - e[None]), axis=-1)
    assert (d[np.triu_indices(4, 1)] > 0.1).all()


def test_tiny_dit_overfits_a_fixed_set_of_latents():
    """Trained on 4 fixed latents, 50-step DDIM samples land next to them."""
    cfg = DiTConfig(width=64, heads=2, mlp_dim=128, layers=2, label_dropout=0.0,
                    self_cond_prob=0.5, use_context=False)
    data = jax.random.normal(jax.random.PRNGKey(7), (4, 4, 8))
    batch = {"z": jnp.tile(data, (8, 1, 1)), "label": jnp.full((32,), -1, jnp.int32),
             "doc_index": jnp.zeros(32, jnp.int32), "prev": jnp.zeros((32, 4, 8)),
             "next": jnp.zeros((32, 4, 8)), "has_prev": jnp.zeros(32, bool),
             "has_next": jnp.zeros(32, bool), "mask": jnp.ones((32, 16), bool)}
    trained = fit(_dit(cfg, classes=1), lambda m, rng, i: dit_loss(
        m, batch, rng, i, True, counts=batch_counts(batch), cfg=cfg), 1500, 2e-3)
    z_T = jax.random.normal(jax.random.PRNGKey(0), (16, 4, 8))
    samples = samplers.sample(lambda z, t, sc: trained(z, t, self_cond_BxNxD=sc), z_T,
                              jax.random.PRNGKey(1), SamplingSpec(steps=50, sampler="ddim"),
                              schedule=cfg.schedule, snr_scale=cfg.snr_scale,
                              prediction=cfg.prediction)
    rms = lambda x: np.sqrt(np.mean(np.asarray(x) ** 2, axis=(-2, -1)))
    nearest = rms(samples[:, None] - data[None]).min(axis=1)  # RMS distance per coordinate
    random_distance = rms(data[:, None] - data[None])[np.triu_indices(4, 1)].min()
    print(f"DDIM-50 samples: RMS distance to the nearest training latent "
          f"{nearest.mean():.3f} (max {nearest.max():.3f}); between training latents "
          f">= {random_distance:.3f}")
    assert nearest.max() < 0.15 * random_distance


def test_latent_cache_matches_the_vae_and_knows_neighbours(tiny_dit):
    cfg, run_dir, _ = tiny_dit
    src = latents_lib.LatentSource(run_dir, "validation")
    meta = latents_lib.read_meta(run_dir)
    assert len(src) == meta["blocks"]["validation"] > 0
    normaliser = latents_lib.LatentNormaliser.load(run_dir)
    mean, std = normaliser.mean_D, normaliser.std_D
    assert mean.shape == std.shape == (cfg.vae.latent_dim,) and (std > 0).all()
    items = [src[i] for i in range(min(len(src), 40))]
    for i, it in enumerate(items):
        assert it["z"].shape == (cfg.vae.num_latents, cfg.vae.latent_dim)
        assert bool(it["has_prev"]) == (it["block_index"] > 0)
        if it["has_prev"]:
            np.testing.assert_array_equal(it["prev"], items[i - 1]["z"])
        if i + 1 < len(items) and items[i + 1]["doc_index"] == it["doc_index"]:
            assert it["has_next"]
            np.testing.assert_array_equal(it["next"], items[i + 1]["z"])
    # the cached latents are the VAE's encodings of the blocks
    from ldlm.data import batches
    vae = TextVAE.from_run(run_dir)
    block = batches.block_source(run_dir, "validation")[3]
    z = vae.encode_tokens(block["tokens"][None])[0]
    np.testing.assert_allclose((z - mean) / std, src[3]["z"], rtol=1e-4, atol=1e-4)
    # ... and carry the block's tokens with its padding mask
    np.testing.assert_array_equal(src[3]["tokens"], block["tokens"])
    np.testing.assert_array_equal(src[3]["mask"], block["mask"])


def test_latent_cache_of_an_older_version_is_refused(tiny_dit, tmp_path):
    _, run_dir, _ = tiny_dit
    meta = latents_lib.read_meta(run_dir)
    del meta["block_len"]  # what caches whose records held no tokens wrote
    (tmp_path / "latents").mkdir()
    (tmp_path / "latents" / latents_lib.META_FILE).write_text(json.dumps(meta))
    with pytest.raises(ConfigError, match="rerun `make latents`"):
        latents_lib.read_meta(tmp_path)


def _latent_batch(run_dir, n=16):
    src = latents_lib.LatentSource(run_dir, "validation")
    items = [src[i] for i in range(n)]
    return {k: jnp.asarray(np.stack([it[k] for it in items])) for k in items[0]}


@pytest.mark.slow  # about 30 s alone, for an option no preset uses: make test-slow
def test_token_scores_are_the_decoders_and_the_token_loss_reaches_the_dit(tiny_dit):
    cfg, run_dir, result = tiny_dit
    graphdef, fixed = frozen_decoder(run_dir, result.mesh)  # laid out like the DiT
    batch = jax.device_put(_latent_batch(run_dir), NamedSharding(result.mesh, P()))
    # on the cached (clean) latents, the scores are the VAE's own reconstruction accuracy
    vae = TextVAE.from_run(run_dir)
    clean = batch["z"] * fixed["std"][None, None] + fixed["mean"][None, None]
    _, acc_B = decoder_token_scores(nnx.merge(graphdef, fixed["vae"]).decode, clean,
                                    batch["tokens"], batch["mask"])
    tokens, _ = vae.decode_tokens(np.asarray(clean))
    m = np.asarray(batch["mask"])
    expected = [(tokens[i] == np.asarray(batch["tokens"][i]))[m[i]].mean() for i in range(16)]
    np.testing.assert_allclose(np.asarray(acc_B), expected, atol=1e-6)

    model = result.model()
    rng = jax.random.PRNGKey(3)

    @functools.partial(nnx.jit, static_argnums=(1, 2))  # compiled: op by op is slow
    def weighted_loss(m, weight, train):
        c = dataclasses.replace(cfg.dit, token_loss_weight=weight)
        return dit_loss(m, batch, rng, 0, train, counts=batch_counts(batch), cfg=c,
                        decoder_graphdef=graphdef, frozen=fixed)

    def loss(weight, train):
        return weighted_loss(model, weight, train)

    (l0, m0), (l1, m1) = loss(0.0, True), loss(0.5, True)
    assert "token_ce" not in m0  # no decoding in training without the token loss
    assert float(l1) > float(l0) and 0 < float(m1["token_ce"])
    # evaluation reports the estimate's token scores but scores the diffusion loss alone
    (e0, n0), (e1, _) = loss(0.0, False), loss(0.5, False)
    assert float(e0) == float(e1) and 0 <= float(n0["token_accuracy"]) <= 1
    grad = nnx.jit(lambda m, w: nnx.grad(lambda m: weighted_loss(m, w, True)[0])(m),
                   static_argnums=1)
    grads = [grad(model, w) for w in (0.0, 0.5)]
    g0, g1 = (jax.tree.leaves(nnx.state(g, nnx.Param)) for g in grads)
    assert any(not np.allclose(np.asarray(a), np.asarray(b)) for a, b in zip(g0, g1))


def test_dit_stage_writes_curves_samples_and_restores_identical_ema(tiny_dit):
    cfg, run_dir, result = tiny_dit
    rows = [json.loads(l) for l in (run_dir / "dit" / "metrics.jsonl").read_text().splitlines()]
    assert any(r["split"] == "validation" for r in rows)
    assert all(np.isfinite(r["loss"]) for r in rows)
    dumps = sorted((run_dir / "dit" / "samples").glob("step_*.json"))
    assert dumps and dumps[-1].name == f"step_{cfg.dit_train.steps}.json"
    samples = json.loads(dumps[-1].read_text())
    assert all(isinstance(s["text"], str) for v in samples.values() for s in v)
    # a restored checkpoint holds exactly the EMA weights of the run
    assert result.state.ema is not None
    like = replicate_unsharded(init_state(result.state.params, make_optimizer(cfg.dit_train),
                                          0, ema=True), result.mesh)
    ckpt = Checkpointer(run_dir / "dit" / "checkpoints", stage="dit")
    restored, _, _ = ckpt.restore(like)
    ckpt.close()
    assert_trees_close(restored.ema, result.state.ema, rtol=0, atol=0)
    assert not all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in
                   zip(jax.tree.leaves(restored.ema), jax.tree.leaves(restored.params)))


def test_dit_without_latents_names_make_latents(trained_tiny):
    cfg, run_dir, _ = trained_tiny
    with pytest.raises(MissingStageError, match="make latents"):
        train_dit(cfg, run_dir)
    assert not (run_dir / "dit").exists()  # nothing that looks like a started stage
