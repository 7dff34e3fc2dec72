"""Device mesh from config: axes `data`, `fsdp`, `tensor`.

Batches are split over `data` and `fsdp` together; parameters are sharded over `fsdp` and
`tensor` by the models' logical axis rules. The mesh uses JAX's automatic sharding mode
(AxisType.Auto), so code written for one device runs unchanged on a mesh.
"""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

from ldlm.config import MeshConfig
from ldlm.errors import ConfigError

AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")


def mesh_shape(cfg: MeshConfig, num_devices: int) -> tuple[int, int, int]:
    """Axis sizes with the -1 (if any) filled so that their product is `num_devices`."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    known = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if num_devices % known:
            raise ConfigError(f"mesh sizes {dict(zip(AXES, sizes))} do not divide the "
                              f"{num_devices} available devices")
        sizes[sizes.index(-1)] = num_devices // known
    if math.prod(sizes) != num_devices:
        raise ConfigError(f"mesh sizes {dict(zip(AXES, sizes))} need {math.prod(sizes)} "
                          f"devices, but {num_devices} are available (set one size to -1 "
                          "to fill)")
    return tuple(sizes)


def make_mesh(cfg: MeshConfig, devices: Sequence[jax.Device] | None = None) -> Mesh:
    devices = list(devices if devices is not None else jax.devices())
    shape = mesh_shape(cfg, len(devices))
    if devices == list(jax.devices()):
        # jax.make_mesh orders devices for the physical topology (TPU/GPU interconnect).
        return jax.make_mesh(shape, AXES, axis_types=(AxisType.Auto,) * len(AXES))
    return Mesh(np.asarray(devices).reshape(shape), AXES,
                axis_types=(AxisType.Auto,) * len(AXES))


def batch_shards(mesh: Mesh) -> int:
    """How many ways a batch is split."""
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def batch_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) dimension over data x fsdp; the rest replicated."""
    return NamedSharding(mesh, P(BATCH_AXES))


# Logical axis name -> mesh axis (None: replicated). Parameters carry logical names
# (ldlm/models/layers.py); these rules decide how they are laid out on the mesh. Weights are
# split over `fsdp` along the model width and over `tensor` along heads / MLP / vocabulary.
PARAM_RULES: tuple[tuple[str, str | tuple[str, ...] | None], ...] = (
    ("batch", BATCH_AXES),
    ("vocab", "tensor"),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv", None),
    ("latent", None),
)

# Other layouts, chosen with mesh.rules: "fsdp" shards weights over fsdp only (no tensor
# parallelism); "replicated" keeps every weight whole on every device (pure data parallel).
RULE_SETS: dict[str, tuple] = {
    "fsdp_tp": PARAM_RULES,
    "fsdp": tuple((name, BATCH_AXES if name == "batch" else "fsdp" if name == "embed" else None)
                  for name, _ in PARAM_RULES),
    "replicated": tuple((name, BATCH_AXES if name == "batch" else None)
                        for name, _ in PARAM_RULES),
}


def param_rules(name: str) -> tuple:
    """The logical-axis rules of a rule set (mesh.rules)."""
    if name not in RULE_SETS:
        raise ConfigError(f"mesh.rules={name!r} is not one of {list(RULE_SETS)}")
    return RULE_SETS[name]


def constrain_batch(x):
    """Pins an activation's leading (batch) axis to data x fsdp at a block boundary, so the
    compiler never gathers activations; a no-op outside a mesh context or when the batch does
    not divide (single-device inference, odd sampling batches)."""
    mesh = jax.sharding.get_abstract_mesh()
    if mesh.empty or not all(a in mesh.shape for a in BATCH_AXES):
        return x
    shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
    if shards == 1 or x.shape[0] % shards:
        return x
    return jax.lax.with_sharding_constraint(x, P(BATCH_AXES))


def replicate(x, mesh) -> jax.Array:
    """A host value (or a jax.Array of any layout) as one array replicated over `mesh`, on
    every process (each process places its own devices' copies)."""
    x = to_host(x)
    sharding = NamedSharding(mesh, P())
    return jax.make_array_from_callback(x.shape, sharding, lambda idx: x[idx])


def to_host(x) -> np.ndarray:
    """A jax.Array as one whole numpy array on every process (gathered from the other
    processes when it spans their devices)."""
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
