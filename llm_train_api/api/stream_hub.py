"""One thread per server process that serves every detached log stream of that process.

A request thread that answers `GET /jobs/{id}/logs?follow=true` under the service's
gunicorn worker only writes nothing: the worker hands the socket, the response head and
the stream's LogFollower to this hub and takes the next request. The hub then, in one
thread, for thousands of streams:

- every POLL_S, asks the database once for the states of all the jobs it streams (one
  query, however many streams), then steps each stream's follower: new log lines, a
  keepalive, `event: end` when the job has ended, `event: timeout` after
  LOG_FOLLOW_MAX_S;
- writes without ever blocking: what a client does not take stays in the stream's
  buffer and goes out when the socket is writable; a client that lets more than
  MAX_BUFFER_BYTES pile up is cut off, as is one whose socket breaks;
- notices a client that went away (its socket reads end-of-file) and frees its slot at
  once, not at the next write.

The response is `Connection: close` and ends when the hub closes the socket, so it needs
no chunked framing. A database error while polling does not end any stream: lines keep
flowing, and the stream ends by its time limit if the database stays away.
"""

from __future__ import annotations

import logging
import os
import selectors
import socket
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field

from llm_train_api.api.streams import DetachedStream, JobStates
from llm_train_api.artifacts.logs import POLL_S, final_status

# What a stream may have waiting for a client that does not read before it is cut off.
MAX_BUFFER_BYTES = 4 * 1024 * 1024
_SEND_BYTES = 256 * 1024
_log = logging.getLogger("llm_train_api.stream_hub")


@dataclass(eq=False)
class _Served:
    sock: socket.socket
    stream: DetachedStream
    buffer: bytearray = field(default_factory=bytearray)
    final: str | None = None
    closed: bool = False


class StreamHub:
    """Serves detached streams from one daemon thread, started on the first adoption."""

    def __init__(self, *, poll_s: float = POLL_S,
                 max_buffer: int = MAX_BUFFER_BYTES) -> None:
        self.poll_s = poll_s
        self.max_buffer = max_buffer
        self._selector = selectors.DefaultSelector()
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        self._selector.register(self._wake_r, selectors.EVENT_READ, None)
        self._lock = threading.Lock()
        self._incoming: list[_Served] = []
        self._served: set[_Served] = set()
        self._thread: threading.Thread | None = None
        self._stopping = False

    @property
    def open_streams(self) -> int:
        return len(self._served) + len(self._incoming)

    def adopt(self, sock: socket.socket, head: bytes, stream: DetachedStream) -> None:
        """Take over `sock` (the caller must not touch it again) and serve `stream` on it,
        after `head`, the HTTP response head. Safe from any thread."""
        served = _Served(sock, stream, bytearray(head + stream.follower.opening()))
        with self._lock:
            self._incoming.append(served)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="stream-hub",
                                                daemon=True)
                self._thread.start()
        self._wake()

    def stop(self) -> None:
        """Close every stream (their clients reconnect elsewhere) and end the thread."""
        self._stopping = True
        self._wake()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _wake(self) -> None:
        try:
            os.write(self._wake_w, b"\0")
        except BlockingIOError:
            pass  # a wake-up is pending anyway

    # ------------------------------------------------------------------ the thread
    def _run(self) -> None:
        next_poll = time.monotonic()
        while not self._stopping:
            timeout = max(0.0, next_poll - time.monotonic())
            for key, mask in self._selector.select(timeout):
                if key.data is None:
                    self._take_incoming()
                else:
                    self._on_socket(key.data, mask)
            if time.monotonic() >= next_poll:
                self._poll()
                next_poll = time.monotonic() + self.poll_s
        for served in list(self._served):
            self._close(served)
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for served in incoming:
            served.stream.discard()
            served.sock.close()

    def _take_incoming(self) -> None:
        try:
            while os.read(self._wake_r, 4096):
                pass
        except BlockingIOError:
            pass
        with self._lock:
            incoming, self._incoming = self._incoming, []
        for served in incoming:
            served.sock.setblocking(False)
            self._served.add(served)
            self._selector.register(served.sock, selectors.EVENT_READ, served)
            self._flush(served)

    def _on_socket(self, served: _Served, mask: int) -> None:
        if mask & selectors.EVENT_READ:
            try:
                data = served.sock.recv(4096)
            except BlockingIOError:
                data = b"-"
            except OSError:
                data = b""
            if not data:  # the client went away (or reset the connection)
                self._close(served)
                return
        if mask & selectors.EVENT_WRITE:
            self._flush(served)
            if not served.buffer and served.stream.follower.more and not served.closed:
                self._step(served)  # a backlog: go on as fast as the client reads

    def _poll(self) -> None:
        by_reader: dict[JobStates, set[str]] = defaultdict(set)
        for served in self._served:
            by_reader[served.stream.job_states].add(served.stream.job_id)
        states: dict[str, tuple[str, int]] = {}
        known = True
        for read_states, ids in by_reader.items():
            try:
                states.update(read_states(ids))
            except Exception:  # noqa: BLE001 - the database is away: keep streaming
                _log.warning("log streams: could not read job states", exc_info=True)
                known = False
        for served in list(self._served):
            stream = served.stream
            if known:
                served.final = final_status(states.get(stream.job_id), stream.created_us)
            self._step(served)

    def _step(self, served: _Served) -> None:
        follower = served.stream.follower
        served.buffer += follower.step(served.final)
        while follower.more and len(served.buffer) < self.max_buffer:
            served.buffer += follower.step(served.final)
        self._flush(served)

    def _flush(self, served: _Served) -> None:
        if served.closed:
            return
        while served.buffer:
            try:
                sent = served.sock.send(memoryview(served.buffer)[:_SEND_BYTES])
            except BlockingIOError:
                break
            except OSError:
                self._close(served)
                return
            del served.buffer[:sent]
        if served.buffer:
            if len(served.buffer) > self.max_buffer:
                self._close(served)  # the client does not read: cut it off
                return
            self._selector.modify(served.sock, selectors.EVENT_READ | selectors.EVENT_WRITE,
                                  served)
        elif served.stream.follower.done:
            self._close(served)
        else:
            self._selector.modify(served.sock, selectors.EVENT_READ, served)

    def _close(self, served: _Served) -> None:
        if served.closed:
            return
        served.closed = True
        self._served.discard(served)
        try:
            self._selector.unregister(served.sock)
        except (KeyError, ValueError):
            pass
        served.sock.close()
        served.stream.discard()
