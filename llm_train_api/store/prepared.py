"""Statements of the request path, compiled once and run on the driver's cursor.

SQLAlchemy's execution of a compiled Core statement (cache lookup, an execution context,
parameter processing, result metadata, events) costs several times what SQLite spends on a
primary-key lookup or a one-row insert, and a comparable share of a PostgreSQL round trip
on loopback. The statements every GET, create and status change runs are fixed, so each is
compiled once per dialect here and then executed with the DBAPI cursor of the SQLAlchemy
`Connection` it is given: the same pooled connection, the same transaction, the same SQL
text SQLAlchemy would send.

Only statements whose parameters and result columns need no type conversion qualify (every
job column is text or an integer, converted by the drivers themselves); `Prepared` checks
that when it compiles and refuses any other. A driver error is handed to the connection's
own error handling, so it surfaces exactly as from `Connection.execute`: wrapped in
SQLAlchemy's exception classes (an OperationalError is a 503, see api/errors.py), and a
dead connection is invalidated.

This reads a few of SQLAlchemy's compiler internals (`_bind_processors`, `_result_columns`)
and uses its connection's error handling (`_handle_dbapi_exception`), which is why
setup.cfg holds SQLAlchemy to one minor series (2.1); tests/unit/test_prepared.py checks
each of them against the installed release.
"""

from __future__ import annotations

from collections import namedtuple
from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect


class Prepared:
    """One statement compiled for one dialect; `first` runs it and returns its first row
    (a named tuple of the result columns, or None), `all` every row."""

    __slots__ = ("sql", "_names", "_defaults", "_row", "_dbapi_error")

    def __init__(self, stmt: Any, dialect: Dialect) -> None:
        compiled = stmt.compile(dialect=dialect)
        if compiled._bind_processors:
            raise TypeError(f"parameters need conversion: {sorted(compiled._bind_processors)}")
        if "POSTCOMPILE" in compiled.string:
            raise TypeError("expanding parameters are rendered per call; not supported here")
        columns = compiled._result_columns
        for entry in columns:
            if entry.type._cached_result_processor(dialect, None) is not None:
                raise TypeError(f"result column {entry.keyname!r} needs conversion")
        self.sql: str = compiled.string
        # Positional dialects (SQLite's qmark) take a tuple in this order; PostgreSQL's
        # pyformat takes the mapping as it is.
        self._names: tuple[str, ...] | None = (
            tuple(compiled.positiontup) if compiled.positional else None)
        # Values SQLAlchemy bound at build time (literals, constant IN lists); the caller
        # gives every other parameter, and a missing one is a KeyError, never a NULL.
        self._defaults = {name: compiled.params[name] for name, bind in compiled.binds.items()
                          if not bind.required and name in compiled.params}
        self._row = namedtuple("Row", [entry.keyname for entry in columns],  # type: ignore[misc]
                               rename=True) if columns else None
        self._dbapi_error = dialect.loaded_dbapi.Error

    def arguments(self, params: Mapping[str, Any]) -> Any:
        """The driver's parameters for `params`: a tuple in order, or the mapping."""
        merged = {**self._defaults, **params} if self._defaults else params
        return merged if self._names is None else tuple(merged[n] for n in self._names)

    def first(self, conn: Connection, params: Mapping[str, Any]) -> Any:
        """Run on `conn` (inside its transaction, if it has one); the first row or None."""
        return self._on_connection(conn, params, many=False)

    def all(self, conn: Connection, params: Mapping[str, Any]) -> list[Any]:
        """Run on `conn` (inside its transaction, if it has one); every row."""
        return self._on_connection(conn, params, many=True)

    def on_driver(self, dbapi_connection: Any, params: Mapping[str, Any], *,
                  many: bool = False) -> Any:
        """Run on a bare driver connection: the first row or None, or with `many` every
        row. A driver error propagates as the driver's own (the caller wraps it)."""
        # The cursor is closed before returning, so that no statement is left holding a
        # read snapshot.
        cursor = dbapi_connection.cursor()
        try:
            return self.on_cursor(cursor, params, many=many)
        finally:
            cursor.close()

    def on_cursor(self, cursor: Any, params: Mapping[str, Any], *, many: bool = False) -> Any:
        """Run on a driver cursor the caller keeps open between statements: only for a
        driver whose cursor holds nothing on the server once its rows are fetched
        (psycopg's client-side cursor in autocommit). The first row or None, or with
        `many` every row; a driver error propagates as the driver's own."""
        cursor.execute(self.sql, self.arguments(params))
        if self._row is None:
            return [] if many else None
        if many:
            make = self._row._make
            return [make(row) for row in cursor.fetchall()]
        row = cursor.fetchone()
        return None if row is None else self._row._make(row)

    def _on_connection(self, conn: Connection, params: Mapping[str, Any], *,
                       many: bool) -> Any:
        try:
            return self.on_driver(conn.connection.dbapi_connection, params, many=many)
        except self._dbapi_error as error:
            # Raises: wrapped as SQLAlchemy does, invalidating a dead connection.
            conn._handle_dbapi_exception(error, self.sql, self.arguments(params), None, None)
            raise


def execute_on_driver(conn: Connection, sql: str) -> None:
    """Run one statement without parameters or rows (BEGIN, COMMIT) on the driver
    connection of `conn`, a driver error wrapped as `Connection.execute` would wrap it."""
    dbapi_connection = conn.connection.dbapi_connection
    try:
        dbapi_connection.execute(sql)  # type: ignore[union-attr]
    except conn.dialect.loaded_dbapi.Error as error:
        conn._handle_dbapi_exception(error, sql, (), None, None)
        raise


class PreparedCache:
    """The prepared form of each statement, by the statement's identity: the statements of
    the store are module constants or live as long as their repository, and the cache keeps
    a reference to each so that an id is never reused."""

    def __init__(self, dialect: Dialect) -> None:
        self._dialect = dialect
        self._by_id: dict[int, tuple[Any, Prepared]] = {}

    def __call__(self, stmt: Any) -> Prepared:
        hit = self._by_id.get(id(stmt))
        if hit is None:
            hit = (stmt, Prepared(stmt, self._dialect))
            self._by_id[id(stmt)] = hit
        return hit[1]
