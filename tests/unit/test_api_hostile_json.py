"""Over-deep JSON: every endpoint that takes a JSON body answers 400 in the JSON error shape,
before any schema, store or serialiser sees the document, and nothing changes."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select

from llm_train_api import create_app
from llm_train_api.api.errors import MAX_JSON_DEPTH, _too_deep
from llm_train_api.store.tables import job_events, jobs
from tests.helpers.clients import admin_client

JOB = {"job_id": "j1", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
       "hyperparameters": {"max_steps": 2}}


def _arrays(depth: int) -> str:
    return "[" * depth + "]" * depth


def _objects(depth: int) -> str:
    return '{"a":' * depth + "1" + "}" * depth


def _bodies(depth: int) -> list[str]:
    """Deep documents, whole and as the value of a field the endpoint knows."""
    return [_arrays(depth), _objects(depth), f'{{"status": {_arrays(depth)}}}',
            f'{{"model_name": "m", "dataset": "d", "hyperparameters": {_objects(depth)}}}']


@pytest.fixture(params=["none", "local"])
def app_and_client(request, tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"),
                      "EXECUTOR": request.param})
    client = admin_client(app)
    assert client.post("/jobs", json=JOB).status_code == 201
    yield app, client
    app.extensions["llm_train_api.runtime"].close()


def _json_operations(spec: dict) -> list[tuple[str, str]]:
    """Every (method, path) of the document whose request body is JSON."""
    return [(method.upper(), path.replace("{job_id}", "j1").replace("{name}", "x"))
            for path, ops in spec["paths"].items() for method, op in ops.items()
            if method != "parameters"
            and "application/json" in op.get("requestBody", {}).get("content", {})]


def _store_snapshot(app) -> tuple:
    database = app.extensions["llm_train_api.runtime"].jobs.database
    with database.reading() as conn:
        rows = conn.execute(select(jobs.c.id, jobs.c.status, jobs.c.version)).all()
        events = conn.execute(select(func.count()).select_from(job_events)).scalar_one()
    return sorted(tuple(r) for r in rows), events


def test_the_json_endpoints_are_the_ones_we_think(app_and_client):
    _app, client = app_and_client
    operations = _json_operations(client.get("/openapi.json").get_json())
    assert sorted(operations) == [("PATCH", "/jobs/j1/status"), ("POST", "/jobs"),
                                  ("POST", "/v1/fine_tuning/jobs"), ("POST", "/webhooks")]


@pytest.mark.parametrize("depth", [1_000, 100_000])
def test_over_deep_json_is_a_400_on_every_json_endpoint(app_and_client, depth):
    app, client = app_and_client
    before = _store_snapshot(app)
    operations = _json_operations(client.get("/openapi.json").get_json())
    operations.append(("POST", "/jobs?dry_run=true"))
    for method, path in operations:
        for body in _bodies(depth):
            resp = client.open(path, method=method, data=body,
                               headers={"Content-Type": "application/json"})
            assert resp.status_code == 400, (method, path, resp.status_code, resp.data[:200])
            error = resp.get_json()
            if path.startswith("/v1/"):  # the OpenAI-compatible API: OpenAI's shape
                assert error["error"]["type"] == "invalid_request_error"
                assert "nested too deeply" in error["error"]["message"], error
                continue
            assert error["code"] == 400 and error["status"] == "Bad Request"
            assert "nested too deeply" in error["message"], error
            assert error["errors"] == {"json": [error["message"]]}
    assert _store_snapshot(app) == before


def test_nesting_up_to_the_limit_is_parsed(client):
    # The parser's limit, not a schema: a body exactly at the limit reaches the schema (422).
    body = f'{{"model_name": "m", "dataset": "d", "x": {_arrays(MAX_JSON_DEPTH - 1)}}}'
    resp = client.post("/jobs", data=body, headers={"Content-Type": "application/json"})
    assert resp.status_code == 422, resp.get_json()
    assert "x" in resp.get_json()["errors"]["json"]


def test_depth_counts_brackets_outside_strings_only():
    assert not _too_deep('{"a": "' + "[" * 500 + '"}', limit=3)
    assert not _too_deep('["\\"[[[[[", [[1]]]', limit=3)
    assert _too_deep("[[[[1]]]]", limit=3)
    assert not _too_deep("[[[1]]]", limit=3)
    assert not _too_deep("[1], " * 1000, limit=3)  # many brackets, none deep
