"""The request parser's short way (StrictJSONParser.parse, for a JSON body or an empty
query string read into a lean schema) answers every request exactly as webargs' own
parse does: same status, same body, for valid and invalid requests alike."""

from __future__ import annotations

import json
from pathlib import Path

from webargs.flaskparser import FlaskParser

from llm_train_api import create_app
from llm_train_api.api.errors import StrictJSONParser
from tests.helpers.clients import admin_client

VOLATILE = {"id", "created_at", "updated_at", "finished_at", "started_at"}

# (method, path with query, body bytes or None, content type)
REQUESTS = [
    ("POST", "/jobs", b'{"job_id": "new", "model_name": "m", "dataset": "d", '
     b'"hyperparameters": {"lr": 0.1, "nested": {"a": [1, null]}}}', "application/json"),
    ("POST", "/jobs?dry_run=true", b'{"model_name": "m", "dataset": "d"}', "application/json"),
    ("POST", "/jobs?dry_run=maybe", b'{"model_name": "m", "dataset": "d"}', "application/json"),
    ("POST", "/jobs?typo=1", b'{"model_name": "m", "dataset": "d"}', "application/json"),
    ("POST", "/jobs", b"[]", "application/json"),
    ("POST", "/jobs", b'"text"', "application/json"),
    ("POST", "/jobs", b"{}", "application/json"),
    ("POST", "/jobs", b'{"model_name": "m", "dataset": "d", "lr": 1}', "application/json"),
    ("POST", "/jobs", b'{"model_name": "m", "dataset": "d", "priority": "x"}',
     "application/json"),
    ("POST", "/jobs", b'{"model_name": "m", "dataset": "d", "job_id": "-bad"}',
     "application/json"),
    ("POST", "/jobs", b'{"model_name": "m", "dataset": "d", "hyperparameters": '
     + b'{"a": ' * 12 + b"1" + b"}" * 13, "application/json"),
    ("POST", "/jobs", b"", "application/json"),
    ("POST", "/jobs", b"{", "application/json"),
    ("POST", "/jobs", b'{"model_name": NaN}', "application/json"),
    ("POST", "/jobs", b"[" * 100 + b"]" * 100, "application/json"),
    ("POST", "/jobs", b"\xff\xfe", "application/json"),
    ("POST", "/jobs", b'{"model_name": "m", "dataset": "d"}', "text/plain"),
    ("PATCH", "/jobs/@/status", b'{"status": "cancelled", "error_message": "stop"}',
     "application/json"),
    ("PATCH", "/jobs/@/status", b'{"status": "bogus"}', "application/json"),
    ("PATCH", "/jobs/@/status", b"{}", "application/json"),
    ("PATCH", "/jobs/@/status", b'{"status": "queued", "x": 1}', "application/json"),
    ("GET", "/jobs", None, None),
    ("GET", "/jobs?limit=1", None, None),
    ("GET", "/jobs?limit=0", None, None),
    ("GET", "/jobs?bogus=1", None, None),
]


def _answers(instance: Path) -> list[tuple[int, object]]:
    """Each request's answer from a new app (the pure registry) holding one queued job."""
    app = create_app({"INSTANCE_PATH": str(instance), "EXECUTOR": "none"})
    try:
        client = admin_client(app)
        client.post("/jobs", json={"job_id": "target", "model_name": "m", "dataset": "d"})
        answers = []
        for method, path, body, content_type in REQUESTS:
            headers = {"Content-Type": content_type} if content_type else {}
            response = client.open(path.replace("@", "target"), method=method, data=body,
                                   headers=headers)
            answers.append((response.status_code, _stable(response.get_json(silent=True))))
        return answers
    finally:
        app.extensions["llm_train_api.runtime"].close()


def _stable(payload: object) -> object:
    """The answer minus what differs between two otherwise equal requests."""
    if isinstance(payload, list):
        return [_stable(item) for item in payload]
    if isinstance(payload, dict):
        return {key: value for key, value in payload.items() if key not in VOLATILE}
    return payload


def test_the_short_way_answers_as_webargs_does(tmp_path, monkeypatch):
    short = _answers(tmp_path / "short")
    monkeypatch.setattr(StrictJSONParser, "parse", FlaskParser.parse)
    full = _answers(tmp_path / "full")
    for (method, path, body, _), got, expected in zip(REQUESTS, short, full, strict=True):
        shown = (body or b"")[:60]
        assert got == expected, f"{method} {path} {shown!r}"
    statuses = [status for status, _ in short]
    # The cases cover what they mean to: successes, and each kind of refusal.
    assert {200, 201, 400, 415, 422} <= set(statuses), statuses
    assert json.dumps(short)  # every answer was JSON
