"""`python -m ldlm.cli.multiprocess -n 2 -- vae --preset tiny ...`: run an `ldlm` command as
several local processes joined by jax.distributed (coordinator on 127.0.0.1, a free port).

Each process gets LDLM_COORDINATOR / LDLM_NUM_PROCESSES / LDLM_PROCESS_ID and, on CPU,
`--devices-per-process` fake devices. Output of process 0 is shown; the others' goes to
`<log-dir>/process_<i>.log`. The launcher waits for all, stops the rest if one fails, and
exits with the first non-zero status. A process that stopped gracefully on a signal (status
143 or 130, see `ldlm.train.preemption`) is not a failure: the others are stopping at the
same step, and are waited for (`STOP_GRACE_S`). A SIGTERM to the launcher is passed on to
every process. For real clusters use the README's commands instead.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

STOPPED = (128 + signal.SIGTERM, 128 + signal.SIGINT)  # a graceful stop on a signal
STOP_GRACE_S = 120.0  # how long the others may take to save the same step and exit


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def launch(command: list[str], processes: int, devices_per_process: int,
           log_dir: pathlib.Path, extra_env: dict | None = None,
           timeout: float | None = None, prefix: dict[int, list[str]] | None = None,
           started: list | None = None) -> int:
    """Runs `ldlm <command>` as `processes` processes; returns the exit status.
    `prefix[i]` goes before process i's Python (e.g. `unshare -m ...`, so that one process
    sees the file system differently); `started` receives the Popen objects."""
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs = []
    for i in range(processes):
        env = {**os.environ, **(extra_env or {}), "LDLM_COORDINATOR": f"127.0.0.1:{port}",
               "LDLM_NUM_PROCESSES": str(processes), "LDLM_PROCESS_ID": str(i),
               "JAX_PLATFORMS": os.environ.get("JAX_PLATFORMS", "cpu")}
        if env["JAX_PLATFORMS"] == "cpu":
            env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_"
                                f"device_count={devices_per_process}").strip()
        out = None if i == 0 else open(log_dir / f"process_{i}.log", "w")
        procs.append(subprocess.Popen(
            [*(prefix or {}).get(i, []), sys.executable, "-m", "ldlm", *command], env=env,
            stdout=out, stderr=subprocess.STDOUT if out else None))
    if started is not None:
        started.extend(procs)
    deadline = None if timeout is None else time.monotonic() + timeout
    status = 0
    try:
        while any(p.poll() is None for p in procs):
            codes = [p.returncode for p in procs if p.returncode not in (None, 0)]
            failed = [c for c in codes if c not in STOPPED]
            if codes and not failed and deadline is None:  # stopping: give them their grace
                deadline = time.monotonic() + STOP_GRACE_S
            if failed or (deadline and time.monotonic() > deadline):
                status = failed[0] if failed else 124
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return status or next((p.returncode for p in procs if p.returncode), 0)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("-n", "--processes", type=int, default=2)
    p.add_argument("--devices-per-process", type=int, default=2)
    p.add_argument("--log-dir", default="runs/multiprocess_logs")
    p.add_argument("command", nargs=argparse.REMAINDER,
                   help="-- then the ldlm command and its arguments, e.g. vae --preset tiny")
    args = p.parse_args(argv)
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    if not command:
        p.error("name the ldlm command to run after --, e.g. -- vae --preset tiny")
    procs: list = []

    def forward(signum, frame):  # a scheduler's notice reaches every process
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    signal.signal(signal.SIGTERM, forward)
    sys.exit(launch(command, args.processes, args.devices_per_process,
                    pathlib.Path(args.log_dir), started=procs))


if __name__ == "__main__":
    main()
