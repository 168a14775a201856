"""A job's training log, read while the trainer may still be appending to it: the whole
log or its last lines, and a follower that streams new lines as Server-Sent Events until
the job ends.

Plain Python over a file path: the API wires these to HTTP, and tests drive them with a
temporary file, a fake status and a fake clock.
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from llm_train_api.domain import Job, JobNotFound

READ_BLOCK = 64 * 1024
POLL_S = 0.5
KEEPALIVE_S = 5.0
RETRY_MS = 1000
# Last-Event-ID values are byte offsets; longer ones than this are not (and would not fit).
MAX_OFFSET_DIGITS = 19


class FollowerCount:
    """How many log streams are open. Each holds a server thread for up to
    LOG_FOLLOW_MAX_S, so operators size the thread pool by it."""

    def __init__(self) -> None:
        self._count = 0
        self._lock = threading.Lock()

    @property
    def active(self) -> int:
        return self._count

    def add(self, delta: int) -> None:
        with self._lock:
            self._count += delta


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


def final_status_of(get_job: Callable[[str], Job], job: Job) -> Callable[[], str | None]:
    """For `follow`: a callable giving the job's final status, `deleted`, or None while the
    job may still log. `get_job` reads the job afresh (JobNotFound once it is gone)."""

    def final_status() -> str | None:
        try:
            current = get_job(job.id)
        except JobNotFound:
            return "deleted"
        if current.revision.created_us != job.revision.created_us:
            return "deleted"  # deleted and re-created under the same id: another log
        return current.status.value if current.status.is_final else None

    return final_status


def follow(
    path: Path,
    offset: int,
    *,
    final_status: Callable[[], str | None],
    max_s: float,
    followers: FollowerCount,
    poll_s: float = POLL_S,
    keepalive_s: float = KEEPALIVE_S,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Iterator[bytes]:
    """The log from byte `offset` on, as Server-Sent Events, until the job ends.

    `retry:` first; then each complete line as an event (see sse_event), a keepalive
    comment when nothing was sent for `keepalive_s`, and `event: end` with the final status
    once `final_status()` reports one and the lines written before it are out. After
    `max_s` seconds, `event: timeout` instead: the client reconnects with Last-Event-ID.
    A truncated log is started over. The stream counts in `followers` while it is open,
    also when the client goes away mid-stream (GeneratorExit).
    """
    followers.add(+1)
    f: BinaryIO | None = None
    partial = b""
    deadline = clock() + max_s
    last_sent = clock()
    try:
        yield f"retry: {RETRY_MS}\n\n".encode()
        while True:
            final = final_status()  # before reading: lines logged before the end are sent
            if f is None:
                try:
                    f = open(path, "rb")  # noqa: SIM115 - closed in finally
                except FileNotFoundError:
                    pass
            if f is not None:
                if os.fstat(f.fileno()).st_size < offset:
                    offset, partial = 0, b""  # the log was truncated: start over
                f.seek(offset)
                while block := f.read(READ_BLOCK):
                    data = partial + block
                    cut = data.rfind(b"\n") + 1
                    partial = data[cut:]
                    start = offset - (len(data) - len(block))
                    offset += len(block)
                    out = []
                    pos = 0
                    for line in data[:cut].split(b"\n")[:-1]:
                        pos += len(line) + 1
                        out.append(sse_event(line, start + pos))
                    if out:
                        last_sent = clock()
                        yield b"".join(out)
            if final is not None:
                if partial:  # the last line had no newline: the job is over, send it
                    yield sse_event(partial, offset)
                yield f"event: end\ndata: {final}\n\n".encode()
                return
            now = clock()
            if now >= deadline:
                yield b"event: timeout\ndata: reconnect\n\n"
                return
            if now - last_sent >= keepalive_s:
                last_sent = now
                yield b": keepalive\n\n"
            sleep(poll_s)
    finally:  # also on GeneratorExit, when the client went away
        if f is not None:
            f.close()
        followers.add(-1)
