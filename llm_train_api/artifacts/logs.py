"""A job's training log, read while the trainer may still be appending to it: the whole
log or its last lines, and a follower that streams new lines as Server-Sent Events until
the job ends.

Plain Python over a file path: the API wires these to HTTP, and tests drive them with a
temporary file, a fake status and a fake clock.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llm_train_api.domain import Job, JobNotFound, JobStatus

READ_BLOCK = 64 * 1024
POLL_S = 0.5
KEEPALIVE_S = 5.0
RETRY_MS = 1000
# Last-Event-ID values are byte offsets; longer ones than this are not (and would not fit).
MAX_OFFSET_DIGITS = 19
# The most log bytes one step of a follower reads: a huge backlog goes out in pieces.
STEP_BYTES = 1024 * 1024


def read_range(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of `f` (a snapshot of a growing file), then close it."""
    try:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            block = f.read(min(READ_BLOCK, remaining))
            if not block:
                break
            remaining -= len(block)
            yield block
    finally:
        f.close()


def tail_offset(f: BinaryIO, size: int, n: int) -> int:
    """Where the last `n` lines of the first `size` bytes of `f` start. Reads backwards in
    blocks, so a huge log is never read whole."""
    if size == 0:
        return 0
    f.seek(size - 1)
    end = size - 1 if f.read(1) == b"\n" else size  # a final newline ends the last line
    found = 0
    pos = end
    while pos > 0:
        start = max(0, pos - READ_BLOCK)
        f.seek(start)
        block = f.read(pos - start)
        idx = len(block)
        while (idx := block.rfind(b"\n", 0, idx)) >= 0:
            found += 1
            if found == n:
                return start + idx + 1
        pos = start
    return 0


@dataclass(frozen=True)
class LogSnapshot:
    """The log as it is now (or its last lines): an open file and the byte range to send.
    `chunks()` closes the file once read, so a response can stream it."""

    file: BinaryIO
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start

    def chunks(self) -> Iterator[bytes]:
        return read_range(self.file, self.start, self.end)


def snapshot(path: Path, tail: int | None = None) -> LogSnapshot | None:
    """The log's current bytes, or only its last `tail` lines; None before it exists."""
    try:
        f = open(path, "rb")  # noqa: SIM115 - closed by LogSnapshot.chunks()
    except FileNotFoundError:
        return None
    size = os.fstat(f.fileno()).st_size
    start = tail_offset(f, size, tail) if tail is not None else 0
    return LogSnapshot(f, start, size)


def resume_offset(path: Path, last_event_id: str | None, tail: int | None) -> int:
    """Where a follower starts: after the last event it saw (ids are byte offsets), else at
    the last `tail` lines, else at the beginning. An id that is not an offset is ignored."""
    last_id = (last_event_id or "").strip()
    if last_id.isdigit() and len(last_id) <= MAX_OFFSET_DIGITS:
        return int(last_id)
    if tail is None:
        return 0
    try:
        with open(path, "rb") as f:
            return tail_offset(f, os.fstat(f.fileno()).st_size, tail)
    except FileNotFoundError:
        return 0


def sse_event(data: bytes, offset: int) -> bytes:
    """One log line as an event, with the byte offset after it as its id."""
    # SSE treats CR, LF and CRLF alike as line ends: each piece becomes a data field and
    # the client joins them with "\n", so a progress bar's \r cannot break the framing.
    text = data.decode("utf-8", errors="replace")
    if text.endswith("\r"):  # a CRLF line whose LF was the split point: no empty last piece
        text = text[:-1]
    pieces = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body = "".join(f"data: {piece}\n" for piece in pieces)
    return f"id: {offset}\n{body}\n".encode()


def final_status(state: tuple[str, int] | None, created_us: int) -> str | None:
    """What ends a follow stream: the job's final status, `deleted`, or None while it may
    still log. `state` is the job's (status, created_us) now, None when it is gone."""
    if state is None:
        return "deleted"
    status, current_created_us = state
    if current_created_us != created_us:
        return "deleted"  # deleted and re-created under the same id: another log
    return status if JobStatus(status).is_final else None


def final_status_of(get_job: Callable[[str], Job], job: Job) -> Callable[[], str | None]:
    """For `follow`: a callable giving the job's final status, `deleted`, or None while the
    job may still log. `get_job` reads the job afresh (JobNotFound once it is gone)."""

    def read() -> str | None:
        try:
            current = get_job(job.id)
        except JobNotFound:
            return final_status(None, job.revision.created_us)
        return final_status((current.status.value, current.revision.created_us),
                            job.revision.created_us)

    return read


class LogFollower:
    """One follow stream's state, advanced a step at a time by whoever serves it.

    A step reads what the trainer appended since the last one and turns complete lines
    into Server-Sent Events (see sse_event). It is told the job's final status as read
    *before* the step, so the lines logged before the job ended are always sent before
    `event: end`. When nothing was sent for `keepalive_s`, a step gives a keepalive
    comment; after `max_s`, `event: timeout` (the client reconnects with Last-Event-ID).
    A truncated log is started over. A step reads at most STEP_BYTES; `more` then says
    that the next step has lines waiting and should not wait for the poll interval.

    The same engine serves a thread that sleeps between steps (`follow`) and a server
    loop that steps thousands of streams in one thread (api.stream_hub).
    """

    def __init__(self, path: Path, offset: int, *, max_s: float,
                 keepalive_s: float = KEEPALIVE_S,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.path = path
        self.offset = offset
        self.done = False
        self.more = False
        self._clock = clock
        self._deadline = clock() + max_s
        self._keepalive_s = keepalive_s
        self._last_sent = clock()
        self._partial = b""
        self._final: str | None = None
        self._file: BinaryIO | None = None

    @staticmethod
    def opening() -> bytes:
        """What a stream starts with: how long a client waits before it reconnects."""
        return f"retry: {RETRY_MS}\n\n".encode()

    def step(self, final: str | None) -> bytes:
        """The stream's next bytes, given the job's final status (None while it runs)."""
        if self.done:
            return b""
        if self._final is None:
            self._final = final
        out = self._read_lines()
        now = self._clock()
        if out:
            self._last_sent = now
        if self.more:
            return out
        if self._final is not None:
            if self._partial:  # the last line had no newline: the job is over, send it
                out += sse_event(self._partial, self.offset)
            self.done = True
            return out + f"event: end\ndata: {self._final}\n\n".encode()
        if now >= self._deadline:
            self.done = True
            return out + b"event: timeout\ndata: reconnect\n\n"
        if not out and now - self._last_sent >= self._keepalive_s:
            self._last_sent = now
            return b": keepalive\n\n"
        return out

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def _read_lines(self) -> bytes:
        self.more = False
        if self._file is None:
            try:
                self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()
            except FileNotFoundError:
                return b""
        if os.fstat(self._file.fileno()).st_size < self.offset:
            self.offset, self._partial = 0, b""  # the log was truncated: start over
        self._file.seek(self.offset)
        out: list[bytes] = []
        budget = STEP_BYTES
        while budget > 0 and (block := self._file.read(min(READ_BLOCK, budget))):
            budget -= len(block)
            data = self._partial + block
            cut = data.rfind(b"\n") + 1
            self._partial = data[cut:]
            start = self.offset - (len(data) - len(block))
            self.offset += len(block)
            pos = 0
            for line in data[:cut].split(b"\n")[:-1]:
                pos += len(line) + 1
                out.append(sse_event(line, start + pos))
        self.more = budget <= 0
        return b"".join(out)


def follow(
    path: Path,
    offset: int,
    *,
    final_status: Callable[[], str | None],
    max_s: float,
    poll_s: float = POLL_S,
    keepalive_s: float = KEEPALIVE_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
    on_close: Callable[[], None] | None = None,
) -> Iterator[bytes]:
    """The log from byte `offset` on, as Server-Sent Events, until the job ends: a
    LogFollower stepped by this thread, which sleeps `poll_s` between steps.

    `on_close` runs when the stream ends, also when the client goes away mid-stream
    (GeneratorExit): the caller's count of open streams.
    """
    follower = LogFollower(path, offset, max_s=max_s, keepalive_s=keepalive_s, clock=clock)
    try:
        yield follower.opening()
        while True:
            out = follower.step(final_status())  # before reading: see LogFollower
            if out:
                yield out
            if follower.done:
                return
            if not follower.more:
                sleep(poll_s)
    finally:  # also on GeneratorExit, when the client went away
        follower.close()
        if on_close is not None:
            on_close()
