"""Holes found by trying the API as an attacker would: a status no worker holds, and
mismatches between the OpenAPI document and what the service does."""

from __future__ import annotations

import pytest

from llm_train_api import create_app
from tests.helpers.clients import admin_client, client_as

JOB = {"job_id": "j", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
       "hyperparameters": {"max_steps": 2}}


@pytest.fixture
def local_app(tmp_path):
    """The built-in executor (no worker runs here)."""
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "local"})
    yield app
    app.extensions["llm_train_api.runtime"].close()


def test_a_worker_token_cannot_start_a_run_under_the_builtin_executor(local_app):
    admin, worker = admin_client(local_app), client_as(local_app, "ext", "worker")
    assert admin.post("/jobs", json=JOB).status_code == 201
    before = admin.get("/jobs/j")
    events = admin.get("/jobs/j/events").get_json()
    resp = worker.patch("/jobs/j/status", json={"status": "running"})
    assert resp.status_code == 409, resp.get_json()
    body = resp.get_json()
    assert body["code"] == 409 and "claim" in body["message"]
    assert "LLM_TRAIN_API_EXECUTOR=none" in body["message"]
    after = admin.get("/jobs/j")
    assert after.get_json()["status"] == "queued"
    assert after.headers["ETag"] == before.headers["ETag"]  # nothing was written
    assert admin.get("/jobs/j/events").get_json() == events


def test_an_external_executor_still_sets_running(app):
    admin, worker = admin_client(app), client_as(app, "ext", "worker")
    assert admin.post("/jobs", json=JOB).status_code == 201
    resp = worker.patch("/jobs/j/status", json={"status": "running"})
    assert resp.status_code == 200 and resp.get_json()["status"] == "running"
