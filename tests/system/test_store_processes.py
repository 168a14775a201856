"""The store's guarantees across processes (spawned interpreters on one database):
racing transitions, racing claimers, and migrations when many processes start at once.
On SQLite and on PostgreSQL."""

from __future__ import annotations

import multiprocessing

from llm_train_api.domain import IllegalTransition, JobStatus, NewJob
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import JobQueue

S = JobStatus


def new(job_id: str, **kw) -> NewJob:
    return NewJob(job_id, "gpt-nano", "builtin:tinytext", {}, **kw)


def _race_in_process(url, target, start_evt, results):
    jobs = JobRepository(Database.from_url(url, migrate=False))
    start_evt.wait()
    try:
        _, changed = jobs.transition("race", JobStatus(target))
        results.put(target if changed else "")
    except IllegalTransition:
        results.put("")
    finally:
        jobs.database.close()


def test_racing_processes_exactly_one_winner(jobs, db_url):
    jobs.create_job(new("race"))
    jobs.transition("race", S.RUNNING)
    ctx = multiprocessing.get_context("spawn")
    start_evt, results = ctx.Event(), ctx.Queue()
    targets = ["succeeded", "failed", "cancelled", "succeeded", "failed", "cancelled"]
    procs = [ctx.Process(target=_race_in_process, args=(db_url, t, start_evt, results))
             for t in targets]
    for p in procs:
        p.start()
    start_evt.set()
    outcomes = [results.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    winners = [o for o in outcomes if o]
    assert len(winners) == 1, outcomes
    assert jobs.get_job("race").status.value == winners[0]


def _claim_all(url, name, out):
    database = Database.from_url(url, migrate=False)
    queue = JobQueue(database, JobRepository(database))
    mine = []
    while (job := queue.claim(name, 30)) is not None:
        mine.append(job.id)
    out.put(mine)
    database.close()


def test_claimers_in_separate_processes_partition_the_queue(jobs, db_url):
    jobs.insert_many(new(f"p{i}") for i in range(60))
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_claim_all, args=(db_url, f"w{n}", out)) for n in range(3)]
    for p in procs:
        p.start()
    results = [out.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=30)
    flat = [j for r in results for j in r]
    assert sorted(flat) == sorted(f"p{i}" for i in range(60))


def test_migrations_are_safe_when_many_processes_start_at_once(db_url):
    ctx = multiprocessing.get_context("spawn")
    procs = [ctx.Process(target=_open_store, args=(db_url,)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=60)
    assert [p.exitcode for p in procs] == [0, 0, 0, 0]
    database = Database.from_url(db_url)
    assert database.ping() >= 1
    database.close()


def _open_store(url):
    Database.from_url(url).close()
