"""Per-thread connections (store/thread_connections.py). SQLite: fresh snapshots on every
read, one connection per thread, no snapshot left open, SQLAlchemy's exceptions, and
connections that never cross a fork or outlive `close()`. PostgreSQL: the same connection
for every statement of a thread, kept through refused statements, replaced when broken or
past its age, and never used across a fork."""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from sqlalchemy import (
    Integer,
    bindparam,
    column,
    event,
    func,
    literal_column,
    select,
    table,
    text,
)
from sqlalchemy import exc as sa_exc

from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.pagination import JobQuery
from llm_train_api.store.thread_connections import ThreadConnections

_ITEMS = table("items", column("id", Integer), column("value", Integer))
_VALUE = select(_ITEMS.c.value).where(_ITEMS.c.id == bindparam("id"))


@pytest.fixture()
def db_path(tmp_path: Path) -> Path:
    path = tmp_path / "readers.sqlite3"
    with sqlite3.connect(path) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, value INTEGER)")
        setup.execute("INSERT INTO items VALUES (1, 10)")
    return path


@pytest.fixture()
def database(db_path: Path):
    db = Database.from_url(f"sqlite:///{db_path}", migrate=False)
    yield db
    db.close()


def _readers(database: Database) -> ThreadConnections:
    readers = database._threads
    assert readers is not None
    return readers


def _value(database: Database) -> int:
    return database.read_first(_VALUE, {"id": 1}).value


def _in_a_forked_child(check: Callable[[], bool]) -> bool:
    """Run `check` in a forked child (which never returns into pytest) and say whether it
    held there."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = 0 if check() else 2
        finally:
            os.write(write_end, bytes([code]))
            os._exit(code)
    os.close(write_end)
    _, status = os.waitpid(pid, 0)
    reported = os.read(read_end, 1)
    os.close(read_end)
    return reported == b"\x00" and os.waitstatus_to_exitcode(status) == 0


def test_each_read_sees_what_other_connections_committed_before_it(
    database: Database, db_path: Path
) -> None:
    assert _value(database) == 10
    with sqlite3.connect(db_path) as other:
        other.execute("UPDATE items SET value = 11 WHERE id = 1")
    assert _value(database) == 11
    assert _readers(database).open_count() == 1


def test_no_read_snapshot_outlives_the_read(database: Database, db_path: Path) -> None:
    # A statement left unfinished keeps its read transaction, and with it the WAL: a
    # TRUNCATE checkpoint would then report busy and leave the log in place.
    _value(database)
    other = sqlite3.connect(db_path)
    try:
        for value in range(200):
            with other:
                other.execute("UPDATE items SET value = ? WHERE id = 1", (value,))
        busy, _, _ = other.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
    finally:
        other.close()
    assert busy == 0
    assert Path(f"{db_path}-wal").stat().st_size == 0
    assert _value(database) == 199


def test_a_thread_keeps_its_connection_and_threads_do_not_share(database: Database) -> None:
    readers = _readers(database)
    for _ in range(5):
        _value(database)
    assert readers.open_count() == 1
    seen: list[int] = []
    all_read = threading.Barrier(3)
    counted = threading.Event()

    def read_and_wait() -> None:
        seen.append(_value(database))
        all_read.wait(timeout=10)
        counted.wait(timeout=10)  # alive, holding its connection, until counted

    threads = [threading.Thread(target=read_and_wait) for _ in range(2)]
    for thread in threads:
        thread.start()
    all_read.wait(timeout=10)
    assert readers.open_count() == 3
    counted.set()
    for thread in threads:
        thread.join()
    assert seen == [10, 10]


def test_a_driver_error_is_sqlalchemys_and_the_next_read_reconnects(
    database: Database, db_path: Path
) -> None:
    readers = _readers(database)
    _value(database)
    with sqlite3.connect(db_path) as other:
        other.execute("ALTER TABLE items RENAME TO kept")
    with pytest.raises(sa_exc.OperationalError, match="no such table"):
        _value(database)
    assert readers.open_count() == 0  # the connection that failed was closed
    with sqlite3.connect(db_path) as other:
        other.execute("ALTER TABLE kept RENAME TO items")
    assert _value(database) == 10
    assert readers.open_count() == 1


def test_close_closes_every_threads_connection(database: Database) -> None:
    readers = _readers(database)
    _value(database)
    worker = threading.Thread(target=_value, args=(database,))
    worker.start()
    worker.join()
    readers.close()
    assert readers.open_count() == 0
    assert _value(database) == 10  # a read after close opens a new one


def test_a_forked_child_opens_its_own_connection(database: Database, db_path: Path) -> None:
    readers = _readers(database)
    _value(database)
    parents = readers._local.slot.connection

    def child_reads_on_its_own() -> bool:
        return (_value(database) == 10 and readers._local.slot.connection is not parents
                and readers._inherited == [parents])

    assert _in_a_forked_child(child_reads_on_its_own)
    # The parent's connection still works after the child has gone.
    assert readers._local.slot.connection is parents
    assert _value(database) == 10


def test_in_memory_databases_read_on_their_one_connection() -> None:
    # A second connection to `sqlite://` would be a different, empty database.
    database = Database.from_url("sqlite://")
    try:
        assert database._threads is None
        jobs = JobRepository(database)
        jobs.create_job(NewJob(job_id="mem-1", model_name="m", dataset="d",
                               hyperparameters={}, owner=None), actor="admin")
        assert jobs.get_job("mem-1").id == "mem-1"
    finally:
        database.close()


# --------------------------------------------------------------------------- PostgreSQL

_BACKEND = select(func.pg_backend_pid().label("pid"))
_DIVIDE = select((literal_column("1") / bindparam("zero", type_=Integer)).label("q"))


@pytest.fixture()
def pg_database(pg_url: str):
    db = Database.from_url(pg_url)
    yield db
    db.close()


def _backend(database: Database) -> int:
    return database.read_first(_BACKEND, {}).pid


@pytest.mark.postgres
def test_postgres_a_thread_runs_every_statement_on_its_one_connection(
    pg_database: Database,
) -> None:
    jobs = JobRepository(pg_database)
    pid = _backend(pg_database)
    checkouts: list[object] = []
    event.listen(pg_database.read_engine.pool, "checkout", lambda *args: checkouts.append(args))
    # A create (one data-modifying statement), a read, a page and a status change: same
    # session. The first three took no connection from the pool.
    jobs.create_job(NewJob("tc-1", "m", "d", {}), actor="admin")
    assert jobs.get_job("tc-1").status.value == "queued"
    assert [job.id for job in jobs.list_jobs(JobQuery(limit=5)).jobs] == ["tc-1"]
    assert checkouts == []
    jobs.transition("tc-1", JobStatus.CANCELLED, actor="admin")
    assert _backend(pg_database) == pid
    assert pg_database._threads.open_count() == 1
    other: list[int] = []
    thread = threading.Thread(target=lambda: other.append(_backend(pg_database)))
    thread.start()
    thread.join()
    assert other and other[0] != pid


@pytest.mark.postgres
def test_postgres_a_refused_statement_keeps_the_connection(pg_database: Database) -> None:
    pid = _backend(pg_database)
    with pytest.raises(sa_exc.DataError, match="division by zero") as raised:
        pg_database.read_first(_DIVIDE, {"zero": 0})
    assert not raised.value.connection_invalidated
    # Still the same session, in autocommit, with no transaction left open.
    assert _backend(pg_database) == pid
    assert pg_database.read_first(select(func.txid_current_if_assigned()), {})[0] is None


@pytest.mark.postgres
def test_postgres_a_connection_past_its_age_is_replaced_and_closed(pg_url: str) -> None:
    database = Database.from_url(pg_url)
    try:
        database._threads = ThreadConnections(database.read_engine, max_age_s=0.2)
        first = _backend(database)
        assert _backend(database) == first
        time.sleep(0.3)
        second = _backend(database)
        assert second != first
        with database.reading() as conn:
            alive = conn.execute(text("SELECT count(*) FROM pg_stat_activity WHERE pid = :p"),
                                 {"p": first}).scalar_one()
        assert alive == 0
    finally:
        database.close()


@pytest.mark.postgres
def test_postgres_a_forked_child_opens_its_own_session(pg_database: Database) -> None:
    parents = _backend(pg_database)
    assert _in_a_forked_child(lambda: _backend(pg_database) != parents)
    # The child did not touch the parent's session: it still answers.
    assert _backend(pg_database) == parents


@pytest.mark.postgres
def test_postgres_after_one_broken_connection_no_thread_meets_another(
    pg_database: Database, pg_url: str
) -> None:
    # A restart of the server (or a proxy) breaks every thread's connection at once: the
    # first thread to notice costs one failed request, and the others reconnect before
    # their next statement instead of failing in turn.
    import psycopg

    mine = _backend(pg_database)
    asked, answered = threading.Event(), threading.Event()
    theirs: list[int] = []

    def other_thread() -> None:
        theirs.append(_backend(pg_database))
        answered.set()
        asked.wait(10)
        answered.clear()
        theirs.append(_backend(pg_database))
        answered.set()

    thread = threading.Thread(target=other_thread)
    thread.start()
    assert answered.wait(10)
    with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
        for pid in (mine, theirs[0]):
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
    with pytest.raises(sa_exc.OperationalError) as raised:
        _backend(pg_database)
    assert raised.value.connection_invalidated
    asked.set()
    thread.join(10)
    assert len(theirs) == 2 and theirs[1] != theirs[0]  # no error: a fresh session
    assert _backend(pg_database) not in (mine, theirs[0])
