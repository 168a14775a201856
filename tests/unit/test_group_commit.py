"""SQLite group commit: concurrent writers share transactions, and one writer's failure
never undoes or hides another's write."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from sqlalchemy import event, text

from llm_train_api.domain import JobNotFound, JobStatus, NewJob
from llm_train_api.store.job_store import JobStore


@pytest.fixture
def sqlite_store(tmp_path):
    store = JobStore.from_url(f"sqlite:///{tmp_path / 'g.sqlite3'}")
    yield store
    store.close()


def count_commits(store):
    commits = []
    event.listen(store._engine, "commit", lambda conn: commits.append(1))
    return commits


def test_concurrent_writers_share_commits_and_all_land(sqlite_store):
    commits = count_commits(sqlite_store)
    n = 200
    barrier = threading.Barrier(16)

    def write(i):
        if i < 16:
            barrier.wait()
        job, created = sqlite_store.create_job(NewJob(f"g{i}", "m", "d", {"i": i}))
        assert created
        moved, changed = sqlite_store.transition(f"g{i}", JobStatus.RUNNING)
        assert changed and moved.status is JobStatus.RUNNING
        return job.id

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(write, range(n)))
    assert sorted(ids) == sorted(f"g{i}" for i in range(n))
    for i in range(n):
        assert sqlite_store.get_job(f"g{i}").status is JobStatus.RUNNING
        assert [e.to_status for e in sqlite_store.job_events(f"g{i}")[0]] == [
            JobStatus.QUEUED, JobStatus.RUNNING]
    assert len(commits) < 2 * n, "no two writes ever shared a commit"


def test_a_failing_writer_does_not_undo_its_batch_mates(sqlite_store):
    sqlite_store.insert_many(NewJob(f"ok{i}", "m", "d", {}) for i in range(40))
    barrier = threading.Barrier(80)

    def good(i):
        barrier.wait()
        return sqlite_store.transition(f"ok{i}", JobStatus.CANCELLED)[1]

    def bad(i):
        barrier.wait()
        with pytest.raises(JobNotFound):
            sqlite_store.delete_job(f"missing{i}")
        return "raised"

    with ThreadPoolExecutor(80) as pool:
        futures = [pool.submit(good, i) for i in range(40)]
        futures += [pool.submit(bad, i) for i in range(40)]
        results = [f.result() for f in futures]
    assert results[:40] == [True] * 40 and results[40:] == ["raised"] * 40
    assert all(sqlite_store.get_job(f"ok{i}").status is JobStatus.CANCELLED for i in range(40))


def test_a_database_error_reaches_its_writer_and_changes_nothing(sqlite_store):
    sqlite_store.create_job(NewJob("x", "m", "d", {}))
    with sqlite_store._engine.begin() as conn:  # make every UPDATE fail, as a full disk would
        conn.execute(text(
            "CREATE TRIGGER refuse BEFORE UPDATE ON jobs "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    with pytest.raises(Exception, match="disk full"):
        sqlite_store.transition("x", JobStatus.RUNNING)
    assert sqlite_store.get_job("x").status is JobStatus.QUEUED
