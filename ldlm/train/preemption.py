"""A graceful stop on SIGTERM / SIGINT: the training loop finishes its step, every process
agrees on the step to save, saves it and exits (`ldlm.errors.TrainingStopped`, which the
CLI turns into exit status 128 + the signal's number: 143 for SIGTERM, 130 for SIGINT).

Schedulers announce preemption with SIGTERM and kill the job seconds later (SLURM
`--signal`, spot/preemptible VMs, TPU maintenance); Ctrl-C sends SIGINT. Without this, a
signal ends the process wherever it is and loses every step since the last periodic
checkpoint.

How processes agree on one step:
- one process: a Python handler records the signal; the loop stops after the step in
  flight;
- several processes joined by `jax.distributed`: JAX's preemption service (its
  coordination agent handles SIGTERM itself) and `reached_preemption_sync_point(step)`,
  called by every process at every step, turn a notice on any process into the same safe
  step everywhere. SIGINT is passed on to it as a SIGTERM of the process's own. Without the
  service (disabled in JAX's config) the processes compare their flags at every step
  instead (`all_processes_agree`).

A second signal while the stop's checkpoint is written changes nothing: the handlers stay
installed until the loop returns, and Orbax's save stays atomic anyway.
"""

from __future__ import annotations

import logging
import os
import signal
import threading

import jax
from jax.experimental import multihost_utils

from ldlm.distributed import all_processes_agree

log = logging.getLogger("ldlm.train")


def _jax_preemption_service() -> bool:
    """Whether JAX's preemption sync point is there: several processes joined by
    `jax.distributed.initialize`, which starts the service unless JAX's config turns it
    off."""
    return jax.process_count() > 1 and bool(jax.config.jax_enable_preemption_service)


class StopSignals:
    """Context manager for the training loop: `requested(step)`, called by every process
    after every step, is True on all of them at the same step once a stop was asked for on
    any of them. Outside the main thread (no signal handlers possible) it never stops."""

    def __init__(self):
        self.signum: int | None = None
        self._previous: dict[int, object] = {}
        self._jax = False

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is not threading.main_thread():
            return self
        self._jax = _jax_preemption_service()
        # with JAX's service, SIGTERM stays with JAX's own handler (installing ours would
        # replace it); ours passes SIGINT on to it
        wanted = (signal.SIGINT,) if self._jax else (signal.SIGTERM, signal.SIGINT)
        for signum in wanted:
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        if self.signum is None:
            log.warning("%s received: finishing the step in flight, then saving it",
                        signal.Signals(signum).name)
        self.signum = self.signum or signum
        if self._jax and signum != signal.SIGTERM:
            os.kill(os.getpid(), signal.SIGTERM)  # JAX's handler tells every process

    def requested(self, step: int) -> bool:
        """True when every process is to stop after `step` (each calls this every step)."""
        if self._jax:
            if not multihost_utils.reached_preemption_sync_point(step):
                return False
            self.signum = self.signum or signal.SIGTERM  # the notice came from JAX
            return True
        if jax.process_count() > 1:
            if all_processes_agree(self.signum is None):
                return False
            self.signum = self.signum or signal.SIGTERM  # the signal reached another process
            return True
        return self.signum is not None
