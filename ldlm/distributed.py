"""Multi-process start-up through `jax.distributed`, from the environment.

Every entry point calls `initialize_from_env()` before touching devices. It does nothing for
a single process. Otherwise, one of:
- LDLM_COORDINATOR=host:port, LDLM_NUM_PROCESSES=N, LDLM_PROCESS_ID=i (any cluster; what the
  local launcher `python -m ldlm.cli.multiprocess` sets);
- LDLM_DISTRIBUTED=auto: JAX detects the cluster itself (TPU pod slices, SLURM, ...).
On CPU, collectives go through gloo. Afterwards `jax.devices()` lists every process's
devices, each process feeds only its own share of a batch (ldlm.data.batches), Orbax
writes checkpoints collectively and only process 0 logs and writes metrics.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.experimental import multihost_utils

from ldlm.errors import ConfigError

_started = False


def initialize_from_env() -> bool:
    """Starts jax.distributed if the environment asks for it; True when it did."""
    global _started
    if _started:
        return True
    coordinator = os.environ.get("LDLM_COORDINATOR")
    auto = os.environ.get("LDLM_DISTRIBUTED", "").lower() == "auto"
    if not coordinator and not auto:
        return False
    if coordinator:
        try:
            n = int(os.environ["LDLM_NUM_PROCESSES"])
            i = int(os.environ["LDLM_PROCESS_ID"])
        except (KeyError, ValueError):
            raise ConfigError("LDLM_COORDINATOR is set, so LDLM_NUM_PROCESSES and "
                              "LDLM_PROCESS_ID must be integers too") from None
        if not 0 <= i < n:
            raise ConfigError(f"LDLM_PROCESS_ID={i} must lie in [0, LDLM_NUM_PROCESSES={n})")
    # CPU-backend collectives (the only ones without a native transport); harmless elsewhere
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    if coordinator:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=n,
                                   process_id=i)
    else:
        jax.distributed.initialize()
    _started = True
    return True


def is_main_process() -> bool:
    return jax.process_index() == 0


def barrier(name: str) -> None:
    """Every process waits here until all have arrived (a no-op for one process): after
    process 0 writes a file that the others read next."""
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices(name)


def all_processes_agree(ok: bool) -> bool:
    """True when `ok` holds on every process (each must call this at the same point)."""
    if jax.process_count() == 1:
        return bool(ok)
    return bool(np.all(multihost_utils.process_allgather(np.array(bool(ok)))))
