"""One connection per request thread, kept open, for the request path's single statements.

A `GET /jobs/{id}` is one primary-key lookup, a page of `GET /jobs` one index range
read, a create or a status change one statement (on PostgreSQL a data-modifying CTE, see
database.py). Checking a connection out of
SQLAlchemy's pool and back in (a reset, events, bookkeeping) costs several times what
SQLite spends on such a lookup, and a noticeable share of a PostgreSQL round trip on
loopback. A thread keeps its own driver connection instead, opened through the engine (so
it gets what the engine's `connect` hook sets: SQLite's PRAGMAs, PostgreSQL's autocommit
and the URL's options) and then detached from the pool, so that it never holds a slot.

Which statements run here: on SQLite the single-statement reads only (writes go through
the group committer); on PostgreSQL those reads and the single-statement writes, all of
them in autocommit. Multi-statement transactions keep the pool.

Why this stays correct:
- The connection is in autocommit, so every statement is its own transaction and a read
  sees what any process committed before it began. On SQLite each statement's cursor is
  closed before it returns, so that no read snapshot stays open to hold back a WAL
  checkpoint; on PostgreSQL the thread reuses one cursor, which holds nothing on the
  server once the statement's rows are fetched.
- A connection is used only by the thread that opened it and only in the process that
  opened it: one inherited through a fork is left alone (neither SQLite nor libpq
  connections may cross a fork) and a new one is opened.
- A driver error is wrapped as SQLAlchemy wraps it (a busy, failing or unreachable
  database is an OperationalError, which the API answers with 503). On SQLite the
  connection it happened on is closed; on PostgreSQL only a connection that is broken
  (a refused statement leaves an autocommit connection as it was), and the thread's next
  statement opens a fresh one.
- A broken connection means the others are likely broken too (the server restarted, a
  proxy dropped its sessions): every thread replaces a connection opened before that
  before its next statement, as SQLAlchemy invalidates a whole pool on a disconnect, so
  a restart costs one failed request per process rather than one per thread.
- A connection older than the pool's recycle time is replaced before its next statement,
  as the pool would replace it (PostgreSQL: 30 minutes).
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from llm_train_api.store.prepared import Prepared


class _Slot:
    """One thread's connection (a plain object, so that the registry can hold it weakly:
    a thread that ends takes its connection with it)."""

    __slots__ = ("connection", "cursor", "pid", "opened", "generation", "__weakref__")

    def __init__(self) -> None:
        self.connection: Any = None
        self.cursor: Any = None  # PostgreSQL: one cursor for all of the thread's statements
        self.pid = 0
        self.opened = 0.0
        self.generation = 0


class ThreadConnections:
    """Per-thread autocommit connections of one engine (SQLite, or PostgreSQL's
    autocommit engine)."""

    def __init__(self, engine: Engine, *, max_age_s: float = -1) -> None:
        self._engine = engine
        # Like the pool's recycle: <= 0 keeps a connection for as long as it works.
        self._max_age_s = max_age_s
        # SQLite closes a connection on any error, and each statement's cursor (an open
        # one would hold its read snapshot); PostgreSQL closes only a broken connection,
        # and keeps one cursor per connection (a client-side cursor holds nothing on the
        # server once its rows are fetched).
        self._sqlite = engine.dialect.name == "sqlite"
        self._local = threading.local()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._slots_lock = threading.Lock()
        # Connections inherited through a fork: kept referenced, never used or closed here.
        self._inherited: list[Any] = []
        self._dialect = engine.dialect
        self._error = engine.dialect.loaded_dbapi.Error
        # Bumped when a connection is found broken: older connections are replaced.
        self._generation = 0

    def first(self, prepared: Prepared, params: Mapping[str, Any]) -> Any:
        """Run `prepared` on this thread's connection; its first row, or None."""
        return self._run(prepared, params, many=False)

    def all(self, prepared: Prepared, params: Mapping[str, Any]) -> list[Any]:
        """Run `prepared` on this thread's connection; every row."""
        return self._run(prepared, params, many=True)

    def _run(self, prepared: Prepared, params: Mapping[str, Any], *, many: bool) -> Any:
        slot = self._slot()
        connection = slot.connection
        if (connection is None or slot.pid != os.getpid()
                or slot.generation != self._generation
                or (self._max_age_s > 0 and time.monotonic() - slot.opened > self._max_age_s)):
            connection = self._open(slot)
        try:
            if slot.cursor is not None:
                return prepared.on_cursor(slot.cursor, params, many=many)
            return prepared.on_driver(connection, params, many=many)
        except self._error as error:
            broken = self._broken(error, connection)
            if broken:
                self._generation += 1
            if broken or self._sqlite:
                slot.connection = slot.cursor = None
                connection.close()
            raise DBAPIError.instance(prepared.sql, prepared.arguments(params), error,
                                      self._error, dialect=self._dialect,
                                      connection_invalidated=broken) from error

    def close(self) -> None:
        """Close every thread's connection of this process (the database is closing); a
        thread that reads afterwards opens a new one."""
        with self._slots_lock:
            slots = list(self._slots)
        pid = os.getpid()
        for slot in slots:
            connection, slot.connection, slot.cursor = slot.connection, None, None
            if connection is not None and slot.pid == pid:
                connection.close()

    def open_count(self) -> int:
        """Connections this process holds open: what tests and diagnostics look at."""
        pid = os.getpid()
        with self._slots_lock:
            return sum(1 for s in self._slots if s.connection is not None and s.pid == pid)

    def _slot(self) -> _Slot:
        try:
            return self._local.slot
        except AttributeError:
            slot = self._local.slot = _Slot()
            with self._slots_lock:
                self._slots.add(slot)
            return slot

    def _broken(self, error: Exception, connection: Any) -> bool:
        return bool(getattr(connection, "broken", False) or getattr(connection, "closed", False)
                    or self._dialect.is_disconnect(error, connection, None))

    def _open(self, slot: _Slot) -> Any:
        old = slot.connection
        if old is not None and slot.pid != os.getpid():
            # Inherited through a fork. Closing it here could release this process's own
            # POSIX locks on an SQLite file (SQLite tracks them per file, not per
            # connection), or end the parent's PostgreSQL session.
            self._inherited.append(old)
        elif old is not None:
            old.close()  # past its age, or opened before another was found broken
        slot.connection = slot.cursor = None
        pooled = self._engine.raw_connection()
        pooled.detach()
        slot.connection = pooled.dbapi_connection
        slot.cursor = None if self._sqlite else slot.connection.cursor()
        slot.pid = os.getpid()
        slot.opened = time.monotonic()
        slot.generation = self._generation
        return slot.connection
