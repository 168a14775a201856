"""The connector: engines tuned per backend, and the two paths every statement takes.

Correctness across gunicorn workers and hosts comes from the database, never from Python:
the repositories (jobs.py, queue.py, tokens.py) write with single conditional statements,
and each write that changes a job commits together with its event row
(`Database.write_with_event`).

Writes go through `Database.write`: on SQLite, concurrent writers of one process share one
transaction and one fsync (group_commit.py), under a lock that guards only the committer's
queue and is never held while the database works; on PostgreSQL each write is its own
transaction. Reads go through `Database.reading`: single statements, or reads that tolerate
a change between two statements, so they skip BEGIN/ROLLBACK round trips.
"""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

from sqlalchemy import (
    BigInteger,
    Connection,
    Engine,
    Integer,
    String,
    Text,
    bindparam,
    create_engine,
    event,
    func,
    insert,
    literal,
    null,
    select,
)
from sqlalchemy.engine import make_url

from llm_train_api.store import migrations, outbox
from llm_train_api.store.group_commit import GroupCommitter
from llm_train_api.store.prepared import PreparedCache, execute_on_driver
from llm_train_api.store.tables import job_events
from llm_train_api.store.thread_connections import ThreadConnections

T = TypeVar("T")

NOTIFY_CHANNEL = "llm_train_api_jobs"
_NOTIFY = select(func.pg_notify(bindparam("channel"), bindparam("job_id")))
# PostgreSQL advisory locks held until the end of the transaction: one database-wide key,
# or a key and an owner (its hashtext()), so that different owners do not wait on each other.
_PG_LOCK = select(func.pg_advisory_xact_lock(bindparam("key", type_=BigInteger)))
_PG_OWNER_LOCK = select(func.pg_advisory_xact_lock(
    bindparam("key", type_=Integer), func.hashtext(bindparam("owner", type_=String))))
_EVENT_COLUMNS = ["job_id", "at_us", "kind", "from_status", "to_status", "actor", "message",
                  "attempt", "job_created_us"]
# Every column named, so that the statement compiles once whatever the call (prepared.py).
INSERT_EVENT = job_events.insert().values({name: bindparam(name) for name in _EVENT_COLUMNS})


def sqlite_url_for(path: str) -> str:
    return f"sqlite:///{path}"


def build_engine(
    url: str, *, durability: str = "full", pool_size: int = 5, busy_timeout_s: float = 10.0
) -> Engine:
    """An engine tuned per backend: WAL + explicit BEGIN on SQLite, pooled psycopg on PG."""
    parsed = make_url(url)
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        return _sqlite_engine(url, durability=durability, busy_timeout_s=busy_timeout_s)
    if backend == "postgresql":
        if parsed.get_driver_name() != "psycopg":
            parsed = parsed.set(drivername="postgresql+psycopg")
        # No pool_pre_ping: it costs a round trip per request. A connection found dead is
        # invalidated by SQLAlchemy (and its whole pool with it), so only the request that
        # met it fails, with a 503 (see api/errors.py), and the client may retry.
        if durability == "relaxed":
            # A connection option rather than a SET after connecting, so that every pool
            # built from this URL (autocommit_engine) has it too.
            options = parsed.query.get("options", "")
            parsed = parsed.update_query_dict(
                {"options": f"{options} -c synchronous_commit=off".strip()})
        engine = create_engine(
            parsed, pool_size=pool_size, max_overflow=pool_size, pool_recycle=1800,
        )
        return engine
    raise ValueError(
        f"unsupported database URL {parsed.render_as_string()!r}: use sqlite or postgresql"
    )


def autocommit_engine(engine: Engine) -> Engine:
    """A second pool on the same PostgreSQL database whose connections are opened in
    autocommit and stay so: the path of single-statement reads and writes.

    An engine derived with `execution_options(isolation_level="AUTOCOMMIT")` shares the
    transactional pool and switches each connection to autocommit when it is checked out
    and back when it is returned: driver calls, and a reset, on every request. Here the
    mode is set once per connection; with no transaction ever left open, returning a
    connection needs no rollback either.
    """
    pool = engine.pool
    return create_engine(
        engine.url, isolation_level="AUTOCOMMIT", pool_reset_on_return=None,
        pool_size=pool.size(), max_overflow=pool._max_overflow,  # type: ignore[attr-defined]
        pool_recycle=pool._recycle,  # type: ignore[attr-defined]
    )


def use_wal(cur: Any, busy_timeout_s: float) -> None:
    """Put the database in WAL mode (it stays so, in the file) unless it already is.

    Switching a new database's journal mode needs an exclusive lock, and SQLite answers
    "database is locked" at once, without its busy handler, when another connection holds
    a lock meanwhile: gunicorn workers starting together on a new database (one of them
    migrating it) would fail to boot at random. So the switch is retried until the busy
    timeout; a database already in WAL mode is only read.
    """
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            if str(cur.execute("PRAGMA journal_mode").fetchone()[0]).lower() != "wal":
                cur.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.02)


def _sqlite_engine(url: str, *, durability: str, busy_timeout_s: float) -> Engine:
    engine = create_engine(
        url, connect_args={"timeout": busy_timeout_s, "check_same_thread": False}
    )
    synchronous = "FULL" if durability == "full" else "NORMAL"

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module so that BEGIN is ours.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
        use_wal(cur, busy_timeout_s)
        cur.execute(f"PRAGMA synchronous={synchronous}")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # Writers take the write lock up front: a deferred transaction that later upgrades
        # can fail with SQLITE_BUSY without waiting, which would surface as a 500. Readers
        # open no transaction at all: each SELECT reads one consistent WAL snapshot.
        # The group committer opens its transactions on the driver itself (group_commit.py);
        # SQLAlchemy beginning inside one of them has nothing left to send.
        if (not conn.get_execution_options().get("llm_read_only")
                and not conn.connection.dbapi_connection.in_transaction):
            execute_on_driver(conn, "BEGIN IMMEDIATE")

    return engine


class Database:
    """One database: its engine, the write and read paths, and what every table shares."""

    def __init__(self, engine: Engine) -> None:
        self.engine = engine
        self.dialect: str = engine.dialect.name
        self.is_postgresql = self.dialect == "postgresql"
        # Autocommit on PostgreSQL; on SQLite, reads are marked so that no BEGIN is sent.
        self._read_engine = autocommit_engine(engine) if self.is_postgresql else engine
        self._group: GroupCommitter | None = None
        # The request path's single statements run on per-thread connections
        # (thread_connections.py): on SQLite the reads, on PostgreSQL also the
        # single-statement writes, all in autocommit.
        self._threads: ThreadConnections | None = None
        if self.is_postgresql:
            self._threads = ThreadConnections(
                self._read_engine, max_age_s=self._read_engine.pool._recycle)  # type: ignore[attr-defined]
        if self.dialect == "sqlite":
            database = engine.url.database
            on_disk = database and database != ":memory:" and not database.startswith("file:")
            # A new connection to an in-memory database would be a different database.
            self._threads = ThreadConnections(engine) if on_disk else None
            self._group = GroupCommitter(
                engine, lock_path=f"{database}-writelock" if on_disk else None
            )
        # Statements wrapped by `write_with_event`, keyed by the identity of the statement:
        # those are built once and live as long as their repository.
        self._event_stmts: dict[tuple[int, str, bool], Any] = {}
        # The request path's statements, compiled once (prepared.py).
        self.prepared = PreparedCache(engine.dialect)

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        durability: str = "full",
        pool_size: int = 5,
        busy_timeout_s: float = 10.0,
        migrate: bool = True,
    ) -> Database:
        engine = build_engine(url, durability=durability, pool_size=pool_size,
                              busy_timeout_s=busy_timeout_s)
        database = cls(engine)
        if migrate:
            database.migrate()
        return database

    @property
    def read_engine(self) -> Engine:
        """The engine of `reading()` and single-statement writes: on PostgreSQL its own
        autocommit pool (`autocommit_engine`), on SQLite the one engine."""
        return self._read_engine

    def migrate(self) -> int:
        return migrations.migrate(self.engine)

    def close(self) -> None:
        if self._group is not None:
            self._group.close()
        if self._threads is not None:
            self._threads.close()
        if self._read_engine is not self.engine:
            self._read_engine.dispose()
        self.engine.dispose()

    def ping(self) -> int:
        """Schema version, read through a real round trip: the readiness probe."""
        with self.reading() as conn:
            return migrations.current_version(conn)

    # ------------------------------------------------------------------ transactions
    def write(self, work: Callable[[Connection], T]) -> T:
        """Run `work` in a committed write transaction (grouped with others' on SQLite)."""
        if self._group is not None:
            return self._group.run(work)
        with self.engine.begin() as conn:
            return work(conn)

    @contextlib.contextmanager
    def reading(self) -> Iterator[Connection]:
        """A connection for reads: no transaction round trips, never the write lock."""
        with self._read_engine.connect() as conn:
            yield conn.execution_options(llm_read_only=True)

    def read_first(self, stmt: Any, params: dict[str, Any]) -> Any:
        """The first row of one read statement (None when there is none), run prepared on
        this thread's own connection (thread_connections.py)."""
        if self._threads is not None:
            return self._threads.first(self.prepared(stmt), params)
        with self.reading() as conn:
            return self.prepared(stmt).first(conn, params)

    def read_all(self, stmt: Any, params: dict[str, Any]) -> list[Any]:
        """Every row of one read statement, run prepared on this thread's own connection."""
        if self._threads is not None:
            return self._threads.all(self.prepared(stmt), params)
        with self.reading() as conn:
            return self.prepared(stmt).all(conn, params)

    def lock(self, conn: Connection, key: int, owner: str | None = None) -> None:
        """PostgreSQL: serialise with every transaction that takes the same lock (per owner
        when given). SQLite needs none: its write lock already serialises writers."""
        if not self.is_postgresql:
            return
        if owner is None:
            self.prepared(_PG_LOCK).first(conn, {"key": key})
        else:
            self.prepared(_PG_OWNER_LOCK).first(conn, {"key": key, "owner": owner})

    # ------------------------------------------------------------------ events
    def write_with_event(
        self,
        stmt: Any,
        params: dict[str, Any],
        kind: str,
        at_us: int,
        actor: str | None,
        message: str | None,
        *,
        prelude: Callable[[Connection], None] | None = None,
        webhooks: bool = False,
    ) -> Any:
        """Run a write whose RETURNING row, if any, gets its event row atomically with it.

        On PostgreSQL both go into one statement (a data-modifying CTE) run in autocommit:
        one round trip and one implicit transaction instead of BEGIN, two statements and
        COMMIT. SQLite has no data-modifying CTEs and no network, so there it is two
        statements in one BEGIN IMMEDIATE transaction. A `prelude` (a lock, a quota check
        that may raise) runs first in the same transaction, on both. Every statement runs
        prepared (prepared.py).

        `webhooks`: the write may end a job's run (a final or paused status), so the same
        transaction also queues its webhook deliveries (store/outbox.py).
        """
        if self.is_postgresql and prelude is None:
            event_params = {"ev_at": at_us, "ev_actor": actor, "ev_message": message}
            return self._threads.first(  # type: ignore[union-attr]
                self.prepared(self._with_event(stmt, kind, webhooks)),
                {**params, **event_params})
        if self.is_postgresql:
            # With a prelude: the prelude and the same one statement, in one transaction.
            event_params = {"ev_at": at_us, "ev_actor": actor, "ev_message": message}
            together = self.prepared(self._with_event(stmt, kind, webhooks))

            def locked(conn: Connection) -> Any:
                prelude(conn)
                return together.first(conn, {**params, **event_params})

            return self.write(locked)
        write_stmt = self.prepared(stmt)
        insert_event = self.prepared(INSERT_EVENT)
        insert_deliveries = self.prepared(outbox.INSERT_DELIVERIES) if webhooks else None

        def work(conn: Connection) -> Any:
            if prelude is not None:
                prelude(conn)
            row = write_stmt.first(conn, params)
            if row is not None:
                previous = getattr(row, "previous_status", None)
                insert_event.first(conn, {
                    "job_id": row.id, "at_us": at_us, "kind": kind, "from_status": previous,
                    "to_status": row.status, "actor": actor, "message": message,
                    "attempt": row.attempts, "job_created_us": row.created_us,
                })
                deliveries = outbox.delivery_params(row, at_us) if webhooks else None
                if deliveries is not None:
                    insert_deliveries.first(conn, deliveries)
            return row

        return self.write(work)

    def _with_event(self, stmt: Any, kind: str, webhooks: bool = False) -> Any:
        """`stmt` wrapped so that each row it returns also inserts a job_events row (and,
        with `webhooks`, its webhook deliveries)."""
        key = (id(stmt), kind, webhooks)
        wrapped = self._event_stmts.get(key)
        if wrapped is None:
            changed = stmt.cte("changed")
            previous = changed.c.previous_status if "previous_status" in changed.c else null()
            event_row = insert(job_events).from_select(
                _EVENT_COLUMNS,
                select(changed.c.id, bindparam("ev_at", type_=BigInteger),
                       literal(kind, String), previous, changed.c.status,
                       bindparam("ev_actor", type_=String), bindparam("ev_message", type_=Text),
                       changed.c.attempts, changed.c.created_us),
            ).cte("event")
            columns = list(changed.c)
            if kind == "created":  # wake idle workers now rather than at their next poll
                columns.append(func.pg_notify(NOTIFY_CHANNEL, changed.c.id))
            wrapped = select(*columns).add_cte(event_row)
            if webhooks:
                wrapped = wrapped.add_cte(
                    outbox.deliveries_cte(changed, bindparam("ev_at", type_=BigInteger)))
            self._event_stmts[key] = wrapped
        return wrapped

    # ------------------------------------------------------------------ notifications
    def notify(self, job_id: str, conn: Connection | None = None) -> None:
        """Wake the workers now (PostgreSQL), inside `conn`'s transaction when given; on
        SQLite they poll."""
        if not self.is_postgresql:
            return
        if conn is not None:
            conn.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL, "job_id": job_id})
            return
        with self._read_engine.connect() as own:
            own.execute(_NOTIFY, {"channel": NOTIFY_CHANNEL, "job_id": job_id})

    @contextlib.contextmanager
    def listen(self) -> Iterator[Iterator[Any]]:
        """PostgreSQL: iterate over notifications about new, cancelled and deleted jobs."""
        if not self.is_postgresql:
            raise RuntimeError("LISTEN needs PostgreSQL")
        with self.engine.connect() as conn:
            raw = conn.connection.driver_connection
            raw.rollback()
            raw.autocommit = True
            raw.execute(f"LISTEN {NOTIFY_CHANNEL}")

            def notifications() -> Iterator[Any]:
                while True:
                    yield from raw.notifies(timeout=1.0)

            stream = notifications()
            try:
                yield stream
            finally:
                # A caller that stops iterating leaves psycopg's `notifies()` suspended,
                # holding the connection's lock: close it first, or UNLISTEN waits forever.
                stream.close()
                raw.execute(f"UNLISTEN {NOTIFY_CHANNEL}")
                raw.autocommit = False
