"""Spreading connections evenly over the gunicorn worker processes.

Every worker process waits on the same listening socket, and the kernel wakes all of them
when a connection arrives; whichever runs first takes it. Under a burst (a load balancer
or a client pool opening its keep-alive connections at once), the process that happens to
be on a CPU takes most of them and serves their requests for as long as they live, with
its few threads, while another process sits idle. Measured on two processes with 16
connections opened together: half of the bursts left one process with 15 or 16 of them,
and throughput fell to about half.

Here each process publishes how many connections it holds in a table shared by all of
them (an anonymous shared memory map that gunicorn's master creates before it forks its
first worker). A process about to accept while a live peer that is accepting holds fewer
connections steps aside for a moment instead, and the peer, woken by the same readiness,
takes the connection. Stepping aside is bounded (MAX_DEFER_S): a connection nobody else
takes is accepted anyway, so a peer that has stopped moving cannot starve the listener.
Without the table (a process not forked from a master that made one) nothing changes.
"""

from __future__ import annotations

import mmap
import os
import struct
import time

# Records: pid, heartbeat (CLOCK_MONOTONIC, shared by every process of the host),
# connections held, accepting (1 or 0).
_RECORD = struct.Struct("=qdqq")
# Slots are taken by worker age (gunicorn numbers its workers in spawning order), so two
# live workers share a slot only after this many spawns between them; sharing one costs
# balance, never correctness.
SLOTS = 256
# A record older than this is a worker that died without clearing it: ignored. A live
# worker's event loop writes its record at least once a second.
STALE_AFTER_S = 3.0
# How long a process steps aside each time it finds the listener readable, and for how
# long in all before it accepts the connection itself.
YIELD_S = 0.0005
MAX_DEFER_S = 0.02
# Deferrals further apart than this belong to different connections.
_EPISODE_GAP_S = 0.005


class ConnectionTable:
    """The shared table, and this process's slot in it."""

    def __init__(self) -> None:
        self._map = mmap.mmap(-1, _RECORD.size * SLOTS)  # MAP_SHARED: forked children share it
        self._slot = -1
        self._offset = 0
        self._deferring_since = 0.0
        self._last_deferral = 0.0

    def join(self, age: int) -> None:
        """Take this process's slot (called once, in the worker, after the fork)."""
        self._slot = age % SLOTS
        self._offset = self._slot * _RECORD.size

    def publish(self, connections: int, accepting: bool) -> None:
        if self._slot >= 0:
            _RECORD.pack_into(self._map, self._offset, os.getpid(), time.monotonic(),
                              connections, 1 if accepting else 0)

    def leave(self) -> None:
        """Clear this process's record: it no longer takes connections."""
        if self._slot >= 0:
            _RECORD.pack_into(self._map, self._offset, 0, 0.0, 0, 0)

    def fewest_elsewhere(self) -> int | None:
        """The fewest connections any other live, accepting process holds (None: none)."""
        now = time.monotonic()
        me = os.getpid()
        fewest: int | None = None
        for pid, heartbeat, connections, accepting in _RECORD.iter_unpack(self._map):
            if (pid and pid != me and accepting and now - heartbeat < STALE_AFTER_S
                    and (fewest is None or connections < fewest)):
                fewest = connections
        return fewest

    def should_defer(self, connections: int) -> bool:
        """Whether to leave the waiting connection to a less loaded peer this time.

        True at most for MAX_DEFER_S per connection: each call for the same waiting
        connection comes YIELD_S or so after the previous one.
        """
        if self._slot < 0:
            return False
        fewest = self.fewest_elsewhere()
        if fewest is None or fewest >= connections:
            return False
        now = time.monotonic()
        if now - self._last_deferral > _EPISODE_GAP_S:
            self._deferring_since = now
        self._last_deferral = now
        return now - self._deferring_since < MAX_DEFER_S
