"""The shared connection table: a process steps aside only for a live, accepting peer
holding fewer connections, and never for longer than MAX_DEFER_S per connection."""

from __future__ import annotations

import multiprocessing
import time

from llm_train_api.api import connection_balance
from llm_train_api.api.connection_balance import ConnectionTable


def _peer(table: ConnectionTable, connections: int, accepting: bool, ready, done) -> None:
    table.join(1)
    table.publish(connections, accepting)
    ready.set()
    done.wait(10)
    table.leave()


def with_peer(table, connections: int, accepting: bool = True):
    ctx = multiprocessing.get_context("fork")  # the table is shared through fork, as in gunicorn
    ready, done = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_peer, args=(table, connections, accepting, ready, done))
    proc.start()
    assert ready.wait(10)
    return proc, done


def test_alone_a_process_never_defers():
    table = ConnectionTable()
    table.join(0)
    table.publish(50, True)
    assert table.fewest_elsewhere() is None
    assert not table.should_defer(50)


def test_a_process_defers_to_a_less_loaded_peer_but_not_to_an_equal_one():
    table = ConnectionTable()
    table.join(0)
    proc, done = with_peer(table, connections=3)
    try:
        assert table.fewest_elsewhere() == 3
        assert not table.should_defer(3)  # a tie: whoever runs first takes it
        assert table.should_defer(4)
    finally:
        done.set()
        proc.join(10)
    assert table.fewest_elsewhere() is None  # the peer cleared its record on leaving


def test_a_peer_that_does_not_accept_is_not_waited_for():
    table = ConnectionTable()
    table.join(0)
    proc, done = with_peer(table, connections=0, accepting=False)
    try:
        assert not table.should_defer(10)
    finally:
        done.set()
        proc.join(10)


def test_deferring_for_one_connection_is_bounded():
    table = ConnectionTable()
    table.join(0)
    proc, done = with_peer(table, connections=0)
    try:
        started = time.monotonic()
        while table.should_defer(10):  # the peer never takes it
            time.sleep(connection_balance.YIELD_S)
            assert time.monotonic() - started < 1.0
        waited = time.monotonic() - started
        assert connection_balance.MAX_DEFER_S * 0.9 <= waited < 0.5
    finally:
        done.set()
        proc.join(10)
