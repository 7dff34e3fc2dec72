"""`SamplingSpec`: every setting of one sampling request as one frozen value, checked once
where it is made (the command line, `LatentDiffusionPipeline.generate`) and passed whole
down to `samplers.sample`.

It is a JAX pytree: `sampler` and `grid` change the trace (static), while `steps`, `eta`,
`temperature` and `guidance` are traced, so a new step budget, eta, temperature or guidance
scale never recompiles. `label` and `seed` act outside the trace (label names become
indices, the seed a key); `traced()` drops them before a jit boundary.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax

from ldlm.errors import PipelineError

SAMPLERS = ("ddpm", "ddim", "dpm++")
GRIDS = ("uniform", "quadratic")
MIN_STEPS, MAX_STEPS = 1, 1000


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


@dataclasses.dataclass(frozen=True)
class SamplingSpec:
    """steps: denoising steps (1..1000); sampler: ddpm | ddim | dpm++; grid: uniform |
    quadratic time grid; eta: DDIM's noise (0 deterministic); temperature: scale of the
    starting noise and of the noise stochastic samplers add, in (0, 2]; guidance:
    classifier-free guidance scale (1: the conditional model, 0: unconditional); label: a
    class name, one per sample, or None; seed: the random seed."""

    steps: int = 16
    sampler: str = "dpm++"
    grid: str = "uniform"
    eta: float = 0.0
    temperature: float = 1.0
    guidance: float = 1.0
    label: str | tuple | None = None
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.label, list):  # hashable, so a spec can be a static argument
            object.__setattr__(self, "label", tuple(self.label))
        numbers = (self.steps, self.eta, self.temperature, self.guidance)
        if any(not isinstance(v, (int, float, str, type(None))) for v in numbers):
            return  # rebuilt from a pytree (arrays, tracers): checked when it was made
        if self.sampler not in SAMPLERS:
            raise PipelineError(f"unknown sampler {self.sampler!r}; choose one of "
                                f"{', '.join(SAMPLERS)}")
        if self.grid not in GRIDS:
            raise PipelineError(f"unknown time grid {self.grid!r}; choose one of "
                                f"{', '.join(GRIDS)}")
        if not _is_int(self.steps) or not MIN_STEPS <= self.steps <= MAX_STEPS:
            raise PipelineError(f"steps must be an integer from {MIN_STEPS} to {MAX_STEPS}, "
                                f"got {self.steps!r}")
        if not (isinstance(self.temperature, (int, float)) and 0 < self.temperature <= 2):
            raise PipelineError(f"temperature must be a number in (0, 2], got "
                                f"{self.temperature!r}")
        if not isinstance(self.eta, (int, float)) or self.eta < 0:
            raise PipelineError(f"eta must be a number >= 0, got {self.eta!r}")
        if not isinstance(self.guidance, (int, float)) or isinstance(self.guidance, bool):
            raise PipelineError(f"guidance must be a number, got {self.guidance!r}")
        if not _is_int(self.seed):
            raise PipelineError(f"seed must be an integer, got {self.seed!r}")

    def replace(self, **changes) -> "SamplingSpec":
        return dataclasses.replace(self, **changes)

    def traced(self) -> "SamplingSpec":
        """The spec as a jitted function takes it: label and seed dropped (they never reach
        the trace, and must not recompile it)."""
        return dataclasses.replace(self, label=None, seed=0)

    def labels_for(self, n: int) -> Sequence[str | None] | None:
        """The label of each of n samples (None: unconditional)."""
        if self.label is None or isinstance(self.label, str):
            return None if self.label is None else [self.label] * n
        if len(self.label) != n:
            raise PipelineError(f"got {len(self.label)} labels for n={n} samples")
        return list(self.label)


jax.tree_util.register_dataclass(
    SamplingSpec, data_fields=["steps", "eta", "temperature", "guidance"],
    meta_fields=["sampler", "grid", "label", "seed"])
