"""Group commit for SQLite: concurrent writers of one process share one transaction and
therefore one fsync.

SQLite has a single writer and, with durable commits, pays an fsync per transaction, so
write throughput is bounded by the disk's fsync rate however many threads wait. Here the
first writer to arrive becomes the leader: once it holds the process lock (below), it takes
every write queued by then, runs each in its own SAVEPOINT (one writer's error undoes only
that writer's statements), commits once, and wakes the others. Writers arriving meanwhile
form the next batch. BEGIN, the savepoints and COMMIT go to the driver directly, on a
connection the committer keeps: SQLAlchemy's transaction machinery would cost more than the
one-row writes it wraps, while the lock is held. Nobody is answered
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

from llm_train_api.store.prepared import execute_on_driver

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
        # The leader's connection, kept between batches: only a leader uses it, and there
        # is one leader at a time. Opened in the process that writes (after gunicorn's fork).
        self._conn: Connection | None = None
        self._conn_pid = 0
        self._inherited: list[Connection] = []
        # Transactions committed: how many batches the writes of this process formed.
        self.commits = 0

    def _connection(self) -> Connection:
        conn = self._conn
        if conn is not None and self._conn_pid != os.getpid():
            # Inherited through a fork: the parent's, never to be used or closed here.
            self._inherited.append(conn)
            conn = None
        if conn is None or conn.closed or conn.invalidated:
            if conn is not None and not conn.closed:
                conn.close()
            conn = self._conn = self._engine.connect()
            self._conn_pid = os.getpid()
        return conn

    def close(self) -> None:
        """Return the leader's connection (the database is being closed)."""
        with self._cond:
            if self._conn is not None and self._conn_pid == os.getpid():
                self._conn.close()
            self._conn = None

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
                self._cond.release()
                try:
                    self._lead()
                finally:
                    self._cond.acquire()
                    self._leading = False
                    self._cond.notify_all()
        if mine.error is not None:
            raise mine.error
        return mine.result

    def _lead(self) -> None:
        """Commit one batch. The batch is taken once the process lock is held, so that
        the writes that arrived while another process held it join this commit."""
        try:
            with self._process_lock():
                self._commit(self._take_batch())
        except Exception as exc:  # the lock itself failed: the queued writes cannot run
            for write in self._take_batch():
                write.error, write.finished = exc, True

    def _take_batch(self) -> list[_Write[Any]]:
        with self._cond:
            batch = self._queue[: self._max_batch]
            del self._queue[: len(batch)]
        return batch

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
            conn = self._connection()
            # BEGIN and COMMIT go straight to the driver: SQLAlchemy's transaction objects
            # and events cost more than the one-row writes they would wrap, and the
            # process lock is held meanwhile.
            execute_on_driver(conn, "BEGIN IMMEDIATE")
            try:
                self._run_writes(conn, batch)
                if conn.in_transaction():
                    # A write ran through SQLAlchemy, which began a transaction of its
                    # own inside ours (sending nothing, see database.py): it ends it.
                    conn.commit()
                else:
                    execute_on_driver(conn, "COMMIT")
            except BaseException:
                self._roll_back(conn)
                raise
            self.commits += 1
        except Exception as exc:
            # The commit itself failed (I/O error, disk full): no write of the batch is
            # durable, so every writer that had succeeded learns it failed.
            for write in batch:
                if write.error is None:
                    write.error, write.result = exc, None
        finally:
            for write in batch:
                write.finished = True

    @staticmethod
    def _run_writes(conn: Connection, batch: list[_Write[Any]]) -> None:
        if len(batch) == 1:
            write = batch[0]
            try:
                write.result = write.work(conn)
            except Exception as exc:
                write.error = exc
                raise
            return
        # Each write in its own savepoint, also straight on the driver.
        for write in batch:
            execute_on_driver(conn, "SAVEPOINT group_write")
            try:
                write.result = write.work(conn)
            except Exception as exc:  # only this writer's statements are undone
                write.error = exc
                execute_on_driver(conn, "ROLLBACK TO group_write")
            execute_on_driver(conn, "RELEASE group_write")

    def _roll_back(self, conn: Connection) -> None:
        """End a failed batch's transaction; a connection that cannot is dropped."""
        try:
            if conn.in_transaction():
                conn.rollback()
            elif conn.connection.dbapi_connection.in_transaction:  # type: ignore[union-attr]
                execute_on_driver(conn, "ROLLBACK")
        except Exception:
            conn.invalidate()
            conn.close()
            self._conn = None
