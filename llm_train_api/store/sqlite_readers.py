"""SQLite: one read connection per thread, kept open, for the request path's point reads.

A `GET /jobs/{id}` on SQLite is a primary-key lookup of a few microseconds; checking a
connection out of SQLAlchemy's pool and back in (a reset, events, bookkeeping) costs
several times that. A thread keeps its own driver connection instead, opened through the
engine (so it gets every PRAGMA the engine's `connect` hook sets) and then detached from
the pool, so that it never holds a pool slot.

Why this stays correct:
- The connection is in autocommit (the engine's hook takes transaction control away from
  the sqlite3 module), and each statement's cursor is closed before the read returns: every
  read is its own read transaction on the latest committed WAL snapshot, so a thread sees
  what any process committed before the read began, and no snapshot stays open to hold
  back a checkpoint.
- A connection is used only by the thread that opened it and only in the process that
  opened it: one inherited through a fork is left alone (SQLite connections must not cross
  a fork) and a new one is opened.
- A driver error is wrapped as SQLAlchemy wraps it (a busy or failing database is an
  OperationalError, which the API answers with 503), and the connection it happened on is
  closed: the thread's next read opens a fresh one.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import DBAPIError

from llm_train_api.store.prepared import Prepared


class _Slot:
    """One thread's connection (a plain object, so that the registry can hold it weakly:
    a thread that ends takes its connection with it)."""

    __slots__ = ("connection", "pid", "__weakref__")

    def __init__(self) -> None:
        self.connection: Any = None
        self.pid = 0


class ThreadReaders:
    """Per-thread read connections of one SQLite engine."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._slots: weakref.WeakSet[_Slot] = weakref.WeakSet()
        self._slots_lock = threading.Lock()
        # Connections inherited through a fork: kept referenced, never used or closed here.
        self._inherited: list[Any] = []
        self._dialect = engine.dialect
        self._error = engine.dialect.loaded_dbapi.Error

    def first(self, prepared: Prepared, params: Mapping[str, Any]) -> Any:
        """Run `prepared` on this thread's connection; its first row, or None."""
        slot = self._slot()
        connection = slot.connection
        if connection is None or slot.pid != os.getpid():
            connection = self._open(slot)
        try:
            return prepared.first_on_driver(connection, params)
        except self._error as error:
            slot.connection = None
            connection.close()
            raise DBAPIError.instance(prepared.sql, prepared.arguments(params), error,
                                      self._error, dialect=self._dialect) from error

    def close(self) -> None:
        """Close every thread's connection of this process (the database is closing); a
        thread that reads afterwards opens a new one."""
        with self._slots_lock:
            slots = list(self._slots)
        pid = os.getpid()
        for slot in slots:
            connection, slot.connection = slot.connection, None
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

    def _open(self, slot: _Slot) -> Any:
        if slot.connection is not None:
            # Inherited through a fork. Closing it here could release this process's own
            # POSIX locks on the file, which SQLite tracks per file, not per connection.
            self._inherited.append(slot.connection)
        pooled = self._engine.raw_connection()
        pooled.detach()
        slot.connection = pooled.dbapi_connection
        slot.pid = os.getpid()
        return slot.connection
