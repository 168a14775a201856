"""SQLite group commit: concurrent writers share transactions, and one writer's failure
never undoes or hides another's write."""

from __future__ import annotations

import fcntl
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import sqlalchemy.exc
from sqlalchemy import text

from llm_train_api.domain import JobNotFound, JobStatus, NewJob
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository


@pytest.fixture
def sqlite_jobs(tmp_path):
    database = Database.from_url(f"sqlite:///{tmp_path / 'g.sqlite3'}")
    yield JobRepository(database)
    database.close()


def commits_of(jobs) -> int:
    """Transactions the group committer has committed (it sends COMMIT to the driver)."""
    return jobs.database._group.commits


def test_concurrent_writers_share_commits_and_all_land(sqlite_jobs):
    before = commits_of(sqlite_jobs)
    n = 200
    barrier = threading.Barrier(16)

    def write(i):
        if i < 16:
            barrier.wait()
        job, created = sqlite_jobs.create_job(NewJob(f"g{i}", "m", "d", {"i": i}))
        assert created
        moved, changed = sqlite_jobs.transition(f"g{i}", JobStatus.RUNNING)
        assert changed and moved.status is JobStatus.RUNNING
        return job.id

    with ThreadPoolExecutor(16) as pool:
        ids = list(pool.map(write, range(n)))
    assert sorted(ids) == sorted(f"g{i}" for i in range(n))
    for i in range(n):
        assert sqlite_jobs.get_job(f"g{i}").status is JobStatus.RUNNING
        assert [e.to_status for e in sqlite_jobs.job_events(f"g{i}")[0]] == [
            JobStatus.QUEUED, JobStatus.RUNNING]
    commits = commits_of(sqlite_jobs) - before
    assert 0 < commits < 2 * n, "no two writes ever shared a commit"


def test_a_failing_writer_does_not_undo_its_batch_mates(sqlite_jobs):
    sqlite_jobs.insert_many(NewJob(f"ok{i}", "m", "d", {}) for i in range(40))
    barrier = threading.Barrier(80)

    def good(i):
        barrier.wait()
        return sqlite_jobs.transition(f"ok{i}", JobStatus.CANCELLED)[1]

    def bad(i):
        barrier.wait()
        with pytest.raises(JobNotFound):
            sqlite_jobs.delete_job(f"missing{i}")
        return "raised"

    with ThreadPoolExecutor(80) as pool:
        futures = [pool.submit(good, i) for i in range(40)]
        futures += [pool.submit(bad, i) for i in range(40)]
        results = [f.result() for f in futures]
    assert results[:40] == [True] * 40 and results[40:] == ["raised"] * 40
    assert all(sqlite_jobs.get_job(f"ok{i}").status is JobStatus.CANCELLED for i in range(40))


def test_a_database_error_reaches_its_writer_and_changes_nothing(sqlite_jobs):
    sqlite_jobs.create_job(NewJob("x", "m", "d", {}))
    # Make every UPDATE fail, as a full disk would.
    with sqlite_jobs.database.engine.begin() as conn:
        conn.execute(text(
            "CREATE TRIGGER refuse BEFORE UPDATE ON jobs "
            "BEGIN SELECT RAISE(ABORT, 'disk full'); END"))
    with pytest.raises(Exception, match="disk full"):
        sqlite_jobs.transition("x", JobStatus.RUNNING)
    assert sqlite_jobs.get_job("x").status is JobStatus.QUEUED


def test_a_write_lock_held_elsewhere_is_a_wrapped_error_and_the_next_write_lands(tmp_path):
    """BEGIN and COMMIT go to the driver directly: a busy database still surfaces as
    SQLAlchemy's OperationalError (the API's 503), and the committer's connection serves
    the next batch once the lock is free."""
    path = tmp_path / "busy.sqlite3"
    database = Database.from_url(f"sqlite:///{path}", busy_timeout_s=0.2)
    jobs = JobRepository(database)
    try:
        jobs.create_job(NewJob("before", "m", "d", {}))
        other = sqlite3.connect(path, isolation_level=None)
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(sqlalchemy.exc.OperationalError, match="locked"):
            jobs.create_job(NewJob("blocked", "m", "d", {}))
        other.execute("ROLLBACK")
        other.close()
        with pytest.raises(JobNotFound):
            jobs.get_job("blocked")
        job, created = jobs.create_job(NewJob("after", "m", "d", {}))
        assert created and jobs.get_job("after").id == "after"
    finally:
        database.close()


def test_writes_through_sqlalchemy_share_the_drivers_transaction(sqlite_jobs):
    """A write that executes through SQLAlchemy (not a prepared statement) runs inside the
    transaction the committer opened, and commits or rolls back with it."""
    database = sqlite_jobs.database

    def insert_then_fail(conn):
        conn.execute(text("INSERT INTO schema_version (version) VALUES (999)"))
        raise RuntimeError("changed my mind")

    with pytest.raises(RuntimeError):
        database.write(insert_then_fail)
    count = "SELECT count(*) FROM schema_version WHERE version = 999"
    with database.reading() as conn:
        assert conn.execute(text(count)).scalar_one() == 0
    database.write(lambda conn: conn.execute(
        text("INSERT INTO schema_version (version) VALUES (999)")))
    with database.reading() as conn:
        assert conn.execute(text(count)).scalar_one() == 1
    sqlite_jobs.create_job(NewJob("later", "m", "d", {}))  # the connection is clean again
    assert sqlite_jobs.get_job("later").id == "later"


def _batched(database: Database, works: list) -> list:
    """Run `works` as one batch: the process lock is held here until all of them wait in
    the committer's queue, so its leader takes them together. Each outcome is the write's
    result, or the exception it raised."""
    group = database._group
    lock = open(group._lock_path, "a+b")
    fcntl.flock(lock, fcntl.LOCK_EX)
    outcomes: list = [None] * len(works)

    def run(i: int) -> None:
        try:
            outcomes[i] = database.write(works[i])
        except Exception as exc:  # the outcome under test
            outcomes[i] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(works))]
    try:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 10
        while len(group._queue) < len(works) - 1 and time.monotonic() < deadline:
            time.sleep(0.005)  # one is the leader, waiting for the lock; the rest queue
        assert len(group._queue) >= len(works) - 1
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()
    for thread in threads:
        thread.join(timeout=10)
    return outcomes


def _driver_statements(database: Database) -> list[str]:
    """What the committer's connection sends from now on (a trace on the driver)."""
    sent: list[str] = []
    conn = database._group._connection()
    conn.connection.dbapi_connection.set_trace_callback(sent.append)
    return sent


def _insert(value: int, *, then_fail: bool = False):
    def work(conn):
        conn.connection.dbapi_connection.execute("INSERT INTO marks VALUES (?)", (value,))
        if then_fail:
            raise ValueError(f"write {value} failed after its insert")
        return value
    return work


@pytest.fixture
def marks_db(tmp_path):
    database = Database.from_url(f"sqlite:///{tmp_path / 'marks.sqlite3'}")
    database.write(lambda conn: conn.connection.dbapi_connection.execute(
        "CREATE TABLE marks (value INTEGER PRIMARY KEY)"))
    yield database
    database.close()


def _marks(database: Database) -> list[int]:
    with database.reading() as conn:
        return [row[0] for row in conn.execute(text("SELECT value FROM marks ORDER BY 1"))]


def test_a_write_failing_mid_batch_loses_its_own_statements_only(marks_db):
    sent = _driver_statements(marks_db)
    works = [_insert(0), _insert(1), _insert(2, then_fail=True), _insert(3), _insert(4)]
    outcomes = _batched(marks_db, works)
    assert outcomes[:2] == [0, 1] and outcomes[3:] == [3, 4]
    assert isinstance(outcomes[2], ValueError)
    assert _marks(marks_db) == [0, 1, 3, 4]  # write 2's insert was undone with it
    assert sum(s.upper() == "COMMIT" for s in sent) == 1  # one batch, one commit
