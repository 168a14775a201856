"""The worker loop: claim, launch, watch, report, finish; and hand everything back on
shutdown. What actually runs a job is the worker's executor (executors.py: local trainer
processes, or Ray jobs for a dispatcher); this loop is the same for all of them.

One thread (the main one) does all of it, ticking every `poll_s`: the database decides who
runs what (claims and leases are conditional UPDATEs, see store/queue.py), so a worker holds no
state that another process needs. The loop wakes early on a PostgreSQL NOTIFY for new jobs,
cancels and deletes, and polls on SQLite; either way a cancelled trainer is gone within about
`poll_s + cancel_grace_s`.
"""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from llm_train_api.artifacts import checkpoint_pins
from llm_train_api.artifacts.homes import ResolvedDataset, resolve_owned_dataset
from llm_train_api.artifacts.jobs import job_dir, log_path, sweep_job_dirs
from llm_train_api.artifacts.model_roots import parse_roots
from llm_train_api.artifacts.staging import sweep_stale_uploads
from llm_train_api.config import Settings
from llm_train_api.domain import IllegalTransition, Job, JobNotFound, JobStatus
from llm_train_api.services.checkpoints import prepare_branch
from llm_train_api.services.models import Place
from llm_train_api.services.webhooks.sender import WebhookSender
from llm_train_api.store.queue import HeldJobs, JobQueue
from llm_train_api.training.datasets import DatasetError
from llm_train_api.training.events import EXIT_OK, EXIT_PREEMPTED
from llm_train_api.training.spec import RunSpec
from llm_train_api.worker.executors import (
    Execution,
    Executor,
    LaunchRefused,
    LocalExecutor,
    job_processes,
)
from llm_train_api.worker.finetune import finetune_spec, is_finetune, register_result
from llm_train_api.worker.progress import ProgressTracker
from llm_train_api.worker.trainer_spec import TrainerSpec

log = logging.getLogger("llm_train_api.worker")
_FLUSH_S = 1.0  # progress is written at most this often per job


@dataclass
class WorkerConfig:
    """What one worker process runs with. Build it with `from_settings`: the defaults live
    in Settings (LLM_TRAIN_API_LEASE_S and the others), once."""

    data_dir: str
    concurrency: int
    lease_s: float
    heartbeat_s: float
    poll_s: float
    cancel_grace_s: float
    trainer_threads: int
    gpus: list[int] = field(default_factory=list)
    # How long a stopping worker waits for its trainers to checkpoint before killing them.
    shutdown_grace_s: float = 20.0
    # How often the folders of deleted jobs are swept (0: never).
    sweep_s: float = 300.0
    # LLM_TRAIN_API_MODEL_ROOTS: where a fine-tuning job's model may be found.
    model_roots: str = ""

    @classmethod
    def from_settings(cls, settings: Settings, *, data_dir: str | Path, concurrency: int = 1,
                      gpus: list[int] | None = None) -> WorkerConfig:
        """The worker's settings from the same LLM_TRAIN_API_* values the service reads;
        `data_dir` is the runtime's (Settings.DATA_DIR may be empty: the default folder)."""
        return cls(data_dir=str(data_dir), concurrency=concurrency,
                   lease_s=settings.LEASE_S, heartbeat_s=settings.HEARTBEAT_S,
                   poll_s=settings.POLL_S, cancel_grace_s=settings.CANCEL_GRACE_S,
                   trainer_threads=settings.TRAINER_THREADS, gpus=list(gpus or []),
                   sweep_s=settings.JOB_DIR_SWEEP_S, model_roots=settings.MODEL_ROOTS)


@dataclass
class _Run:
    job: Job
    proc: Execution
    tracker: ProgressTracker
    deadline: float | None
    stop_reason: str | None = None  # cancelled | lease_lost | deadline | shutdown | pause
    last_flush: float = 0.0
    # Pausing: when a run still going after its stop request is killed (monotonic).
    stop_by: float | None = None


def new_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:6]}"


class Worker:
    def __init__(self, queue: JobQueue, config: WorkerConfig, worker_id: str | None = None,
                 executor: Executor | None = None, webhook_sender: WebhookSender | None = None):
        self.queue = queue
        # Delivers webhooks on a thread of its own, beside the loop, until the worker stops.
        self.webhook_sender = webhook_sender
        self.config = config
        self.id = worker_id or new_worker_id()
        self.executor = executor or LocalExecutor(gpus=config.gpus,
                                                  threads=config.trainer_threads,
                                                  lease_s=config.lease_s)
        self.runs: dict[str, _Run] = {}
        self.wake = threading.Event()
        self.stopping = threading.Event()  # set once: finish gracefully
        self.hard_stop = threading.Event()  # set on a second signal: kill and leave
        self._next_heartbeat = 0.0
        self._next_reap = 0.0
        self._next_sweep = 0.0

    # ------------------------------------------------------------------ main loop
    def run(self) -> None:
        log.info("worker %s: %s executor, %d slot(s), data in %s", self.id,
                 self.executor.name, self.config.concurrency, self.config.data_dir)
        self._start_listener()
        if self.webhook_sender is not None:
            self.webhook_sender.start()
        try:
            while not self.stopping.is_set():
                self.tick()
                self.wake.wait(self.config.poll_s)
                self.wake.clear()
            self._shutdown()
            self.executor.close()
        finally:
            if self.webhook_sender is not None:
                self.webhook_sender.stop()

    def tick(self) -> None:
        now = time.monotonic()
        if now >= self._next_reap:
            for job in self.queue.requeue_expired(actor=f"reaper@{self.id}"):
                log.warning("job %s: its worker's lease expired; now %s", job.id,
                            job.status.value)
            self._next_reap = now + max(self.config.lease_s / 4, self.config.poll_s)
            self.executor.housekeeping(self.queue)
        if self.config.sweep_s and now >= self._next_sweep:
            self._next_sweep = now + self.config.sweep_s
            self.sweep_job_dirs()
            self.sweep_stale_uploads()
            self.sweep_branch_pins()
        if now >= self._next_heartbeat:
            owned = self._heartbeat()
        else:
            owned = self.queue.running_jobs_of(self.id) if self.runs else HeldJobs(())
        for job_id, run in list(self.runs.items()):
            if job_id not in owned and run.stop_reason is None:
                # Cancelled, deleted or reaped: the job is not ours to run any more.
                run.stop_reason = "cancelled"
                log.info("job %s: no longer leased to us (cancelled or deleted); stopping "
                         "%s", job_id, run.proc.ident())
                run.proc.kill(self.config.cancel_grace_s)
        for job_id in owned.pausing if isinstance(owned, HeldJobs) else ():
            run = self.runs.get(job_id)
            if run is not None and run.stop_reason is None:
                # The trainer checkpoints and exits; `_finish` then ends the job paused.
                run.stop_reason = "pause"
                run.stop_by = time.monotonic() + self.config.shutdown_grace_s
                log.info("job %s: pause requested; stopping %s", job_id, run.proc.ident())
                run.proc.checkpoint_and_stop()
        for run in list(self.runs.values()):
            self._watch(run)
        while len(self.runs) < self.config.concurrency and not self.stopping.is_set():
            job = self.executor.claim(self.queue, self.id, self.config.lease_s)
            if job is None or not self._launch(job):
                break  # nothing queued, or we handed one back: not again in this tick

    def _heartbeat(self) -> HeldJobs:
        """Renew every lease this worker holds and tell each run its lease's new end; the
        ids still held. The end is counted from before the renewal was sent, so it is never
        later than the one the database keeps."""
        sent_at = time.time()
        owned = self.queue.renew_leases(self.id, self.config.lease_s)
        self._next_heartbeat = time.monotonic() + self.config.heartbeat_s
        for job_id in owned & self.runs.keys():
            self.runs[job_id].proc.renew(sent_at + self.config.lease_s)
        return owned

    def sweep_job_dirs(self) -> list[str]:
        """Remove the folders of jobs that no longer exist (deleted while running: the API
        leaves those to us, their trainer may still have been writing). A failure is
        logged and retried at the next sweep."""
        try:
            return sweep_job_dirs(self.config.data_dir, self.queue.jobs.existing_incarnations)
        except Exception:  # noqa: BLE001 - housekeeping must not stop the loop
            log.warning("sweeping the folders of deleted jobs failed", exc_info=True)
            return []

    def sweep_branch_pins(self) -> list[str]:
        """Remove the checkpoints held for branches that no longer need them."""
        try:
            return checkpoint_pins.sweep(self.config.data_dir,
                                         self.queue.jobs.pending_branch_origins)
        except Exception:  # noqa: BLE001 - housekeeping must not stop the loop
            log.warning("sweeping the checkpoints held for branches failed", exc_info=True)
            return []

    def sweep_stale_uploads(self) -> None:
        """Remove what uploads killed mid-way left staged (artifacts.staging)."""
        try:
            sweep_stale_uploads(self.config.data_dir)
        except Exception:  # noqa: BLE001 - housekeeping must not stop the loop
            log.warning("sweeping unfinished uploads failed", exc_info=True)

    # ------------------------------------------------------------------ one job
    def _launch(self, job: Job) -> bool:
        """Start the job's run; False when the job went back to the queue instead."""
        dataset = self._check_inputs(job)
        if isinstance(dataset, str):
            self.queue.finish(job.id, self.id, JobStatus.FAILED, error_message=dataset)
            return True
        hyperparameters = dict(job.hyperparameters)
        if self.config.trainer_threads and "num_threads" not in hyperparameters:
            hyperparameters["num_threads"] = self.config.trainer_threads
        spec: TrainerSpec | str
        if is_finetune(job):
            spec = finetune_spec(job, self._place(), dataset, hyperparameters,
                                 job_processes(job))
        else:
            spec = RunSpec(job.model_name, job.dataset, hyperparameters, dataset.home,
                           job.id, processes=job_processes(job))
        if isinstance(spec, str):
            self.queue.finish(job.id, self.id, JobStatus.FAILED, error_message=spec)
            return True
        folder = job_dir(self.config.data_dir, job)
        try:
            folder.mkdir(parents=True, exist_ok=True)
            problem = prepare_branch(self.config.data_dir, job, folder)
            if problem:
                self.queue.finish(job.id, self.id, JobStatus.FAILED, error_message=problem)
                return True
            proc = self.executor.launch(job, spec, folder, log_path(self.config.data_dir, job),
                                        [r.proc for r in self.runs.values()])
        except LaunchRefused as refusal:
            log.warning("job %s: not started (%s): %s", job.id, refusal.target.value,
                        refusal.message)
            self.queue.finish(job.id, self.id, refusal.target, error_message=refusal.message,
                              refund_attempt=refusal.refund_attempt)
            return refusal.target is not JobStatus.QUEUED
        except OSError as exc:  # a full disk: this job fails, we go on
            self.queue.finish(job.id, self.id, JobStatus.FAILED,
                              error_message=f"could not start the trainer: {exc}")
            return True
        deadline = (time.monotonic() + job.max_runtime_seconds
                    if job.max_runtime_seconds else None)
        run = _Run(job, proc, ProgressTracker(ident=proc.ident()), deadline)
        self.runs[job.id] = run
        log.info("job %s: attempt %d, %s", job.id, job.attempts, proc.ident())
        self._flush(run, force=True)
        return True

    def _place(self) -> Place:
        return Place(self.config.data_dir, parse_roots(self.config.model_roots))

    def _check_inputs(self, job: Job) -> ResolvedDataset | str:
        """The dataset as the job's owner sees it (their own first, then the published one),
        or why the job cannot run: gone, or changed since the job was admitted."""
        try:
            dataset = resolve_owned_dataset(self.config.data_dir, job.owner, job.dataset)
        except DatasetError as exc:
            return f"dataset unavailable: {exc}"
        if job.dataset_sha256 and dataset.sha256 != job.dataset_sha256:
            return (f"dataset {job.dataset!r} changed since the job was created "
                    "(its sha256 differs); resubmit the job to train on the new data")
        return dataset

    def _watch(self, run: _Run) -> None:
        while not run.proc.events.empty():
            run.tracker.apply(run.proc.events.get())
        run.tracker.note(run.proc.status_note())
        if run.deadline is not None and run.stop_reason is None \
                and time.monotonic() > run.deadline:
            run.stop_reason = "deadline"
            run.proc.kill(self.config.cancel_grace_s)
        if run.stop_by is not None and time.monotonic() > run.stop_by:
            run.stop_by = None  # a checkpoint that takes this long is not coming
            log.warning("job %s: still running %.0f s after its pause; killing it",
                        run.job.id, self.config.shutdown_grace_s)
            run.proc.kill(self.config.cancel_grace_s)
        rc = run.proc.poll()
        if rc is None:
            self._flush(run)
            return
        run.proc.wait_output()
        while not run.proc.events.empty():
            run.tracker.apply(run.proc.events.get())
        run.tracker.note(run.proc.status_note())
        self._flush(run, force=True)
        del self.runs[run.job.id]
        self._finish(run, rc)

    def _flush(self, run: _Run, force: bool = False) -> None:
        now = time.monotonic()
        if run.stop_reason in ("cancelled", "lease_lost"):
            return
        if not run.tracker.dirty or (not force and now - run.last_flush < _FLUSH_S):
            return
        progress, metrics, forget = run.tracker.take()
        notes, run.tracker.pending_notes = run.tracker.pending_notes, []
        run.last_flush = now
        if not self.queue.record_progress(run.job.id, self.id, progress, metrics,
                                          forget_metrics_after=forget, notes=notes):
            if run.stop_reason is None and run.proc.poll() is None:
                run.stop_reason = "lease_lost"
                log.info("job %s: lease lost; stopping %s", run.job.id, run.proc.ident())
                run.proc.kill(self.config.cancel_grace_s)

    def _finish(self, run: _Run, rc: int) -> None:
        job, reason = run.job, run.stop_reason
        if reason in ("cancelled", "lease_lost"):
            log.info("job %s: trainer stopped (%s)", job.id, reason)
            return
        if reason == "deadline":
            self.queue.finish(job.id, self.id, JobStatus.FAILED, error_message=(
                f"deadline exceeded: ran longer than max_runtime_seconds="
                f"{job.max_runtime_seconds}"))
        elif reason == "shutdown":
            # Checkpointed for our shutdown: a pause asked for meanwhile is honoured (the
            # store checks that one is pending), else the job goes back to the queue.
            if self.queue.finish_paused(job.id, self.id) is None:
                self.queue.finish(job.id, self.id, JobStatus.QUEUED, refund_attempt=True)
        elif reason == "pause" and rc != EXIT_OK and not (rc > 0 and rc != EXIT_PREEMPTED):
            # Stopped as asked (a checkpoint, then EXIT_PREEMPTED; or killed): paused,
            # without spending the attempt. A pause withdrawn meanwhile requeues the job,
            # just as unspent; its next run continues from the same checkpoint.
            step = (run.tracker.progress or {}).get("step")
            note = None if step is None else f"paused at step {step}"
            if self.queue.finish_paused(job.id, self.id, note) is None:
                self.queue.finish(job.id, self.id, JobStatus.QUEUED, refund_attempt=True)
        elif run.proc.stopped_outside:
            # Stopped behind our back (Ray's dashboard, `ray job stop`): what a cancel does.
            try:
                self.queue.jobs.transition(job.id, JobStatus.CANCELLED, actor=self.id)
            except (JobNotFound, IllegalTransition):
                pass  # deleted or ended meanwhile: nothing left to record
        elif rc == EXIT_OK:
            # A fine-tuning job's result becomes a model before the job is done: a crash
            # in between requeues the job, whose rerun writes and registers it again.
            problem = (register_result(job, job_dir(self.config.data_dir, job),
                                       self.config.data_dir) if is_finetune(job) else None)
            if problem:
                self.queue.finish(job.id, self.id, JobStatus.FAILED, error_message=problem)
            else:
                self.queue.finish(job.id, self.id, JobStatus.SUCCEEDED)
        elif rc > 0 and rc != EXIT_PREEMPTED:
            # The trainer said why it failed; running it again would fail again.
            self.queue.finish(job.id, self.id, JobStatus.FAILED,
                              error_message=run.proc.failure_reason())
        else:
            # Killed by a signal we did not send (the OOM killer, an operator) or preempted
            # by someone else: worth another attempt, if any are left.
            cause = run.proc.lost_cause(rc)
            if job.attempts < job.max_attempts:
                self.queue.finish(job.id, self.id, JobStatus.QUEUED,
                                  error_message=f"trainer {cause}; requeued")
            else:
                self.queue.finish(job.id, self.id, JobStatus.FAILED, error_message=(
                    f"trainer {cause}; gave up after {job.attempts} attempt(s)"))
        log.info("job %s: run ended with %d", job.id, rc)

    # ------------------------------------------------------------------ shutdown
    def _shutdown(self) -> None:
        """Hand back every running job without spending an attempt: runs that outlive us
        (Ray) are detached for the next dispatcher to attach to; local trainers checkpoint
        and their jobs go back to the queue."""
        if not self.runs:
            return
        if self.executor.runs_outlive_worker:
            log.info("worker %s: stopping; detaching %d job(s)", self.id, len(self.runs))
            for run in list(self.runs.values()):
                if run.stop_reason is None:
                    self._flush(run, force=True)
                    self.queue.detach(run.job.id, self.id, self.config.lease_s)
                    run.proc.release()
                    del self.runs[run.job.id]
        else:
            log.info("worker %s: stopping; checkpointing %d job(s)", self.id, len(self.runs))
        for run in self.runs.values():
            if run.stop_reason is None:
                run.stop_reason = "shutdown"
                run.proc.graceful_stop()
        deadline = time.monotonic() + self.config.shutdown_grace_s
        while self.runs and time.monotonic() < deadline and not self.hard_stop.is_set():
            if time.monotonic() >= self._next_heartbeat:
                self._heartbeat()  # a slow checkpoint must not cost the job its lease
            for run in list(self.runs.values()):
                self._watch(run)
            time.sleep(0.1)
        for run in list(self.runs.values()):
            run.proc.kill(0)
            self._watch(run)

    def _start_listener(self) -> None:
        if self.queue.dialect != "postgresql":
            return  # SQLite: the loop polls every poll_s
        thread = threading.Thread(target=self._listen, daemon=True, name="pg-listen")
        thread.start()

    def _listen(self) -> None:
        while not self.stopping.is_set():
            try:
                with self.queue.listen() as notifications:
                    for _ in notifications:
                        self.wake.set()
                        if self.stopping.is_set():
                            return
            except Exception:  # noqa: BLE001 - a dropped connection: poll, then listen again
                log.warning("LISTEN connection lost; retrying", exc_info=True)
                time.sleep(self.config.poll_s)


def resolve_gpus(settings: Settings) -> list[int]:
    """LLM_TRAIN_API_WORKER_GPUS as device indices: "auto" is every GPU torch can see (none
    without torch or CUDA), "" is none, "0,1" is those."""
    configured = settings.worker_gpus()
    if configured is not None:
        return configured
    try:
        import torch
    except ImportError:
        return []
    return list(range(torch.cuda.device_count())) if torch.cuda.is_available() else []


__all__ = ["Worker", "WorkerConfig", "resolve_gpus"]
