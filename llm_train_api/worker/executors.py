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
import time
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from llm_train_api.domain import Job, JobStatus
from llm_train_api.store.queue import JobQueue
from llm_train_api.training.lease import write_lease
from llm_train_api.worker import lease_dirs
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

    def renew(self, expires_at: float) -> None:
        """The job's lease now runs until `expires_at` (epoch seconds): a run that must not
        outlive the lease (local) learns its new end; a Ray run is left alone."""
        return None

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

    def close(self) -> None:
        """The worker has stopped and its runs are over: release what launching held."""
        return None


@dataclass
class LocalExecution(Execution):
    proc: TrainerProcess
    gpus: list[int]
    lease_file: Path | None = None

    def __post_init__(self) -> None:
        self.events = self.proc.events

    def ident(self) -> dict[str, Any]:
        return {"pid": self.proc.pid}

    def poll(self) -> int | None:
        rc = self.proc.poll()
        if rc is not None and self.lease_file is not None:
            self.lease_file.unlink(missing_ok=True)
        return rc

    def renew(self, expires_at: float) -> None:
        if self.lease_file is not None and self.proc.poll() is None:
            write_lease(self.lease_file, expires_at)

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
    """Trainer child processes on this machine, GPUs handed out from `gpus`.

    With `lease_s`, each trainer is fenced by its job's lease (training/lease.py): the
    worker writes the lease's expiry into a private file at launch and at every renewal,
    and the trainer kills itself before that time passes unrenewed. The first expiry is
    counted from the launch, a moment after the claim counted it in the database; the
    trainer's margin (lease.MARGIN_S) covers that moment.
    """

    name = "local"

    def __init__(self, *, gpus: list[int], threads: int = 0,
                 lease_s: float | None = None) -> None:
        self.gpus = gpus
        self.threads = threads
        self.lease_s = lease_s
        self._lease_dir: Path | None = None

    def _new_lease_file(self, job: Job) -> Path | None:
        if self.lease_s is None:
            return None
        if self._lease_dir is None:  # private to this worker: mode 0700
            self._lease_dir = lease_dirs.make_private_dir()
        path = self._lease_dir / f"{job.id}-{uuid.uuid4().hex[:8]}"
        write_lease(path, time.time() + self.lease_s)
        return path

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
        lease_file = None
        try:
            lease_file = self._new_lease_file(job)
            proc = TrainerProcess(folder, spec, log_file, threads=self.threads,
                                  gpus=free[:wanted], processes=job_processes(job),
                                  lease_file=lease_file)
        except ValueError as exc:
            _forget(lease_file)
            raise LaunchRefused(JobStatus.FAILED, str(exc)) from None
        except OSError as exc:  # a full disk, a missing interpreter: this job fails, we go on
            _forget(lease_file)
            raise LaunchRefused(JobStatus.FAILED,
                                f"could not start the trainer: {exc}") from None
        return LocalExecution(proc, free[:wanted], lease_file)

    def close(self) -> None:
        lease_dirs.remove(self._lease_dir)
        self._lease_dir = None


def _forget(lease_file: Path | None) -> None:
    if lease_file is not None:
        lease_file.unlink(missing_ok=True)


def job_processes(job: Job) -> int:
    """Trainer processes the job asks for (torchrun when > 1); 1 unless it says more."""
    return max(1, int((job.resources or {}).get("processes", 1)))

