"""The request parser's short way (StrictJSONParser.parse, for a JSON body or an empty
query string read into a lean schema) answers every request exactly as webargs' own
parse does: same status, same body, for valid and invalid requests alike."""

from __future__ import annotations

import json
from pathlib import Path

import flask
import pytest
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import HTTPException
from werkzeug.test import EnvironBuilder

from llm_train_api import create_app
from llm_train_api.api import errors
from llm_train_api.api.errors import StrictJSONParser
from llm_train_api.domain import JobNotFound
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


class _Input:
    """A WSGI input holding `data`, which records how much was asked of it."""

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.asked = 0

    def read(self, size: int = -1) -> bytes:
        self.asked += size if size >= 0 else len(self.data)
        chunk, self.data = (self.data, b"") if size < 0 else (self.data[:size],
                                                                 self.data[size:])
        return chunk


def _post_raw(app, declared: int, body: bytes) -> tuple[int, dict, _Input]:
    """POST /jobs with a Content-Length of `declared` over an input holding `body`."""
    token = (Path(app.instance_path) / "admin-token").read_text().strip()
    environ = EnvironBuilder(path="/jobs", method="POST", content_type="application/json",
                             headers={"Authorization": f"Bearer {token}"}).get_environ()
    stream = _Input(body)
    environ.update({"wsgi.input": stream, "CONTENT_LENGTH": str(declared),
                    "wsgi.input_terminated": True})
    status: list[str] = []
    chunks = app(environ, lambda s, headers, exc_info=None: status.append(s))
    payload = json.loads(b"".join(chunks))
    return int(status[0].split()[0]), payload, stream


def test_a_json_body_is_read_once_exactly_as_declared(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path), "EXECUTOR": "none",
                      "MAX_JSON_BYTES": 4096})
    runtime = app.extensions["llm_train_api.runtime"]
    try:
        body = json.dumps({"job_id": "exact", "model_name": "m", "dataset": "d"}).encode()
        # Bytes past the declared length belong to the next request: never read.
        status, payload, stream = _post_raw(app, len(body), body + b"GET / HTTP/1.1\r\n")
        assert status == 201, payload
        assert payload["id"] == "exact"
        assert stream.asked == len(body)

        # Over the limit: 413 before a byte is read.
        status, payload, stream = _post_raw(app, 5000, b"{" * 5000)
        assert (status, stream.asked) == (413, 0), payload

        # Cut short (the client went away or stalled): nothing is stored.
        cut = json.dumps({"job_id": "cut", "model_name": "m", "dataset": "d"}).encode()
        status, payload, _ = _post_raw(app, len(cut) + 10, cut)
        assert status == 408, payload
        assert "nothing was stored" in payload["message"]
        with pytest.raises(JobNotFound):
            runtime.jobs.get_job("cut")
    finally:
        runtime.close()


def test_the_body_the_parser_read_is_the_one_flask_hands_out(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path), "EXECUTOR": "none"})
    try:
        body = b'{"a": [1, 2, {"b": "\\u00e9"}]}'
        with app.test_request_context("/jobs", method="POST", data=body,
                                      content_type="application/json"):
            assert StrictJSONParser()._raw_load_json(flask.request) == {"a": [1, 2, {"b": "é"}]}
            assert flask.request.get_data() == body
            assert flask.request.get_json() == {"a": [1, 2, {"b": "é"}]}
    finally:
        app.extensions["llm_train_api.runtime"].close()


@pytest.mark.parametrize("text", [
    '{"a": 1.5, "b": [1, -2, 3e10], "c": {"d": null, "e": "\\u00e9"}}',
    "\ufeff{}", "{} x", "[1, 2", "NaN", '{"a": Infinity}', "1e400", "9" * 25, "",
    '"\\ud800"', '{"a": 1, "a": 2}',
])
def test_bodies_decode_as_json_loads_with_the_same_hooks_does(tmp_path, text):
    """The parser's decoder, built once, gives what `json.loads` with its hooks gives:
    the same value, or a 400 with the same message."""
    def expected() -> object:
        try:
            return json.loads(text, parse_constant=errors._reject_constant,
                              parse_float=errors._finite_float, parse_int=errors._int64)
        except (json.JSONDecodeError, errors._UnrepresentableNumber) as exc:
            return str(exc)

    app = create_app({"INSTANCE_PATH": str(tmp_path), "EXECUTOR": "none"})
    try:
        with app.test_request_context("/jobs", method="POST", data=text.encode(),
                                      content_type="application/json"):
            try:
                got: object = StrictJSONParser()._raw_load_json(flask.request)
            except HTTPException as exc:
                got = exc.data["message"].removeprefix("Request body is not valid JSON: ")
        assert got == expected()
    finally:
        app.extensions["llm_train_api.runtime"].close()
