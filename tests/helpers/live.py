"""Polling helpers for tests against a live service (a gunicorn API and worker
processes): submit a job, read it back, and wait for a state with a deadline."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from llm_train_api.training.events import parse_line
from tests.helpers.servers import TINY


def submit(server, job_id: str, **hp) -> dict:
    body = {"job_id": job_id, "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "hyperparameters": {**TINY, **hp}}
    resp = server.http.post(server.url + "/jobs", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def get(server, job_id: str) -> dict:
    return server.http.get(f"{server.url}/jobs/{job_id}", timeout=10).json()


def wait_for(predicate, timeout: float, what: str, interval: float = 0.1):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
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


def job_dir(server, job_id: str) -> Path:
    """The job's folder under the service's data directory (`<job_id>-<suffix>`)."""
    return next((server.data_dir / "jobs").glob(f"{job_id}-*"))


def trainer_events(server, job_id: str, event: str) -> list[dict]:
    """Every `event` the job's trainers printed, over all its attempts, from train.log."""
    lines = (job_dir(server, job_id) / "train.log").read_text().splitlines()
    return [e for line in lines if (e := parse_line(line)) is not None
            and e.get("event") == event]


def wait_printed(server, job_id: str, event: str, step: int) -> int:
    """Wait until the job's trainer has printed `event` at `step` or later; return its pid.

    The job's progress is written at most once a second, and a tiny model runs dozens of
    steps in that second: waiting on the API, a test could see step 6 of 60 while the
    trainer is already saving its output. The worker copies the trainer's stdout into
    ``train.log`` line by line as it is printed, so this reads that, every few ms."""
    pid = wait_for(lambda: (get(server, job_id)["progress"] or {}).get("pid"), 120,
                   f"{job_id}: a trainer pid")
    log = wait_for(lambda: next((server.data_dir / "jobs").glob(f"{job_id}-*/train.log"),
                                None), 30, f"{job_id}: train.log")
    wait_for(_printed(log, event, step), 120, f"{job_id}: {event} at step >= {step}",
             interval=0.002)
    return pid


@contextmanager
def frozen_at(server, job_id: str, event: str, step: int) -> Iterator[int]:
    """Freeze the job's trainer as soon as it prints `event` at `step` or later (see
    :func:`wait_printed`), and hold it frozen for the block (as :func:`frozen`); yields
    its pid."""
    pid = wait_printed(server, job_id, event, step)
    with frozen(pid):
        assert alive(pid), f"{job_id}: the trainer exited before it could be frozen"
        yield pid


def _printed(log: Path, event: str, step: int):
    """A predicate: whether `log` has gained an `event` line at `step` or later. Reads only
    what was appended since the last call, and only whole lines."""
    offset = 0

    def check() -> bool:
        nonlocal offset
        with log.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
        complete = chunk[:chunk.rfind(b"\n") + 1]
        offset += len(complete)
        return any((e := parse_line(line)) is not None and e.get("event") == event
                   and (e.get("step") or 0) >= step for line in complete.splitlines())

    return check


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
