"""The seam decoder (ldlm/models/seam_decoder.py): it starts as the VAE decoder, a block
without history is decoded as on its own, history changes only the blocks that have it, the
block reader's cache gives what a batched computation does, and `make decoder` trains,
resumes, evaluates and is picked up by TextVAE and the pipeline."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ldlm.config import MeshConfig
from ldlm.errors import LdlmError, MissingStageError
from ldlm.inference.textvae import TextVAE
from ldlm.mesh import PARAM_RULES, make_mesh
from ldlm.models.seam_decoder import SeamDecoder, load_vae_decoder
from tests.helpers import link_stages, randomize
from tests.test_block_causal import _model as block_causal_model


def _seam_like(vae_model, seed=3):
    """A seam decoder of the VAE's shape, built on one device."""
    with jax.set_mesh(make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])), \
            nnx.logical_axis_rules(PARAM_RULES):
        return SeamDecoder(vae_model.cfg, vae_model.embed.table.shape[0], vae_model.block_len,
                           rngs=nnx.Rngs(params=seed))


def _latents(vae_model, B, seed=0):
    return jax.random.normal(jax.random.PRNGKey(seed),
                             (B, vae_model.cfg.num_latents, vae_model.cfg.latent_dim))


def test_it_starts_as_the_vae_decoder(trained_tiny):
    _, _, result = trained_tiny
    vae = result.model()
    seam = _seam_like(vae)
    z = _latents(vae, 3)
    before = seam.alone(z)[0]
    load_vae_decoder(seam, jax.tree.map(np.asarray, nnx.state(vae, nnx.Param)))
    logits, real, _ = seam.alone(z)
    want_logits, want_real = vae.decode(z)
    assert not np.allclose(before, want_logits, atol=1e-3)  # the copy did something
    np.testing.assert_allclose(logits, want_logits, atol=1e-5)
    np.testing.assert_allclose(real, want_real, atol=1e-5)


def test_history_reaches_only_the_rows_that_have_it(trained_tiny):
    _, _, result = trained_tiny
    seam = randomize(_seam_like(result.model()))
    z_prev, z_prev_other, z = (_latents(seam, 4, s) for s in (1, 2, 3))
    valid = jnp.array([True, True, False, False])
    _, _, h = seam.alone(z_prev, valid)
    _, _, h_other = seam.alone(z_prev_other, valid)
    out, out_other = seam.decode(z, h)[0], seam.decode(z, h_other)[0]
    alone = seam.alone(z)[0]
    # rows without history: what the block decodes to on its own (RoPE is relative)
    np.testing.assert_allclose(out[2:], alone[2:], atol=2e-5)
    np.testing.assert_allclose(out_other[2:], alone[2:], atol=2e-5)
    # rows with history: another previous block changes the output
    assert np.abs(np.asarray(out[:2] - out_other[:2])).max() > 1e-3
    # the empty history is no history
    np.testing.assert_allclose(seam.decode(z, seam.empty_history(4))[0], alone, atol=2e-5)


def test_the_block_reader_caches_what_a_batched_pass_computes(trained_tiny):
    _, _, result = trained_tiny
    vae_model = result.model()
    seam = randomize(_seam_like(vae_model))
    vae = TextVAE.from_run(trained_tiny[1], decoder="vae")
    vae = TextVAE(vae.cfg, vae.model, vae.tokenizer, vae.label_names, vae.normaliser, seam)
    blocks = [_latents(vae_model, 2, s) for s in range(3)]
    reader = vae.reader(2)
    read = [reader.read(np.asarray(z))[0] for z in blocks]
    want = [jnp.argmax(seam.alone(blocks[0])[0], -1)]
    for prev, z in zip(blocks, blocks[1:]):
        want.append(jnp.argmax(seam.decode(z, seam.alone(prev)[2])[0], -1))
    for got, w in zip(read, want):
        np.testing.assert_array_equal(got, w)
    # the VAE decoder's reader reads every block on its own
    plain = TextVAE.from_run(trained_tiny[1], decoder="vae").reader(2)
    np.testing.assert_array_equal(plain.read(np.asarray(blocks[1]))[0],
                                  jnp.argmax(vae_model.decode(blocks[1])[0], -1))


def test_decoder_choice_errors(trained_tiny):
    run_dir = trained_tiny[1]
    with pytest.raises(MissingStageError, match="make decoder"):
        TextVAE.from_run(run_dir, decoder="seam")
    with pytest.raises(LdlmError, match="decoder='both': choose one of"):
        TextVAE.from_run(run_dir, decoder="both")
    assert TextVAE.from_run(run_dir).seam is None  # auto, and no decoder stage


def test_make_decoder_trains_resumes_and_is_used(tiny_dit, tmp_path):
    from ldlm.inference.generation import LatentDiffusionPipeline
    from ldlm.stages.decoder import run_decoder

    cfg, src, _ = tiny_dit
    run_dir = link_stages(src, tmp_path / "run", ("data", "tokenizer", "vae", "latents", "dit"))
    short = cfg.override(["decoder_train.steps=4", "decoder_train.checkpoint_every=2"])
    run_decoder(short, run_dir)
    report = run_decoder(cfg.override(["decoder_train.steps=6",
                                       "decoder_train.checkpoint_every=2"]), run_dir)
    metrics = [json.loads(line) for line in
               (run_dir / "decoder" / "metrics.jsonl").read_text().splitlines()]
    assert {m["step"] for m in metrics if m.get("split", "train") == "train"} >= {4, 6}
    table = json.loads((run_dir / "decoder" / "eval.json").read_text())["validation"]
    assert table == report["validation"] and table["blocks"] > 0
    for row in (table[s] for s in ("0.0", "1.0")):
        assert set(row) == {"vae", "seam_alone", "seam_with_history"}
        assert all(0 <= v["token_accuracy"] <= 1 for v in row.values())
    vae = TextVAE.from_run(run_dir)  # auto: the stage is done
    assert vae.seam is not None
    pipe = LatentDiffusionPipeline.from_pretrained(run_dir)
    assert pipe.vae.seam is not None
    texts = pipe.generate(n=2, steps=2, num_blocks=2)
    z = pipe.sample_latents(n=2, steps=2, num_blocks=2)
    assert z.shape == (2, 2, pipe.N, pipe.D) and len(texts) == 2
    assert pipe.decode(z) == texts  # generate decodes in order, as decode does
    # the block-causal prior reads its blocks through the seam decoder too, a prompt's
    # last block first
    window_cfg = cfg.override(["dit.kind=block_causal", "dit.window=2",
                               "dit.block_size=4"])
    window = LatentDiffusionPipeline(window_cfg, block_causal_model(window_cfg.dit, pipe.N,
                                                                    pipe.D, 5),
                                     vae, pipe.label_names)
    for prompt in (None, "Shares rose."):
        texts = window.generate(n=2, steps=1, prompt=prompt, max_tokens=40)
        assert len(texts) == 2 and all(isinstance(t, str) for t in texts)
