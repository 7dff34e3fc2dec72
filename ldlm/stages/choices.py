"""Config values chosen from a fixed set, checked against the modules that define the set
(a sampler the samplers module has, a rule set the mesh module has, ...). Every entry point
runs `check_choices` right after loading a config, so a typo fails before any stage runs."""

from __future__ import annotations

from ldlm import priors
from ldlm.config import TRAIN_SECTIONS, Config
from ldlm.data.sources import SOURCES
from ldlm.data.tokenizer import MODEL_TYPES
from ldlm.diffusion.samplers import SAMPLERS
from ldlm.diffusion.schedules import PREDICTIONS, SCHEDULES, TIME_SAMPLINGS, WEIGHTINGS
from ldlm.errors import ConfigError
from ldlm.mesh import RULE_SETS
from ldlm.models.layers import COMPUTE_DTYPES
from ldlm.stages.eval import SCORERS


def check_choices(cfg: Config) -> Config:
    """Raises ConfigError naming the key, its value and the allowed ones (and the prior kind's
    own checks); returns `cfg`."""
    fields = [
        ("data.source", (cfg.data.source,), SOURCES),
        ("tokenizer.model_type", (cfg.tokenizer.model_type,), MODEL_TYPES),
        ("mesh.rules", (cfg.mesh.rules,), tuple(RULE_SETS)),
        ("dit.schedule", (cfg.dit.schedule,), SCHEDULES),
        ("dit.prediction", (cfg.dit.prediction,), PREDICTIONS),
        ("dit.loss_weighting", (cfg.dit.loss_weighting,), WEIGHTINGS),
        ("dit.time_sampling", (cfg.dit.time_sampling,), TIME_SAMPLINGS),
        ("eval.samplers", cfg.eval.samplers, SAMPLERS),
        ("eval.guidance_sampler", (cfg.eval.guidance_sampler,), SAMPLERS),
        ("eval.long_sampler", (cfg.eval.long_sampler,), SAMPLERS),
        ("eval.reference", (cfg.eval.reference,), SCORERS),
        *[(f"{s}.compute_dtype", (getattr(cfg, s).compute_dtype,), tuple(COMPUTE_DTYPES))
          for s in TRAIN_SECTIONS],
    ]
    for key, values, allowed in fields:
        for value in values:
            if value not in allowed:
                raise ConfigError(f"{key}={value!r} is not one of {list(allowed)}")
    return priors.check(cfg)  # dit.kind names a registered kind that takes these settings
