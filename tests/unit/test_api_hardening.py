"""Holes found by trying the API as an attacker would: a status no worker holds, and
mismatches between the OpenAPI document and what the service does."""

from __future__ import annotations

import re

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


def _param(spec: dict, path: str, name: str) -> dict:
    return next(p for p in spec["paths"][path]["get"]["parameters"] if p["name"] == name)


@pytest.mark.parametrize("path", ["/jobs", "/jobs/j/events"])
def test_every_cursor_the_document_allows_is_accepted(client, path):
    assert client.post("/jobs", json=JOB).status_code == 201
    spec = client.get("/openapi.json").get_json()
    pattern = _param(spec, path.replace("/j/", "/{job_id}/"), "cursor")["schema"]["pattern"]
    for cursor in ["1.0.0", "1.7fffffffffffffff.7fffffffffffffff", "1.abc.1", "1.0.ffff"]:
        assert re.search(pattern, cursor), cursor
        resp = client.get(f"{path}?cursor={cursor}")
        assert resp.status_code == 200, (cursor, resp.get_json())
    # The oldest possible position: nothing after it.
    assert client.get("/jobs?cursor=1.0.0").get_json() == []
    assert [j["id"] for j in client.get(
        "/jobs?cursor=1.7fffffffffffffff.7fffffffffffffff").get_json()] == ["j"]
    for cursor in ["0" * 200, "1.8000000000000000.0", "2.1.1", "1.1", "1.-1.1", "1.A.1"]:
        assert not re.search(pattern, cursor), cursor
        resp = client.get(f"{path}?cursor={cursor}")
        assert resp.status_code == 400 and "cursor" in resp.get_json()["message"], cursor


def test_cursors_from_link_headers_walk_the_whole_list(client):
    for i in range(5):
        assert client.post("/jobs", json={**JOB, "job_id": f"p{i}"}).status_code == 201
    seen, url = [], "/jobs?limit=2"
    while url:
        resp = client.get(url)
        seen += [j["id"] for j in resp.get_json()]
        link = resp.headers.get("Link")
        url = link[link.index("/jobs"):link.index(">")] if link else None
    assert seen == [f"p{i}" for i in reversed(range(5))]


@pytest.mark.parametrize("field", ["priority", "max_attempts", "max_runtime_seconds"])
def test_a_fractional_integer_is_a_422(client, field):
    resp = client.post("/jobs", json={**JOB, field: 1.5})
    assert resp.status_code == 422
    assert field in resp.get_json()["errors"]["json"]
    assert client.get("/jobs/j").status_code == 404
    resp = client.post("/jobs", json={**JOB, "resources": {"cpus": 1.5}})
    assert resp.status_code == 422


def test_memory_gb_must_be_positive_in_the_document_and_the_check(client):
    spec = client.get("/openapi.json").get_json()
    memory = spec["components"]["schemas"]["Resources"]["properties"]["memory_gb"]
    assert memory["minimum"] == 0 and memory["exclusiveMinimum"] is True
    resp = client.post("/jobs", json={**JOB, "resources": {"memory_gb": 0}})
    assert resp.status_code == 422
    assert "memory_gb" in resp.get_json()["errors"]["json"]["resources"]
    assert client.post("/jobs", json={**JOB, "resources": {"memory_gb": 0.5}}).status_code \
        == 201


def test_an_empty_dataset_upload_is_a_declared_422(client):
    spec = client.get("/openapi.json").get_json()
    put = spec["paths"]["/datasets/{name}"]["put"]
    assert "empty dataset" in put["responses"]["422"]["description"]
    for media in put["requestBody"]["content"].values():
        assert media["schema"]["minLength"] == 1
    resp = client.put("/datasets/empty", data=b"", headers={"Content-Type": "text/plain"})
    assert resp.status_code == 422 and "empty" in resp.get_json()["message"]
    assert client.get("/datasets/empty").status_code == 404


def test_a_dry_run_is_a_documented_200_without_location(client):
    resp = client.post("/jobs?dry_run=true", json=JOB)
    assert resp.status_code == 200 and resp.get_json()["id"] == "j"
    assert "Location" not in resp.headers and "ETag" not in resp.headers
    assert client.get("/jobs/j").status_code == 404
    spec = client.get("/openapi.json").get_json()
    assert "dry_run=true" in spec["paths"]["/jobs"]["post"]["responses"]["200"]["description"]
