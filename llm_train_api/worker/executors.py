"""The executor interface: how a worker starts, watches and stops one job's run.

The worker loop (service.py) owns everything the database decides: claims, leases,
heartbeats, progress, deadlines, cancels and the retry policy. An executor owns only the
run itself: where it executes (a child process here, a Ray job, a Slurm allocation) and how
to read its output. Every run reports through the same trainer protocol lines
(`@@llm_train_api {...}`), so progress and metrics work the same whatever runs them.

An `Execution` is one run. Its `poll()` answers like a process's exit status: None while it
runs, 0 on success, the trainer's exit code (> 0) when the trainer failed, and a negative
number when the run was lost from outside (a signal, a dead node): worth a retry.
"""

from __future__ import annotations

import queue
import signal
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_train_api.domain import Job, JobStatus
from llm_train_api.store.queue import JobQueue
from llm_train_api.worker.trainer_process import TrainerProcess
from llm_train_api.worker.trainer_spec import TrainerSpec


class LaunchRefused(Exception):  # noqa: N818 - a decision, not a failure of ours
    """The executor will not start this job now; the worker ends the claim as told."""

    def __init__(self, target: JobStatus, message: str | None = None,
                 refund_attempt: bool = False) -> None:
        super().__init__(message or target.value)
        self.target = target
        self.message = message
        self.refund_attempt = refund_attempt


class Execution(ABC):
    """One run of one job, as the worker loop sees it."""

    events: queue.SimpleQueue[dict[str, Any]]
    # Set when the run was stopped by someone other than us (Ray: STOPPED from its
    # dashboard): the job ends `cancelled`, as if a client had cancelled it.
    stopped_outside: bool = False

    @abstractmethod
    def ident(self) -> dict[str, Any]:
        """What identifies the run in the job's `progress` (a pid, a Ray submission id)."""

    @abstractmethod
    def poll(self) -> int | None:
        """None while running; else the exit status (see the module docstring)."""

    def status_note(self) -> dict[str, Any]:
        """Executor-side state to merge into `progress` (e.g. Ray's PENDING)."""
        return {}

    def wait_output(self) -> None:
        """After the end: wait until every line the run printed has been read."""
        return None

    @abstractmethod
    def failure_reason(self) -> str:
        """Why the trainer failed (rc > 0), from its error event or last line."""

    @abstractmethod
    def lost_cause(self, rc: int) -> str:
        """Why the run was lost (rc < 0, or the trainer was preempted), for the message."""

    @abstractmethod
    def kill(self, grace_s: float) -> None:
        """Stop the run for good (cancel, delete, deadline, lost lease)."""

    def graceful_stop(self) -> None:
        """The worker stops: ask the run to checkpoint and exit (local), or leave it."""
        return None

    def release(self) -> None:
        """Forget the run without stopping it (a dispatcher handing it over)."""
        return None


class Executor(ABC):
    """Starts runs. One per worker process."""

    name: str = "?"
    # True: a graceful worker stop leaves the runs going and detaches them for the next
    # worker (Ray). False: it checkpoints them and requeues the jobs (local processes die
    # with their worker).
    runs_outlive_worker: bool = False

    def check(self) -> None:
        """Refuse to start with a configuration that cannot work (raise ConfigError)."""
        return None

    def claim(self, job_queue: JobQueue, worker_id: str, lease_s: float) -> Job | None:
        return job_queue.claim(worker_id, lease_s)

    @abstractmethod
    def launch(self, job: Job, spec: TrainerSpec, folder: Path, log_file: Path,
               busy: list[Execution]) -> Execution:
        """Start (or attach to) the job's run; raise LaunchRefused to decline it."""

    def housekeeping(self, job_queue: JobQueue) -> None:
        """Called every tick: executor-side clean-up (Ray: stop orphaned runs)."""
        return None


@dataclass
class LocalExecution(Execution):
    proc: TrainerProcess
    gpus: list[int]

    def __post_init__(self) -> None:
        self.events = self.proc.events

    def ident(self) -> dict[str, Any]:
        return {"pid": self.proc.pid}

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait_output(self) -> None:
        self.proc.wait_output()

    def failure_reason(self) -> str:
        return self.proc.failure_reason()

    def lost_cause(self, rc: int) -> str:
        return (f"killed by {signal.Signals(-rc).name}" if rc < 0
                else "preempted (SIGTERM from outside the worker)")

    def kill(self, grace_s: float) -> None:
        self.proc.kill(grace_s)

    def graceful_stop(self) -> None:
        self.proc.signal(signal.SIGTERM)  # the trainer saves a checkpoint, exits 75


class LocalExecutor(Executor):
    """Trainer child processes on this machine, GPUs handed out from `gpus`."""

    name = "local"

    def __init__(self, *, gpus: list[int], threads: int = 0) -> None:
        self.gpus = gpus
        self.threads = threads

    def launch(self, job: Job, spec: TrainerSpec, folder: Path, log_file: Path,
               busy: list[Execution]) -> Execution:
        wanted = int((job.resources or {}).get("gpus", 0))
        held = {g for run in busy if isinstance(run, LocalExecution) for g in run.gpus}
        free = [g for g in self.gpus if g not in held]
        if wanted > len(self.gpus):
            raise LaunchRefused(JobStatus.FAILED, (
                f"the job asks for {wanted} GPU(s); this worker has {len(self.gpus)}"))
        if wanted > len(free):  # another job holds them: let someone else (or us) retry
            raise LaunchRefused(JobStatus.QUEUED, refund_attempt=True)
        try:
            proc = TrainerProcess(folder, spec, log_file, threads=self.threads,
                                  gpus=free[:wanted], processes=job_processes(job))
        except ValueError as exc:
            raise LaunchRefused(JobStatus.FAILED, str(exc)) from None
        except OSError as exc:  # a full disk, a missing interpreter: this job fails, we go on
            raise LaunchRefused(JobStatus.FAILED,
                                f"could not start the trainer: {exc}") from None
        return LocalExecution(proc, free[:wanted])


def job_processes(job: Job) -> int:
    """Trainer processes the job asks for (torchrun when > 1); 1 unless it says more."""
    return max(1, int((job.resources or {}).get("processes", 1)))

