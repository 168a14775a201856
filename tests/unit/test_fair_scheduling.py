"""Fair scheduling: workers share capacity among the owners of queued jobs (the fewest
running jobs first), priority and age order each owner's own queue, and "priority"
scheduling keeps the global priority-then-age order. On SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_train_api import create_app
from llm_train_api.config import ConfigError, Settings
from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import JobQueue
from llm_train_api.training.events import EXIT_OK
from tests.helpers.clients import admin_client, client_as
from tests.helpers.worker import FakeExecutor, build_worker

# alice submits first, some of hers with a high priority; bob comes later with three.
ALICE_PRIORITIES = [0, 9, 0, 5, 0, 0, 9, 0, 0, 0]


def _submit(jobs: JobRepository, owner: str | None, n: int,
            priorities: list[int] | None = None, prefix: str | None = None) -> None:
    for i in range(n):
        priority = priorities[i] if priorities else 0
        jobs.create_job(NewJob(f"{prefix or owner}-{i}", "gpt-nano", "d", {},
                               priority=priority, owner=owner))


def _alice_then_bob(jobs: JobRepository) -> None:
    _submit(jobs, "alice", 10, ALICE_PRIORITIES)
    _submit(jobs, "bob", 3)


def _claim_all(queue: JobQueue) -> list[str]:
    claimed = []
    while (job := queue.claim("w", 60)) is not None:
        claimed.append(job.id)
    return claimed


def test_claims_alternate_between_owners_by_running_count(jobs, queue):
    _alice_then_bob(jobs)
    claimed = _claim_all(queue)
    # Between owners who run as many, the one served least recently goes first (at the
    # start neither was: then the higher priority); alice's priorities order her queue.
    assert claimed[:6] == ["alice-1", "bob-0", "alice-6", "bob-1", "alice-3", "bob-2"]
    assert claimed[6:] == ["alice-0", "alice-2", "alice-4", "alice-5", "alice-7", "alice-8",
                           "alice-9"]


def test_a_finished_run_gives_its_owner_the_next_turn(jobs, queue):
    _alice_then_bob(jobs)
    first = queue.claim("w", 60)
    assert first.owner == "alice"
    assert queue.claim("w", 60).owner == "bob"
    queue.finish(first.id, "w", JobStatus.SUCCEEDED)
    # alice now runs none and bob one: alice's turn; then both run one, and bob was
    # served less recently.
    assert queue.claim("w", 60).id == "alice-6"
    assert queue.claim("w", 60).id == "bob-1"


def test_priority_orders_jobs_inside_one_owners_queue(jobs, queue):
    _submit(jobs, "carol", 5, [1, 3, 1, 3, -2])
    assert _claim_all(queue) == ["carol-1", "carol-3", "carol-0", "carol-2", "carol-4"]


def test_unowned_jobs_count_as_one_owner(jobs, queue):
    _submit(jobs, None, 3, prefix="free")
    _submit(jobs, "alice", 3)
    assert _claim_all(queue) == ["free-0", "alice-0", "free-1", "alice-1", "free-2",
                                 "alice-2"]


def test_priority_scheduling_keeps_the_global_order(database, jobs):
    queue = JobQueue(database, jobs, scheduling="priority")
    _alice_then_bob(jobs)
    assert _claim_all(queue) == [
        "alice-1", "alice-6", "alice-3", "alice-0", "alice-2", "alice-4", "alice-5",
        "alice-7", "alice-8", "alice-9", "bob-0", "bob-1", "bob-2"]


def test_the_running_cap_still_holds_under_fair_scheduling(database, jobs):
    queue = JobQueue(database, jobs, max_running_per_user=2)
    _alice_then_bob(jobs)
    _submit(jobs, None, 1, prefix="free")
    claimed = _claim_all(queue)
    assert claimed == ["alice-1", "bob-0", "free-0", "alice-6", "bob-1"]
    assert jobs.count_jobs("alice", JobStatus.RUNNING) == 2
    queue.finish("alice-1", "w", JobStatus.SUCCEEDED)
    assert queue.claim("w", 60).id == "alice-3"
    assert queue.claim("w", 60) is None


def test_an_unknown_scheduling_is_refused(database, jobs):
    with pytest.raises(ValueError, match="scheduling"):
        JobQueue(database, jobs, scheduling="random")


def test_one_worker_interleaves_two_users_jobs(tmp_path: Path):
    """Through the Worker loop: one slot, alice's ten jobs queued before bob's three. At
    each claim nobody runs anything, so the owners take turns (served least recently
    first), and priority orders alice's own jobs."""
    database = Database.from_url(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    try:
        repository = JobRepository(database)
        queue = JobQueue(database, repository)
        (tmp_path / "data" / "datasets").mkdir(parents=True)
        executor = FakeExecutor()
        worker = build_worker(queue, tmp_path / "data", executor)
        for i, priority in enumerate(ALICE_PRIORITIES):
            repository.create_job(NewJob(f"alice-{i}", "gpt-nano", "builtin:tinytext", {},
                                         priority=priority, owner="alice"))
        for i in range(3):
            repository.create_job(NewJob(f"bob-{i}", "gpt-nano", "builtin:tinytext", {},
                                         owner="bob"))
        order = []
        for _ in range(13):
            worker.tick()
            running = [j for j, run in executor.runs.items() if run.rc is None]
            assert len(running) == 1
            order.append(running[0])
            executor.runs[running[0]].rc = EXIT_OK
        worker.tick()
        owners = [job_id.split("-")[0] for job_id in order]
        assert owners[:6] == ["alice", "bob"] * 3
        assert order[:6] == ["alice-1", "bob-0", "alice-6", "bob-1", "alice-3", "bob-2"]
        assert all(repository.get_job(j).status is JobStatus.SUCCEEDED for j in order)
    finally:
        database.close()


def test_a_user_may_raise_priority_only_up_to_max_user_priority(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "MAX_USER_PRIORITY": 10})
    try:
        alice, admin = client_as(app, "alice", "user"), admin_client(app)
        job = {"model_name": "gpt-nano", "dataset": "d"}
        resp = alice.post("/jobs", json={**job, "priority": 11})
        assert resp.status_code == 422
        assert "LLM_TRAIN_API_MAX_USER_PRIORITY" in resp.get_json()["message"]
        assert "priority" in resp.get_json()["errors"]["json"]
        assert alice.post("/jobs", json={**job, "priority": 10}).status_code == 201
        assert alice.post("/jobs", json={**job, "priority": -1000}).status_code == 201
        assert admin.post("/jobs", json={**job, "priority": 1000}).status_code == 201
    finally:
        app.extensions["llm_train_api.runtime"].close()


@pytest.mark.parametrize(("env", "name"), [
    ({"LLM_TRAIN_API_SCHEDULING": "random"}, "LLM_TRAIN_API_SCHEDULING must be"),
    ({"LLM_TRAIN_API_MAX_USER_PRIORITY": "5000"}, "LLM_TRAIN_API_MAX_USER_PRIORITY must be"),
])
def test_bad_scheduling_settings_are_refused(env, name):
    with pytest.raises(ConfigError, match=name):
        Settings.load(env)
