"""Kinds of latent prior, by name (`dit.kind`): each lives in one package (model, training
objective, sampler) and implements `ldlm.priors.base.PriorKind`. The rest of ldlm reaches a
kind only through `get(cfg)`.

To add a kind: write a package beside `per_block/` whose `PriorKind` subclass supplies
build, batches, loss, architecture keys, FLOPs and a `LatentSampler`, and call
`register(MyKind())` (here for a built-in kind, or from your own module).
"""

from __future__ import annotations

from ldlm.config import Config
from ldlm.errors import ConfigError, PipelineError
from ldlm.priors.block_causal import KIND as BLOCK_CAUSAL
from ldlm.priors.base import OPERATIONS, LatentSampler, PriorKind
from ldlm.priors.latent_ar import KIND as LATENT_AR
from ldlm.priors.per_block import KIND as PER_BLOCK

_KINDS: dict[str, PriorKind] = {}


def register(kind: PriorKind) -> PriorKind:
    """Makes `kind` available as `dit.kind=<kind.name>` (a later registration of the same
    name replaces the earlier one)."""
    if not kind.name:
        raise ValueError("a prior kind needs a name")
    _KINDS[kind.name] = kind
    return kind


def unregister(name: str) -> None:
    """Removes a registered kind (tests that register their own)."""
    _KINDS.pop(name, None)


def names() -> list[str]:
    return sorted(_KINDS)


def get(cfg_or_name: Config | str) -> PriorKind:
    """The kind a config (its `dit.kind`) or a name selects; ConfigError naming the known
    kinds otherwise."""
    name = cfg_or_name if isinstance(cfg_or_name, str) else cfg_or_name.dit.kind
    if name not in _KINDS:
        raise ConfigError(f"dit.kind={name!r} is not one of {names()}")
    return _KINDS[name]


def check(cfg: Config) -> Config:
    """The config's kind exists and accepts its settings (ConfigError naming the key)."""
    get(cfg).validate(cfg)
    return cfg


def require(sampler: LatentSampler, op: str, what: str) -> None:
    """PipelineError when `sampler` cannot serve `op`; `what` names the request ("continuing
    a prompt"), and a kind that lacks the operation altogether is told which kinds have it."""
    why = sampler.missing(op)
    if why is None:
        return
    if op not in sampler.OPERATIONS:
        able = [n for n in names() if op in _KINDS[n].sampler.OPERATIONS]
        why += f" (kinds that do: {', '.join(able) or 'none'})"
    raise PipelineError(f"{what} {why}")


register(PER_BLOCK)
register(BLOCK_CAUSAL)
register(LATENT_AR)

__all__ = ["OPERATIONS", "LatentSampler", "PriorKind", "check", "get", "names", "register",
           "require", "unregister"]
