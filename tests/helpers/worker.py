"""The worker loop without processes: an in-memory executor whose runs the test steers,
and the one place the unit tests construct a `Worker`.

A `FakeExecution` never runs anything. The test pushes trainer protocol events into it,
decides its exit status, and reads back what the worker asked of it (kill, graceful stop,
release). The worker loop, the store and the job's folder are real.
"""

from __future__ import annotations

import queue
from collections.abc import Callable
from pathlib import Path
from typing import Any

from llm_train_api.domain import Job
from llm_train_api.store.queue import JobQueue
from llm_train_api.training.events import EXIT_PREEMPTED
from llm_train_api.training.spec import RunSpec
from llm_train_api.worker.executors import Execution, Executor, LaunchRefused
from llm_train_api.worker.service import Worker, WorkerConfig

WORKER_ID = "w-test"


class FakeExecution(Execution):
    """One pretend run. `rc` is what `poll()` answers: None while it runs."""

    def __init__(self, job: Job, spec: RunSpec, folder: Path) -> None:
        self.job = job
        self.spec = spec
        self.folder = folder
        self.events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.rc: int | None = None
        self.reason = "the trainer failed"
        self.note: dict[str, Any] = {}
        self.killed_with: float | None = None  # the grace the worker gave, once killed
        self.asked_to_stop = False
        self.released = False
        # Exit as a trainer does on SIGTERM (checkpoint, 75); False: ignore the request.
        self.exits_on_graceful_stop = True
        # Called at each poll, before it answers: lets a test act "while the run runs".
        self.on_poll: Callable[[], None] | None = None

    def emit(self, **event: Any) -> None:
        self.events.put(event)

    def ident(self) -> dict[str, Any]:
        return {"fake_run": self.job.id}

    def poll(self) -> int | None:
        if self.on_poll is not None:
            self.on_poll()
        return self.rc

    def status_note(self) -> dict[str, Any]:
        return dict(self.note)

    def failure_reason(self) -> str:
        return self.reason

    def lost_cause(self, rc: int) -> str:
        return f"lost with status {rc}"

    def kill(self, grace_s: float) -> None:
        self.killed_with = grace_s
        if self.rc is None:
            self.rc = -9

    def graceful_stop(self) -> None:
        self.asked_to_stop = True
        if self.exits_on_graceful_stop and self.rc is None:
            self.rc = EXIT_PREEMPTED

    def release(self) -> None:
        self.released = True


class FakeExecutor(Executor):
    """Hands out FakeExecutions; `refuse` makes the next launches raise it."""

    name = "fake"

    def __init__(self, *, runs_outlive_worker: bool = False) -> None:
        self.runs_outlive_worker = runs_outlive_worker
        self.runs: dict[str, FakeExecution] = {}
        self.refuse: LaunchRefused | OSError | None = None

    def launch(self, job: Job, spec: RunSpec, folder: Path, log_file: Path,
               busy: list[Execution]) -> Execution:
        if self.refuse is not None:
            raise self.refuse
        run = FakeExecution(job, spec, folder)
        self.runs[job.id] = run
        return run


def build_worker(queue: JobQueue, data_dir: Path, executor: Executor,
                 **config: Any) -> Worker:
    """A Worker on `queue` with the fake executor; `config` overrides WorkerConfig fields.

    Short grace periods keep shutdown tests quick; nothing here waits on them unless a
    test asks for it."""
    values: dict[str, Any] = {"data_dir": str(data_dir), "concurrency": 1, "lease_s": 30.0,
                              "heartbeat_s": 5.0, "poll_s": 0.05, "cancel_grace_s": 0.25,
                              "trainer_threads": 0, "shutdown_grace_s": 5.0, **config}
    return Worker(queue, WorkerConfig(**values), worker_id=WORKER_ID, executor=executor)
