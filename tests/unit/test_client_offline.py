"""The Python client without a server: error mapping, parsing, configuration from the
environment, and bounded retries when nothing listens."""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pytest

from llm_train_api.client import (
    ApiConnectionError,
    ApiError,
    Client,
    Conflict,
    Forbidden,
    Job,
    NotFound,
    PreconditionFailed,
    RetryPolicy,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    UnsupportedMediaType,
    ValidationError,
)
from llm_train_api.client.errors import error_for
from llm_train_api.client.models import parse
from tests.helpers.servers import free_port

FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05)


def test_error_bodies_map_to_typed_exceptions():
    body = {"code": 422, "status": "Unprocessable Entity", "message": "Invalid request.",
            "errors": {"json": {"priority": ["Must be at most 1000."]}}}
    exc = error_for(422, body)
    assert isinstance(exc, ValidationError) and exc.status == 422
    assert exc.field_errors == {"json.priority": ["Must be at most 1000."]}
    assert str(exc) == "422 validation_error: Invalid request."
    for status, cls in [(401, Unauthorized), (403, Forbidden), (404, NotFound),
                        (409, Conflict), (412, PreconditionFailed), (429, TooManyRequests),
                        (503, ServiceUnavailable), (415, UnsupportedMediaType)]:
        exc = error_for(status, {"code": status, "status": "x", "message": "m"})
        assert type(exc) is cls and isinstance(exc, ApiError) and exc.status == status
    teapot = error_for(418, {"code": 418, "status": "I'm a teapot", "message": "no"})
    assert type(teapot) is ApiError and teapot.code == "i_m_a_teapot"
    html = error_for(502, "<html>bad gateway</html>", fallback_message="Bad Gateway")
    assert html.status == 502 and html.message == "Bad Gateway"
    extra = error_for(409, {"code": 409, "status": "Conflict", "message": "m",
                            "current_status": "succeeded", "allowed_targets": []})
    assert extra.details == {"current_status": "succeeded", "allowed_targets": []}


def test_unknown_fields_from_a_newer_server_are_kept_not_fatal():
    job = parse(Job, {"id": "j", "status": "queued", "created_at": "2026-11-27T11:53:26Z",
                      "gpu_hours": 1.5, "labels": {"team": "x"}})
    assert job.id == "j" and job.extra == {"gpu_hours": 1.5, "labels": {"team": "x"}}
    assert job.created_at == datetime(2026, 11, 27, 11, 53, 26, tzinfo=timezone.utc)
    assert job.model_name == "" and job.progress_info is None  # missing fields: defaults


def test_from_env_and_the_bearer_header():
    api = Client.from_env({"LLM_TRAIN_API_URL": "http://h:1/", "LLM_TRAIN_API_TOKEN": "t0k"})
    assert api.url == "http://h:1" and api.session.headers["Authorization"] == "Bearer t0k"
    anonymous = Client.from_env({})
    assert anonymous.url == "http://127.0.0.1:8000"
    assert "Authorization" not in anonymous.session.headers


def test_connection_refused_is_an_api_connection_error_after_bounded_retries():
    api = Client(f"http://127.0.0.1:{free_port()}", retry=FAST_RETRY, timeout=(1, 1))
    t0 = time.monotonic()
    with pytest.raises(ApiConnectionError) as info:
        api.healthz()
    assert time.monotonic() - t0 < 5
    assert info.value.status == 0 and "refused" in str(info.value).lower()
