"""The store suite, run on SQLite and on the real PostgreSQL server (a fresh schema each)."""

from __future__ import annotations

import itertools
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest

from llm_train_api.domain import (
    ALLOWED_TRANSITIONS,
    IllegalTransition,
    JobIdConflict,
    JobNotFound,
    JobStatus,
    NewJob,
    PreconditionFailed,
)
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.pagination import JobQuery

S = JobStatus


def new(job_id: str, **kw) -> NewJob:
    return NewJob(job_id=job_id, model_name=kw.get("model_name", "gpt-nano"),
                  dataset=kw.get("dataset", "shakespeare"),
                  hyperparameters=kw.get("hyperparameters", {"lr": 0.001}))


def walk(jobs: JobRepository, limit: int, **filters) -> list[str]:
    ids, after = [], None
    while True:
        page = jobs.list_jobs(JobQuery(limit=limit, after=after, **filters))
        ids += [j.id for j in page.jobs]
        if page.next_key is None:
            return ids
        after = page.next_key


def bring_to(jobs: JobRepository, job_id: str, status: JobStatus) -> None:
    path = {S.QUEUED: [], S.RUNNING: [S.RUNNING], S.SUCCEEDED: [S.RUNNING, S.SUCCEEDED],
            S.FAILED: [S.FAILED], S.CANCELLED: [S.CANCELLED], S.PAUSED: [S.PAUSED]}[status]
    for step in path:
        jobs.transition(job_id, step)


def test_create_get_roundtrip(jobs):
    job, created = jobs.create_job(new("a", hyperparameters={"nested": {"x": [1, 2.5]}}))
    assert created and job.status is S.QUEUED and job.version == 1
    assert jobs.get_job("a") == job
    assert job.created_at.tzinfo is not None


def test_idempotent_create_and_conflict(jobs):
    job, _ = jobs.create_job(new("a"))
    again, created = jobs.create_job(new("a"))
    assert not created and again == job
    # Key order in hyperparameters does not make a different request.
    jobs.create_job(new("b", hyperparameters={"x": 1, "y": 2}))
    assert not jobs.create_job(new("b", hyperparameters={"y": 2, "x": 1}))[1]
    with pytest.raises(JobIdConflict):
        jobs.create_job(new("a", dataset="other"))


def test_unicode_survives(jobs):
    job, _ = jobs.create_job(new("u", model_name="模型", hyperparameters={"提示": "ü"}))
    assert jobs.get_job("u").model_name == "模型"
    assert jobs.get_job("u").hyperparameters == {"提示": "ü"}
    assert job.model_name == "模型"


def test_missing_job_errors(jobs):
    with pytest.raises(JobNotFound):
        jobs.get_job("x")
    with pytest.raises(JobNotFound):
        jobs.transition("x", S.RUNNING)
    with pytest.raises(JobNotFound):
        jobs.delete_job("x")
    with pytest.raises(JobNotFound):
        jobs.job_events("x")


@pytest.mark.parametrize(
    "start,target", list(itertools.product(list(JobStatus), list(JobStatus)))
)
def test_full_transition_table(jobs, start, target):
    jobs.create_job(new("t"))
    bring_to(jobs, "t", start)
    before = jobs.get_job("t")
    assert before.status is start
    if target is start:
        job, changed = jobs.transition("t", target)
        assert not changed and job == before
    elif target in ALLOWED_TRANSITIONS[start]:
        job, changed = jobs.transition("t", target)
        assert changed and job.status is target and job.version == before.version + 1
        assert jobs.job_events("t")[0][-1].from_status is start
    else:
        with pytest.raises(IllegalTransition) as info:
            jobs.transition("t", target)
        assert info.value.current is start
        assert jobs.get_job("t") == before


def test_compare_and_set_on_revision(jobs):
    job, _ = jobs.create_job(new("a"))
    moved, _ = jobs.transition("a", S.RUNNING, expected=job.revision)
    with pytest.raises(PreconditionFailed):
        jobs.transition("a", S.CANCELLED, expected=job.revision)
    jobs.transition("a", S.SUCCEEDED, expected=moved.revision)


def test_delete_removes_job_and_events(jobs):
    jobs.create_job(new("a"))
    jobs.transition("a", S.RUNNING)
    jobs.delete_job("a")
    with pytest.raises(JobNotFound):
        jobs.get_job("a")
    # The id is free again, and the new job has a fresh timeline.
    jobs.create_job(new("a", dataset="other"))
    assert [e.kind for e in jobs.job_events("a")[0]] == ["created"]


def test_pending_branch_origins_are_those_of_branches_that_may_still_start(jobs):
    origin = {"job_id": "trunk", "created_us": 7, "step": 10, "sha256": "ab" * 32}
    jobs.create_job(new("trunk"))
    for n, status in enumerate(S):
        jobs.create_job(replace(new(f"b-{status.value}"), origin={**origin, "step": n}))
        bring_to(jobs, f"b-{status.value}", status)
    pending = jobs.pending_branch_origins()
    assert sorted(o["step"] for o in pending) == sorted(
        n for n, status in enumerate(S) if not status.is_final)
    assert all(o["sha256"] == origin["sha256"] for o in pending)


def test_conditional_delete_is_a_compare_and_set(jobs):
    job, _ = jobs.create_job(new("a"))
    moved, _ = jobs.transition("a", S.RUNNING)
    with pytest.raises(PreconditionFailed) as info:
        jobs.delete_job("a", expected=job.revision)
    assert info.value.current_etag == moved.etag
    assert [e.kind for e in jobs.job_events("a")[0]] == ["created", "status"]
    with pytest.raises(JobNotFound):  # another owner's job: not found, not "changed"
        jobs.delete_job("a", owner="someone-else", expected=moved.revision)
    jobs.delete_job("a", expected=moved.revision)
    with pytest.raises(JobNotFound):
        jobs.delete_job("a", expected=moved.revision)


def test_racing_threads_exactly_one_winner(jobs):
    """Final targets from `running` exclude each other: exactly one may win."""
    jobs.create_job(new("race"))
    jobs.transition("race", S.RUNNING)
    targets = [S.SUCCEEDED, S.FAILED, S.CANCELLED] * 6
    barrier = threading.Barrier(len(targets))

    def attempt(target):
        barrier.wait()
        try:
            _, changed = jobs.transition("race", target)
            return target if changed else None
        except IllegalTransition:
            return None

    with ThreadPoolExecutor(len(targets)) as pool:
        winners = [w for w in pool.map(attempt, targets) if w is not None]
    assert len(winners) == 1
    assert jobs.get_job("race").status is winners[0]
    finals = [e for e in jobs.job_events("race")[0] if e.to_status in winners]
    assert len(finals) == 1


def test_racing_creates_same_id_one_job(jobs):
    barrier = threading.Barrier(8)

    def attempt(i):
        barrier.wait()
        try:
            return jobs.create_job(new("dup", dataset="d" if i % 2 else "e"))
        except JobIdConflict:
            return None

    with ThreadPoolExecutor(8) as pool:
        results = [r for r in pool.map(attempt, range(8)) if r is not None]
    created = [job for job, was_created in results if was_created]
    assert len(created) == 1
    # Everyone who got an answer got the one job that exists.
    assert all(job == jobs.get_job("dup") for job, _ in results)


def test_pagination_newest_first_and_complete(jobs):
    jobs.insert_many(new(f"j{i:04d}") for i in range(250))
    ids = walk(jobs, limit=40)
    assert ids == [f"j{i:04d}" for i in range(249, -1, -1)]


def test_pagination_filters_each_and_multi_status(jobs):
    for i in range(60):
        jobs.create_job(new(f"j{i:02d}", model_name=f"m{i % 3}", dataset=f"d{i % 2}"))
    for i in range(0, 60, 4):
        jobs.transition(f"j{i:02d}", S.RUNNING)
    for i in range(0, 60, 5):
        jobs.transition(f"j{i:02d}", S.CANCELLED)
    all_jobs = {j.id: j for j in (jobs.get_job(f"j{i:02d}") for i in range(60))}

    def expect(pred):
        return sorted((j for j in all_jobs.values() if pred(j)),
                      key=lambda j: j.created_at, reverse=True)

    assert walk(jobs, 7, model_name="m1") == [j.id for j in expect(lambda j: j.model_name == "m1")]
    assert walk(jobs, 7, dataset="d0") == [j.id for j in expect(lambda j: j.dataset == "d0")]
    assert walk(jobs, 4, statuses=(S.RUNNING,)) == [
        j.id for j in expect(lambda j: j.status is S.RUNNING)]
    multi = walk(jobs, 6, statuses=(S.RUNNING, S.CANCELLED))
    assert multi == [j.id for j in expect(lambda j: j.status in (S.RUNNING, S.CANCELLED))]
    pivot = all_jobs["j30"].created_at
    assert walk(jobs, 9, created_after=pivot) == [
        j.id for j in expect(lambda j: j.created_at > pivot)]
    assert walk(jobs, 9, created_before=pivot) == [
        j.id for j in expect(lambda j: j.created_at < pivot)]


def test_pages_complete_and_disjoint_while_others_insert(jobs):
    jobs.insert_many(new(f"old{i:04d}") for i in range(300))
    stop = threading.Event()
    inserted: list[str] = []

    def inserter():
        n = 0
        while not stop.is_set() and n < 400:
            jobs.create_job(new(f"new{n:04d}"))
            inserted.append(f"new{n:04d}")
            n += 1

    t = threading.Thread(target=inserter)
    t.start()
    try:
        seen, after = [], None
        while True:
            page = jobs.list_jobs(JobQuery(limit=17, after=after))
            seen += [j.id for j in page.jobs]
            if page.next_key is None:
                break
            after = page.next_key
    finally:
        stop.set()
        t.join()
    assert len(seen) == len(set(seen)), "a job appeared on two pages"
    olds = [i for i in seen if i.startswith("old")]
    assert olds == [f"old{i:04d}" for i in range(299, -1, -1)], "pre-existing job missed"
    assert inserted, "the inserter never ran concurrently"


def test_page_query_plans_use_indexes(jobs):
    """No page is a full scan or a sort: each is an index range read, whatever the depth."""
    jobs.insert_many(new(f"j{i}") for i in range(50))
    engine = jobs.database.engine
    key = jobs.list_jobs(JobQuery(limit=10)).next_key
    queries = {
        "unfiltered": JobQuery(limit=10, after=key),
        "status": JobQuery(limit=10, after=key, statuses=(S.QUEUED,)),
        "model": JobQuery(limit=10, after=key, model_name="gpt-nano"),
        "dataset": JobQuery(limit=10, after=key, dataset="shakespeare"),
    }
    for name, q in queries.items():
        stmt = _statement_for(jobs, q)
        with engine.connect() as conn:
            if jobs.database.dialect == "sqlite":
                plan = " ".join(str(r) for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + stmt[0], stmt[1]).all())
                assert "USING INDEX ix_jobs_" in plan, (name, plan)
                assert "TEMP B-TREE" not in plan, (name, plan)
            else:
                # Tiny tables make any plan cheap: forbid the alternatives, so that only a
                # plan whose index order serves ORDER BY remains free of a Sort node.
                for knob in ("enable_seqscan", "enable_bitmapscan", "enable_sort"):
                    conn.exec_driver_sql(f"SET {knob} = off")
                plan = " ".join(r[0] for r in conn.exec_driver_sql(
                    "EXPLAIN " + stmt[0], stmt[1]).all())
                assert "Index" in plan and "Sort" not in plan, (name, plan)


def _statement_for(jobs, query):
    """The SQL and driver parameters of the statement list_jobs runs for `query`."""
    stmt, params = jobs.page_statement(query)
    prepared = jobs.database.prepared(stmt)
    return prepared.sql, prepared.arguments(params)


def test_per_user_counts_and_lease_scans_read_an_index(jobs):
    """The quota and running counts, the lease reaper and a worker's heartbeat each read a
    status-led index (no table scan), now that they have no index of their own."""
    from llm_train_api.store import jobs as job_statements
    from llm_train_api.store import queue as queue_statements

    jobs.insert_many(new(f"j{i}") for i in range(50))
    statements = {
        "count by owner and status": (job_statements.COUNT_OWNER_STATUS,
                                      {"owner": "alice", "status": "running"}),
        "queued quota": (job_statements._COUNT_OWNER_WAITING, {"owner": "alice"}),
        "reaper": (queue_statements._REAP, {"now": 1}),
        "heartbeat": (queue_statements._RENEW, {"worker": "w", "expires": 1}),
    }
    engine = jobs.database.engine
    for name, (stmt, values) in statements.items():
        compiled = stmt.compile(dialect=engine.dialect)
        params = compiled.construct_params(values)
        with engine.connect() as conn:
            if jobs.database.dialect == "sqlite":
                positional = tuple(params[key] for key in compiled.positiontup)
                plan = " ".join(str(r) for r in conn.exec_driver_sql(
                    "EXPLAIN QUERY PLAN " + str(compiled), positional).all())
                assert "INDEX ix_jobs_" in plan and "SCAN jobs" not in plan, (name, plan)
            else:
                for knob in ("enable_seqscan", "enable_bitmapscan"):
                    conn.exec_driver_sql(f"SET {knob} = off")
                plan = " ".join(r[0] for r in conn.exec_driver_sql(
                    "EXPLAIN " + str(compiled), params).all())
                assert "Index" in plan and "Seq Scan" not in plan, (name, plan)
