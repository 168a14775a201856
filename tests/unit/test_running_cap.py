"""The per-user cap on running jobs holds when claimers on several connection pools (as
on several hosts) race for the same queue, on SQLite and on PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import JobQueue


def _jobs(owner: str, n: int) -> list[NewJob]:
    return [NewJob(f"{owner}-{i}", "gpt-nano", "d", {}, owner=owner) for i in range(n)]


def test_running_cap_holds_when_many_claimers_race(db_url):
    """Eight claimers on four connections pools (four 'hosts') race for twelve jobs of two
    owners and some unowned ones; with a cap of 2 running jobs per owner, no moment sees
    more, and the capped owners' extra jobs stay queued while others are claimed."""
    cap = 2
    databases = [Database.from_url(db_url) for _ in range(4)]
    stores = [JobQueue(d, JobRepository(d), max_running_per_user=cap) for d in databases]
    try:
        first = stores[0]
        for new in [*_jobs("alice", 6), *_jobs("bob", 4),
                    NewJob("free-0", "gpt-nano", "d", {}), NewJob("free-1", "gpt-nano", "d", {})]:
            first.jobs.create_job(new)
        barrier = threading.Barrier(8)
        claimed: list[str] = []
        lock = threading.Lock()

        def claimer(i: int) -> None:
            store = stores[i % len(stores)]
            barrier.wait()
            while (job := store.claim(f"w{i}", 60)) is not None:
                with lock:
                    claimed.append(job.id)

        with ThreadPoolExecutor(8) as pool:
            list(pool.map(claimer, range(8)))
        by_owner = {o: first.jobs.count_jobs(o, JobStatus.RUNNING) for o in ("alice", "bob")}
        assert by_owner == {"alice": cap, "bob": cap}
        assert len(claimed) == len(set(claimed)) == 2 * cap + 2
        assert {"free-0", "free-1"} <= set(claimed)
        assert first.jobs.count_jobs("alice", JobStatus.QUEUED) == 4
        # When one of alice's jobs ends, her next one can be claimed, and only one.
        done = next(j for j in claimed if j.startswith("alice"))
        worker = first.jobs.get_job(done).worker
        first.finish(done, worker, JobStatus.SUCCEEDED)
        nxt = first.claim("w-late", 60)
        assert nxt is not None and nxt.owner == "alice"
        assert first.claim("w-late", 60) is None
    finally:
        for database in databases:
            database.close()
