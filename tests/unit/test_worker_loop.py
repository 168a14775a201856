"""The Worker loop through every way a run can end, on a real SQLite store with an
in-memory executor (tests/helpers/worker.py): the test ticks the loop by hand and decides
what each run does, so nothing here waits for a process or a clock."""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from llm_train_api.domain import JobNotFound, JobStatus, NewJob
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import DETACHED_OWNER, JobQueue
from llm_train_api.training.events import EXIT_OK, EXIT_PREEMPTED
from llm_train_api.worker import service
from llm_train_api.worker.executors import LaunchRefused
from llm_train_api.worker.service import Worker
from tests.helpers.worker import WORKER_ID, FakeExecution, FakeExecutor, build_worker

S = JobStatus
BUILTIN = "builtin:tinytext"


@dataclass
class Loop:
    """A worker, its fake executor and its store, with the verbs the tests use."""

    queue: JobQueue
    executor: FakeExecutor
    worker: Worker
    data_dir: Path

    def submit(self, job_id: str, dataset: str = BUILTIN, **kw) -> None:
        self.queue.jobs.create_job(NewJob(job_id, "gpt-nano", dataset, {}, **kw))

    def job(self, job_id: str):
        return self.queue.jobs.get_job(job_id)

    def run(self, job_id: str) -> FakeExecution:
        return self.executor.runs[job_id]

    def start(self, job_id: str, **kw) -> FakeExecution:
        """Submit the job and tick once: the worker claims and launches it."""
        self.submit(job_id, **kw)
        self.worker.tick()
        assert self.job(job_id).status is S.RUNNING
        return self.run(job_id)

    def stop(self) -> None:
        """What the first SIGTERM does: the loop ends and hands its jobs back."""
        self.worker.stopping.set()
        self.worker.run()


def make_loop(tmp_path: Path, executor: FakeExecutor | None = None, **config) -> Loop:
    database = Database.from_url(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    queue = JobQueue(database, JobRepository(database))
    data_dir = tmp_path / "data"
    (data_dir / "datasets").mkdir(parents=True)
    executor = executor or FakeExecutor()
    return Loop(queue, executor, build_worker(queue, data_dir, executor, **config), data_dir)


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    made = make_loop(tmp_path)
    yield made
    made.queue.jobs.database.close()


@pytest.fixture
def dispatcher(tmp_path: Path) -> Iterator[Loop]:
    """A loop whose runs outlive the worker, as Ray's do."""
    made = make_loop(tmp_path, FakeExecutor(runs_outlive_worker=True))
    yield made
    made.queue.jobs.database.close()


def kinds(queue: JobQueue, job_id: str) -> list[str]:
    return [e.kind for e in queue.jobs.job_events(job_id)[0]]


# ----------------------------------------------------------------------------- success


def test_a_run_that_exits_0_succeeds_with_its_progress_and_metrics(loop):
    run = loop.start("ok")
    job = loop.job("ok")
    assert job.worker == WORKER_ID and job.attempts == 1
    assert job.progress == {"phase": "starting", "fake_run": "ok"}  # flushed at launch
    assert run.spec.dataset == BUILTIN and run.spec.job_id == "ok"
    assert run.folder.is_dir()
    run.emit(event="start", total_steps=2)
    run.emit(event="metrics", step=1, train_loss=3.0)
    run.emit(event="metrics", step=2, train_loss=2.0)
    run.emit(event="done", outcome="succeeded")
    run.rc = EXIT_OK
    loop.worker.tick()
    job = loop.job("ok")
    assert job.status is S.SUCCEEDED and job.error_message is None
    assert job.progress["step"] == 2 and job.progress["fraction"] == 1.0
    assert job.progress["phase"] == "succeeded"
    assert [p["step"] for p in loop.queue.jobs.job_metrics("ok")[0]] == [1, 2]
    assert loop.worker.runs == {} and run.killed_with is None


def test_one_slot_runs_one_job_at_a_time(loop):
    first = loop.start("a")
    loop.submit("b")
    loop.worker.tick()
    assert loop.job("b").status is S.QUEUED and "b" not in loop.executor.runs
    first.rc = EXIT_OK
    loop.worker.tick()  # "a" ends and "b" is claimed in the same tick
    assert loop.job("a").status is S.SUCCEEDED and loop.job("b").status is S.RUNNING


def test_trainer_threads_and_the_owners_dataset_reach_the_spec(tmp_path):
    made = make_loop(tmp_path, trainer_threads=3)
    try:
        home = made.data_dir / "users" / "alice"
        (home / "datasets").mkdir(parents=True)
        (home / "datasets" / "mine.txt").write_text("hello world\n" * 50)
        run = made.start("j", dataset="mine", owner="alice")
        assert run.spec.hyperparameters == {"num_threads": 3}
        assert Path(run.spec.data_dir).resolve() == home.resolve()
    finally:
        made.queue.jobs.database.close()


# ----------------------------------------------------------------------------- failures


def test_a_trainer_failure_fails_the_job_with_its_reason_and_no_retry(loop):
    run = loop.start("bad", max_attempts=3)
    run.reason = "RuntimeError: CUDA out of memory"
    run.rc = 1
    loop.worker.tick()
    job = loop.job("bad")
    assert job.status is S.FAILED and job.attempts == 1
    assert job.error_message == "RuntimeError: CUDA out of memory"


@pytest.mark.parametrize("rc", [EXIT_PREEMPTED, -9])
def test_a_preempted_or_killed_run_is_requeued_while_attempts_are_left(loop, rc):
    run = loop.start("p", max_attempts=2)
    run.rc = rc
    loop.worker.tick()  # requeued, and claimed again at once: the slot is free
    requeued = [e for e in loop.queue.jobs.job_events("p")[0] if e.kind == "requeued"]
    assert [(e.to_status, e.attempt, e.message) for e in requeued] == [
        (S.QUEUED, 1, f"trainer lost with status {rc}; requeued")]
    # The claim counted the first attempt and the requeue kept it (unlike a graceful stop).
    second = loop.run("p")
    assert second is not run and loop.job("p").attempts == 2
    second.rc = rc
    loop.worker.tick()
    job = loop.job("p")
    assert job.status is S.FAILED
    assert job.error_message == f"trainer lost with status {rc}; gave up after 2 attempt(s)"


def test_a_run_stopped_from_outside_is_cancelled(dispatcher):
    run = dispatcher.start("r")
    run.stopped_outside = True
    run.rc = -15
    dispatcher.worker.tick()
    assert dispatcher.job("r").status is S.CANCELLED


# ----------------------------------------------------------------------------- stopped by others


def test_a_cancel_while_running_kills_the_run_and_records_nothing_more(loop):
    run = loop.start("c")
    loop.queue.jobs.transition("c", S.CANCELLED, actor="alice")
    events_before = kinds(loop.queue, "c")
    loop.worker.tick()
    assert run.killed_with == loop.worker.config.cancel_grace_s
    assert loop.worker.runs == {}
    job = loop.job("c")
    assert job.status is S.CANCELLED and job.worker is None
    assert kinds(loop.queue, "c") == events_before


def test_a_job_deleted_while_running_is_killed(loop):
    run = loop.start("d")
    loop.queue.jobs.delete_job("d", actor="alice")
    loop.worker.tick()
    assert run.killed_with is not None and loop.worker.runs == {}
    with pytest.raises(JobNotFound):
        loop.job("d")


def test_a_lease_reaped_and_reclaimed_elsewhere_stops_our_run(loop):
    run = loop.start("l")
    loop.queue.renew_leases(WORKER_ID, -1)  # our lease lapses (a long pause, a partition)
    assert [j.id for j in loop.queue.requeue_expired(actor="reaper")] == ["l"]
    assert loop.queue.claim("w-other", 30).id == "l"
    loop.worker.tick()
    assert run.killed_with is not None and loop.worker.runs == {}
    job = loop.job("l")
    assert job.status is S.RUNNING and job.worker == "w-other" and job.attempts == 2


def test_a_progress_write_refused_for_a_lost_lease_kills_the_run(loop, monkeypatch):
    """The lease goes between the tick's ownership check and the progress write: the
    refused write is how the worker learns it."""
    monkeypatch.setattr(service, "_FLUSH_S", 0.0)  # write progress at every tick
    run = loop.start("l")

    def lose_the_lease() -> None:
        run.on_poll = None
        loop.queue.renew_leases(WORKER_ID, -1)
        loop.queue.requeue_expired(actor="reaper")
        loop.queue.claim("w-other", 30)

    run.on_poll = lose_the_lease
    run.emit(event="metrics", step=1, train_loss=1.0)
    loop.worker.tick()
    assert run.killed_with == loop.worker.config.cancel_grace_s
    loop.worker.tick()
    assert loop.worker.runs == {}
    job = loop.job("l")
    assert job.worker == "w-other" and job.status is S.RUNNING
    assert loop.queue.jobs.job_metrics("l")[0] == []  # the lost run's metrics were not written


def test_max_runtime_exceeded_kills_and_fails_the_job(loop):
    run = loop.start("slow", max_runtime_seconds=3600)
    deadline = loop.worker.runs["slow"].deadline
    assert deadline is not None and deadline - time.monotonic() > 3500
    # The Worker reads time.monotonic() directly: move the deadline instead of the clock.
    loop.worker.runs["slow"].deadline = time.monotonic() - 1
    loop.worker.tick()
    assert run.killed_with == loop.worker.config.cancel_grace_s
    job = loop.job("slow")
    assert job.status is S.FAILED
    assert job.error_message == "deadline exceeded: ran longer than max_runtime_seconds=3600"


# ----------------------------------------------------------------------------- not started


def test_a_launch_refused_as_failed_fails_the_job(loop):
    loop.executor.refuse = LaunchRefused(S.FAILED, "the job asks for 2 GPU(s); this worker has 0")
    loop.submit("g")
    loop.worker.tick()
    job = loop.job("g")
    assert job.status is S.FAILED and job.error_message.startswith("the job asks for 2 GPU")
    assert loop.worker.runs == {}


def test_a_launch_refused_as_queued_hands_the_job_back_and_waits_a_tick(loop):
    loop.executor.refuse = LaunchRefused(S.QUEUED, refund_attempt=True)
    loop.submit("busy")
    loop.submit("next")
    loop.worker.tick()
    job = loop.job("busy")
    assert job.status is S.QUEUED and job.attempts == 0  # the attempt was refunded
    assert loop.job("next").status is S.QUEUED  # not claimed in the same tick
    loop.executor.refuse = None
    loop.worker.tick()
    assert loop.job("busy").status is S.RUNNING


def test_an_os_error_at_launch_fails_only_that_job(loop):
    loop.executor.refuse = OSError(28, "No space left on device")
    loop.submit("full")
    loop.worker.tick()
    job = loop.job("full")
    assert job.status is S.FAILED
    assert job.error_message.startswith("could not start the trainer:")


def test_a_missing_dataset_fails_the_job_before_launch(loop):
    loop.submit("nodata", dataset="nowhere")
    loop.worker.tick()
    job = loop.job("nodata")
    assert job.status is S.FAILED and job.error_message.startswith("dataset unavailable:")
    assert loop.executor.runs == {}


def test_a_dataset_changed_since_creation_fails_the_job(loop):
    path = loop.data_dir / "datasets" / "poems.txt"
    path.write_text("roses are red\n")
    before = hashlib.sha256(path.read_bytes()).hexdigest()
    path.write_text("violets are blue\n")
    loop.submit("stale", dataset="poems", dataset_sha256=before)
    loop.worker.tick()
    job = loop.job("stale")
    assert job.status is S.FAILED and "changed since the job was created" in job.error_message
    assert loop.executor.runs == {}


# ----------------------------------------------------------------------------- shutdown


def test_a_graceful_stop_checkpoints_and_requeues_without_spending_an_attempt(loop):
    run = loop.start("g")
    loop.stop()
    assert run.asked_to_stop and run.killed_with is None
    job = loop.job("g")
    assert job.status is S.QUEUED and job.attempts == 0 and job.worker is None


def test_a_hard_stop_kills_what_did_not_stop_and_still_hands_it_back(loop):
    run = loop.start("h")
    run.exits_on_graceful_stop = False  # a trainer stuck in a collective, say
    loop.worker.hard_stop.set()  # the second Ctrl-C
    loop.stop()
    assert run.asked_to_stop and run.killed_with == 0
    job = loop.job("h")
    assert job.status is S.QUEUED and job.attempts == 0


def test_a_shutdown_grace_that_runs_out_kills_the_run(tmp_path):
    made = make_loop(tmp_path, shutdown_grace_s=0.0)
    try:
        run = made.start("h")
        run.exits_on_graceful_stop = False
        made.stop()
        assert run.killed_with == 0 and made.job("h").status is S.QUEUED
    finally:
        made.queue.jobs.database.close()


def test_a_dispatcher_stop_detaches_runs_that_outlive_it(dispatcher):
    run = dispatcher.start("ray")
    run.emit(event="metrics", step=3)
    dispatcher.worker.tick()  # read, but not yet written (progress is written once a second)
    assert "step" not in dispatcher.job("ray").progress
    dispatcher.stop()
    assert run.released and not run.asked_to_stop and run.killed_with is None
    job = dispatcher.job("ray")
    assert job.status is S.RUNNING and job.worker == DETACHED_OWNER and job.attempts == 1
    assert job.progress["step"] == 3  # written before handing over
    assert kinds(dispatcher.queue, "ray")[-1] == "detached"


def test_stopping_with_nothing_running_touches_nothing(loop):
    loop.submit("q")
    loop.stop()
    assert loop.job("q").status is S.QUEUED and loop.executor.runs == {}
