"""Lease fencing for a trainer run by a local worker: the trainer stops itself when its
worker's lease is about to lapse.

A worker that stops renewing its lease without dying (frozen, stuck on a database that does
not answer) cannot stop its trainer, and `PR_SET_PDEATHSIG` only fires when the worker
dies. Once the lease lapses, a reaper requeues the job and another worker starts a second
trainer in the same job folder. So the worker writes its lease's expiry (epoch seconds) to
a file only it and this trainer know, after every renewal, and the trainer SIGKILLs itself
`MARGIN_S` before that time: its run is over before anyone can reclaim the job.

A SIGKILL, not an exit: the trainer must write nothing more (no checkpoint, no output into
a pipe the frozen worker no longer reads), and the worker, should it wake up, sees a run
lost from outside, whose end the database already refuses because the lease is gone.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

# The variable naming the lease file; set by the local executor, never by Ray.
LEASE_FILE_ENV = "LLM_TRAIN_API_LEASE_FILE"
# How long before the expiry the trainer is gone: covers the watchdog's own interval and a
# busy machine's scheduling delays.
MARGIN_S = 1.0
CHECK_S = 0.1


def write_lease(path: Path, expires_at: float) -> None:
    """Record the lease's expiry atomically: the trainer never reads half a number."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(repr(expires_at))
    os.replace(tmp, path)


def read_lease(path: Path) -> float | None:
    """The expiry, or None when the file is gone or unreadable (the lease is not ours)."""
    try:
        return float(path.read_text())
    except (OSError, ValueError):
        return None


def lease_lapsing(path: Path, now: float | None = None) -> bool:
    """True once the trainer must be gone: the lease ends within MARGIN_S, or is unknown."""
    expires_at = read_lease(path)
    return expires_at is None or (time.time() if now is None else now) >= expires_at - MARGIN_S


def _die() -> None:  # pragma: no cover - ends the process
    os.kill(os.getpid(), signal.SIGKILL)


def start_lease_watchdog() -> threading.Thread | None:
    """In the trainer: if a worker fences us (LEASE_FILE_ENV), watch its lease and die
    before it lapses. None when nothing fences this run (the CLI by hand, Ray)."""
    name = os.environ.get(LEASE_FILE_ENV)
    if not name:
        return None
    path = Path(name)

    def watch() -> None:
        while not lease_lapsing(path):
            time.sleep(CHECK_S)
        _die()

    thread = threading.Thread(target=watch, daemon=True, name="lease-watchdog")
    thread.start()
    return thread
