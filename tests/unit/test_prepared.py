"""Prepared statements (store/prepared.py): the same rows as SQLAlchemy's own execution, the
same exceptions, and no statement whose values would need a conversion they skip."""

from __future__ import annotations

import psycopg
import pytest
from sqlalchemy import DateTime, bindparam, column, create_engine, func, select, table
from sqlalchemy import exc as sa_exc

from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import SELECT_BY_ID, JobRepository
from llm_train_api.store.pagination import JobQuery
from llm_train_api.store.prepared import Prepared
from llm_train_api.store.tables import jobs as jobs_table


def test_rows_equal_sqlalchemys_own(database: Database, jobs: JobRepository) -> None:
    jobs.create_job(NewJob(job_id="p-1", model_name="m", dataset="d",
                           hyperparameters={"lr": 0.1}, owner="ann"), actor="user:ann")
    with database.reading() as conn:
        expected = conn.execute(SELECT_BY_ID, {"job_id": "p-1"}).first()
    row = database.read_first(SELECT_BY_ID, {"job_id": "p-1"})
    assert tuple(row) == tuple(expected)
    assert (row.id, row.owner, row.status) == ("p-1", "ann", "queued")
    assert database.read_first(SELECT_BY_ID, {"job_id": "nope"}) is None


def test_every_row_equals_sqlalchemys_own(database: Database, jobs: JobRepository) -> None:
    jobs.insert_many(NewJob(job_id=f"p-{i}", model_name="m", dataset="d",
                            hyperparameters={"i": i}) for i in range(7))
    stmt, params = jobs.page_statement(JobQuery(limit=5, statuses=(JobStatus.QUEUED,)))
    with database.reading() as conn:
        expected = conn.execute(stmt, params).all()
        assert [tuple(r) for r in database.prepared(stmt).all(conn, params)] == [
            tuple(r) for r in expected]
    rows = database.read_all(stmt, params)
    assert [tuple(r) for r in rows] == [tuple(r) for r in expected]
    assert [r.id for r in rows] == [f"p-{i}" for i in range(6, 0, -1)]  # limit + 1
    assert database.read_all(stmt, dict(params, status_0="running")) == []


def test_a_missing_parameter_is_an_error_not_a_null(database: Database) -> None:
    # SQLite: the positional tuple cannot be built; PostgreSQL: the driver refuses.
    with pytest.raises((KeyError, sa_exc.ProgrammingError)):
        database.read_first(SELECT_BY_ID, {})


def test_statements_that_need_conversions_are_refused() -> None:
    # SQLite's dialect converts datetimes in Python (psycopg converts them itself).
    dialect = create_engine("sqlite://").dialect
    stamped = table("t", column("at", DateTime))
    with pytest.raises(TypeError, match="conversion"):
        Prepared(select(stamped.c.at), dialect)
    with pytest.raises(TypeError, match="conversion"):
        Prepared(select(func.count()).where(stamped.c.at < bindparam("t", type_=DateTime)),
                 dialect)


def test_expanding_parameters_are_refused(database: Database) -> None:
    stmt = select(jobs_table.c.id).where(jobs_table.c.id.in_(bindparam("ids", expanding=True)))
    with pytest.raises(TypeError, match="expanding"):
        Prepared(stmt, database.engine.dialect)


def test_a_driver_error_is_sqlalchemys_and_undoes_the_write(database: Database,
                                                              jobs: JobRepository) -> None:
    jobs.create_job(NewJob(job_id="dup", model_name="m", dataset="d", hyperparameters={}))
    plain_insert = jobs_table.insert().values(
        {name: bindparam(name) for name in ("id", "model_name", "dataset", "hyperparameters",
                                            "request_hash", "status", "created_us",
                                            "updated_us", "version")})
    params = {"id": "dup", "model_name": "other", "dataset": "d", "hyperparameters": "{}",
              "request_hash": "x", "status": "queued", "created_us": 1, "updated_us": 1,
              "version": 1}

    def work(conn):
        database.prepared(plain_insert).first(conn, dict(params, id="fresh"))
        database.prepared(plain_insert).first(conn, params)  # the id is taken

    with pytest.raises(sa_exc.IntegrityError):
        database.write(work)
    assert database.read_first(SELECT_BY_ID, {"job_id": "fresh"}) is None
    assert database.read_first(SELECT_BY_ID, {"job_id": "dup"}).model_name == "m"


@pytest.mark.postgres
def test_a_dead_connection_is_invalidated_and_the_next_read_works(pg_url: str) -> None:
    database = Database.from_url(pg_url, pool_size=1)
    try:
        backend = select(func.pg_backend_pid().label("pid"))
        pid = database.read_first(backend, {}).pid
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        # What Connection.execute raises for a dead connection: api/errors.py answers 503.
        with pytest.raises(sa_exc.OperationalError) as raised:
            database.read_first(backend, {})
        assert raised.value.connection_invalidated
        assert database.read_first(backend, {}).pid != pid
    finally:
        database.close()
