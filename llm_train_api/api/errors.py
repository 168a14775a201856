"""How failures become HTTP: every error a client can cause is a JSON body in
flask-smorest's shape `{code, status, message, errors?}`, never an HTML page or a 500.
"""

from __future__ import annotations

import json
import math
import re
from http import HTTPStatus
from typing import Any, NoReturn

import flask
from flask_smorest import Api, abort
from marshmallow import ValidationError
from sqlalchemy.exc import OperationalError
from webargs import core
from webargs.flaskparser import FlaskParser
from werkzeug.exceptions import ClientDisconnected, HTTPException, RequestEntityTooLarge

from llm_train_api.api.lean_schemas import LeanLoadSchema
from llm_train_api.api.streams import TooManyStreams
from llm_train_api.artifacts import datasets as dataset_files
from llm_train_api.artifacts import model_errors
from llm_train_api.domain import (
    DomainError,
    IllegalTransition,
    InvalidRequest,
    JobIdConflict,
    JobNotFound,
    PreconditionFailed,
    QuotaExceeded,
    StatusChangeForbidden,
    StatusManagedByWorkers,
)
from llm_train_api.services.checkpoints import CheckpointCorrupt, CheckpointNotFound
from llm_train_api.services.finetune_plan import PlanUnavailable
from llm_train_api.services.storage import REASON as STORAGE_QUOTA_REASON
from llm_train_api.services.storage import StorageQuotaExceeded
from llm_train_api.store.pagination import InvalidCursor
from llm_train_api.store.webhooks import WebhookNotFound

# The one table from the errors a client can cause to HTTP statuses (the body's `code`).
# A class not listed answers as its nearest listed base class, else 400.
ERROR_STATUS: dict[type[Exception], int] = {
    InvalidCursor: 400,
    StatusChangeForbidden: 403,
    JobNotFound: 404,
    JobIdConflict: 409,
    IllegalTransition: 409,
    StatusManagedByWorkers: 409,
    PreconditionFailed: 412,
    InvalidRequest: 422,
    QuotaExceeded: 429,
    TooManyStreams: 429,
    dataset_files.ReadOnly: 403,
    dataset_files.NotFound: 404,
    dataset_files.Conflict: 409,
    dataset_files.TooLarge: 413,
    dataset_files.InvalidName: 422,
    dataset_files.InvalidContent: 422,
    dataset_files.TooMany: 429,
    dataset_files.OverQuota: 413,
    dataset_files.DiskFull: 507,
    model_errors.InvalidModelName: 422,
    model_errors.ModelNotFound: 404,
    model_errors.ModelConflict: 409,
    model_errors.ModelReadOnly: 403,
    model_errors.ModelTooLarge: 413,
    model_errors.InvalidModel: 422,
    PlanUnavailable: 503,
    WebhookNotFound: 404,
    CheckpointNotFound: 404,
    CheckpointCorrupt: 409,
}


def status_of(error: Exception) -> int:
    """The HTTP status `error` answers with, from ERROR_STATUS."""
    for cls in type(error).__mro__:
        status = ERROR_STATUS.get(cls)
        if status is not None:
            return status
    return 400


JSON_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Endpoints whose body is not JSON: they read and limit it themselves (dataset uploads,
# model imports).
# The OpenAI-compatible API's multipart upload, cancel, pause and resume (api.openai)
# likewise.
RAW_BODY_ENDPOINTS = frozenset({"datasets.DatasetResource", "models.ModelResource",
                                "openai_files.Files"})
NO_BODY_ENDPOINTS = frozenset({"jobs.JobCancel", "jobs.JobPause", "jobs.JobResume",
                               "openai_fine_tuning.JobCancel", "openai_fine_tuning.JobPause",
                               "openai_fine_tuning.JobResume"})


def declares_json(request: flask.Request) -> bool:
    """Whether the body is declared JSON (`application/json` or `application/*+json`).

    The plain `application/json` every client sends is compared as it came; anything else
    (parameters, other case, another type) goes through Werkzeug's parse of the header."""
    return (request.environ.get("CONTENT_TYPE") == "application/json"
            or request.is_json)


class _UnrepresentableNumber(ValueError):
    pass


class _TooDeep(ValueError):
    pass


_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1


def _reject_constant(name: str) -> NoReturn:
    raise _UnrepresentableNumber(f"{name} is not valid JSON: numbers must be finite.")


def _finite_float(text: str) -> float:
    # 1e400 is valid JSON but overflows to infinity, which nothing downstream can store.
    value = float(text)
    if not math.isfinite(value):
        raise _UnrepresentableNumber(f"{text} is out of range: numbers must be finite "
                                     "(at most about 1.8e308).")
    return value


def _int64(text: str) -> int:
    # Larger integers would come back as inexact floats (the stored JSON is read with
    # orjson), or not parse at all past Python's 4300-digit limit: refuse them by name.
    # A sign and 19 digits at most: the length check comes first and keeps int() cheap.
    if len(text) > 20 or not _INT64_MIN <= int(text) <= _INT64_MAX:
        shown = text if len(text) <= 30 else f"{text[:12]}... ({len(text)} digits)"
        raise _UnrepresentableNumber(f"{shown} is out of range: integers must fit in 64 bits "
                                     "(-2^63 to 2^63-1).")
    return int(text)


# Request bodies' decoder, built once: `json.loads` with hooks builds a new one per call.
# Decoding keeps no state between calls (as json.loads' own shared decoder).
_STRICT_DECODER = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float,
                                   parse_int=_int64)

# How deep a request body's arrays and objects may nest. Deeper documents are refused
# before parsing: the standard library's parser recurses once per level, and so would
# every schema and serialiser after it.
MAX_JSON_DEPTH = 64
# A JSON string, escapes included (unrolled so that long strings do not backtrack).
_JSON_STRING = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"')
_NOT_BRACKET = re.compile(r"[^\[\]{}]+")


def _too_deep(text: str, limit: int = MAX_JSON_DEPTH) -> bool:
    """Whether the arrays and objects of `text` nest more than `limit` levels deep.

    Linear in the body's size; a body with fewer brackets than the limit is answered by
    counting alone. Brackets inside strings do not count.
    """
    if text.count("[") + text.count("{") <= limit:
        return False
    depth = 0
    for char in _NOT_BRACKET.sub("", _JSON_STRING.sub("", text)):
        if char in "[{":
            depth += 1
            if depth > limit:
                return True
        else:
            depth -= 1
    return False


def _request_body(req: flask.Request) -> bytes:
    """The request's body, read once and kept where `Request.get_data` finds it.

    A body with a Content-Length is read straight from the WSGI input, with Werkzeug's
    checks (413 above MAX_CONTENT_LENGTH before reading; a body cut short is a client
    disconnection) and none of its stream wrapper, which costs more than reading a small
    JSON body does. Anything else (a chunked body, one already read) is Werkzeug's.
    """
    cached = getattr(req, "_cached_data", None)
    if cached is not None:
        return cached
    length = req.content_length
    if length is None or "stream" in req.__dict__:
        return req.get_data(cache=True)
    limit = req.max_content_length
    if limit is not None and length > limit:
        raise RequestEntityTooLarge()
    raw = req.environ["wsgi.input"].read(length) if length else b""
    if len(raw) != length:
        raise ClientDisconnected()
    req._cached_data = raw
    return raw


# The query string's names in webargs: StrictJSONParser.parse takes its short way for an
# empty one.
_QUERY_LOCATIONS = frozenset({"query", "querystring"})


class StrictJSONParser(FlaskParser):
    """webargs' Flask parser, minus Python's JSON extensions (NaN, Infinity), minus
    numbers that cannot be stored exactly (beyond 64-bit integers or double range), and
    minus documents nested deeper than MAX_JSON_DEPTH."""

    def _raw_load_json(self, req: flask.Request) -> Any:
        if not declares_json(req):
            return core.missing
        raw = _request_body(req)
        try:
            text = raw.decode("utf-8")
            if _too_deep(text):
                raise _TooDeep
            if text.startswith("\ufeff"):  # as json.loads says it
                raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)",
                                           text, 0)
            return _STRICT_DECODER.decode(text)
        except (_TooDeep, RecursionError):
            detail = (f"Request body is nested too deeply: at most {MAX_JSON_DEPTH} levels "
                      "of arrays and objects.")
            abort(400, message=detail, errors={"json": [detail]})
        except _UnrepresentableNumber as exc:
            abort(400, message=str(exc), errors={"json": [str(exc)]})
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            detail = f"Request body is not valid JSON: {exc}"
            abort(400, message=detail, errors={"json": ["Invalid JSON body."]})

    def parse(self, argmap: Any, req: flask.Request | None = None, *,
              location: str | None = None, unknown: str | None = core._UNKNOWN_DEFAULT_PARAM,
              validate: Any = None, error_status_code: int | None = None,
              error_headers: Any = None) -> Any:
        """webargs' parse, shortened for what nearly every request is: a JSON body, or an
        empty query string, read into a lean schema (api.lean_schemas).

        Those take the same steps as webargs (the same loader, the same `unknown` and the
        same error handling) minus its generic ones: schema lookup, validator lists,
        `pre_load` and a proxy over an empty query. A query string with parameters, another
        location, a validator or another kind of schema goes through webargs itself.
        """
        location = location or self.location
        req = req if req is not None else flask.request._get_current_object()
        if (validate is None and isinstance(argmap, LeanLoadSchema)
                and (location == "json" or (location in _QUERY_LOCATIONS
                                            and not req.environ.get("QUERY_STRING")))):
            if unknown == core._UNKNOWN_DEFAULT_PARAM:
                unknown = (self.unknown if self.unknown != core._UNKNOWN_DEFAULT_PARAM
                           else self.DEFAULT_UNKNOWN_BY_LOCATION.get(location))
            data = self.load_json(req, argmap) if location == "json" else core.missing
            try:
                return argmap.load({} if data is core.missing else data,
                                   **({"unknown": unknown} if unknown else {}))
            except ValidationError as error:
                self._on_validation_error(error, req, argmap, location,
                                          error_status_code=error_status_code,
                                          error_headers=error_headers)
                raise AssertionError("handle_error did not raise") from error
        return super().parse(argmap, req, location=location, unknown=unknown,
                             validate=validate, error_status_code=error_status_code,
                             error_headers=error_headers)

    def handle_error(self, error, req, schema, *, error_status_code, error_headers):
        # Same as webargs, but with a message that says which part of the request was wrong.
        status = error_status_code or self.DEFAULT_VALIDATION_STATUS
        abort(status, message="Invalid request: see `errors` for each field.",
              errors=error.messages, headers=error_headers)


def require_json_body() -> None:
    """415 for a write whose body is not declared as JSON, before any parsing happens."""
    request = flask.request._get_current_object()  # one proxy lookup, not one per attribute
    if (request.method not in JSON_BODY_METHODS
            and "HTTP_TRANSFER_ENCODING" not in request.environ):
        return  # a GET, HEAD, DELETE or OPTIONS without a body: nothing to check or read
    if request.routing_exception is not None:
        return  # 404/405 win: there is no resource to send a body to
    if request.endpoint in RAW_BODY_ENDPOINTS:
        return  # streamed by the view under its own size limit
    if request.endpoint in NO_BODY_ENDPOINTS:
        return  # an action without a payload (POST /jobs/{id}/cancel): nothing to parse
    if request.method in JSON_BODY_METHODS and not declares_json(request):
        got = request.mimetype or "none"
        abort(415, message=f"Content-Type must be application/json (got {got}).")
    # gunicorn marks every request's input as terminated; only a chunked one has a body
    # without a Content-Length (a GET has neither, and nothing to read).
    if (request.content_length is None and request.environ.get("wsgi.input_terminated")
            and "chunked" in request.environ.get("HTTP_TRANSFER_ENCODING", "").lower()):
        _read_chunked_body(request)


def _read_chunked_body(request: flask.Request) -> None:
    """A chunked body has no Content-Length for Werkzeug to check, and Werkzeug would cut it
    at the limit and hand on a truncated document. Read one byte past the limit instead."""
    limit = request.max_content_length  # LLM_TRAIN_API_MAX_JSON_BYTES
    raw = request.environ["wsgi.input"].read(limit + 1)
    if len(raw) > limit:
        abort(413, message=f"Request body is larger than {limit} bytes.")
    request._cached_data = raw  # what Request.get_data() returns from now on


class JsonErrorsApi(Api):
    """flask-smorest's Api, whose error bodies always carry a `message` and keep the
    exception's own headers (such as `Allow` on a 405)."""

    def handle_http_exception(self, error: HTTPException):
        payload, code, headers = super().handle_http_exception(error)
        payload.setdefault("message", error.description or error.name)
        merged = {k: v for k, v in error.get_headers() if k.lower() != "content-type"}
        merged.update(headers or {})
        return payload, code, merged


def register(app: flask.Flask) -> None:
    @app.errorhandler(DomainError)
    @app.errorhandler(InvalidCursor)
    def _client_error(error: Exception):  # noqa: ANN202 - Flask handler
        response, status = _json_error(status_of(error), str(error),
                                       errors=_errors_of(error), extra=_extra_fields(error))
        retry_after = getattr(error, "retry_after", None)
        if retry_after is not None:  # a limit that frees itself: too many streams, planners
            response.headers["Retry-After"] = str(retry_after)
        return response, status

    @app.errorhandler(ClientDisconnected)
    @app.errorhandler(TimeoutError)
    @app.errorhandler(BlockingIOError)
    def _client_stalled(error: Exception):  # noqa: ANN202
        # A request body that stopped arriving: the server's read timeout on the socket
        # (LLM_TRAIN_API_REQUEST_READ_TIMEOUT_S) ran out while the view read it, which
        # Werkzeug reports as a disconnection. A client that really went away reads
        # nothing; one that stalled learns why, and the connection is not reused.
        response, status = _json_error(
            408, "The request body stopped arriving (LLM_TRAIN_API_REQUEST_READ_TIMEOUT_S); "
                 "nothing was stored.")
        response.headers["Connection"] = "close"
        return response, status

    @app.errorhandler(OperationalError)
    def _database_unavailable(error: OperationalError):  # noqa: ANN202
        # A dead pooled connection, a failover, or SQLite's busy timeout: not the client's
        # fault and not a bug; the request changed nothing and can be retried.
        app.logger.warning("database unavailable: %s", error.orig or error)
        response, status = _json_error(503, "The database is unavailable; retry shortly.")
        response.headers["Retry-After"] = "1"
        return response, status


def _errors_of(error: Exception) -> Any:
    """The body's `errors`: where in the request the problem is, field by field."""
    if isinstance(error, InvalidCursor):
        return {"query": {"cursor": [str(error)]}}
    if isinstance(error, DomainError):
        return error.errors
    return None


def _extra_fields(error: Exception) -> dict[str, Any]:
    if isinstance(error, IllegalTransition):
        return {"current_status": error.current.value, "allowed_targets": error.allowed}
    if isinstance(error, (dataset_files.OverQuota, StorageQuotaExceeded)):
        return {"reason": STORAGE_QUOTA_REASON, "usage_bytes": error.usage_bytes,
                "limit_bytes": error.limit_bytes}
    return {}


def _json_error(
    status: int, message: str, *, errors: Any = None, extra: dict[str, Any] | None = None
):
    body: dict[str, Any] = {
        "code": status,
        "status": HTTPStatus(status).phrase,
        "message": message,
    }
    if errors:
        body["errors"] = errors
    if extra:
        body.update(extra)
    return flask.jsonify(body), status
