"""Signed webhooks end to end: a real gunicorn, real workers and `webhooks-sender`
processes (killed for real), and a receiver on loopback that verifies every signature with
the `standardwebhooks` package. On SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from standardwebhooks import Webhook as Verifier

from tests.helpers.live import submit, wait_for, wait_status
from tests.helpers.servers import FAST, REPO_ROOT, WorkerProcess
from tests.helpers.webhook_receiver import Receiver

QUICK = {"LLM_TRAIN_API_WEBHOOK_ALLOW_PRIVATE": "true",
         "LLM_TRAIN_API_WEBHOOK_TIMEOUT_S": "3",
         "LLM_TRAIN_API_WEBHOOK_BACKOFF_S": "0.5"}


class SenderProcess:
    """`llm-train-api webhooks-sender`, its output in a log file."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self._out = open(log, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llm_train_api.cli", "webhooks-sender"], cwd=REPO_ROOT,
            env={**os.environ, **env}, stdout=self._out, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def hooked(request, tmp_path, gunicorn_factory):
    """A gunicorn API that allows loopback webhooks, with factories of workers and senders
    on the same database and settings."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    else:
        db = request.getfixturevalue("pg_url")
    # TMPDIR: a worker's lease folder (and anything else temporary) stays in tmp_path,
    # however the worker is stopped.
    (tmp_path / "tmp").mkdir()
    env = {"LLM_TRAIN_API_DATABASE_URL": db, "LLM_TRAIN_API_EXECUTOR": "local",
           "LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path / "instance"),
           "TMPDIR": str(tmp_path / "tmp"), **FAST, **QUICK}
    server = gunicorn_factory(workers=2, env=env)
    started: list = []

    def start_worker(**extra: str) -> WorkerProcess:
        w = WorkerProcess({**env, **extra}, tmp_path / f"worker-{len(started)}.log")
        started.append(w)
        return w

    def start_sender(**extra: str) -> SenderProcess:
        s = SenderProcess({**env, **extra}, tmp_path / f"sender-{len(started)}.log")
        started.append(s)
        return s

    server.env_for_tests = env
    server.start_worker = start_worker
    server.start_sender = start_sender
    yield server
    for process in started:
        process.stop(signal.SIGKILL)


def _register(server, url: str, events: list[str]) -> dict:
    resp = server.http.post(server.url + "/webhooks", json={"url": url, "events": events},
                            timeout=30)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _deliveries(server, hook_id: str) -> list[dict]:
    resp = server.http.get(f"{server.url}/webhooks/{hook_id}/deliveries", timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()


def _cancelled_job(server, job_id: str) -> None:
    """A job that ends at once: created, then cancelled before any worker takes it."""
    resp = server.http.post(server.url + "/jobs", json={
        "job_id": job_id, "model_name": "gpt-nano", "dataset": "builtin:tinytext",
        "hyperparameters": {"max_steps": 1}}, timeout=10)
    assert resp.status_code == 201, resp.text
    assert server.http.post(f"{server.url}/jobs/{job_id}/cancel", timeout=10).json()[
        "status"] == "cancelled"


def test_a_worker_delivers_a_signed_event_when_a_job_succeeds(hooked):
    with Receiver() as receiver:
        hook = _register(hooked, receiver.url + "/hooks/train", ["job.succeeded"])
        hooked.start_worker()
        submit(hooked, "ok", max_steps=3)
        assert wait_status(hooked, "ok", {"succeeded", "failed"})["status"] == "succeeded"
        (got,) = receiver.wait(1)
        payload = Verifier(hook["secret"]).verify(got.body, got.headers)
        assert payload["type"] == "job.succeeded"
        assert payload["data"]["job_id"] == "ok"
        assert payload["data"]["previous_status"] == "running"
        assert got.path == "/hooks/train"
        (delivery,) = wait_for(lambda: (d := _deliveries(hooked, hook["id"]))
                               and d[0]["state"] == "delivered" and d, 15, "the record")
        assert delivery["last_status_code"] == 200 and delivery["attempts"] == 1
        assert delivery["id"] == got.headers["webhook-id"]


def test_a_sender_killed_mid_delivery_delivers_after_a_restart(hooked):
    with Receiver() as receiver:
        hook = _register(hooked, receiver.url + "/h", ["job.cancelled"])
        receiver.hold.clear()  # the receiver takes the request and does not answer yet
        sender = hooked.start_sender()
        _cancelled_job(hooked, "gone")
        (first,) = receiver.wait(1)
        sender.stop(signal.SIGKILL)  # mid-delivery: its claim is left in the database
        receiver.hold.set()
        (pending,) = _deliveries(hooked, hook["id"])
        assert pending["state"] == "pending" and pending["attempts"] == 1
        hooked.start_sender()
        second = receiver.wait(2, timeout=60)[1]
        assert second.headers["webhook-id"] == first.headers["webhook-id"]
        payload = Verifier(hook["secret"]).verify(second.body, second.headers)
        assert payload["type"] == "job.cancelled" and payload["data"]["job_id"] == "gone"
        (delivery,) = wait_for(lambda: (d := _deliveries(hooked, hook["id"]))
                               and d[0]["state"] == "delivered" and d, 15, "the record")
        assert delivery["attempts"] == 2


@pytest.mark.parametrize("hooked", ["sqlite"], indirect=True)
def test_a_receiver_answering_500_gets_retries_with_growing_gaps(hooked):
    with Receiver(status=500) as receiver:
        hook = _register(hooked, receiver.url + "/h", ["job.cancelled"])
        # Retries after about 1, 2 and 4 seconds; the next would be past the max age.
        hooked.start_sender(LLM_TRAIN_API_WEBHOOK_BACKOFF_S="1",
                            LLM_TRAIN_API_WEBHOOK_MAX_AGE_S="10")
        _cancelled_job(hooked, "flaky")
        (delivery,) = wait_for(lambda: (d := _deliveries(hooked, hook["id"]))
                               and d[0]["state"] == "failed" and d, 60, "giving up")
        arrivals = [r.at for r in receiver.received]
        gaps = [b - a for a, b in zip(arrivals, arrivals[1:], strict=False)]
        assert delivery["attempts"] == len(arrivals) >= 3, gaps
        assert all(later > earlier for earlier, later in zip(gaps, gaps[1:], strict=False)), gaps
        assert gaps[0] >= 1
        assert delivery["last_status_code"] == 500 and delivery["next_attempt_at"] is None
        assert {r.headers["webhook-id"] for r in receiver.received} == {delivery["id"]}
        for r in receiver.received:  # every attempt is signed afresh
            Verifier(hook["secret"]).verify(r.body, r.headers)


@pytest.mark.parametrize("hooked", ["sqlite"], indirect=True)
def test_private_urls_are_refused_with_the_setting_off(hooked, gunicorn_factory):
    closed = {**hooked.env_for_tests, "LLM_TRAIN_API_WEBHOOK_ALLOW_PRIVATE": "false"}
    strict = gunicorn_factory(workers=1, env=closed)
    with Receiver() as receiver:
        resp = strict.http.post(strict.url + "/webhooks", timeout=30,
                                json={"url": receiver.url + "/h"})
        assert resp.status_code == 422
        assert "loopback" in resp.json()["errors"]["json"]["url"][0]
        assert strict.http.get(strict.url + "/webhooks", timeout=10).json() == []
        # One registered while private addresses were allowed is not sent by a sender
        # that does not allow them.
        hook = _register(hooked, receiver.url + "/h", ["job.cancelled"])
        hooked.start_sender(LLM_TRAIN_API_WEBHOOK_ALLOW_PRIVATE="false")
        _cancelled_job(hooked, "private")
        (delivery,) = wait_for(lambda: (d := _deliveries(hooked, hook["id"]))
                               and d[0]["attempts"] >= 1 and d[0]["last_error"] and d, 30,
                               "a refused attempt")
        assert delivery["last_error"].startswith("refused:")
        assert delivery["state"] == "pending" and receiver.received == []
