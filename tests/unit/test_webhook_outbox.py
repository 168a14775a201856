"""The outbox and the sender on SQLite and PostgreSQL: deliveries are written in the
status change's transaction, for the endpoints that want them, and sent signed, retried
with growing delays, given up after the max age, never to a refused address."""

from __future__ import annotations

import threading
import time

import pytest
from sqlalchemy import func, select, text
from standardwebhooks import Webhook as Verifier

from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.services.webhooks import signing
from llm_train_api.services.webhooks.sender import SenderConfig, WebhookSender, retry_delay
from llm_train_api.store.outbox import EVENT_STATUSES, event_type
from llm_train_api.store.tables import webhook_deliveries
from llm_train_api.store.webhooks import WebhookRepository
from tests.helpers.webhook_receiver import Receiver
from tests.helpers.worker import FakeExecutor, build_worker


@pytest.fixture
def hooks(database) -> WebhookRepository:
    return WebhookRepository(database)


def _hook(hooks, url="http://127.0.0.1:9/h", owner="alice", all_jobs=False,
          events=("job.succeeded", "job.failed", "job.cancelled")):
    return hooks.create(owner=owner, all_jobs=all_jobs, url=url, events=events,
                        description=None, secret=signing.new_secret())


def _rows(database):
    with database.reading() as conn:
        return conn.execute(select(webhook_deliveries)
                            .order_by(webhook_deliveries.c.seq)).all()


def test_event_names_come_from_one_table():
    assert event_type("succeeded") == "job.succeeded"
    assert event_type("paused") == "job.paused"
    assert event_type("cancelled", "openai") == "fine_tuning.job.cancelled"
    assert event_type("running") is None and event_type("queued") is None
    assert set(EVENT_STATUSES) == {"succeeded", "failed", "cancelled", "paused"}


def test_a_status_change_queues_one_delivery_per_interested_endpoint(database, jobs, hooks):
    mine = _hook(hooks)
    admins = _hook(hooks, owner="root", all_jobs=True, events=("job.cancelled",))
    _hook(hooks, owner="bob")  # bob's hook hears nothing of alice's jobs
    _hook(hooks, events=("job.succeeded",))  # not the event
    jobs.create_job(NewJob("a", "m", "d", owner="alice"))
    jobs.transition("a", JobStatus.CANCELLED, actor="user:alice")
    rows = _rows(database)
    assert {(r.webhook_id, r.event_type, r.job_id) for r in rows} == {
        (mine.id, "job.cancelled", "a"), (admins.id, "job.cancelled", "a")}
    row = rows[0]
    assert (row.state, row.attempts, row.job_status, row.previous_status, row.job_owner) == (
        "pending", 0, "cancelled", "queued", "alice")
    assert row.next_attempt_us == row.occurred_us  # due at once


def test_no_endpoints_no_rows_and_the_change_still_happens(database, jobs):
    jobs.create_job(NewJob("a", "m", "d", owner="alice"))
    job, changed = jobs.transition("a", JobStatus.CANCELLED)
    assert changed and job.status is JobStatus.CANCELLED
    assert _rows(database) == []


def test_the_change_and_its_deliveries_commit_together_or_not_at_all(database, jobs, hooks):
    _hook(hooks)
    jobs.create_job(NewJob("a", "m", "d", owner="alice"))
    # The outbox insert fails (its table is gone): the status change must roll back with it.
    with database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE webhook_deliveries RENAME TO wd_away"))
    with pytest.raises(Exception, match="webhook_deliveries"):
        jobs.transition("a", JobStatus.CANCELLED)
    assert jobs.get_job("a").status is JobStatus.QUEUED
    events, _ = jobs.job_events("a")
    assert [e.kind for e in events] == ["created"]
    with database.engine.begin() as conn:
        conn.execute(text("ALTER TABLE wd_away RENAME TO webhook_deliveries"))
    jobs.transition("a", JobStatus.CANCELLED)
    assert len(_rows(database)) == 1


def test_workers_finishes_and_the_reaper_queue_deliveries(database, jobs, queue, hooks):
    _hook(hooks)
    jobs.create_job(NewJob("ok", "m", "d", owner="alice"))
    jobs.create_job(NewJob("lost", "m", "d", owner="alice", max_attempts=1))
    claimed = queue.claim("w1", 30)
    queue.finish(claimed.id, "w1", JobStatus.SUCCEEDED)
    queue.claim("w2", 0.001)
    time.sleep(0.01)
    assert [j.status for j in queue.requeue_expired()] == [JobStatus.FAILED]
    rows = _rows(database)
    assert [(r.job_id, r.event_type, r.previous_status) for r in rows] == [
        (claimed.id, "job.succeeded", "running"), ("lost", "job.failed", "running")]


def test_pausing_queues_job_paused_deliveries_and_resuming_none(database, jobs, queue,
                                                                hooks):
    from llm_train_api.store.pausing import pause_job, resume_job

    _hook(hooks, events=("job.paused",))
    jobs.create_job(NewJob("q", "m", "d", owner="alice"))
    pause_job(jobs, "q", actor="user:alice")  # queued -> paused at once
    resume_job(jobs, "q", actor="user:alice")  # -> queued: no event
    jobs.create_job(NewJob("r", "m", "d", owner="alice"))
    while (claimed := queue.claim("w1", 30)) is not None and claimed.id != "r":
        pass
    pause_job(jobs, "r", actor="user:alice")  # a request: no event until the run stops
    assert [(r.job_id, r.event_type) for r in _rows(database)] == [("q", "job.paused")]
    queue.finish_paused("r", "w1", "paused at step 3")
    assert [(r.job_id, r.event_type, r.previous_status) for r in _rows(database)] == [
        ("q", "job.paused", "queued"), ("r", "job.paused", "running")]


def test_a_v1_jobs_events_have_openais_names(database, jobs, queue, hooks):
    _hook(hooks, events=("fine_tuning.job.cancelled", "fine_tuning.job.succeeded",
                         "job.cancelled"))
    jobs.create_job(NewJob("ftjob-1", "m", "d", owner="alice", api="openai"))
    jobs.create_job(NewJob("native", "m", "d", owner="alice"))
    jobs.transition("ftjob-1", JobStatus.CANCELLED, actor="user:alice")  # one statement
    jobs.transition("native", JobStatus.CANCELLED, actor="user:alice")
    jobs.create_job(NewJob("ftjob-2", "m", "d", owner="alice", api="openai"))
    claimed = queue.claim("w1", 30)
    queue.finish(claimed.id, "w1", JobStatus.SUCCEEDED)  # the worker's path
    assert [(r.job_id, r.event_type) for r in _rows(database)] == [
        ("ftjob-1", "fine_tuning.job.cancelled"), ("native", "job.cancelled"),
        ("ftjob-2", "fine_tuning.job.succeeded")]


def test_a_requeue_is_no_event(database, jobs, queue, hooks):
    _hook(hooks)
    jobs.create_job(NewJob("a", "m", "d", owner="alice"))
    queue.claim("w1", 30)
    queue.finish("a", "w1", JobStatus.QUEUED, refund_attempt=True)
    assert _rows(database) == []


def _sender(hooks, **config) -> WebhookSender:
    return WebhookSender(hooks, SenderConfig(**{"allow_private": True, "timeout_s": 2,
                                                "backoff_s": 0.05, **config}))


def test_the_sender_delivers_signed_and_records_the_answer(database, jobs, hooks):
    with Receiver() as receiver:
        hook = _hook(hooks, url=receiver.url + "/hook?x=1")
        jobs.create_job(NewJob("a", "m", "d", owner="alice"))
        jobs.transition("a", JobStatus.CANCELLED)
        sender = _sender(hooks)
        assert sender.run_once() == 1
        (got,) = receiver.wait(1)
        assert got.path == "/hook?x=1"
        with database.reading() as conn:
            stored = conn.execute(text("SELECT secret FROM webhooks")).scalar_one()
        payload = Verifier(stored).verify(got.body, got.headers)
        assert payload["type"] == "job.cancelled"
        assert payload["data"]["job_id"] == "a" and payload["data"]["status"] == "cancelled"
        assert got.headers["webhook-id"] == "msg_1"
        assert got.headers["host"] == receiver.url.removeprefix("http://")
        (delivery,), more = hooks.deliveries(hook.id)
        assert not more
        assert (delivery.state, delivery.attempts, delivery.last_status_code) == (
            "delivered", 1, 200)
        assert delivery.next_attempt_at is None and delivery.delivered_at is not None
        assert sender.run_once() == 0  # nothing left


def test_failures_are_retried_with_growing_delays_then_given_up(database, jobs, hooks):
    with Receiver(status=500) as receiver:
        hook = _hook(hooks, url=receiver.url + "/h")
        jobs.create_job(NewJob("a", "m", "d", owner="alice"))
        jobs.transition("a", JobStatus.CANCELLED)
        sender = _sender(hooks, backoff_s=0.15, max_age_s=1.5)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            sender.run_once()
            (delivery,), _ = hooks.deliveries(hook.id)
            if delivery.state != "pending":
                break
            time.sleep(0.02)
        assert delivery.state == "failed" and delivery.last_status_code == 500
        assert delivery.last_error.startswith("HTTP 500")
        arrivals = [r.at for r in receiver.received]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert len(arrivals) == delivery.attempts >= 3
        assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
        assert {r.headers["webhook-id"] for r in receiver.received} == {"msg_1"}


def test_retry_delays_double_with_bounded_jitter():
    for n in range(1, 10):
        assert 10 * 2 ** (n - 1) <= retry_delay(n, 10) <= 1.25 * 10 * 2 ** (n - 1)
    assert retry_delay(40, 10) <= 1.25 * 3600


def test_a_private_address_is_refused_at_delivery_time(database, jobs, hooks):
    with Receiver() as receiver:
        hook = _hook(hooks, url=receiver.url + "/h")  # registered while it was allowed
        jobs.create_job(NewJob("a", "m", "d", owner="alice"))
        jobs.transition("a", JobStatus.CANCELLED)
        assert _sender(hooks, allow_private=False).run_once() == 1
        (delivery,), _ = hooks.deliveries(hook.id)
        assert delivery.state == "pending" and delivery.last_status_code is None
        assert delivery.last_error.startswith("refused:") and "loopback" in delivery.last_error
        assert receiver.received == []


def test_redirects_are_not_followed(database, jobs, hooks):
    with Receiver(status=302) as receiver:
        hook = _hook(hooks, url=receiver.url + "/h")
        jobs.create_job(NewJob("a", "m", "d", owner="alice"))
        jobs.transition("a", JobStatus.CANCELLED)
        _sender(hooks).run_once()
        (delivery,), _ = hooks.deliveries(hook.id)
        assert delivery.state == "pending" and delivery.last_status_code == 302
        assert [r.path for r in receiver.received] == ["/h"]


def test_a_claim_hands_a_delivery_to_one_sender_until_it_lapses(database, jobs, hooks):
    _hook(hooks)
    jobs.create_job(NewJob("a", "m", "d", owner="alice"))
    jobs.transition("a", JobStatus.CANCELLED)
    (first,) = hooks.claim_due("s1", 0.3, 10)
    assert hooks.claim_due("s2", 0.3, 10) == []
    time.sleep(0.35)  # s1 died holding it: the delivery is due again
    (again,) = hooks.claim_due("s2", 30, 10)
    assert again.delivery.seq == first.delivery.seq and again.delivery.attempts == 2
    # s1's late answer is not recorded over s2's claim.
    assert not hooks.record(first, state="delivered", status_code=200, error=None,
                            next_attempt_us=None)
    assert hooks.record(again, state="delivered", status_code=200, error=None,
                        next_attempt_us=None)


def test_deleting_an_endpoint_drops_its_deliveries(database, jobs, hooks):
    hook = _hook(hooks)
    jobs.create_job(NewJob("a", "m", "d", owner="alice"))
    jobs.transition("a", JobStatus.CANCELLED)
    hooks.delete(hook.id, owner="alice")
    with database.reading() as conn:
        assert conn.execute(select(func.count()).select_from(webhook_deliveries)).scalar() == 0


def test_a_worker_runs_a_sender_thread_and_stops_it_on_shutdown(database, jobs, queue, hooks,
                                                                 tmp_path):
    with Receiver() as receiver:
        _hook(hooks, url=receiver.url + "/h")
        worker = build_worker(queue, tmp_path / "data", FakeExecutor())
        worker.webhook_sender = sender = _sender(hooks, poll_s=0.05)
        # Cancelled before the loop starts: a running loop could claim the job first.
        jobs.create_job(NewJob("a", "m", "d", owner="alice"))
        jobs.transition("a", JobStatus.CANCELLED)
        loop = threading.Thread(target=worker.run)
        loop.start()
        try:
            (got,) = receiver.wait(1)
            assert got.headers["webhook-id"] == "msg_1"
            assert sender._thread is not None and sender._thread.is_alive()
        finally:
            worker.stopping.set()
            worker.wake.set()
            loop.join(timeout=30)
        assert not loop.is_alive() and not sender._thread.is_alive()


def test_concurrent_claimers_take_disjoint_deliveries(database, jobs, hooks):
    _hook(hooks)
    for n in range(8):
        jobs.create_job(NewJob(f"j{n}", "m", "d", owner="alice"))
        jobs.transition(f"j{n}", JobStatus.CANCELLED)
    barrier = threading.Barrier(4)
    taken: dict[str, list[int]] = {}

    def claim(name: str) -> None:
        barrier.wait()
        taken[name] = [c.delivery.seq for c in hooks.claim_due(name, 30, 2)]

    threads = [threading.Thread(target=claim, args=(f"s{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    seqs = [s for got in taken.values() for s in got]
    assert len(seqs) == len(set(seqs)) == 8, taken
