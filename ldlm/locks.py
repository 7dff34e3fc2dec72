"""One writer per stage directory: the lock a training stage holds for its lifetime.

`stage_lock(stage_dir)` takes an exclusive `fcntl.flock` on `<stage_dir>/LOCK` and writes
who holds it (pid, host, start time, command) into the file; a second trainer of the same
stage of the same run finds the lock taken and stops with one line naming the holder, before
it writes anything. The kernel drops a flock when its process dies, however it dies, so a
killed run never blocks the next one. On a file system where flock is not shared between
machines (some network file systems), the file's contents still tell: a record left on this
host by a process that no longer holds the flock is stale (its pid is gone) and taken over
with a warning; a record of another host, whose processes this one cannot see, is reported
with the file to delete if nothing runs there.

Re-entrant within a process (the VAE stage holds it around training and evaluation, and
training takes it too); only process 0 of a multi-process run takes it. Readers (sample,
eval, notebooks) take no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import pathlib
import socket
import sys
import time

from ldlm.distributed import is_main_process
from ldlm.errors import StageLocked

LOCK_FILE = "LOCK"
log = logging.getLogger("ldlm.locks")
_held: dict[pathlib.Path, list] = {}  # lock path -> [file descriptor, depth]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def read_holder(path) -> dict:
    """The holder written in a lock file ({} when released or unreadable)."""
    try:
        text = pathlib.Path(path).read_text()
        return json.loads(text) if text.strip() else {}
    except (OSError, ValueError):
        return {}


def describe(holder: dict) -> str:
    started = holder.get("started")
    since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(started)) if started else "?"
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')} (since {since}: "
            f"{holder.get('command', '?')})")


def _acquire(path: pathlib.Path, stage: str) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise StageLocked(f"{stage} in {path.parent.parent} is being trained by "
                          f"{describe(read_holder(path))}: wait for it to finish or stop it; "
                          "a second trainer would mix its checkpoints with that one's") from None
    holder, host = read_holder(path), socket.gethostname()
    if holder and holder.get("pid") != os.getpid():
        if holder.get("host") != host:
            os.close(fd)
            raise StageLocked(f"{stage} in {path.parent.parent} is locked by "
                              f"{describe(holder)}, another host: if nothing trains it there, "
                              f"delete {path}")
        # this host's kernel granted the flock, so that holder no longer holds it: it died
        # without releasing (a kill, a crash); a live pid is another process that reused it
        log.warning("taking over the stale lock of %s: %s", describe(holder),
                    "that pid is now another process" if _pid_alive(int(holder.get("pid", -1)))
                    else "that process is gone")
    os.ftruncate(fd, 0)
    os.write(fd, json.dumps({"pid": os.getpid(), "host": host, "started": time.time(),
                             "command": " ".join(sys.argv)[:300]}).encode())
    os.fsync(fd)
    return fd


def _release(fd: int) -> None:
    os.ftruncate(fd, 0)  # an empty file: released (a killed holder leaves its record)
    fcntl.flock(fd, fcntl.LOCK_UN)
    os.close(fd)


@contextlib.contextmanager
def stage_lock(stage_dir, stage: str | None = None):
    """Holds the lock of `stage_dir` for the body (StageLocked if another process has it)."""
    path = (pathlib.Path(stage_dir) / LOCK_FILE).absolute()
    if not is_main_process():
        yield
        return
    if path in _held:
        _held[path][1] += 1
    else:
        _held[path] = [_acquire(path, stage or path.parent.name), 1]
    try:
        yield
    finally:
        _held[path][1] -= 1
        if _held[path][1] == 0:
            _release(_held.pop(path)[0])
