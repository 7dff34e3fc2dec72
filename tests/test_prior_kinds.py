"""A kind of prior is added in one place: a toy kind defined and registered here alone (no
library file edited) trains through the dit stage's task and samples through
`LatentDiffusionPipeline`; what it cannot do is a one-line error naming the kinds that can.
Also: old run configs (no `dit.kind`) load as the kind they were."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from ldlm import priors
from ldlm.config import Config
from ldlm.data import latents as latents_lib
from ldlm.data.batches import real_rows
from ldlm.errors import ConfigError, PipelineError
from ldlm.inference.generation import LatentDiffusionPipeline
from tests.helpers import link_stages


class ShrinkToMean(nnx.Module):
    """x0_hat = mean + scale * z: a prior that knows only the latents' mean."""

    def __init__(self, N: int, D: int, num_classes: int, *, rngs: nnx.Rngs):
        self.N, self.D, self.num_classes = N, D, num_classes
        self.mean = nnx.Param(jnp.zeros((N, D)))
        self.scale = nnx.Param(jnp.full((), 0.5))

    @property
    def null_label(self) -> int:
        return self.num_classes

    def __call__(self, z_BxNxD):
        return self.mean[...][None] + self.scale[...] * z_BxNxD


class ToySampler(priors.LatentSampler):
    kind = "toy"
    OPERATIONS = ("generate",)

    def stream(self, n, spec, labels_B, prompts=None):
        model = nnx.merge(self.graphdef, self.params)
        key = jax.random.PRNGKey(spec.seed)
        for b in range(10_000):
            noise = jax.random.normal(jax.random.fold_in(key, b), (n, self.N, self.D))
            yield np.asarray(model(spec.temperature * noise))


class ToyKind(priors.PriorKind):
    name = "toy"
    architecture = ("width",)
    sampler = ToySampler

    def build(self, cfg, num_latents, latent_dim, num_classes, vocab_size=0):
        return lambda rngs: ShrinkToMean(num_latents, latent_dim, num_classes, rngs=rngs)

    def batches(self, cfg, run_dir, mesh, role="train", train=True):
        return latents_lib.latent_batches(cfg, run_dir, mesh, role, train=train)

    def loss(self, model, batch, rng, step, train, *, counts, cfg, decoder_graphdef=None,
             frozen=None):
        x0 = batch["z"]
        z = 0.5 * x0 + jax.random.normal(rng, x0.shape)
        mse_B = jnp.mean((model(z) - x0) ** 2, axis=(1, 2))
        loss = (mse_B * real_rows(batch)).sum() / counts["rows"]
        return loss, {"mse": loss}


@pytest.fixture
def toy_kind():
    kind = priors.register(ToyKind())
    yield kind
    priors.unregister(kind.name)


def test_a_kind_registered_by_a_test_trains_and_samples_through_the_pipeline(
        tiny_dit, tmp_path, toy_kind):
    from ldlm.train.dit import train_dit

    cfg, src, _ = tiny_dit
    run_dir = link_stages(src, tmp_path / "toy", ("data", "tokenizer", "vae", "latents"))
    # two steps: the first update has learning rate 0 (warm-up starts there)
    cfg = cfg.override(["dit.kind=toy", "dit_train.steps=2", "dit_train.ema_decay=0"])
    result = train_dit(cfg, run_dir)
    assert result.state.step == 2
    mean = np.asarray(result.state.params["mean"][...])
    assert np.abs(mean).max() > 0  # training moved the mean away from zero

    pipe = LatentDiffusionPipeline.from_pretrained(run_dir)  # config.json names the kind
    assert pipe.kind == "toy"
    texts = pipe.generate(n=2, steps=3, seed=4, temperature=0.5)
    noise = jax.random.normal(jax.random.fold_in(jax.random.PRNGKey(4), 0), (2, pipe.N, pipe.D))
    scale = float(result.state.params["scale"][...])
    assert texts == pipe.decode(mean + scale * 0.5 * np.asarray(noise))

    with pytest.raises(PipelineError, match=r"^infilling the toy prior does not support it "
                                            r"\(kinds that do: block_causal, per_block\)$"):
        pipe.infill("Shares rose.", "Then they fell.")
    with pytest.raises(PipelineError, match="continuing a prompt the toy prior does not"):
        pipe.generate(n=1, prompt="Shares rose.")


def test_an_unknown_kind_is_a_one_line_error_naming_the_known_ones(tiny_cfg):
    with pytest.raises(ConfigError, match=r"dit.kind='mamba' is not one of \['block_causal', "
                                          r"'latent_ar', 'per_block'\]"):
        priors.check(tiny_cfg.override(["dit.kind=mamba"]))


def test_configs_written_before_the_kind_field_load_as_the_kind_they_were(tiny_cfg):
    old = tiny_cfg.to_dict()
    del old["dit"]["kind"]
    assert Config.from_dict(old).dit.kind == "per_block"
    old["dit"].update(window=2, block_size=4)
    assert Config.from_dict(old).dit.kind == "block_causal"
    new = tiny_cfg.override(["dit.kind=block_causal", "dit.window=2", "dit.block_size=4"])
    assert Config.from_dict(new.to_dict()) == new  # an explicit kind is kept as it is
