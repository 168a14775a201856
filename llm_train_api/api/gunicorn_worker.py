"""The service's gunicorn worker (named in gunicorn_conf.py): gunicorn's gthread worker,
changed so that neither slow clients nor long-lived responses hold its few threads.

gthread gives each request a thread from the moment its first byte arrives until its
response is written. A client sending one header byte per second, or a log follow stream
open for a minute, therefore holds a thread, and a handful of them stall every request of
the process, `/healthz` included. Here:

- **Only whole requests hold a thread.** When a request starts arriving, a thread takes
  what is there without waiting; that is almost always the whole head (and a body of up
  to BUFFERED_BODY_BYTES), and the thread serves it at once, as in gthread. Otherwise the
  connection goes back to the event loop, which reads the rest without blocking and hands
  the request to a thread once it is whole. A client that has not sent it within
  REQUEST_HEAD_TIMEOUT_S gets a 408 and is closed, at no thread's cost. Larger bodies
  (uploads) stream on the thread, each read bounded by REQUEST_READ_TIMEOUT_S (by the
  kernel: SO_RCVTIMEO), as is each write of a response to a client that does not read.
- **Streams leave the thread.** A view that answers with a detachable stream (see
  api.streams) gets its response head written by the StreamHub of this process, which
  serves every such stream from one thread (api.stream_hub); the request thread moves on.
- **Connections spread evenly over the processes.** A process steps aside for a moment
  when a peer holds fewer connections (api.connection_balance), so a burst of keep-alive
  connections does not all land on whichever process runs first.
- **gunicorn's own error pages are JSON.** A request line too long (414), header fields too
  large or too many (431 or 400) or a malformed request never reach Flask: gunicorn answers
  them itself. gunicorn still decides the status and logs as usual; only the body it
  writes is replaced by the service's `{"code", "status", "message"}`.

TLS connections (gunicorn's `certfile`) keep gthread's own handling; the service expects
TLS to end at a proxy in front (docs/deployment.md).

This builds on the gthread worker of gunicorn 27 (its event loop's
`wait_for_and_dispatch_events`, `set_accept_enabled`, `murder_pending` and keep-alive
bookkeeping), which earlier releases do not have: setup.cfg holds gunicorn to 27.x.
"""

from __future__ import annotations

import errno
import json
import re
import resource
import selectors
import socket
import struct
import time
from collections import deque
from datetime import datetime
from functools import partial
from http import HTTPStatus
from typing import Any

from gunicorn import http, util
from gunicorn.http import wsgi
from gunicorn.workers.gthread import TConn, ThreadWorker

from llm_train_api.api import connection_balance
from llm_train_api.api.connection_balance import ConnectionTable
from llm_train_api.api.gunicorn_logging import redact
from llm_train_api.api.stream_hub import StreamHub
from llm_train_api.api.streams import DETACHED_STREAM_KEY, STREAM_HUB_KEY, DetachedStream
from llm_train_api.config import Settings

# A body up to this size is read with its head in the event loop (every JSON request).
BUFFERED_BODY_BYTES = 1024 * 1024
# A request head longer than this goes to gunicorn's parser, which answers 431 or 414.
_MAX_HEAD_BYTES = 128 * 1024
_RECV_BYTES = 64 * 1024
# The longest message taken from gunicorn's parser (it may quote the offending input).
_MAX_MESSAGE = 200
_CONTENT_LENGTH = re.compile(rb"\r\ncontent-length:[ \t]*(\d{1,19})[ \t]*\r\n", re.IGNORECASE)
_CHUNKED = re.compile(rb"\r\ntransfer-encoding:", re.IGNORECASE)
# What a request thread returns when the socket now belongs to the stream hub.
_DETACHED = object()
# What reading a request came to; _WAIT from a thread sends the connection back to wait
# for the rest in the event loop.
_WAIT, _READY, _CLOSED = object(), object(), object()


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


def request_is_buffered(data: bytes | bytearray) -> bool:
    """Whether `data`, the bytes received so far on a connection, holds enough for a
    thread: a whole request head and, unless the body is chunked or larger than
    BUFFERED_BODY_BYTES (it then streams on the thread), the whole body. A head too long
    to be valid counts as enough: gunicorn's parser then answers the error."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        return len(data) > _MAX_HEAD_BYTES
    head = b"\r\n" + bytes(data[:end + 2])
    if _CHUNKED.search(head):
        return True
    match = _CONTENT_LENGTH.search(head)
    length = int(match.group(1)) if match else 0
    return length > BUFFERED_BODY_BYTES or len(data) >= end + 4 + length


class _Conn(TConn):
    """gthread's connection, with the bytes read so far in the event loop."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.received = bytearray()
        self.read_deadline = 0.0
        self.reading = False  # waiting in the event loop for more of its request
        self.complete = False  # the event loop has read the whole request


class ServiceWorker(ThreadWorker):
    """gunicorn's gthread worker; see the module's docstring for what it changes."""

    # Made by the master with its first worker, before the fork, so that every worker it
    # forks shares it.
    connection_table: ConnectionTable | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)  # in gunicorn's master, before the fork
        if ServiceWorker.connection_table is None:
            ServiceWorker.connection_table = ConnectionTable()

    def init_process(self) -> None:
        settings = Settings.load()
        self.head_timeout = settings.REQUEST_HEAD_TIMEOUT_S
        self.read_timeout = settings.REQUEST_READ_TIMEOUT_S
        self.stream_hub = StreamHub()
        _raise_open_files_limit()
        # (deadline, connection) in the order reading began: the deadlines ascend.
        self.reading_conns: deque[tuple[float, _Conn]] = deque()
        self.balance = ServiceWorker.connection_table or ConnectionTable()
        self.balance.join(self.age)
        # Asked on every request; gunicorn's Config answers it with two setting lookups.
        # A reload (HUP) starts new workers, so the answer holds for this process's life.
        self.tls = bool(self.cfg.is_ssl)
        super().init_process()  # loads the app, then runs the loop until the worker stops

    # ------------------------------------------------------------ the event loop
    def wait_for_and_dispatch_events(self, timeout: float) -> None:
        self.balance.publish(self.nr_conns, self._accepting)
        super().wait_for_and_dispatch_events(timeout)

    def set_accept_enabled(self, enabled: bool) -> None:
        super().set_accept_enabled(enabled)
        self.balance.publish(self.nr_conns, enabled)

    def accept(self, listener: socket.socket) -> None:
        if self.balance.should_defer(self.nr_conns):
            # A peer that holds fewer connections was woken too: let it take this one.
            time.sleep(connection_balance.YIELD_S)
            return
        try:
            client_sock, client_addr = listener.accept()
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                # Out of file descriptors: the connection waits in the backlog; pause a
                # moment rather than spin on a listener that stays readable.
                self.log.warning("Out of file descriptors; raise `ulimit -n` or lower "
                                 "LLM_TRAIN_API_WORKER_CONNECTIONS.")
                time.sleep(0.05)
            elif e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        self.balance.publish(self.nr_conns, self._accepting)
        _bound_blocking_io(client_sock, self.read_timeout)
        conn = _Conn(self.cfg, client_sock, client_addr, listener.getsockname())
        if self.tls:
            self.enqueue_req(conn)  # the TLS handshake happens on the thread, as in gthread
        else:
            self._start_request(conn)

    def on_client_socket_readable(self, conn: _Conn, client: socket.socket) -> None:
        """A kept-alive connection has its next request coming."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        if self.tls:
            self.enqueue_req(conn)
        else:
            self._start_request(conn)

    def _start_request(self, conn: _Conn) -> None:
        """A thread takes what has arrived of the request (usually all of it: it does the
        reading as in gthread, and this loop stays free); when that is not the whole
        request, it hands the connection back to wait here (_wait_for_request)."""
        conn.read_deadline = time.monotonic() + self.head_timeout
        self.enqueue_req(conn)

    def _wait_for_request(self, conn: _Conn) -> None:
        if conn.read_deadline <= time.monotonic():
            # The start of a pipelined request, read ahead with the previous one.
            conn.read_deadline = time.monotonic() + self.head_timeout
        conn.sock.setblocking(False)
        conn.reading = True
        self.reading_conns.append((conn.read_deadline, conn))
        self.poller.register(conn.sock, selectors.EVENT_READ,
                             partial(self._on_request_bytes, conn))

    def _on_request_bytes(self, conn: _Conn, client: socket.socket) -> None:
        """More of a slow client's request: read here until it is whole."""
        outcome = _receive(conn)
        if outcome is _WAIT:
            return
        self._stop_reading(conn)  # before a thread or a close takes the socket
        if outcome is _CLOSED:
            self.nr_conns -= 1
            conn.close()
        else:
            conn.complete = True
            self.enqueue_req(conn)

    def _stop_reading(self, conn: _Conn) -> None:
        conn.reading = False
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError):
            pass

    def murder_pending(self) -> None:
        """Close connections whose request did not arrive in time (gthread's own pending
        connections too)."""
        super().murder_pending()
        now = time.monotonic()
        while self.reading_conns and self.reading_conns[0][0] <= now:
            deadline, conn = self.reading_conns.popleft()
            if not conn.reading or conn.read_deadline != deadline:
                continue  # handed to a thread, or closed, meanwhile
            self._stop_reading(conn)
            self.nr_conns -= 1
            if conn.received:  # a client that started a request gets told why it ends
                try:
                    util.write_nonblock(conn.sock, json_error(
                        408, f"The request was not received within "
                             f"{self.head_timeout:g} seconds."))
                except OSError:
                    pass
            conn.close()

    def finish_request(self, conn: _Conn, fs: Any) -> None:
        result = None if fs.cancelled() or fs.exception() is not None else fs.result()
        if result is _DETACHED:
            self.nr_conns -= 1  # the stream hub owns the socket now
        elif result is _WAIT:
            if self.alive:
                self._wait_for_request(conn)
            else:
                self.nr_conns -= 1
                conn.close()
        else:
            super().finish_request(conn, fs)

    def run(self) -> None:
        try:
            super().run()
        finally:
            self.balance.leave()
            self.stream_hub.stop()

    # ------------------------------------------------------------ on a thread
    def handle(self, conn: _Conn) -> Any:
        if self.tls:
            return super().handle(conn)
        req = None
        try:
            if not conn.complete:
                outcome = _take_request(conn)
                if outcome is not _READY:
                    return _WAIT if outcome is _WAIT else False
            conn.complete = False
            conn.sock.setblocking(True)
            conn.init()
            if conn.received:
                conn.parser.unreader.unread(bytes(conn.received))
                conn.received = bytearray()
            req = next(conn.parser)
            if not req:
                return False
            return self._keepalive_after(conn, self.handle_request(req, conn))
        except (TimeoutError, BlockingIOError):
            # The kernel's SO_RCVTIMEO / SO_SNDTIMEO ran out (see _bound_blocking_io).
            self.log.debug("Closing a connection whose client stalled for %ss.",
                           self.read_timeout)
        except http.errors.NoMoreData as e:
            self.log.debug("Ignored premature client disconnection. %s", e)
        except StopIteration as e:
            self.log.debug("Closing connection. %s", e)
        except OSError as e:
            if e.errno not in (errno.EPIPE, errno.ECONNRESET, errno.ENOTCONN):
                self.log.exception("Socket error processing request.")
        except Exception as e:
            self.handle_error(req, conn.sock, conn.client, e)
        return False

    def _keepalive_after(self, conn: _Conn, keepalive: Any) -> Any:
        if keepalive is _DETACHED:
            return _DETACHED
        return super()._keepalive_after(conn, keepalive)

    def handle_request(self, req: Any, conn: _Conn) -> Any:
        """gthread's handle_request, plus: a response the view made detachable is handed
        to the stream hub instead of being written here."""
        environ: dict[str, Any] = {}
        resp = None
        try:
            self.cfg.pre_request(self, req)
            request_start = datetime.now()
            resp, environ = wsgi.create(req, conn.sock, conn.client, conn.server, self.cfg)
            environ["wsgi.multithread"] = True
            environ[STREAM_HUB_KEY] = self.stream_hub
            self.nr += 1
            if self.nr >= self.max_requests:
                if self.alive:
                    self.log.info("Autorestarting worker after current request.")
                    self.alive = False
                resp.force_close()
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            elif len(self.keepalived_conns) >= self.max_keepalived:
                resp.force_close()

            respiter = self.wsgi(environ, resp.start_response)
            detached: DetachedStream | None = environ.pop(DETACHED_STREAM_KEY, None)
            try:
                if detached is not None and resp.status_code == 200:
                    head = _detached_head(resp)
                    self.stream_hub.adopt(conn.sock, head, detached)
                    detached = None
                    return _DETACHED
                if isinstance(respiter, environ["wsgi.file_wrapper"]):
                    resp.write_file(respiter)
                else:
                    for item in respiter:
                        resp.write(item)
                resp.close()
            finally:
                if detached is not None:
                    detached.discard()
                self.log.access(resp, req, environ, datetime.now() - request_start)
                if hasattr(respiter, "close"):
                    respiter.close()
            if resp.should_close():
                self.log.debug("Closing connection.")
                return False
        except OSError:
            raise
        except (Exception, SystemExit):
            if resp and resp.headers_sent:
                # A response already begun cannot become a 500: cut the connection.
                self.log.exception("Error handling request")
                util.close_graceful(conn.sock)
                raise StopIteration() from None
            raise
        finally:
            try:
                self.cfg.post_request(self, req, environ, resp)
            except Exception:
                self.log.exception("Exception in post_request hook")
        return True

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


def _receive(conn: _Conn) -> object:
    """Read what the client sent, without waiting: _READY once the whole request (as
    request_is_buffered counts it) is here, _CLOSED when the client went away, else
    _WAIT."""
    try:
        data = conn.sock.recv(_RECV_BYTES, socket.MSG_DONTWAIT)
    except BlockingIOError:
        return _WAIT
    except OSError:
        data = b""
    if not data:  # the client closed the connection, or reset it
        return _CLOSED
    conn.received += data
    return _READY if request_is_buffered(conn.received) else _WAIT


def _take_request(conn: _Conn) -> object:
    """On a thread: what _receive says, counting first the bytes the previous request's
    parsing read ahead (a pipelined request may already be whole)."""
    if conn.parser is not None:
        ahead = conn.parser.unreader.take_buffered()
        if ahead:
            conn.received[:0] = ahead
    if conn.received and request_is_buffered(conn.received):
        return _READY
    return _receive(conn)


def _bound_blocking_io(sock: socket.socket, seconds: float) -> None:
    """Make every blocking read and write on `sock` give up after `seconds` without data
    moving. The kernel keeps the bound (SO_RCVTIMEO, SO_SNDTIMEO), so the sends and
    receives of a request thread cost no extra poll each, as Python's own socket timeouts
    would; a call that runs out fails with EAGAIN."""
    whole = int(seconds)
    bound = struct.pack("ll", whole, int((seconds - whole) * 1_000_000))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, bound)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, bound)


def _raise_open_files_limit() -> None:
    """Every open stream and waiting client is a file descriptor: take the hard limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        except (ValueError, OSError):
            pass


def _detached_head(resp: Any) -> bytes:
    """The response head gunicorn would write, for a body that ends when the connection
    closes: no chunked framing, `Connection: close`."""
    resp.chunked = False
    resp.force_close()
    lines = resp.default_headers()
    lines.extend(f"{name}: {value}\r\n" for name, value in resp.headers)
    resp.headers_sent = True
    return ("".join(lines) + "\r\n").encode("latin-1")
