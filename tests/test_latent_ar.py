"""The chunk autoencoder and the latent-autoregressive prior (dit.kind=latent_ar): locality,
causality, the KV cache, the heads' losses and what they learn, and bad settings."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ldlm import priors
from ldlm.config import MeshConfig
from ldlm.data.latents import LatentNormaliser
from ldlm.diffusion.spec import SamplingSpec
from ldlm.errors import ConfigError, PipelineError
from ldlm.mesh import PARAM_RULES, make_mesh
from ldlm.models.vae import build_vae
from ldlm.priors.latent_ar.objective import energy_loss, energy_score, flow_loss
from ldlm.priors.latent_ar.sampler import LatentARSampler
from tests.helpers import continuation_scores, fit, randomize

VOCAB = 1000


def _cfg(tiny_cfg, *overrides):
    return tiny_cfg.override(["vae.kind=chunk", "dit.kind=latent_ar", "dit.window=2",
                              "dit.energy_targets=8", *overrides])


@functools.lru_cache(maxsize=8)
def _build(cfg, vocab=VOCAB, seed=0):
    """(the prior, the chunk autoencoder) of a tiny config, every parameter non-zero (built
    once per config: no test changes them)."""
    with jax.set_mesh(make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])), \
            nnx.logical_axis_rules(PARAM_RULES):
        prior = priors.get(cfg).build(cfg, cfg.vae.num_latents, cfg.vae.latent_dim, 5,
                                      vocab_size=vocab)(nnx.Rngs(params=seed))
        vae = build_vae(cfg, vocab)(nnx.Rngs(params=seed + 1))
    return randomize(prior, seed), randomize(vae, seed + 1)


def test_each_chunk_latent_reads_only_its_own_tokens(tiny_cfg):
    cfg = _cfg(tiny_cfg)
    _, vae = _build(cfg)
    K = cfg.data.block_len // cfg.vae.num_latents
    tokens = jnp.asarray(np.random.default_rng(0).integers(4, VOCAB, (1, cfg.data.block_len)),
                         jnp.int32)
    positions = (0, K + 1, cfg.data.block_len - 1)
    changed = jnp.concatenate([tokens] + [tokens.at[0, p].set((tokens[0, p] + 7) % VOCAB)
                                          for p in positions])
    mean, logvar = vae.encode(changed)
    for row, position in enumerate(positions, start=1):
        moved = np.abs(np.asarray(mean[row] - mean[0])).max(-1) > 0
        moved |= np.abs(np.asarray(logvar[row] - logvar[0])).max(-1) > 0
        assert moved.tolist() == [n == position // K for n in range(cfg.vae.num_latents)]
    # and each latent decodes on its own: a block's decoding equals its chunks' decodings
    N, D = cfg.vae.num_latents, cfg.vae.latent_dim
    logits, _ = vae.decode(mean[:1])
    alone, _ = vae.decode(mean[0].reshape(N, 1, D))
    np.testing.assert_allclose(np.asarray(logits)[0], np.asarray(alone).reshape(N * K, -1),
                               atol=1e-5)


def test_the_backbone_is_causal(tiny_cfg):
    """h_i depends on chunks < i only: changing chunk j (its tokens and its latent, both read
    with backbone_input=both) moves positions > j and no other."""
    cfg = _cfg(tiny_cfg, "dit.backbone_input=both")
    prior, _ = _build(cfg)
    W, K, D = prior.W, prior.K, prior.D
    rng = np.random.default_rng(1)
    tokens = jnp.asarray(rng.integers(4, VOCAB, (1, W, K)), jnp.int32)
    z = jnp.asarray(rng.standard_normal((1, W, D)), jnp.float32)
    h = prior.hidden(tokens, z)
    for j in (0, 5, W - 2):
        h2 = prior.hidden(tokens.at[0, j].set((tokens[0, j] + 3) % VOCAB), z.at[0, j].add(1.0))
        moved = np.abs(np.asarray(h2 - h)).max(-1)[0] > 1e-6
        assert moved.tolist() == [i > j for i in range(W)]


@pytest.mark.parametrize("head", ["energy", "flow"])
def test_kv_cached_sampling_equals_recomputing_the_sequence(tiny_cfg, head):
    """The sampler's latents, chunk by chunk against its cache (their decoded tokens fed
    back), are what the training pass over the whole sequence of those tokens and latents
    gives with the same draws."""
    cfg = _cfg(tiny_cfg, f"dit.head={head}")
    prior, vae = _build(cfg)
    D, K, W = prior.D, prior.K, prior.W
    stats = LatentNormaliser(np.full(D, 0.1, np.float32), np.full(D, 0.7, np.float32))
    sampler = LatentARSampler(cfg, prior, autoencoder=(vae, stats))
    spec = SamplingSpec(steps=1 if head == "energy" else 3, seed=3)
    B, T = 2, W - 3
    stream = sampler.stream(B, spec, np.full(B, prior.null_label, np.int32))
    z = np.concatenate([next(stream) for _ in range(-(-T // prior.N))], axis=1)[:, :T]
    logits, real = vae.decode(jnp.asarray(z) * 0.7 + 0.1)
    tokens = jnp.where(real > 0, jnp.argmax(logits, -1), 0).reshape(B, T, K)
    c = prior.head.condition(prior.hidden(tokens, jnp.asarray(z)))
    for p in range(T):
        k_draw = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(3), p))[0]
        if head == "energy":
            want = prior.head.sample(c[:, p], k_draw, 1)[:, 0]
        else:
            want = prior.head.sample(c[:, p], k_draw, spec.steps)[:, 0]
        np.testing.assert_allclose(z[:, p], np.asarray(want), atol=2e-4, err_msg=f"chunk {p}")


def test_the_energy_score_equals_its_definition_on_a_small_example():
    samples = np.array([[0.0, 0.0], [3.0, 4.0], [1.0, 1.0]], np.float32)  # N = 3
    targets = np.array([[0.0, 1.0], [2.0, 2.0]], np.float32)  # M = 2
    for alpha in (1.0, 1.5):
        d = lambda a, b: np.linalg.norm(a - b) ** alpha  # noqa: E731
        attract = sum(d(s, t) for s in samples for t in targets) / 6
        repel = sum(d(a, b) for i, a in enumerate(samples) for j, b in enumerate(samples)
                    if i != j) / 6
        got = float(energy_score(jnp.asarray(samples), jnp.asarray(targets), alpha))
        assert got == pytest.approx(2 * attract - repel, rel=1e-5)


def _head(tiny_cfg, head, D, *overrides):
    cfg = _cfg(tiny_cfg, f"dit.head={head}", "dit.width=32", "dit.head_layers=2",
               "dit.noise_dim=8", *overrides)
    with jax.set_mesh(make_mesh(MeshConfig(1, 1, 1), devices=jax.devices()[:1])), \
            nnx.logical_axis_rules(PARAM_RULES):
        cls = type(priors.get(cfg).build(cfg, 4, D, 1, vocab_size=8)(nnx.Rngs(0)).head)
        return cfg, cls(cfg.dit, D, rngs=nnx.Rngs(params=0), dtype=jnp.float32)


def test_an_energy_head_learns_a_gaussian():
    """Trained on targets from N(2, 0.5^2), its samples have that mean and spread (10%)."""
    from ldlm.config import load_experiment
    cfg, head = _head(load_experiment("bbc_news", "tiny"), "energy", 1,
                      "dit.energy_samples=16", "dit.energy_targets=16")
    h = jnp.zeros((64, 32))
    z, sigma = jnp.full((64, 1), 2.0), jnp.full((64, 1), 0.5)  # the posterior's draws
    head = fit(head, lambda m, rng, i: (energy_loss(m, m.condition(h), z, sigma, rng,
                                                    cfg.dit).mean(), {}), 300, 6e-3)
    draws = np.asarray(head.sample(head.condition(h[:1]), jax.random.PRNGKey(7), 4000))
    assert np.mean(draws) == pytest.approx(2.0, rel=0.1)
    assert np.std(draws) == pytest.approx(0.5, rel=0.1)


def test_a_flow_head_draws_both_modes_of_a_two_mode_toy():
    from ldlm.config import load_experiment
    cfg, head = _head(load_experiment("bbc_news", "tiny"), "flow", 2, "dit.flow_draws=8")
    h = jnp.zeros((128, 32))
    modes = jnp.asarray([[2.0, 2.0], [-2.0, -2.0]])

    def loss(m, rng, i):
        k_mode, k_head = jax.random.split(rng)
        z = modes[jax.random.bernoulli(k_mode, 0.5, (128,)).astype(jnp.int32)]
        return flow_loss(m, m.condition(h), z, k_head, cfg.dit).mean(), {}

    head = fit(head, loss, 300, 6e-3)
    draws = np.asarray(head.sample(head.condition(h[:1]), jax.random.PRNGKey(7), 8, 1.0,
                                   samples=1000))[0]
    near = [np.linalg.norm(draws - m, axis=-1) < 1.0 for m in np.asarray(modes)]
    assert 0.3 <= near[0].mean() <= 0.7 and 0.3 <= near[1].mean() <= 0.7, \
        (near[0].mean(), near[1].mean())
    assert (near[0] | near[1]).mean() >= 0.9


@pytest.mark.parametrize("overrides, match", [
    (["data.block_len=32", "vae.num_latents=6"], "must be a multiple of vae.num_latents"),
    (["dit.head=diffusion"], r"dit.head='diffusion' is not one of \['energy', 'flow'\]"),
    (["dit.backbone_input=audio"], "dit.backbone_input='audio' is not one of"),
    (["vae.kind=block"], "it needs vae.kind=chunk"),
    (["dit.energy_alpha=2"], "must lie in \\(0, 2\\)"),
    (["dit.energy_temperature=hot"], r"dit.energy_temperature='hot' is not one of"),
])
def test_bad_settings_are_one_line_errors(tiny_cfg, overrides, match):
    with pytest.raises(ConfigError, match=match):
        priors.check(_cfg(tiny_cfg, *overrides))


@pytest.mark.parametrize("spec, match", [
    (SamplingSpec(steps=4), "steps=4: the energy head draws a latent in one pass"),
    (SamplingSpec(steps=1, temperature=0.8), "temperature 0.8 is not of the form 1/n"),
])
def test_energy_head_requests_it_cannot_serve_are_one_line_errors(tiny_cfg, spec, match):
    cfg = _cfg(tiny_cfg)
    prior, vae = _build(cfg)
    D = prior.D
    stats = LatentNormaliser(np.zeros(D, np.float32), np.ones(D, np.float32))
    sampler = LatentARSampler(cfg, prior, autoencoder=(vae, stats))
    with pytest.raises(PipelineError, match=match):
        next(sampler.stream(1, spec, np.full(1, prior.null_label, np.int32)))


@pytest.mark.slow  # about a minute: make test-slow
def test_a_tiny_prior_trained_on_a_few_documents_continues_their_text(tiny_run, tiny_cfg):
    """A chunk autoencoder and a latent_ar prior overfit to the first blocks of the corpus:
    prompted with a document's block, the pipeline writes that document's next block."""
    from ldlm.data import batches as pipeline
    from ldlm.data.tokenizer import Tokenizer
    from ldlm.inference.generation import LatentDiffusionPipeline
    from ldlm.inference.textvae import TextVAE
    from ldlm.train.loop import batch_counts
    from ldlm.train.vae import vae_loss

    run_dir, stats = tiny_run
    cfg = _cfg(tiny_cfg, "vae.latent_noise_max=0.2", "dit.label_dropout=0")
    ds = pipeline.make_dataset(pipeline.block_source(run_dir, "train"), batch_size=12,
                               train=False, process_index=0, process_count=1)
    blocks = {k: np.asarray(v) for k, v in next(iter(ds)).items()}  # block order
    prior, vae = _build(cfg, stats["vocab_size"], seed=2)
    batch = {k: jnp.asarray(v) for k, v in blocks.items()}
    vae = fit(vae, lambda m, rng, i: vae_loss(m, batch, rng, i, True, counts=batch_counts(
        batch), cfg=cfg.vae, total_steps=300), 400, 3e-3)
    mean, logvar = (np.asarray(x) for x in vae.encode(batch["tokens"]))
    normaliser = LatentNormaliser(mean.mean((0, 1)), mean.std((0, 1)) + 1e-3)
    z, sigma = normaliser.normalise(mean), np.exp(0.5 * logvar) / normaliser.std_D
    pairs = [i for i in range(len(z) - 1) if blocks["doc_index"][i] == blocks["doc_index"][
        i + 1] and blocks["block_index"][i + 1] == blocks["block_index"][i] + 1]
    assert len(pairs) >= 3
    two = lambda x: jnp.asarray(np.stack([np.concatenate([x[i], x[i + 1]])  # noqa: E731
                                          for i in pairs]))
    windows = {"z": two(z), "sigma": two(sigma),
               "latent_mask": jnp.ones((len(pairs), 2 * cfg.vae.num_latents), bool),
               "label": jnp.full((len(pairs),), -1, jnp.int32),
               "block_index": jnp.zeros((len(pairs),), jnp.int32),
               "tokens": jnp.asarray(np.stack([blocks["tokens"][[i, i + 1]] for i in pairs])),
               "mask": jnp.asarray(np.stack([blocks["mask"][[i, i + 1]] for i in pairs]))}
    prior = fit(prior, lambda m, rng, i: priors.get(cfg).loss(
        m, windows, rng, i, True, counts={"rows": float(len(pairs))}, cfg=cfg.dit), 600, 3e-3)
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    pipe = LatentDiffusionPipeline(cfg, prior, TextVAE(cfg, vae, tokenizer,
                                                       normaliser=normaliser), [])
    real = blocks["mask"]
    prompts = [tokenizer.decode(blocks["tokens"][i][real[i]]) for i in pairs]
    wrote = pipe.generate_tokens(n=len(pairs), steps=1, prompt=prompts, num_blocks=1)
    own, other = continuation_scores(wrote, blocks, pairs)
    assert np.median(own) >= 0.9 and np.mean(own >= 0.8) >= 0.75, own
    assert np.mean(own > other) >= 0.75, (own, other)  # its own next block, not any block


def test_flow_head_guidance_mixes_the_conditional_and_null_velocities(tiny_cfg):
    from ldlm.priors.latent_ar.sampler import _flow

    cfg = _cfg(tiny_cfg, "dit.head=flow")
    prior, vae = _build(cfg)
    h = jax.random.normal(jax.random.PRNGKey(0), (4, cfg.dit.width))
    c = prior.head.condition(h)
    key = jax.random.PRNGKey(1)
    plain = _flow(prior, c[:2], key, SamplingSpec(steps=3), guided=False)
    at_one = _flow(prior, c, key, SamplingSpec(steps=3, guidance=1.0), guided=True)
    np.testing.assert_allclose(np.asarray(at_one), np.asarray(plain), atol=1e-5)
    at_three = _flow(prior, c, key, SamplingSpec(steps=3, guidance=3.0), guided=True)
    assert np.abs(np.asarray(at_three - plain)).max() > 1e-3
    # through the sampler: labelled rows with guidance 3 differ from guidance 1
    stats = LatentNormaliser(np.zeros(prior.D, np.float32), np.ones(prior.D, np.float32))
    sampler = LatentARSampler(cfg, prior, autoencoder=(vae, stats))
    labels = np.array([0, 1], np.int32)
    z = [next(sampler.stream(2, SamplingSpec(steps=2, guidance=g), labels)) for g in (1.0, 3.0)]
    assert np.abs(z[0] - z[1]).max() > 1e-3


def test_prompts_of_different_lengths_are_aligned_at_their_last_block(tiny_cfg):
    """Each row's prompt is fed as given, right-aligned so that every prompt's last VAE
    block starts at one step; a chunk the prompt fills in part is forced there only."""
    cfg = _cfg(tiny_cfg)
    prior, vae = _build(cfg)
    stats = LatentNormaliser(np.zeros(prior.D, np.float32), np.ones(prior.D, np.float32))
    sampler = LatentARSampler(cfg, prior, autoencoder=(vae, stats))
    L, N, K = cfg.data.block_len, prior.N, prior.K  # 32 tokens, 8 chunks of 4
    long = [list(range(10, 10 + 30)), list(range(50, 56))]  # a block of 30, then 6 tokens
    short = [[7, 8, 9]]  # 3 tokens: ends inside its first chunk
    tokens, forced, pad = sampler._layout(2, [long, short])
    assert tokens.shape == forced.shape == (2, 2 * N, K)
    assert pad.tolist() == [0, N]  # the short prompt starts one block later
    # the long prompt: its first block known to its padding, its last only as far as it goes
    assert forced[0, :N].all() and tokens[0, :N].reshape(-1)[:30].tolist() == long[0]
    assert tokens[0, :N].reshape(-1)[30:].tolist() == [0, 0]  # the block's padding
    assert forced[0, N:].reshape(-1).tolist() == [True] * 6 + [False] * (L - 6)
    assert tokens[0, N, :].tolist() == [50, 51, 52, 53]
    assert not forced[1, :N].any()
    assert forced[1, N].tolist() == [True, True, True, False] and not forced[1, N + 1:].any()
    assert tokens[1, N, :3].tolist() == [7, 8, 9]


def test_the_pipeline_continues_prompts_of_any_length_and_stops_at_max_tokens(tiny_run,
                                                                           tiny_cfg):
    from ldlm.data.tokenizer import Tokenizer
    from ldlm.inference.generation import LatentDiffusionPipeline
    from ldlm.inference.textvae import TextVAE

    run_dir, stats = tiny_run
    cfg = _cfg(tiny_cfg)
    prior, vae = _build(cfg, stats["vocab_size"])
    tokenizer = Tokenizer.load(run_dir / "tokenizer")
    normaliser = LatentNormaliser(np.zeros(prior.D, np.float32), np.ones(prior.D, np.float32))
    pipe = LatentDiffusionPipeline(cfg, prior, TextVAE(cfg, vae, tokenizer,
                                                       normaliser=normaliser), [])
    assert pipe.kind == "latent_ar" and pipe.sampler.default_steps == 1
    prompts = ["Shares rose.", "The minister said on Monday that the plan " * 4]
    out = pipe.generate_tokens(n=2, prompt=prompts, max_tokens=37, seed=1)
    assert [len(t) <= 37 for t in out] == [True, True]
    again = pipe.generate_tokens(n=2, prompt=prompts, max_tokens=37, seed=1)
    assert again == out  # every draw comes from the seed
    texts = pipe.generate(n=3, num_blocks=2, temperature=0.5)
    assert len(texts) == 3 and all(isinstance(t, str) for t in texts)
    with pytest.raises(PipelineError, match="infilling the latent_ar prior does not support"):
        pipe.infill("Shares rose.", "Then they fell.")


@pytest.mark.slow  # about a minute alone on 2 cores: make test-slow
def test_the_stages_train_a_chunk_autoencoder_and_serve_a_latent_ar_prior(tiny_run, tmp_path):
    """make vae, latents, dit and eval with the latent_ar experiment on the tiny preset: the
    cache keeps the posterior's spread, the decoder stage skips, the prior resumes, a loaded
    prior writes what the trained one wrote into its sample dump, and make eval takes the
    energy head's own settings."""
    import json

    from ldlm.config import load_experiment
    from ldlm.inference.generation import LatentDiffusionPipeline
    from ldlm.stages.decoder import run_decoder
    from ldlm.stages.dit import run_dit
    from ldlm.stages.latents import run_latents
    from ldlm.stages.vae import evaluate_trained_vae
    from ldlm.train.vae import train_vae
    from tests.helpers import link_stages

    src, _ = tiny_run
    run_dir = link_stages(src, tmp_path / "lar")
    cfg = load_experiment("bbc_news_latent_ar", "tiny", [
        "vae_train.steps=4", "dit_train.steps=3", "dit_train.checkpoint_every=3",
        "dit.sample_steps=2,5", "ar_train.steps=3", "eval.brier_prefixes=16"])
    evaluate_trained_vae(cfg, run_dir, train_vae(cfg, run_dir))
    run_latents(cfg, run_dir, batch_size=64)
    assert json.loads((run_dir / "latents" / "meta.json").read_text())["logvar"] is True
    assert run_decoder(cfg, run_dir) == {"skipped": "vae.kind=chunk"}
    run_dit(cfg, run_dir)
    run_dit(cfg.override(["dit_train.steps=4"]), run_dir)  # resumes from step 3
    dump = json.loads((run_dir / "dit" / "samples" / "step_4.json").read_text())
    assert list(dump) == ["1"]  # the energy head samples in one step only
    pipe = LatentDiffusionPipeline.from_pretrained(run_dir)
    labels = [s["label"] for s in dump["1"]]
    assert pipe.generate(n=len(labels), label=labels, seed=cfg.seed) == \
        [s["text"] for s in dump["1"]]
    # make eval samples the energy head in one step at every setting it sweeps
    from ldlm.stages.ar import run_ar
    from ldlm.stages.eval import run_eval

    run_ar(cfg, run_dir)
    report = run_eval(cfg, run_dir)
    assert [(r["sampler"], r["steps"]) for r in report["table"] if r["system"] == "ldlm"] == \
        [("energy", 1)]
    assert report["matched_entropy"]["steps"] == 1
    assert set(report["topic_accuracy"]) == {"real_test_blocks", "guidance_1"}
    assert report["brier_lm"]["ldlm"]["prefixes"] == report["brier_lm"]["prefixes"] > 0


def test_the_shrink_temperature_pulls_an_energy_heads_draws_together(tiny_cfg):
    """dit.energy_temperature=shrink: at T near 0 a chunk is the mean of many draws, so
    texts that start alike start with (almost) one latent; at T = 1 they scatter."""
    cfg = _cfg(tiny_cfg, "dit.energy_temperature=shrink")
    prior, vae = _build(_cfg(tiny_cfg))  # the same network: the mode is a sampling setting
    stats = LatentNormaliser(np.zeros(prior.D, np.float32), np.ones(prior.D, np.float32))
    sampler = LatentARSampler(cfg, prior, autoencoder=(vae, stats))
    labels = np.full(4, prior.null_label, np.int32)

    def first(T):
        return next(sampler.stream(4, SamplingSpec(steps=1, temperature=T), labels))[:, 0]

    def spread(T):
        return float(np.std(first(T), axis=0).mean())

    assert spread(1e-4) < 0.2 * spread(1.0)
    # T = 1 takes the first of the draws without the others (one head pass): the same latent
    # as pulling it towards their mean by a factor that is 1 up to rounding
    np.testing.assert_allclose(first(1.0), first(1.0 + 1e-6), atol=1e-4)
