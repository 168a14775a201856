"""Typed exceptions for every way a call can fail, all under one base, :class:`ApiError`.

The service answers every error with one JSON shape, ``{code, status, message, errors?}``
(plus extra fields on some, such as ``current_status`` on an illegal transition). The
client maps the HTTP status onto a subclass so that callers can ``except NotFound`` rather
than compare numbers, and keeps the rest of the body for those who need it.
"""

from __future__ import annotations

import re
from typing import Any


class ApiError(Exception):
    """A call that did not succeed.

    ``status`` is the HTTP status (0 when no answer came back at all), ``code`` a stable
    snake_case name for it (``not_found``, ``conflict``, ...), ``message`` the server's
    explanation, ``errors`` its per-field messages (400/422), ``details`` any other fields
    of the error body, and ``retry_after`` the seconds the server asked us to wait.
    """

    status: int = 0
    code: str = "error"

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        errors: Any = None,
        details: dict[str, Any] | None = None,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if status is not None:
            self.status = status
        if code is not None:
            self.code = code
        self.errors = errors
        self.details = details or {}
        self.retry_after = retry_after

    def __str__(self) -> str:
        """One line, as the CLI prints it: ``404 not_found: Job 'x' not found.``"""
        if self.status:
            return f"{self.status} {self.code}: {self.message}"
        return f"{self.code}: {self.message}"


class ApiConnectionError(ApiError):
    """No HTTP answer: refused, reset, DNS failure or timeout (after the retries)."""

    code = "connection_error"


class ApiTimeout(ApiConnectionError):
    """The server accepted the connection but did not answer within the read timeout."""

    code = "timeout"


class UnexpectedResponse(ApiError):
    """A 2xx whose body is not what the endpoint documents (a proxy's page, say)."""

    code = "unexpected_response"


class BadRequest(ApiError):
    status, code = 400, "bad_request"


class Unauthorized(ApiError):
    status, code = 401, "unauthorized"


class Forbidden(ApiError):
    status, code = 403, "forbidden"


class NotFound(ApiError):
    status, code = 404, "not_found"


class MethodNotAllowed(ApiError):
    status, code = 405, "method_not_allowed"


class Conflict(ApiError):
    """409: a job id taken by a different body, an illegal transition (``details`` then
    has ``current_status`` and ``allowed_targets``), a dataset in use."""

    status, code = 409, "conflict"


class PreconditionFailed(ApiError):
    """412: ``If-Match`` named an ETag the job no longer has: someone changed it."""

    status, code = 412, "precondition_failed"


class PayloadTooLarge(ApiError):
    status, code = 413, "payload_too_large"


class UnsupportedMediaType(ApiError):
    status, code = 415, "unsupported_media_type"


class ValidationError(ApiError):
    """422: ``errors`` maps each location and field to its messages, e.g.
    ``{"json": {"priority": ["Must be ..."]}}``; :attr:`field_errors` flattens it."""

    status, code = 422, "validation_error"

    @property
    def field_errors(self) -> dict[str, list[str]]:
        """``{"json.priority": ["Must be ..."]}``: every leaf message under a dotted path."""
        out: dict[str, list[str]] = {}

        def walk(prefix: str, value: Any) -> None:
            if isinstance(value, dict):
                for key, item in value.items():
                    walk(f"{prefix}.{key}" if prefix else str(key), item)
            elif isinstance(value, list) and all(isinstance(v, str) for v in value):
                out.setdefault(prefix or "_", []).extend(value)
            elif isinstance(value, list):
                for index, item in enumerate(value):
                    walk(f"{prefix}.{index}", item)
            else:
                out.setdefault(prefix or "_", []).append(str(value))

        walk("", self.errors or {})
        return out


class TooManyRequests(ApiError):
    """429: a per-user quota (queued jobs, datasets) or a rate limit."""

    status, code = 429, "too_many_requests"


class ServerError(ApiError):
    """5xx: the service failed; a bug report is in order unless it is a 503."""

    status, code = 500, "server_error"


class BadGateway(ServerError):
    status, code = 502, "bad_gateway"


class ServiceUnavailable(ServerError):
    """503: the database is unavailable or the service is starting; retried by the client
    before it reaches you."""

    status, code = 503, "service_unavailable"


class GatewayTimeout(ServerError):
    status, code = 504, "gateway_timeout"


_BY_STATUS: dict[int, type[ApiError]] = {
    cls.status: cls
    for cls in (BadRequest, Unauthorized, Forbidden, NotFound, MethodNotAllowed, Conflict,
                PreconditionFailed, PayloadTooLarge, UnsupportedMediaType, ValidationError,
                TooManyRequests, ServerError, BadGateway, ServiceUnavailable, GatewayTimeout)
}


def _snake(phrase: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", phrase.lower()).strip("_") or "error"


def error_for(
    status: int,
    body: Any,
    *,
    fallback_message: str = "",
    retry_after: float | None = None,
) -> ApiError:
    """The exception for an error response with HTTP `status` and decoded JSON `body`
    (anything else, such as a proxy's HTML page, gives just the fallback message)."""
    cls = _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ApiError
    message = fallback_message or f"HTTP {status}"
    errors = None
    details: dict[str, Any] = {}
    code = None
    if isinstance(body, dict):
        message = str(body.get("message") or message)
        errors = body.get("errors")
        details = {k: v for k, v in body.items()
                   if k not in ("code", "status", "message", "errors")}
    if cls.status != status:  # a status without its own class: name it after its phrase
        phrase = body.get("status") if isinstance(body, dict) else None
        code = _snake(phrase) if isinstance(phrase, str) else f"http_{status}"
    return cls(message, status=status, code=code, errors=errors, details=details,
               retry_after=retry_after)
