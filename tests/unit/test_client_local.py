"""The Python client over real HTTP against the app served from a thread of this process
(registry mode: EXECUTOR=none): round trips, typed errors, Link pagination and auth.
The same client against gunicorn, with retries and a job that trains, is in
tests/system/test_client.py."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_train_api.client import (
    Client,
    Conflict,
    NotFound,
    PreconditionFailed,
    RetryPolicy,
    Unauthorized,
    ValidationError,
)
from tests.helpers.servers import ThreadedServer

NO_RETRY = RetryPolicy(attempts=1, backoff_s=0.01, max_backoff_s=0.01)


@pytest.fixture
def api(app) -> Iterator[Client]:
    token = (Path(app.instance_path) / "admin-token").read_text().strip()
    with ThreadedServer(app) as server, Client(server.url, token=token, retry=NO_RETRY) as api:
        yield api


def test_a_job_round_trip_with_conditional_updates(api):
    assert api.healthz().status == "ok"
    job = api.create_job("gpt-nano", "d", {"learning_rate": 0.001}, job_id="j1", priority=3)
    assert job.status == "queued" and job.priority == 3 and job.etag
    assert api.create_job("gpt-nano", "d", {"learning_rate": 0.001}, job_id="j1",
                          priority=3).created_at == job.created_at  # a safe retry
    running = api.update_status("j1", "running", if_match=job)
    assert running.status == "running" and running.started_at is not None
    with pytest.raises(PreconditionFailed):
        api.update_status("j1", "succeeded", if_match=job.etag)
    assert api.update_status("j1", "succeeded", if_match=running).status == "succeeded"
    assert [(e.kind, e.to_status) for e in api.job_events("j1", page_size=1)] == [
        ("created", "queued"), ("status", "running"), ("status", "succeeded")]
    api.delete_job("j1")
    with pytest.raises(NotFound):
        api.get_job("j1")


def test_errors_arrive_typed(api):
    api.create_job("m", "d", job_id="taken")
    with pytest.raises(Conflict):
        api.create_job("m", "other", job_id="taken")
    with pytest.raises(ValidationError) as invalid:
        api.create_job("m", "d", priority=5000)
    assert "json.priority" in invalid.value.field_errors
    with pytest.raises(Conflict) as illegal:
        api.cancel_job("taken")
        api.update_status("taken", "running")
    assert illegal.value.details["current_status"] == "cancelled"


def test_list_jobs_follows_link_pages(api):
    ids = [api.create_job("m", "d" if n % 2 else "e", job_id=f"p{n}").id for n in range(5)]
    page = api.list_jobs_page(limit=2)
    assert [j.id for j in page] == ["p4", "p3"] and page.next_cursor
    assert [j.id for j in api.list_jobs(page_size=2)] == ids[::-1]
    assert [j.id for j in api.list_jobs(dataset="d", page_size=1)] == ["p3", "p1"]


def test_a_missing_or_wrong_token_is_unauthorized(app):
    with ThreadedServer(app) as server:
        for token in (None, "not-a-token"):
            with Client(server.url, token=token, retry=NO_RETRY) as anonymous:
                with pytest.raises(Unauthorized):
                    anonymous.list_jobs_page()


def test_follow_logs_waits_for_a_stream_slot_then_gives_up(tmp_path):
    from llm_train_api import create_app
    from llm_train_api.client import TooManyRequests

    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "EXECUTOR": "none",
                      "LOG_STREAMS_PER_USER": 1})
    token = (tmp_path / "i" / "admin-token").read_text().strip()
    patient = RetryPolicy(attempts=20, backoff_s=0.01, max_retry_after_s=0.05)
    with ThreadedServer(app) as server, \
            Client(server.url, token=token, retry=patient) as api:
        api.create_job("gpt-nano", "d", job_id="busy")
        held = api.session.get(server.url + "/jobs/busy/logs?follow=true", stream=True)
        assert held.status_code == 200
        api.cancel_job("busy")
        impatient = Client(server.url, token=token, retry=RetryPolicy(
            attempts=2, backoff_s=0.01, max_retry_after_s=0.05))
        with pytest.raises(TooManyRequests, match="LOG_STREAMS_PER_USER"):
            list(impatient.follow_logs("busy"))  # the one slot stays taken
        impatient.close()
        threading.Timer(0.3, held.close).start()  # the slot frees up meanwhile
        follower = api.follow_logs("busy")
        assert list(follower) == [] and follower.final_status == "cancelled"
    app.extensions["llm_train_api.runtime"].close()
