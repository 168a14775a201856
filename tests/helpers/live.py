"""Polling helpers for tests against a live service (a gunicorn API and worker
processes): submit a job, read it back, and wait for a state with a deadline."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tests.helpers.servers import TINY


def submit(server, job_id: str, **hp) -> dict:
    body = {"job_id": job_id, "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "hyperparameters": {**TINY, **hp}}
    resp = server.http.post(server.url + "/jobs", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def get(server, job_id: str) -> dict:
    return server.http.get(f"{server.url}/jobs/{job_id}", timeout=10).json()


def wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def wait_status(server, job_id, statuses, timeout=120.0) -> dict:
    return wait_for(lambda: (j := get(server, job_id))["status"] in statuses and j,
                    timeout, f"{job_id} to reach {statuses}")


def wait_progress(server, job_id: str, key: str, minimum: int) -> dict:
    """Wait until the running job's progress[key] reaches `minimum`; return the job."""
    return wait_for(lambda: (j := get(server, job_id))["progress"]
                    and (j["progress"].get(key) or 0) >= minimum and j,
                    120, f"{job_id}: progress {key} >= {minimum}")


def alive(pid: int) -> bool:
    """Whether the process exists; a zombie is dead for our purposes."""
    return _state(pid) not in (None, "Z")


@contextmanager
def frozen(pid: int) -> Iterator[None]:
    """Hold a process stopped (SIGSTOP) for the block, and continue it after, whatever
    happens. A test that acts on a run before it ends (pauses it, kills its worker) freezes
    the trainer first, so that a fast machine cannot finish the run while the act travels
    through the API, the database and the worker."""
    os.kill(pid, signal.SIGSTOP)
    wait_for(lambda: _state(pid) in ("T", "t", "Z", None), 10, f"process {pid} to stop")
    try:
        yield
    finally:
        try:
            os.kill(pid, signal.SIGCONT)
        except ProcessLookupError:
            pass


def signal_pending(pid: int, sig: int) -> bool:
    """Whether `sig` was sent to the (stopped) process and waits undelivered: the shared
    pending mask in /proc."""
    try:
        with open(f"/proc/{pid}/status") as f:
            mask = next(int(line.split()[1], 16) for line in f if line.startswith("ShdPnd:"))
    except FileNotFoundError:
        return False
    return bool(mask >> (sig - 1) & 1)


def _state(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[-1].split()[0]
    except FileNotFoundError:
        return None


def events(server, job_id):
    return server.http.get(f"{server.url}/jobs/{job_id}/events", timeout=10).json()
