"""TextVAE: model, loss, training loop, checkpoints, Python API."""

import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ldlm.config import MeshConfig
from ldlm.data import batches as pipeline
from ldlm.data.tokenizer import PAD_ID, Tokenizer
from ldlm.errors import LdlmError, MissingStageError
from ldlm.inference.textvae import Codec
from ldlm.mesh import PARAM_RULES, make_mesh
from ldlm.models.vae import TextVAEModel
from ldlm.inference.textvae import TextTooLong, TextVAE
from ldlm.train.loop import batch_counts
from ldlm.train.vae import train_vae, vae_loss
from tests.helpers import fit


def _model(cfg, vocab, seed=0):
    mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
    with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):
        return TextVAEModel(cfg.vae, vocab, cfg.data.block_len, rngs=nnx.Rngs(params=seed))


def _first_batch(cfg, run_dir, n):
    src = pipeline.block_source(run_dir, "train")
    ds = pipeline.make_dataset(src, batch_size=n, train=False, process_index=0,
                               process_count=1)
    return {k: jnp.asarray(v) for k, v in next(iter(ds)).items()}


def test_tiny_vae_overfits_a_handful_of_blocks(tiny_run, tiny_cfg):
    run_dir, stats = tiny_run
    cfg = tiny_cfg.override(["vae.latent_noise_max=0.2"])
    model = _model(cfg, stats["vocab_size"])
    batch = _first_batch(cfg, run_dir, 8)
    trained = fit(model, lambda m, rng, i: vae_loss(m, batch, rng, i, True,
                                                    counts=batch_counts(batch), cfg=cfg.vae,
                                                    total_steps=300), 400, 3e-3)
    codec = Codec(trained)
    pred, real = map(np.asarray, codec.decode(codec.encode(batch["tokens"])))
    mask = np.asarray(batch["mask"])
    assert (pred[mask] == np.asarray(batch["tokens"])[mask]).all()  # 100% of real tokens
    assert (real == mask).all()  # and every block's end


def test_padding_never_enters_the_loss(tiny_run, tiny_cfg):
    run_dir, stats = tiny_run
    model = _model(tiny_cfg, stats["vocab_size"])
    batch = _first_batch(tiny_cfg, run_dir, 8)
    mask = np.asarray(batch["mask"]).copy()
    mask[:, 20:] = False  # make sure there is padding
    batch = {**batch, "mask": jnp.asarray(mask)}
    rng = jax.random.PRNGKey(0)
    loss = lambda b, train: vae_loss(model, b, rng, 5, train, counts=batch_counts(b),
                                     cfg=tiny_cfg.vae, total_steps=60)
    # garbage token ids in padding positions change nothing
    garbage = np.where(mask, np.asarray(batch["tokens"]),
                       np.random.default_rng(0).integers(4, 900, mask.shape))
    noisy = {**batch, "tokens": jnp.asarray(garbage, jnp.int32)}
    for train in (True, False):
        (l1, m1), (l2, m2) = loss(batch, train), loss(noisy, train)
        assert float(l1) == float(l2)
        assert all(float(m1[k]) == float(m2[k]) for k in m1)
        assert float(batch_counts(batch)["tokens"]) == mask.sum()
    # an all-padding row (the end of an evaluation pass) changes no token metric
    extra = {k: jnp.concatenate([v, v[:1]]) for k, v in batch.items()}
    extra["mask"] = extra["mask"].at[-1].set(False)
    extra["tokens"] = extra["tokens"].at[-1].set(PAD_ID)
    (_, m1), (_, m2) = loss(batch, False), loss(extra, False)
    assert float(batch_counts(extra)["tokens"]) == float(batch_counts(batch)["tokens"])
    for k in ("recon", "accuracy", "length_bce", "kl"):
        np.testing.assert_allclose(float(m1[k]), float(m2[k]), rtol=1e-6)


def test_logical_axes_map_onto_the_mesh(tiny_cfg):
    mesh = make_mesh(MeshConfig(2, 2, 2))
    with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):
        model = TextVAEModel(tiny_cfg.vae, 1000, 32, rngs=nnx.Rngs(params=0))
    specs = {"/".join(map(str, path)): tuple(v[...].sharding.spec)
             for path, v in nnx.to_flat_state(nnx.state(model))}
    assert specs["embed/table"] == ("tensor", "fsdp")
    assert specs["encoder/0/attn/wq"] == ("fsdp", "tensor", None)
    assert specs["encoder/0/attn/wo"] == ("tensor", None, "fsdp")
    assert specs["encoder/0/mlp/down/kernel"] == ("tensor", "fsdp")
    assert specs["to_mean/kernel"] == ("fsdp", None)
    assert specs["encoder_norm/scale"] == ("fsdp",)
    # and every parameter really is laid out over the 8 devices
    for _, v in nnx.to_flat_state(nnx.state(model)):
        assert len(v[...].sharding.device_set) == 8


TEXTS = ["Shares in the bank rose sharply on Monday.", "The film won three awards.",
         "Ministers will meet"]


def test_checkpoint_in_a_fresh_process_gives_bit_identical_encodings(trained_tiny, tmp_path):
    cfg, run_dir, result = trained_tiny
    tok = Tokenizer.load(run_dir / "tokenizer")
    device0 = jax.local_devices()[0]
    model = nnx.merge(result.graphdef, jax.device_put(result.state.params, device0))
    here = TextVAE(cfg, model, tok).encode(TEXTS)
    out = tmp_path / "z.npy"
    code = ("import sys, numpy as np; from ldlm import TextVAE; "
            f"np.save(sys.argv[2], TextVAE.from_run(sys.argv[1]).encode({TEXTS!r}))")
    subprocess.run([sys.executable, "-c", code, str(run_dir), str(out)], check=True,
                   timeout=180)
    there = np.load(out)
    assert here.shape == (3, cfg.vae.num_latents, cfg.vae.latent_dim)
    assert here.dtype == there.dtype and np.array_equal(here, there)


def test_python_api(trained_tiny):
    cfg, run_dir, _ = trained_tiny
    vae = TextVAE.from_run(run_dir)
    z = vae.encode(TEXTS)
    assert z.shape == (3, 8, 16) and np.isfinite(z).all()
    # latent means are RMS-normalised per vector
    np.testing.assert_allclose(np.sqrt((z ** 2).mean(-1)), 1.0, rtol=1e-3)
    texts = vae.decode(z)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    long = " ".join(["A much longer sentence about markets and football."] * 10)
    with pytest.raises(TextTooLong, match=r"text 1 has \d+ tokens with EOS, but a block holds 32"):
        vae.encode(["short", long])
    parts = vae.encode([long, "short"], split=True)
    assert len(parts) == 2 and parts[0].shape[0] > 1 and parts[1].shape[0] == 1
    with pytest.raises(LdlmError, match="latents must have shape"):
        vae.decode(np.zeros((2, 4, 16)))


def test_from_run_without_vae_names_make_vae(tiny_run):
    run_dir, _ = tiny_run
    with pytest.raises(MissingStageError, match="make vae"):
        TextVAE.from_run(run_dir)


def test_bfloat16_compute_keeps_float32_parameters(tiny_run, tiny_cfg):
    run_dir, stats = tiny_run
    batch = _first_batch(tiny_cfg, run_dir, 8)
    losses = {}
    for dtype in ("float32", "bfloat16"):
        cfg = tiny_cfg.override([f"vae_train.compute_dtype={dtype}"])
        from ldlm.models.vae import build_vae
        mesh = make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])
        with jax.set_mesh(mesh), nnx.logical_axis_rules(PARAM_RULES):
            model = build_vae(cfg, stats["vocab_size"])(nnx.Rngs(params=0))
        assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nnx.state(model)))
        loss, m = vae_loss(model, batch, jax.random.PRNGKey(0), 0, False,
                           counts=batch_counts(batch), cfg=cfg.vae,
                           total_steps=10)
        assert loss.dtype == jnp.float32 and np.isfinite(float(loss))
        losses[dtype] = float(loss)
    np.testing.assert_allclose(losses["bfloat16"], losses["float32"], rtol=0.02)


def test_resuming_with_another_architecture_is_a_clear_error(trained_tiny):
    cfg, run_dir, _ = trained_tiny
    from ldlm.errors import ConfigError
    config = (run_dir / "vae" / "config.json").read_bytes()
    with pytest.raises(ConfigError, match=r"vae.latent_dim: 16 there, 8 now.*another RUN"):
        train_vae(cfg.override(["vae.latent_dim=8"]), run_dir)
    assert (run_dir / "vae" / "config.json").read_bytes() == config, "refused, yet rewritten"
