"""The PostgreSQL engines: transactions on one pool, single statements on an autocommit
pool whose connections never switch mode, and the durability setting on both."""

from __future__ import annotations

import pytest
from sqlalchemy import func, select, text

from llm_train_api.store.database import Database

pytestmark = pytest.mark.postgres


@pytest.mark.parametrize(("durability", "expected"), [("full", "on"), ("relaxed", "off")])
def test_both_pools_follow_the_durability_setting(pg_url, durability, expected):
    database = Database.from_url(pg_url, durability=durability)
    try:
        with database.engine.connect() as conn:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == expected
        with database.reading() as conn:
            assert conn.execute(text("SHOW synchronous_commit")).scalar() == expected
            # The test's own connection option (its schema) is kept beside ours.
            assert conn.execute(text("SHOW search_path")).scalar().startswith("t_")
    finally:
        database.close()


def test_single_statements_run_in_autocommit_with_no_mode_switch_or_reset(pg_url,
                                                                          monkeypatch):
    import psycopg

    database = Database.from_url(pg_url)
    calls: list[str] = []
    for name in ("rollback", "_set_autocommit"):
        original = getattr(psycopg.Connection, name)
        monkeypatch.setattr(psycopg.Connection, name, lambda self, *a, _o=original, _n=name:
                            (calls.append(_n), _o(self, *a))[1])
    try:
        with database.reading() as conn:
            dbapi = conn.connection.dbapi_connection
            assert dbapi.autocommit is True
        calls.clear()
        probe = select(func.txid_current_if_assigned())
        for _ in range(3):  # the request path: prepared statements on the thread's connection
            assert database.read_first(probe, {})[0] is None  # no transaction was opened
        assert calls == []
        assert database._threads.open_count() == 1
        with database.reading() as conn:  # the pool opens another (set once, on connect)
            pooled = conn.connection.dbapi_connection
        calls.clear()
        with database.reading() as conn:  # and reuses it as it is
            assert conn.connection.dbapi_connection is pooled
            assert pooled.autocommit is True
        assert calls == []
        with database.engine.connect() as conn:  # the transactional pool is untouched
            assert conn.connection.dbapi_connection.autocommit is False
    finally:
        database.close()
