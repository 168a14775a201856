"""Read the rest of a request body the app answered without reading.

A 413, a 401 or a 415 is decided before the body is read (or after only part of it), and
the client is usually still sending when the answer is ready. If the server then closes a
socket with unread bytes in its receive buffer, the kernel sends a RST, which throws away
the response the client has not read yet: the client sees "connection reset" instead of
the JSON error that says what was wrong. gunicorn lingers on close for only 64 KiB, so a
few MiB over the limit is enough to lose the 413.

This middleware drains what is left of the body once the response has gone out, within a
byte and time budget (like nginx's lingering close), so a client that overshoots a limit
by a sane amount always gets its error. Draining after sending, not before, lets a client
that reads early (curl does) see the error at once and stop sending. A body too large for
the budget is not read: past that point the sender wastes the server's bandwidth and gets
the reset.

Only gunicorn's `wsgi.input` is drained: it knows where the body ends (Content-Length or
the last chunk). Werkzeug's development server hands over the raw socket for a
Content-Length body, and reading past it would block.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Callable, Iterable
from typing import Any

from gunicorn.http.errors import ParseException
from werkzeug.wsgi import ClosingIterator

DRAIN_MAX_BYTES = 16 * 1024 * 1024
DRAIN_MAX_SECONDS = 5.0
_READ_SIZE = 64 * 1024

WSGIApp = Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]]


class DrainUnreadBody:
    """WSGI middleware: once the response is sent, discard the unread rest of the body."""

    def __init__(self, app: WSGIApp, max_bytes: int = DRAIN_MAX_BYTES,
                 max_seconds: float = DRAIN_MAX_SECONDS) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_seconds = max_seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]):
        response = self.app(environ, start_response)
        sock = environ.get("gunicorn.socket")
        if sock is None or not self._worth_draining(environ):
            return response  # as is: a file response keeps gunicorn's sendfile
        # gunicorn calls close() after writing the response, before it closes the socket.
        return ClosingIterator(response, lambda: drain(
            environ["wsgi.input"], sock, self.max_bytes, self.max_seconds))

    def _worth_draining(self, environ: dict[str, Any]) -> bool:
        if environ.get("HTTP_TRANSFER_ENCODING", "").lower().endswith("chunked"):
            return True  # length unknown: drain within the budget
        try:
            declared = int(environ.get("CONTENT_LENGTH") or 0)
        except ValueError:
            return False
        # Zero for the common case, a body that was read or never sent: nothing to do.
        # Over the budget: the client is getting a reset anyway; do not read for nothing.
        return 0 < declared <= self.max_bytes


def drain(body: Any, sock: socket.socket, max_bytes: int, max_seconds: float) -> bool:
    """Read `body` to its end, giving up past `max_bytes` or `max_seconds`.

    True when the body ended within the budget. A slow client cannot hold the worker
    thread longer than `max_seconds`: each read waits only for what is left of it.
    """
    deadline = time.monotonic() + max_seconds
    prior_timeout = sock.gettimeout()
    drained = 0
    try:
        while drained <= max_bytes:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            sock.settimeout(remaining)
            chunk = body.read(_READ_SIZE)
            if not chunk:
                return True
            drained += len(chunk)
        return False
    except (OSError, ParseException):
        # Timed out, reset by the peer, or a malformed chunk: gunicorn closes the
        # connection, which is all that is left to do.
        return False
    finally:
        try:
            sock.settimeout(prior_timeout)
        except OSError:
            pass
