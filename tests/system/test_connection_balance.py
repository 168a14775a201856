"""Keep-alive connections opened in a burst spread over gunicorn's worker processes,
against a real gunicorn: each connection is traced to the process holding its socket."""

from __future__ import annotations

import http.client
import os
import time
from collections import Counter
from pathlib import Path

CONNECTIONS = 16
BURSTS = 5


def socket_inodes(pid: int) -> set[str]:
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(target[len("socket:["):-1])
    return inodes


def server_side_inodes(server_port: int) -> dict[int, str]:
    """{client port: inode of the server's socket} for connections to `server_port`."""
    found = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            local_port = int(fields[1].rsplit(":", 1)[1], 16)
            remote_port = int(fields[2].rsplit(":", 1)[1], 16)
            if local_port == server_port and remote_port and fields[9] != "0":
                found[remote_port] = fields[9]
    return found


def test_a_burst_of_keepalive_connections_spreads_over_the_processes(gunicorn_factory,
                                                                     tmp_path):
    server = gunicorn_factory(workers=2, env={
        "LLM_TRAIN_API_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}"})
    workers = server.worker_pids()
    assert len(workers) == 2
    # The server answers once one process is up; the other may still be loading the app.
    deadline = time.monotonic() + 30
    while len(burst(server, workers)) < 2:
        assert time.monotonic() < deadline, "the second process never took a connection"
    splits = [burst(server, workers) for _ in range(BURSTS)]
    # Without balancing, the process that runs first takes most of a burst: about half
    # of the bursts end 16/0 or 15/1 on two cores.
    assert all(len(split) == 2 and split[0] >= CONNECTIONS // 2 - 3 for split in splits), splits


def burst(server, workers: list[int]) -> list[int]:
    """Open CONNECTIONS keep-alive connections at once, send a request on each, and count
    how many each process holds (ascending)."""
    conns = [http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
             for _ in range(CONNECTIONS)]
    try:
        for conn in conns:  # all connected before any request: one burst
            conn.connect()
        for conn in conns:
            conn.request("GET", "/healthz")
            resp = conn.getresponse()
            resp.read()
            assert resp.status == 200
        inodes = server_side_inodes(server.port)
        holders = {pid: socket_inodes(pid) for pid in workers}
        held: Counter[int] = Counter()
        for conn in conns:
            inode = inodes[conn.sock.getsockname()[1]]
            owner = [pid for pid, mine in holders.items() if inode in mine]
            assert len(owner) == 1, (inode, holders)
            held[owner[0]] += 1
        return sorted(held.values())
    finally:
        for conn in conns:
            conn.close()
        # Until the processes have closed their ends, they still count these connections.
        deadline = time.monotonic() + 10
        while server_side_inodes(server.port) and time.monotonic() < deadline:
            time.sleep(0.01)
