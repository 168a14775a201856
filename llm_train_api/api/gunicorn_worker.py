"""gunicorn's worker and access logger for the service (named in gunicorn_conf.py).

`JsonErrorWorker` is gunicorn's gthread worker whose own error pages are the service's JSON
error shape. A request line too long (414), header fields too large or too many (431 or
400) or a malformed request never reach Flask: gunicorn answers them itself, with an HTML
page. Here gunicorn still decides the status and logs as usual; only the body it writes is
replaced by `{"code", "status", "message"}`. Server errors (5xx) are left as gunicorn
writes them.

`RedactingLogger` is gunicorn's logger with API tokens removed from every access-log field:
a token sent in a query string or a header must not land in a log file.
"""

from __future__ import annotations

import json
import re
from http import HTTPStatus
from typing import Any

from gunicorn import util
from gunicorn.glogging import Logger
from gunicorn.workers.gthread import ThreadWorker

REDACTED = "[redacted]"
# The service's tokens (store/tokens.py: "ltk_" and URL-safe base64), wherever they appear.
_TOKEN = re.compile(r"ltk_[A-Za-z0-9_-]+")
# The values of query parameters that commonly carry credentials, whatever they look like.
_SECRET_PARAM = re.compile(r"(?i)(^|[?&;])((?:access_)?token|api_key)=[^&;#\s\"]*")
# Request headers whose whole value is a credential.
_SECRET_HEADERS = ("{authorization}i", "{cookie}i", "{proxy-authorization}i")
# The longest message taken from gunicorn's parser (it may quote the offending input).
_MAX_MESSAGE = 200


def redact(text: str) -> str:
    """`text` with tokens and the values of token-like query parameters replaced."""
    text = _TOKEN.sub(REDACTED, text)
    return _SECRET_PARAM.sub(lambda m: f"{m.group(1)}{m.group(2)}={REDACTED}", text)


class RedactingLogger(Logger):
    """gunicorn's logger; every string the access log format can name is redacted."""

    def atoms(self, resp: Any, req: Any, environ: dict[str, Any],
              request_time: Any) -> dict[str, Any]:
        atoms = super().atoms(resp, req, environ, request_time)
        for name, value in atoms.items():
            if name in _SECRET_HEADERS or name.lower() in ("{http_authorization}e",
                                                           "{http_cookie}e"):
                atoms[name] = REDACTED
            elif isinstance(value, str):
                atoms[name] = redact(value)
        return atoms


class _Captured:
    """Stands in for the client socket while gunicorn writes its error page."""

    def __init__(self) -> None:
        self.data = bytearray()

    def gettimeout(self) -> float:
        return 0.0

    def setblocking(self, flag: bool) -> None:
        pass

    def sendall(self, data: bytes) -> None:
        self.data += data


def json_error(status: int, message: str) -> bytes:
    """A complete HTTP response: the service's error shape, and the connection closed."""
    try:
        reason = HTTPStatus(status).phrase
    except ValueError:
        reason = "Error"
    body = json.dumps({"code": status, "status": reason, "message": message}).encode()
    head = (f"HTTP/1.1 {status} {reason}\r\nConnection: close\r\n"
            "Content-Type: application/json\r\nX-Content-Type-Options: nosniff\r\n"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode("latin-1") + body


def _status_of(response: bytes) -> int | None:
    """The status code of an HTTP response's first line, None if there is none."""
    parts = bytes(response).split(b"\r\n", 1)[0].split(b" ", 2)
    if len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit():
        return int(parts[1])
    return None


def _message(status: int, exc: BaseException) -> str:
    if status == 414:
        return f"The request line is too long: {exc}."
    if status == 431:
        return f"The request's header fields are too large or too many: {exc}."
    detail = str(exc)
    if len(detail) > _MAX_MESSAGE:
        detail = detail[:_MAX_MESSAGE] + "..."
    return f"The request could not be parsed: {detail}" if detail else "Bad request."


class JsonErrorWorker(ThreadWorker):
    """gunicorn's gthread worker; its own 4xx answers are JSON."""

    def handle_error(self, req: Any, client: Any, addr: Any, exc: BaseException) -> None:
        captured = _Captured()
        # gunicorn picks the status, logs the warning and the access line, then writes its
        # page into `captured` instead of the socket.
        super().handle_error(req, captured, addr, exc)
        status = _status_of(captured.data)
        if status is not None and 400 <= status < 500:
            payload = json_error(status, redact(_message(status, exc)))
        else:
            payload = bytes(captured.data)
        if not payload:
            return
        try:
            util.write_nonblock(client, payload)
        except Exception:
            self.log.debug("Failed to send error message.")
