import dataclasses
import json
import re

import pytest

from ldlm.config import PRESETS, Config, apply_overrides, load_experiment
from ldlm.config import EXPERIMENTS_DIR
from ldlm.errors import ConfigError
from ldlm.stages.choices import check_choices


def test_overrides_convert_to_field_types():
    cfg = apply_overrides(Config(), ["data.block_len=128", "data.block_min_fill=0.5",
                                     "tokenizer.model_type=bpe", "mesh.fsdp=2", "seed=7",
                                     "data.batch_size=1_024"])
    assert cfg.data.block_len == 128 and isinstance(cfg.data.block_len, int)
    assert cfg.data.block_min_fill == 0.5
    assert cfg.tokenizer.model_type == "bpe"
    assert cfg.mesh.fsdp == 2 and cfg.seed == 7
    assert cfg.data.batch_size == 1024
    assert Config().data.block_len == 64  # the original is untouched (frozen)


def test_unknown_key_names_key_and_allowed_ones():
    with pytest.raises(ConfigError) as e:
        apply_overrides(Config(), ["data.blok_len=3"])
    msg = str(e.value)
    assert "'data.blok_len'" in msg and "Did you mean 'data.block_len'" in msg
    assert "data.batch_size" in msg  # lists the allowed keys
    with pytest.raises(ConfigError, match="unknown config key 'nosuch'"):
        apply_overrides(Config(), ["nosuch=1"])
    with pytest.raises(ConfigError, match="is a section"):
        apply_overrides(Config(), ["data=1"])
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides(Config(), ["data.block_len"])


@pytest.mark.parametrize("assignment,expects", [
    ("data.block_len=abc", "expects int"),
    ("data.block_len=1.5", "expects int"),
    ("data.block_min_fill=lots", "expects float"),
])
def test_wrong_type_is_rejected(assignment, expects):
    with pytest.raises(ConfigError, match=expects) as e:
        apply_overrides(Config(), [assignment])
    assert assignment.split("=")[0] in str(e.value)


def test_block_length_that_cannot_hold_a_token_and_eos():
    with pytest.raises(ConfigError, match="cannot hold one token plus EOS"):
        apply_overrides(Config(), ["data.block_len=1"])
    assert apply_overrides(Config(), ["data.block_len=2", "vae.num_latents=1"]).data.block_len == 2


@pytest.mark.parametrize("assignment,allowed", [
    ("data.source=csv", "['tfds', 'text_folder', 'jsonl']"),
    ("dit.schedule=sigmoid", "['cosine', 'linear']"),
    ("eval.samplers=ddim,euler", "['ddpm', 'ddim', 'dpm++']"),
    ("eval.long_sampler=euler", "['ddpm', 'ddim', 'dpm++']"),
    ("eval.reference=gpt2", "['auto', 'reference', 'ar']"),
    ("mesh.rules=zero3", "['fsdp_tp', 'fsdp', 'replicated']"),
    ("dit_train.compute_dtype=float16", "['float32', 'bfloat16']"),
])
def test_a_choice_outside_its_modules_set_is_named(assignment, allowed):
    key, value = assignment.split("=")
    cfg = apply_overrides(Config(), [assignment])  # structurally fine
    bad = value.split(",")[-1]
    with pytest.raises(ConfigError, match=re.escape(f"{key}={bad!r} is not one of {allowed}")):
        check_choices(cfg)


def test_tuple_fields_take_comma_separated_values_and_json_lists():
    cfg = apply_overrides(Config(), ["eval.steps=4,16", "eval.guidance_scales=0,1.5",
                                     "eval.samplers=ddim"])
    assert cfg.eval.steps == (4, 16) and cfg.eval.guidance_scales == (0.0, 1.5)
    assert cfg.eval.samplers == ("ddim",)
    assert Config.from_dict(json.loads(cfg.to_json())) == cfg
    with pytest.raises(ConfigError, match="eval.steps"):
        apply_overrides(Config(), ["eval.steps=4,x"])
    with pytest.raises(ConfigError, match=r"dit.sample_steps=0,5 must be step counts"):
        apply_overrides(Config(), ["dit.sample_steps=0,5"])


def test_semantic_validation():
    with pytest.raises(ConfigError, match="needs data.path"):
        apply_overrides(Config(), ["data.source=jsonl"])
    with pytest.raises(ConfigError, match="at most one may be -1"):
        apply_overrides(Config(), ["mesh.fsdp=-1"])
    with pytest.raises(ConfigError, match="dit.token_loss_weight=-0.1 must be >= 0"):
        apply_overrides(Config(), ["dit.token_loss_weight=-0.1"])
    with pytest.raises(ConfigError, match=r"eval.temperature=0.0 must lie in \(0, 2\]"):
        apply_overrides(Config(), ["eval.temperature=0"])
    with pytest.raises(ConfigError, match="decoder.latent_noise_max=-0.5 must be >= 0"):
        apply_overrides(Config(), ["decoder.latent_noise_max=-0.5"])
    with pytest.raises(ConfigError, match=r"eval.long_temperatures=.* must be temperatures"):
        apply_overrides(Config(), ["eval.long_temperatures=1.0,0"])
    with pytest.raises(ConfigError, match="eval.long_tokens=0 must be at least 1"):
        apply_overrides(Config(), ["eval.long_tokens=0"])
    with pytest.raises(ConfigError, match=r"eval.long_steps=0 must be step counts"):
        apply_overrides(Config(), ["eval.long_steps=0"])


def test_json_roundtrip_rebuilds_the_config():
    cfg = apply_overrides(load_experiment("bbc_news", "cpu"), ["data.block_len=96"])
    again = Config.from_dict(json.loads(cfg.to_json()))
    assert again == cfg


def test_json_with_unknown_or_mistyped_key_is_rejected():
    d = Config().to_dict()
    d["data"]["nope"] = 1
    with pytest.raises(ConfigError, match="data.nope"):
        Config.from_dict(d)
    d = Config().to_dict()
    d["data"]["block_len"] = "64"
    with pytest.raises(ConfigError, match="data.block_len"):
        Config.from_dict(d)


@pytest.mark.parametrize("experiment", sorted(p.stem for p in EXPERIMENTS_DIR.glob("*.py")))
@pytest.mark.parametrize("preset", PRESETS)
def test_every_shipped_experiment_loads_and_validates(experiment, preset):
    cfg = load_experiment(experiment, preset)
    assert cfg.preset == preset
    assert cfg.validate() is cfg
    assert check_choices(cfg) is cfg
    assert dataclasses.is_dataclass(cfg)


def test_unknown_experiment_and_preset():
    with pytest.raises(ConfigError, match="known experiments"):
        load_experiment("no_such_experiment", "cpu")
    with pytest.raises(ConfigError, match="unknown preset"):
        load_experiment("bbc_news", "huge")
