"""Opening a new SQLite database while another process switches it to WAL mode: SQLite
answers "database is locked" at once there, without its busy handler (seen when gunicorn
workers booted together on a fresh deployment and one failed to boot), so the switch is
retried until the busy timeout."""

from __future__ import annotations

import sqlite3

import pytest

from llm_train_api.store.database import use_wal


class FlakyCursor:
    """A cursor whose journal-mode statements fail `locked` times, then work."""

    def __init__(self, locked: int, mode: str = "delete",
                 error: str = "database is locked") -> None:
        self.locked, self.mode, self.error = locked, mode, error
        self.statements: list[str] = []

    def execute(self, sql: str) -> FlakyCursor:
        self.statements.append(sql)
        if self.locked:
            self.locked -= 1
            raise sqlite3.OperationalError(self.error)
        if sql == "PRAGMA journal_mode=WAL":
            self.mode = "wal"
        return self

    def fetchone(self) -> tuple[str]:
        return (self.mode,)


def test_a_locked_switch_is_retried_until_it_succeeds():
    cur = FlakyCursor(locked=3)
    use_wal(cur, busy_timeout_s=5)
    assert cur.mode == "wal"
    assert cur.statements[-2:] == ["PRAGMA journal_mode", "PRAGMA journal_mode=WAL"]


def test_a_database_in_wal_mode_is_only_read():
    cur = FlakyCursor(locked=0, mode="wal")
    use_wal(cur, busy_timeout_s=5)
    assert cur.statements == ["PRAGMA journal_mode"]


def test_the_retry_stops_at_the_busy_timeout_and_other_errors_are_not_retried():
    with pytest.raises(sqlite3.OperationalError, match="locked"):
        use_wal(FlakyCursor(locked=10**6), busy_timeout_s=0.1)
    cur = FlakyCursor(locked=1, error="disk I/O error")
    with pytest.raises(sqlite3.OperationalError, match="disk I/O"):
        use_wal(cur, busy_timeout_s=5)
    assert len(cur.statements) == 1


def test_the_real_connect_hook_leaves_a_new_database_in_wal_mode(tmp_path):
    from llm_train_api.store.database import build_engine

    engine = build_engine(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    with engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() == 10_000
    engine.dispose()
