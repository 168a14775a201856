"""Authentication, roles and ownership against every endpoint.

The world of each test: alice and bob (users), a worker token, the bootstrap admin. alice
owns job `a1` and her dataset `hamlet`; bob owns job `b1` and his own `hamlet`; the admin
published `shared`. Expectations: 401 without a token, 404 for another user's objects
(never 403, so ids do not leak), 403 where a role lacks the right on its own objects.
"""

from __future__ import annotations

import json
import logging
import os
import stat

import pytest

from llm_train_api import create_app
from tests.helpers.clients import admin_client, client_as

JOB = {"model_name": "gpt-nano", "dataset": "hamlet", "hyperparameters": {"lr": 0.1}}


@pytest.fixture
def world(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "MAX_DATASETS_PER_USER": 3, "MAX_QUEUED_PER_USER": 5})
    clients = {
        "admin": admin_client(app),
        "alice": client_as(app, "alice", "user"),
        "bob": client_as(app, "bob", "user"),
        "worker": client_as(app, "ci-runner", "worker"),
        "nobody": app.test_client(),
    }
    text = {"Content-Type": "text/plain"}
    assert clients["alice"].put("/datasets/hamlet", data=b"to be\n", headers=text).status_code \
        == 201
    assert clients["bob"].put("/datasets/hamlet", data=b"or not\n", headers=text).status_code \
        == 201
    assert clients["admin"].put("/datasets/shared", data=b"all\n", headers=text).status_code \
        == 201
    assert clients["alice"].put("/datasets/notes", data=b"n\n", headers=text).status_code == 201
    assert clients["alice"].post("/jobs", json={**JOB, "job_id": "a1"}).status_code == 201
    assert clients["bob"].post("/jobs", json={**JOB, "job_id": "b1"}).status_code == 201
    yield app, clients
    app.extensions["llm_train_api.runtime"].close()


def call(client, method: str, path: str, body=None):
    kwargs = {}
    if isinstance(body, bytes):
        kwargs = {"data": body, "headers": {"Content-Type": "text/plain"}}
    elif body is not None:
        kwargs = {"json": body}
    return client.open(path, method=method, **kwargs)


JOB_READS = ["/jobs/a1", "/jobs/a1/events", "/jobs/a1/metrics", "/jobs/a1/logs",
             "/jobs/a1/artifacts"]
# (who, method, path, body, expected status) on alice's objects.
CASES = [
    *[(who, "GET", path, None, code) for path in JOB_READS
      for who, code in [("admin", 200), ("alice", 200), ("worker", 200), ("bob", 404),
                        ("nobody", 401)]],
    *[(who, "GET", "/jobs/a1/artifacts/train.log", None, code)
      for who, code in [("bob", 404), ("nobody", 401)]],
    *[(who, "POST", "/jobs", {**JOB, "dataset": "shared"}, code)
      for who, code in [("admin", 201), ("alice", 201), ("worker", 403), ("nobody", 401)]],
    *[(who, "DELETE", "/jobs/a1", None, code)
      for who, code in [("admin", 204), ("alice", 204), ("bob", 404), ("worker", 403),
                        ("nobody", 401)]],
    *[(who, "PATCH", "/jobs/a1/status", {"status": "running"}, code)
      for who, code in [("admin", 200), ("worker", 200), ("alice", 403), ("bob", 404),
                        ("nobody", 401)]],
    *[(who, "PATCH", "/jobs/a1/status", {"status": "cancelled"}, code)
      for who, code in [("admin", 200), ("worker", 200), ("alice", 200), ("bob", 404),
                        ("nobody", 401)]],
    *[(who, "POST", "/jobs/a1/cancel", None, code)
      for who, code in [("admin", 200), ("worker", 200), ("alice", 200), ("bob", 404),
                        ("nobody", 401)]],
    *[(who, "GET", path, None, code) for path in ["/models", "/models/gpt-nano", "/datasets",
                                                   "/whoami"]
      for who, code in [("admin", 200), ("alice", 200), ("worker", 200), ("nobody", 401)]],
    *[(who, "GET", "/datasets/hamlet", None, code)
      for who, code in [("alice", 200), ("bob", 200), ("admin", 404), ("worker", 404),
                        ("nobody", 401)]],
    *[(who, "GET", "/datasets/shared", None, code)
      for who, code in [("alice", 200), ("admin", 200), ("worker", 200), ("nobody", 401)]],
    *[(who, "PUT", "/datasets/new", b"x\n", code)
      for who, code in [("admin", 201), ("alice", 201), ("worker", 403), ("nobody", 401)]],
    *[(who, "DELETE", "/datasets/notes", None, code)
      for who, code in [("alice", 204), ("admin", 404), ("bob", 404), ("worker", 403),
                        ("nobody", 401)]],
    ("alice", "DELETE", "/datasets/hamlet", None, 409),  # her job a1 still needs it
    ("bob", "DELETE", "/datasets/hamlet", None, 409),  # his b1 does; alice's a1 is not his
    *[(who, "DELETE", "/datasets/shared", None, code)
      for who, code in [("admin", 204), ("alice", 403), ("worker", 403), ("nobody", 401)]],
    *[(who, "GET", path, None, 200) for path in ["/healthz", "/readyz", "/openapi.json",
                                                 "/docs", "/ui/", "/ui/datasets", "/ui/models",
                                                 "/ui/new-job"]
      for who in ["nobody", "alice"]],
    *[(who, "GET", "/metrics", None, code)
      for who, code in [("admin", 200), ("alice", 403), ("worker", 403), ("nobody", 401)]],
]


@pytest.mark.parametrize(("who", "method", "path", "body", "expected"), CASES,
                         ids=[f"{c[0]}-{c[1]}-{c[2]}" for c in CASES])
def test_role_against_endpoint(world, who, method, path, body, expected):
    app, clients = world
    before = _state(clients["admin"])
    resp = call(clients[who], method, path, body)
    assert resp.status_code == expected, resp.get_data(as_text=True)
    if expected >= 400:
        assert resp.is_json and resp.get_json()["code"] == expected
        assert _state(clients["admin"]) == before  # a refused request changes nothing
    if expected == 401:
        assert resp.headers["WWW-Authenticate"].startswith("Bearer")


def _state(admin) -> tuple:
    jobs = admin.get("/jobs").get_json()
    datasets = admin.get("/datasets").get_json()
    return (sorted((j["id"], j["status"], j["updated_at"]) for j in jobs),
            sorted((d["name"], d["sha256"]) for d in datasets))


def test_users_list_only_their_own_jobs_workers_and_admins_all(world):
    _app, c = world
    assert [j["id"] for j in c["alice"].get("/jobs").get_json()] == ["a1"]
    assert [j["id"] for j in c["bob"].get("/jobs?status=queued").get_json()] == ["b1"]
    assert {j["id"] for j in c["worker"].get("/jobs").get_json()} == {"a1", "b1"}
    assert {j["id"] for j in c["admin"].get("/jobs").get_json()} == {"a1", "b1"}
    assert c["alice"].get("/jobs/a1").get_json()["owner"] == "alice"


def test_datasets_are_named_per_owner(world):
    _app, c = world
    alice = c["alice"].get("/datasets/hamlet").get_json()
    bob = c["bob"].get("/datasets/hamlet").get_json()
    assert (alice["owner"], bob["owner"]) == ("alice", "bob")
    assert alice["sha256"] != bob["sha256"]
    names = {(d["name"], d["owner"]) for d in c["alice"].get("/datasets").get_json()}
    assert ("hamlet", "alice") in names and ("shared", None) in names
    assert ("hamlet", "bob") not in names
    # A job names a dataset as its owner sees it: alice's hamlet, then the published one.
    assert c["alice"].post("/jobs", json={**JOB, "dataset": "shared"}).status_code == 201


def test_a_taken_job_id_says_only_that_it_is_taken(world):
    _app, c = world
    resp = c["alice"].post("/jobs", json={**JOB, "job_id": "b1"})
    assert resp.status_code == 409
    message = resp.get_json()["message"]
    assert "already taken" in message and "different body" not in message
    assert "bob" not in message
    # bob's own identical retry is still the idempotent 200.
    assert c["bob"].post("/jobs", json={**JOB, "job_id": "b1"}).status_code == 200


def test_audit_trail_names_who_changed_cancelled_and_deleted(world):
    app, c = world
    assert c["worker"].patch("/jobs/b1/status", json={"status": "running"}).status_code == 200
    assert c["bob"].post("/jobs/b1/cancel").status_code == 200
    events = c["admin"].get("/jobs/b1/events").get_json()
    assert [(e["kind"], e["actor"]) for e in events] == [
        ("created", "user:bob"), ("status", "worker:ci-runner"), ("status", "user:bob")]
    assert c["alice"].delete("/jobs/a1").status_code == 204
    # The job is gone from the API, its audit trail is not.
    from sqlalchemy import select

    from llm_train_api.store.tables import job_events
    with app.extensions["llm_train_api.runtime"].database.reading() as conn:
        rows = conn.execute(select(job_events.c.kind, job_events.c.actor)
                            .where(job_events.c.job_id == "a1")
                            .order_by(job_events.c.seq)).all()
    assert [tuple(r) for r in rows] == [("created", "user:alice"), ("deleted", "user:alice")]
    # Re-created under the same id: a timeline of its own.
    assert c["alice"].post("/jobs", json={**JOB, "job_id": "a1"}).status_code == 201
    assert [e["kind"] for e in c["alice"].get("/jobs/a1/events").get_json()] == ["created"]


def test_revoked_and_unknown_tokens_are_refused_and_not_logged(world, caplog):
    app, c = world
    tokens = app.extensions["llm_train_api.runtime"].tokens
    info, secret = tokens.create("carol", "user")
    carol = app.test_client()
    carol.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {secret}"
    assert carol.get("/whoami").get_json() == {"name": "carol", "role": "user",
                                               "auth": "required"}
    tokens.revoke(token_id=info.id)
    with caplog.at_level(logging.WARNING, logger="llm_train_api.auth"):
        resp = carol.get("/jobs")
    assert resp.status_code == 401
    assert 'error="invalid_token"' in resp.headers["WWW-Authenticate"]
    assert "authentication failed" in caplog.text and secret not in caplog.text
    for header in ["Basic Zm9vOmJhcg==", "Bearer", "Bearer ltk_forged", "Bearer " + "x" * 5000]:
        assert app.test_client().get("/jobs", headers={"Authorization": header}).status_code \
            == 401


def test_queued_jobs_per_user_are_capped_with_a_429_naming_the_limit(world):
    _app, c = world
    for i in range(4):  # alice already has a1 queued; the cap is 5
        assert c["alice"].post("/jobs", json={**JOB, "job_id": f"q{i}"}).status_code == 201
    resp = c["alice"].post("/jobs", json={**JOB, "job_id": "q-over"})
    assert resp.status_code == 429
    assert "LLM_TRAIN_API_MAX_QUEUED_PER_USER=5" in resp.get_json()["message"]
    assert c["admin"].get("/jobs/q-over").status_code == 404
    # At the cap, an identical retry is still the idempotent 200, not a 429.
    assert c["alice"].post("/jobs", json={**JOB, "job_id": "q3"}).status_code == 200
    assert c["bob"].post("/jobs", json=JOB).status_code == 201  # bob has his own budget
    assert c["admin"].post("/jobs", json=JOB).status_code == 201  # admins are not capped
    # A cancelled job frees its place.
    assert c["alice"].post("/jobs/q0/cancel").status_code == 200
    assert c["alice"].post("/jobs", json={**JOB, "job_id": "q-fits"}).status_code == 201


def test_datasets_per_user_are_capped(world):
    _app, c = world
    text = {"Content-Type": "text/plain"}
    # alice has hamlet and notes; the cap is 3.
    assert c["alice"].put("/datasets/three", data=b"3\n", headers=text).status_code == 201
    resp = c["alice"].put("/datasets/four", data=b"4\n", headers=text)
    assert resp.status_code == 429
    assert "LLM_TRAIN_API_MAX_DATASETS_PER_USER=3" in resp.get_json()["message"]
    # Replacing one of hers is not a new one.
    assert c["alice"].put("/datasets/three", data=b"3b\n", headers=text).status_code == 200


def test_with_the_builtin_executor_users_may_only_cancel(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i")})
    alice = client_as(app, "alice", "user")
    worker = client_as(app, "ext", "worker")
    body = {"job_id": "j", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "hyperparameters": {"max_steps": 2}}
    assert alice.post("/jobs", json=body).status_code == 201
    assert alice.patch("/jobs/j/status", json={"status": "failed"}).status_code == 403
    assert admin_client(app).patch("/jobs/j/status", json={"status": "running"}).status_code \
        == 409
    # A worker token may fail the job (a built-in worker that holds it learns it from its
    # next lease-guarded write), but it cannot start a run: see test_api_hardening.
    assert worker.patch("/jobs/j/status", json={"status": "failed"}).status_code == 200


def test_bootstrap_token_file_is_private_and_written_once(tmp_path):
    instance = tmp_path / "instance"
    app = create_app({"INSTANCE_PATH": str(instance), "EXECUTOR": "none"})
    path = instance / "admin-token"
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    token = path.read_text().strip()
    assert token.startswith("ltk_") and len(token) > 40
    create_app({"INSTANCE_PATH": str(instance), "EXECUTOR": "none"})  # a second start
    assert path.read_text().strip() == token
    tokens = app.extensions["llm_train_api.runtime"].tokens.list()
    assert [(t.name, t.role.value) for t in tokens] == [("admin", "admin")]


def test_auth_disabled_warns_and_lets_everyone_in(tmp_path, caplog):
    with caplog.at_level(logging.WARNING, logger="llm_train_api.auth"):
        app = create_app({"INSTANCE_PATH": str(tmp_path), "EXECUTOR": "none",
                          "AUTH": "disabled"})
    assert "LLM_TRAIN_API_AUTH=disabled" in caplog.text
    assert not (tmp_path / "admin-token").exists()
    client = app.test_client()
    resp = client.post("/jobs", json={**JOB, "job_id": "x"})
    assert resp.status_code == 201 and resp.get_json()["owner"] is None
    assert client.get("/whoami").get_json()["role"] == "admin"


def test_cors_is_off_unless_configured(tmp_path):
    off = create_app({"INSTANCE_PATH": str(tmp_path / "a"), "EXECUTOR": "none"})
    resp = off.test_client().get("/healthz", headers={"Origin": "https://ui.example"})
    assert "Access-Control-Allow-Origin" not in resp.headers
    on = create_app({"INSTANCE_PATH": str(tmp_path / "b"), "EXECUTOR": "none",
                     "CORS_ORIGINS": "https://ui.example"})
    client = on.test_client()
    preflight = client.options("/jobs", headers={
        "Origin": "https://ui.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization,content-type"})
    assert preflight.status_code == 200
    assert preflight.headers["Access-Control-Allow-Origin"] == "https://ui.example"
    assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
    other = client.get("/healthz", headers={"Origin": "https://evil.example"})
    assert "Access-Control-Allow-Origin" not in other.headers


def test_security_headers(client):
    page = client.get("/docs")
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert client.get("/jobs").headers["X-Content-Type-Options"] == "nosniff"


def test_tokens_cli_creates_lists_and_revokes(tmp_path, monkeypatch):
    from click.testing import CliRunner

    from llm_train_api.cli.main import main

    monkeypatch.setenv("LLM_TRAIN_API_INSTANCE_PATH", str(tmp_path))
    runner = CliRunner()
    created = runner.invoke(main, ["tokens", "create", "--name", "dana", "--role", "worker"])
    assert created.exit_code == 0, created.output
    secret = created.stdout.strip().splitlines()[-1]
    assert secret.startswith("ltk_")
    assert not (tmp_path / "admin-token").exists()  # the CLI never bootstraps
    listed = runner.invoke(main, ["tokens", "list", "--json"])
    [row] = [json.loads(line) for line in listed.stdout.splitlines()]
    assert (row["name"], row["role"], row["revoked_at"]) == ("dana", "worker", None)
    assert secret not in listed.stdout
    bad = runner.invoke(main, ["tokens", "create", "--name", "../etc", "--role", "user"])
    assert bad.exit_code == 2 and "Invalid name" in bad.output
    assert runner.invoke(main, ["tokens", "revoke", str(row["id"])]).exit_code == 0
    again = runner.invoke(main, ["tokens", "revoke", str(row["id"])])
    assert again.exit_code == 2 and "No active token" in again.output
