"""Store verbs for workers (claims, leases, progress, finishing, reaping), on SQLite and
PostgreSQL."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.store.queue import LEASE_LOST_MESSAGE

S = JobStatus


def new(job_id, **kw) -> NewJob:
    return NewJob(job_id, "gpt-nano", "builtin:tinytext", {}, **kw)


def test_claim_order_is_priority_then_age(jobs, queue):
    jobs.create_job(new("old"))
    jobs.create_job(new("urgent", priority=5))
    jobs.create_job(new("young"))
    order = [queue.claim("w1", 30).id for _ in range(3)]
    assert order == ["urgent", "old", "young"]
    assert queue.claim("w1", 30) is None


def test_claim_leases_and_counts_the_attempt(jobs, queue):
    jobs.create_job(new("a"))
    job = queue.claim("w1", 30)
    assert job.status is S.RUNNING and job.attempts == 1 and job.worker == "w1"
    assert job.progress == {"phase": "starting"} and job.started_at is not None
    events, _ = jobs.job_events("a")
    assert (events[-1].kind, events[-1].actor, events[-1].attempt) == ("claimed", "w1", 1)


def test_concurrent_claimers_never_take_the_same_job(jobs, queue):
    jobs.insert_many(new(f"j{i}") for i in range(40))
    claimed: list[str] = []
    lock = threading.Lock()

    def worker(n):
        while (job := queue.claim(f"w{n}", 30)) is not None:
            with lock:
                claimed.append(job.id)

    with ThreadPoolExecutor(6) as pool:
        list(pool.map(worker, range(6)))
    assert sorted(claimed) == sorted(f"j{i}" for i in range(40))


def test_lease_guards_every_worker_write(jobs, queue):
    jobs.create_job(new("a"))
    queue.claim("w1", 30)
    assert queue.renew_leases("w1", 30) == {"a"}
    assert queue.renew_leases("w2", 30) == set()
    assert queue.record_progress("a", "w1", {"step": 3}, [{"step": 3, "train_loss": 2.0}])
    assert not queue.record_progress("a", "w2", {"step": 4})
    assert queue.finish("a", "w2", S.SUCCEEDED) is None
    jobs.transition("a", S.CANCELLED)  # a client cancels: the lease is over
    assert queue.running_jobs_of("w1") == set()
    assert queue.renew_leases("w1", 30) == set()
    assert not queue.record_progress("a", "w1", {"step": 5})
    assert queue.finish("a", "w1", S.SUCCEEDED) is None
    assert jobs.get_job("a").status is S.CANCELLED


def test_progress_and_metrics(jobs, queue):
    jobs.create_job(new("a"))
    queue.claim("w1", 30)
    queue.record_progress("a", "w1", {"step": 2, "total_steps": 10},
                          [{"step": 1, "train_loss": 3.0}, {"step": 2, "train_loss": 2.5}])
    queue.record_progress("a", "w1", {"step": 3}, [{"step": 3, "train_loss": 2.0}])
    assert jobs.get_job("a").progress == {"step": 3}
    assert [m["step"] for m in jobs.job_metrics("a")[0]] == [1, 2, 3]
    assert jobs.job_metrics("a", after_step=2) == ([{"step": 3, "train_loss": 2.0}], False)
    # A resumed run from step 1 rewrites the curve after it.
    queue.record_progress("a", "w1", {"step": 2}, [{"step": 2, "train_loss": 2.4}],
                          forget_metrics_after=1)
    assert jobs.job_metrics("a") == ([{"step": 1, "train_loss": 3.0},
                                       {"step": 2, "train_loss": 2.4}], False)


def test_metrics_pages_end_between_steps(jobs, queue):
    jobs.create_job(new("a"))
    queue.claim("w1", 30)
    # Step 2 and step 4 each have a training and a validation point.
    points = [{"step": 1, "train_loss": 4.0}, {"step": 2, "train_loss": 3.0},
              {"step": 2, "val_loss": 3.5}, {"step": 3, "train_loss": 2.0},
              {"step": 4, "train_loss": 1.0}, {"step": 4, "val_loss": 1.5}]
    queue.record_progress("a", "w1", {"step": 4}, points)
    pages, after, more = [], -1, True
    while more:
        page, more = jobs.job_metrics("a", after_step=after, limit=2)
        pages.append([(p["step"], *p.keys() - {"step"}) for p in page])
        after = page[-1]["step"]
    # Without the cut between steps, the second page would be [2 train, 2 val]... and the
    # first [1, 2 train], whose follow-up after step 2 would have lost step 2's validation.
    assert pages == [[(1, "train_loss")], [(2, "train_loss"), (2, "val_loss")],
                     [(3, "train_loss")], [(4, "train_loss"), (4, "val_loss")]]
    assert jobs.job_metrics("a", after_step=4) == ([], False)
    # A limit smaller than one step's points still makes progress.
    assert jobs.job_metrics("a", after_step=1, limit=1) == ([{"step": 2, "train_loss": 3.0}],
                                                             True)


def test_finish_outcomes(jobs, queue):
    for name in ("ok", "bad", "back", "graceful"):
        jobs.create_job(new(name))
    claimed = {queue.claim("w1", 30).id for _ in range(4)}
    assert claimed == {"ok", "bad", "back", "graceful"}
    done = queue.finish("ok", "w1", S.SUCCEEDED)
    assert done.status is S.SUCCEEDED and done.worker is None and done.finished_at
    failed = queue.finish("bad", "w1", S.FAILED, error_message="ValueError: boom")
    assert failed.status is S.FAILED and failed.error_message == "ValueError: boom"
    back = queue.finish("back", "w1", S.QUEUED)
    assert back.status is S.QUEUED and back.attempts == 1
    graceful = queue.finish("graceful", "w1", S.QUEUED, refund_attempt=True)
    assert graceful.attempts == 0
    assert queue.claim("w2", 30).attempts == 2  # "back" is older than "graceful"


def test_expired_leases_are_requeued_then_failed_after_max_attempts(jobs, queue):
    jobs.create_job(new("a", max_attempts=2))
    queue.claim("w1", -1)  # a lease that has already run out: its worker is gone
    [reaped] = queue.requeue_expired()
    assert reaped.status is S.QUEUED and reaped.attempts == 1 and reaped.worker is None
    assert queue.requeue_expired() == []
    job = queue.claim("w2", -1)
    assert job.attempts == 2
    [reaped] = queue.requeue_expired()
    assert reaped.status is S.FAILED and reaped.error_message == LEASE_LOST_MESSAGE
    kinds = [e.kind for e in jobs.job_events("a")[0]]
    assert kinds == ["created", "claimed", "lease_expired", "claimed", "lease_expired"]


def test_live_leases_are_not_reaped(jobs, queue):
    jobs.create_job(new("a"))
    queue.claim("w1", 30)
    assert queue.requeue_expired() == []
    assert jobs.get_job("a").status is S.RUNNING


def test_events_are_paginated(jobs, queue):
    jobs.create_job(new("a"))
    for _ in range(3):
        queue.claim("w", 30)
        queue.finish("a", "w", S.QUEUED)
    first, more = jobs.job_events("a", limit=4)
    assert more and len(first) == 4
    rest, more = jobs.job_events("a", after_seq=first[-1].seq, limit=4)
    assert not more and len(rest) == 3
