"""The pieces of gunicorn's worker and logger classes that need no server: token redaction
for the access log and the JSON error answer. Against a real gunicorn:
tests/system/test_gunicorn.py."""

from __future__ import annotations

import json
from datetime import timedelta
from types import SimpleNamespace

import pytest

from llm_train_api.api.gunicorn_logging import RedactingLogger, redact
from llm_train_api.api.gunicorn_worker import json_error

TOKEN = "ltk_" + "A1b2-C3d4_" * 4 + "xyz"


@pytest.mark.parametrize(("text", "expected"), [
    (f"GET /jobs?access_token={TOKEN} HTTP/1.1", "GET /jobs?access_token=[redacted] HTTP/1.1"),
    ("limit=5&token=abc&status=queued", "limit=5&token=[redacted]&status=queued"),
    ("/jobs?API_KEY=k;x=1", "/jobs?API_KEY=[redacted];x=1"),
    (f"/jobs?q={TOKEN}&limit=2", "/jobs?q=[redacted]&limit=2"),
    (f"/jobs/{TOKEN}/logs", "/jobs/[redacted]/logs"),
    ("/jobs?tokens=3&my_token=x", "/jobs?tokens=3&my_token=x"),
    ("/jobs?limit=5", "/jobs?limit=5"),
])
def test_redact(text, expected):
    assert redact(text) == expected


def test_the_access_log_atoms_hold_no_token():
    logger = RedactingLogger.__new__(RedactingLogger)
    environ = {"REQUEST_METHOD": "GET", "RAW_URI": f"/jobs?token={TOKEN}",
               "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/jobs",
               "QUERY_STRING": f"token={TOKEN}", "HTTP_REFERER": f"https://x/?access_token={TOKEN}",
               "HTTP_AUTHORIZATION": "Basic dXNlcjpwYXNz", "REMOTE_ADDR": "127.0.0.1"}
    req = SimpleNamespace(headers=[("AUTHORIZATION", f"Bearer {TOKEN}"),
                                   ("COOKIE", "session=abc"), ("X-Other", "fine")])
    resp = SimpleNamespace(status="200 OK", headers=[], sent=10)
    logger._get_user = lambda environ: None
    atoms = logger.atoms(resp, req, environ, timedelta(milliseconds=5))
    assert not any(TOKEN in str(value) for value in atoms.values())
    assert atoms["{authorization}i"] == atoms["{cookie}i"] == "[redacted]"
    assert atoms["{http_authorization}e"] == "[redacted]"
    assert atoms["r"] == "GET /jobs?token=[redacted] HTTP/1.1"
    assert atoms["{x-other}i"] == "fine"


def test_json_error_is_a_complete_response():
    response = json_error(431, "too many")
    head, _, body = response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 Request Header Fields Too Large\r\n")
    assert b"Content-Type: application/json" in head and b"Connection: close" in head
    assert f"Content-Length: {len(body)}".encode() in head
    assert json.loads(body) == {"code": 431, "status": "Request Header Fields Too Large",
                                "message": "too many"}
