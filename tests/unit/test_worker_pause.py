"""The worker's side of pausing, on a real SQLite store with the in-memory executor: a
pause request reaches the run at the next tick, the run checkpoints and stops, the job ends
`paused` without spending its attempt, and the slot takes other work."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_train_api.domain import JobStatus
from llm_train_api.store.pausing import pause_job, resume_job
from llm_train_api.training.events import EXIT_OK, EXIT_PREEMPTED
from llm_train_api.worker.ray_executor import submission_id
from tests.helpers.worker import WORKER_ID
from tests.unit.test_worker_loop import Loop, kinds, make_loop

S = JobStatus


@pytest.fixture
def loop(tmp_path: Path) -> Iterator[Loop]:
    made = make_loop(tmp_path)
    yield made
    made.queue.jobs.database.close()


def test_a_pause_request_stops_the_run_pauses_the_job_and_frees_the_slot(loop):
    run = loop.start("p")
    run.emit(event="start", total_steps=10)
    run.emit(event="metrics", step=4, train_loss=2.5)
    loop.worker.tick()
    loop.submit("other")
    pause_job(loop.queue.jobs, "p", actor="user:alice")
    loop.worker.tick()  # sees the request, stops the run; it exits 75; "other" is claimed
    assert run.asked_to_stop and run.killed_with is None
    job = loop.job("p")
    assert job.status is S.PAUSED and job.attempts == 0 and job.pauses == 1
    assert job.worker is None and job.pause_requested_at is None and job.finished_at is None
    assert job.progress["step"] == 4  # where it paused stays visible
    assert loop.job("other").status is S.RUNNING and "p" not in loop.worker.runs
    assert kinds(loop.queue, "p")[-2:] == ["pause_requested", "paused"]
    paused = loop.queue.jobs.job_events("p")[0][-1]
    assert (paused.actor, paused.message, paused.attempt) == (WORKER_ID, "paused at step 4", 0)
    # Resumed, it runs again as its first attempt.
    loop.run("other").rc = EXIT_OK
    resume_job(loop.queue.jobs, "p", actor="user:alice")
    loop.worker.tick()
    loop.worker.tick()
    again = loop.job("p")
    assert again.status is S.RUNNING and again.attempts == 1
    assert loop.run("p") is not run


def test_a_pause_withdrawn_after_the_stop_requeues_without_spending_the_attempt(loop):
    run = loop.start("w")
    run.exits_on_graceful_stop = False  # still checkpointing when the resume comes
    pause_job(loop.queue.jobs, "w", actor="a")
    loop.worker.tick()
    assert run.asked_to_stop and loop.job("w").status is S.RUNNING
    resume_job(loop.queue.jobs, "w", actor="a")
    run.rc = EXIT_PREEMPTED
    loop.worker.config.concurrency = 0  # look at the job before anyone claims it
    loop.worker.tick()
    job = loop.job("w")
    assert job.status is S.QUEUED and job.attempts == 0 and job.pauses == 0
    assert kinds(loop.queue, "w")[-1] == "requeued"


def test_a_run_that_ignores_the_stop_is_killed_and_still_pauses(tmp_path):
    made = make_loop(tmp_path, shutdown_grace_s=0.0)
    try:
        run = made.start("k")
        run.exits_on_graceful_stop = False
        pause_job(made.queue.jobs, "k", actor="a")
        made.worker.tick()  # asks; the grace (0 s) is over by the next tick
        made.worker.tick()
        assert run.killed_with == made.worker.config.cancel_grace_s
        assert made.job("k").status is S.PAUSED
    finally:
        made.queue.jobs.database.close()


def test_a_run_that_finishes_as_the_pause_arrives_succeeds(loop):
    run = loop.start("s")
    run.exits_on_graceful_stop = False
    pause_job(loop.queue.jobs, "s", actor="a")
    loop.worker.tick()
    run.rc = EXIT_OK
    loop.worker.tick()
    assert loop.job("s").status is S.SUCCEEDED


def test_a_trainer_failure_during_a_pause_fails_the_job(loop):
    run = loop.start("f")
    run.exits_on_graceful_stop = False
    pause_job(loop.queue.jobs, "f", actor="a")
    loop.worker.tick()
    run.rc = 1
    loop.worker.tick()
    assert loop.job("f").status is S.FAILED


def test_a_cancel_during_a_pause_wins(loop):
    run = loop.start("c")
    run.exits_on_graceful_stop = False
    pause_job(loop.queue.jobs, "c", actor="a")
    loop.worker.tick()
    loop.queue.jobs.transition("c", S.CANCELLED, actor="a")
    run.rc = EXIT_PREEMPTED
    loop.worker.tick()
    job = loop.job("c")
    assert job.status is S.CANCELLED and job.pause_requested_at is None


def test_a_ray_run_after_a_pause_has_a_submission_id_of_its_own(loop):
    loop.start("r")
    pause_job(loop.queue.jobs, "r", actor="a")
    before = submission_id(loop.job("r"))
    loop.worker.tick()
    resume_job(loop.queue.jobs, "r", actor="a")
    loop.worker.tick()
    after = loop.job("r")
    assert after.status is S.RUNNING and after.attempts == 1
    assert submission_id(after) != before and submission_id(after).endswith("-a1-p1")


def test_a_pause_asked_for_during_a_worker_shutdown_is_honoured(loop):
    run = loop.start("sd")
    loop.submit("waiting")
    run.exits_on_graceful_stop = False
    original = run.graceful_stop

    def stop_slowly() -> None:  # the pause arrives while the trainer checkpoints
        original()
        pause_job(loop.queue.jobs, "sd", actor="a")
        run.rc = EXIT_PREEMPTED

    run.graceful_stop = stop_slowly
    loop.stop()
    job = loop.job("sd")
    assert job.status is S.PAUSED and job.attempts == 0
    assert loop.job("waiting").status is S.QUEUED


def test_a_shutdown_without_a_pause_requeues_as_before(loop):
    loop.start("plain")
    loop.stop()
    job = loop.job("plain")
    assert job.status is S.QUEUED and job.attempts == 0
