"""Group commit for SQLite: concurrent writers of one process share one transaction and
therefore one fsync.

SQLite has a single writer and, with durable commits, pays an fsync per transaction, so
write throughput is bounded by the disk's fsync rate however many threads wait. Here the
first writer to arrive becomes the leader: it takes every write queued so far, runs each in
its own SAVEPOINT (one writer's error undoes only that writer's statements), commits once,
and wakes the others. Writers arriving meanwhile form the next batch. Nobody is answered
before the commit that contains their write, so a 2xx still means durable.

The mutex here is the store's in-process lock: it guards only the queue, and is never held
during the transaction itself. Across processes (gunicorn workers), leaders take an
exclusive `flock` on a file beside the database before they write: the kernel wakes the
next process the moment the lock is free, where SQLite's own busy handler would sleep in
growing steps of up to 100 ms, the cause of long tails when several processes write.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy import Connection, Engine

T = TypeVar("T")


@dataclass(slots=True)
class _Write(Generic[T]):
    work: Callable[[Connection], T]
    result: Any = None
    error: BaseException | None = None
    finished: bool = False


class GroupCommitter:
    def __init__(self, engine: Engine, *, lock_path: str | None = None,
                 max_batch: int = 64) -> None:
        self._engine = engine
        self._lock_path = lock_path
        self._lock_fd: int | None = None
        self._max_batch = max_batch
        self._cond = threading.Condition(threading.Lock())
        self._queue: list[_Write[Any]] = []
        self._leading = False

    def run(self, work: Callable[[Connection], T]) -> T:
        """Run `work(conn)` inside a committed transaction and return its result."""
        mine: _Write[T] = _Write(work)
        with self._cond:
            self._queue.append(mine)
            while not mine.finished:
                if self._leading:
                    self._cond.wait()
                    continue
                self._leading = True
                batch = self._queue[: self._max_batch]
                del self._queue[: len(batch)]
                self._cond.release()
                try:
                    self._commit(batch)
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.result

    @contextlib.contextmanager
    def _process_lock(self) -> Iterator[None]:
        if self._lock_path is None:
            yield
            return
        if self._lock_fd is None:  # opened lazily: after gunicorn's fork, in this process
            self._lock_fd = os.open(self._lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(self._lock_fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(self._lock_fd, fcntl.LOCK_UN)

    def _commit(self, batch: list[_Write[Any]]) -> None:
        try:
            with self._process_lock(), self._engine.begin() as conn:
                if len(batch) == 1:
                    write = batch[0]
                    try:
                        write.result = write.work(conn)
                    except Exception as exc:
                        write.error = exc
                        raise
                else:
                    # The savepoints go straight to the driver: SQLAlchemy's nested
                    # transactions cost more than the writes they wrap.
                    raw = conn.connection.dbapi_connection
                    for write in batch:
                        raw.execute("SAVEPOINT group_write")
                        try:
                            write.result = write.work(conn)
                        except Exception as exc:  # only this writer's statements are undone
                            write.error = exc
                            raw.execute("ROLLBACK TO group_write")
                        raw.execute("RELEASE group_write")
        except Exception as exc:
            # The commit itself failed (I/O error, disk full): no write of the batch is
            # durable, so every writer that had succeeded learns it failed.
            for write in batch:
                if write.error is None:
                    write.error, write.result = exc, None
        finally:
            for write in batch:
                write.finished = True
