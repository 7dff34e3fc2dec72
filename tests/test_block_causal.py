"""The block-causal prior: causality, one-pass training against a loop over blocks, KV-cached
sampling against recomputing the window, and the pipeline's requests."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ldlm import priors
from ldlm.config import DiTConfig, MeshConfig
from ldlm.diffusion import samplers
from ldlm.diffusion.spec import SamplingSpec
from ldlm.errors import ConfigError
from ldlm.inference.generation import LatentDiffusionPipeline, PipelineError
from ldlm.inference.textvae import TextVAE
from ldlm.mesh import PARAM_RULES, make_mesh
from ldlm.priors.block_causal import sampler as bc_sampler
from ldlm.priors.block_causal.model import BlockCausalDiT
from ldlm.priors.block_causal.objective import block_causal_loss, window_times
from tests.helpers import randomize

N, D, CLASSES = 8, 8, 3
N_TINY = 8  # latents per block of the tiny preset's VAE
CFG = DiTConfig(kind="block_causal", width=64, heads=2, mlp_dim=128, layers=2, window=2,
                block_size=4)
W, G = CFG.window * N, CFG.block_size  # 16 latents in 4 diffusion blocks


def _model(cfg=CFG, n=N, d=D, classes=CLASSES):
    with jax.set_mesh(make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])), \
            nnx.logical_axis_rules(PARAM_RULES):
        model = BlockCausalDiT(cfg, n, d, classes, rngs=nnx.Rngs(params=0))
    return randomize(model)  # adaLN-Zero starts at zero: every branch must speak


def _window(B=3, seed=0):
    k = jax.random.split(jax.random.PRNGKey(seed), 4)
    x0, z = jax.random.normal(k[0], (B, W, D)), jax.random.normal(k[1], (B, W, D))
    t = window_times(k[2], B, W, G, CFG, train=False)  # uniform times
    return x0, z, t, jnp.arange(B, dtype=jnp.int32) % (CLASSES + 1)


@pytest.mark.parametrize("b", [0, 1, 2])
def test_later_blocks_leave_the_outputs_up_to_block_b_unchanged(b):
    model = _model()
    x0, z, t, labels = _window()
    sc = jnp.ones_like(z)
    forward = nnx.jit(lambda m, x0, z, t, sc: m(x0, z, t, self_cond_BxWxD=sc, label_B=labels))
    out = forward(model, x0, z, t, sc)
    cut = (b + 1) * G
    bump = jax.random.normal(jax.random.PRNGKey(9), (3, W - cut, D))
    changed = forward(model, x0.at[:, cut:].add(bump), z.at[:, cut:].add(bump),
                      t.at[:, cut:].set(0.5), sc.at[:, cut:].add(bump))
    np.testing.assert_allclose(changed[:, :cut], out[:, :cut], atol=1e-6)
    assert float(jnp.abs(changed[:, cut:] - out[:, cut:]).max()) > 1e-2  # the bump is seen


class LoopOverBlocks:
    """The model's training forward as W/G separate computations, block after block: the
    clean history committed through the KV cache, then the noisy block alone against it."""

    def __init__(self, model: BlockCausalDiT):
        self.model, self.null_label, self.G = model, model.null_label, model.G

    def __call__(self, x0, z, t, *, self_cond_BxWxD=None, label_B=None, latent_mask_BxW=None):
        m = self.model
        sc = jnp.zeros_like(z) if self_cond_BxWxD is None else self_cond_BxWxD
        cache, outs = m.empty_cache(z.shape[0]), []
        for start in range(0, W, G):
            block = slice(start, start + G)
            outs.append(m.denoise(cache, z[:, block], t[:, start], start,
                                  self_cond_BxGxD=sc[:, block], label_B=label_B,
                                  valid_BxG=latent_mask_BxW[:, block]))
            cache = m.commit(cache, x0[:, block], start, valid_BxG=latent_mask_BxW[:, block],
                             label_B=label_B)
        return jnp.concatenate(outs, axis=1)


@pytest.mark.parametrize("train", [False, True])
def test_one_pass_loss_equals_a_loop_over_blocks(train):
    model = _model()
    x0, _, _, labels = _window(B=4)
    latent_mask = jnp.ones((4, W), bool).at[1, N:].set(False)  # a document ends mid-window
    tokens_mask = jnp.ones((4, CFG.window, 4), bool).at[1, 1:].set(False)
    batch = {"z": x0 * latent_mask[..., None], "latent_mask": latent_mask, "label": labels,
             "mask": tokens_mask}
    cfg = DiTConfig(**{**CFG.__dict__, "self_cond_prob": 0.5, "label_dropout": 0.3})
    rng = jax.random.PRNGKey(3)
    one = block_causal_loss(model, batch, rng, 0, train, counts={"rows": 4.0}, cfg=cfg)
    loop = block_causal_loss(LoopOverBlocks(model), batch, rng, 0, train,
                             counts={"rows": 4.0}, cfg=cfg)
    assert float(one[0]) > 0.1
    np.testing.assert_allclose(float(loop[0]), float(one[0]), rtol=1e-5)
    np.testing.assert_allclose(float(loop[1]["mse_x0"]), float(one[1]["mse_x0"]), rtol=1e-5)


@pytest.mark.parametrize("sampler,guided", [("ddpm", False), ("dpm++", True)])
def test_kv_cached_sampling_equals_recomputing_the_window_at_every_step(sampler, guided):
    model = _model()
    graphdef, params = nnx.split(model)
    B, steps, guidance = 2, 4, 2.0
    labels = jnp.array([0, 1], jnp.int32)
    null = jnp.full_like(labels, model.null_label)
    spec = SamplingSpec(steps=steps, sampler=sampler, guidance=guidance)
    cached = jax.jit(functools.partial(bc_sampler.denoise_block, graphdef=graphdef, dcfg=CFG,
                                       guided=guided))
    cache = model.empty_cache(2 * B if guided else B)
    history = jnp.zeros((B, W, D))
    for b, start in enumerate(range(0, W, G)):
        block = slice(start, start + G)
        key = jax.random.PRNGKey(b)
        z_T = jax.random.normal(jax.random.fold_in(key, 7), (B, G, D))
        z, cache = cached(params, cache, jnp.int32(start), z_T, key, labels, spec.traced(),
                          jnp.float32(1.0))

        def whole_window(zb, tb, sc, label):
            zw = jnp.zeros((B, W, D)).at[:, block].set(zb)
            tw = jnp.zeros((B, W)).at[:, block].set(jnp.broadcast_to(tb[:, None], (B, G)))
            scw = jnp.zeros((B, W, D)).at[:, block].set(sc)
            return model(history, zw, tw, self_cond_BxWxD=scw, label_B=label)[:, block]

        def net(zb, tb, sc):
            cond = whole_window(zb, tb, sc, labels)
            if not guided:
                return cond
            return samplers.guide(cond, whole_window(zb, tb, sc, null), guidance)

        ref = samplers.sample(net, z_T, key, spec, schedule=CFG.schedule,
                              prediction=CFG.prediction)
        np.testing.assert_allclose(np.asarray(z), np.asarray(ref), atol=2e-5)
        history = history.at[:, block].set(ref)


def test_block_size_must_divide_the_window(tiny_cfg):
    bc = ["dit.kind=block_causal", "dit.window=2"]
    with pytest.raises(ConfigError, match="dit.block_size=3 must divide the window of 16 "
                                          "latents"):
        priors.check(tiny_cfg.override(bc + ["dit.block_size=3"]))
    with pytest.raises(ConfigError, match="must divide the window"):
        priors.check(tiny_cfg.override(bc))  # no block size
    with pytest.raises(ConfigError, match="read by dit.kind=block_causal only"):
        priors.check(tiny_cfg.override(["dit.window=2", "dit.block_size=4"]))  # per_block


@pytest.fixture(scope="module")
def window_pipe(trained_tiny):
    cfg, run_dir, _ = trained_tiny
    vae = TextVAE.from_run(run_dir)
    cfg = cfg.override(["dit.kind=block_causal", "dit.window=2", "dit.block_size=4"])
    model = _model(cfg.dit, vae.model.cfg.num_latents, vae.model.cfg.latent_dim, 5)
    return LatentDiffusionPipeline(cfg, model, vae, ["a", "b", "c", "d", "e"])


LONG = ("The company said on Monday that profits rose by a third in the year to March, "
        "helped by strong sales in Asia and lower costs at home. ") * 4


def test_prompts_of_different_lengths_continue_in_one_batch(window_pipe):
    """Each row continues its own prompt: the prompt changes what follows it, and a batch
    mate's prompt (here one VAE block longer, so this row's history is padded) does not."""
    pipe = window_pipe
    short, other = "Shares rose.", "Prices fell sharply in Tokyo."

    def continuation(prompts):
        return pipe.generate_tokens(n=2, steps=2, prompt=prompts, max_tokens=40, label="a",
                                    guidance=2.0, seed=1)

    beside_long = continuation([short, LONG[:60]])
    assert beside_long[0] == continuation([short, other])[0]
    assert beside_long[0] != continuation([other, other])[0]
    assert all(0 < len(t) <= 40 for t in beside_long)
    # a prompt longer than the history (48 latents, 12 slots) is continued from its end,
    # as the cache holds a text that grows past the window
    assert len(pipe.generate(n=1, steps=2, prompt=LONG, max_tokens=8)) == 1
    slots, labels = pipe.sampler.model.cache_slots, np.full(1, pipe.sampler.null_label)
    long_z = np.random.default_rng(0).standard_normal((6, pipe.N, pipe.D)).astype(np.float32)
    tail = long_z.reshape(-1, pipe.D)[-slots:]
    first = [next(pipe.sampler.stream(1, SamplingSpec(steps=2, seed=3), labels, [z]))
             for z in (long_z, tail, tail[1:])]
    np.testing.assert_array_equal(first[0], first[1])
    assert np.abs(first[1] - first[2]).max() > 0
    # past the window: the cache rolls, the positions go on, and earlier blocks stay as
    # they were written
    five = pipe.sample_latents(n=1, steps=1, num_blocks=5)
    np.testing.assert_array_equal(five[:, :2], pipe.sample_latents(n=1, steps=1,
                                                                    num_blocks=2))
    assert pipe.generate(n=1, steps=1, num_blocks=5) == pipe.decode(five)


@pytest.mark.parametrize("kwargs,match", [
    ({"prompt": "  "}, "the prompt text is empty"),
    ({"max_tokens": 0}, "max_tokens must be a positive integer"),
    ({"max_tokens": -3}, "max_tokens must be a positive integer"),
    ({"prompt": ["a", "b", "c"]}, "got 3 prompts for n=2"),
])
def test_bad_requests_are_one_line_errors(window_pipe, kwargs, match):
    with pytest.raises(PipelineError, match=match):
        window_pipe.generate(**{"n": 2, "steps": 2, **kwargs})


def test_a_whole_window_prior_writes_one_window_and_takes_no_prompt(window_pipe):
    cfg = window_pipe.cfg.override(["dit.block_size=16"])
    whole = LatentDiffusionPipeline(cfg, _model(cfg.dit, window_pipe.N, window_pipe.D, 5),
                                    window_pipe.vae, window_pipe.label_names)
    # its one window is two VAE blocks, written together and read in order
    assert whole.generate(n=1, steps=1, num_blocks=2, seed=2) == whole.decode(
        whole.sample_latents(n=1, steps=1, num_blocks=2, seed=2))
    for kwargs in ({"prompt": "Shares rose."}, {"num_blocks": 3}):
        with pytest.raises(PipelineError, match="keeps history"):
            whole.generate(n=1, steps=1, **kwargs)


@pytest.mark.slow  # about a minute: make test-slow
def test_a_tiny_prior_trained_on_a_few_documents_continues_their_text(tiny_run, tiny_cfg):
    """A VAE and a block-causal prior overfit to the first blocks of the corpus: prompted
    with a document's block, the pipeline writes that document's next block."""
    import difflib

    from ldlm.data import batches as pipeline
    from ldlm.data.latents import LatentNormaliser
    from ldlm.data.tokenizer import Tokenizer
    from ldlm.inference.textvae import Codec
    from ldlm.models.vae import TextVAEModel
    from ldlm.train.loop import batch_counts
    from ldlm.train.vae import vae_loss
    from tests.helpers import continuation_scores, fit

    run_dir, stats = tiny_run
    cfg = tiny_cfg.override(["vae.latent_noise_max=0.2", "dit.kind=block_causal",
                             "dit.window=2", "dit.block_size=4", "dit.self_cond_prob=0",
                             "dit.label_dropout=0"])
    ds = pipeline.make_dataset(pipeline.block_source(run_dir, "train"), batch_size=12,
                               train=False, process_index=0, process_count=1)
    blocks = {k: np.asarray(v) for k, v in next(iter(ds)).items()}  # block order
    with jax.set_mesh(make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])), \
            nnx.logical_axis_rules(PARAM_RULES):
        vae = TextVAEModel(cfg.vae, stats["vocab_size"], cfg.data.block_len,
                           rngs=nnx.Rngs(params=0))
    batch = {k: jnp.asarray(v) for k, v in blocks.items()}
    vae = fit(vae, lambda m, rng, i: vae_loss(m, batch, rng, i, True, counts=batch_counts(
        batch), cfg=cfg.vae, total_steps=300), 400, 3e-3)
    z = np.asarray(Codec(vae).encode(batch["tokens"]))
    normaliser = LatentNormaliser(z.mean((0, 1)), z.std((0, 1)) + 1e-3)
    z = normaliser.normalise(z)
    # windows of two consecutive blocks of one document
    pairs = [i for i in range(len(z) - 1) if blocks["doc_index"][i] == blocks["doc_index"][
        i + 1] and blocks["block_index"][i + 1] == blocks["block_index"][i] + 1]
    assert len(pairs) >= 3
    windows = {"z": jnp.asarray(np.stack([np.concatenate([z[i], z[i + 1]]) for i in pairs])),
               "latent_mask": jnp.ones((len(pairs), 2 * N_TINY), bool),
               "label": jnp.full((len(pairs),), -1, jnp.int32),
               "mask": jnp.ones((len(pairs), 2, 1), bool)}
    prior = _model(cfg.dit, N_TINY, cfg.vae.latent_dim, 5)
    prior = fit(prior, lambda m, rng, i: block_causal_loss(
        m, windows, rng, i, True, counts={"rows": float(len(pairs))}, cfg=cfg.dit), 600, 5e-3)
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    text_vae = TextVAE(cfg, vae, tokenizer, normaliser=normaliser)
    pipe = LatentDiffusionPipeline(cfg, prior, text_vae, [])
    real = blocks["mask"]
    prompts = [tokenizer.decode(blocks["tokens"][i][real[i]]) for i in pairs]
    wrote = pipe.generate_tokens(n=len(pairs), steps=20, sampler="ddim", prompt=prompts,
                                 num_blocks=1)
    own, other = continuation_scores(wrote, blocks, pairs)
    assert np.median(own) >= 0.9 and np.mean(own >= 0.8) >= 0.75, own
    assert np.mean(own > other) >= 0.75, (own, other)  # its own next block, not any block
    # infilling: the block between two blocks of a document is the one in between
    triples = [i for i in pairs if i + 1 in pairs][:3]
    text = lambda j: tokenizer.decode(blocks["tokens"][j][real[j]])  # noqa: E731
    middle = [pipe.infill(text(i), text(i + 2), n=1, steps=20, sampler="ddim")[0]
              for i in triples]
    fits = [difflib.SequenceMatcher(None, tokenizer.encode(text), blocks["tokens"][i + 1][
        real[i + 1]].tolist()).ratio() for i, text in zip(triples, middle)]
    assert np.median(fits) >= 0.8, (fits, middle)


def test_trajectory_edit_infill_and_estimates_of_the_block_causal_prior(window_pipe):
    pipe = window_pipe
    traj = pipe.trajectory(n=2, steps=3, sampler="ddim", seed=1)
    assert len(traj) == 3
    assert traj[-1] == pipe.generate(n=2, steps=3, sampler="ddim", seed=1)
    a, b = "Shares rose on Monday.", "The team lost again at home."
    assert pipe.edit([a, b], strength=0.0) == [a, b]
    # at strength 1 nothing of the input is left: two texts of one block edit alike
    assert pipe.edit([a], strength=1.0, steps=2) == pipe.edit([b], strength=1.0, steps=2)
    assert len(pipe.infill(a, b, n=2, steps=2)) == 2
    z = pipe.sample_latents(n=3, steps=2)
    assert z.shape == (3, pipe.N, pipe.D)
    # near t = 0 the clean estimate (v-prediction) is the input itself
    np.testing.assert_allclose(pipe.predict_clean(z, np.full(3, 1e-4, np.float32)), z,
                               atol=1e-2)


def test_the_dit_stage_trains_resumes_and_serves_a_block_causal_prior(tiny_dit, tmp_path):
    from ldlm.stages.dit import run_dit
    from tests.helpers import link_stages

    cfg, src, _ = tiny_dit
    run_dir = link_stages(src, tmp_path / "bc", ("data", "tokenizer", "vae", "latents"))
    cfg = cfg.override(["dit.kind=block_causal", "dit.window=2", "dit.block_size=4",
                        "dit_train.steps=4",
                        "dit_train.checkpoint_every=2", "dit.sample_steps=2"])
    run_dit(cfg, run_dir)
    more = cfg.override(["dit_train.steps=6"])
    run_dit(more, run_dir)  # resumes from step 4
    log = (run_dir / "dit" / "metrics.jsonl").read_text()
    assert '"step": 6' in log or '"step":6' in log
    pipe = LatentDiffusionPipeline.from_pretrained(run_dir)
    assert pipe.kind == "block_causal" and pipe.has_context
    # the loaded prior writes what the trained one wrote into its last sample dump
    dump = json.loads((run_dir / "dit" / "samples" / "step_6.json").read_text())["2"]
    labels = [s["label"] for s in dump]
    assert pipe.generate(n=len(dump), steps=2, sampler="ddim", label=labels, seed=cfg.seed,
                         num_blocks=2) == [s["text"] for s in dump]
    with pytest.raises(ConfigError, match="dit.block_size"):  # another architecture
        run_dit(more.override(["dit.block_size=8", "dit_train.steps=8"]), run_dir)
    samples = json.loads(sorted((run_dir / "dit" / "samples").glob("*.json"))[-1].read_text())
    assert all(s["text"] for s in samples["2"])
