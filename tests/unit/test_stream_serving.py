"""The pieces that keep log streams and slow clients off the request threads, in process:
the stream caps, the check for a complete request, and the stream hub over socket pairs."""

from __future__ import annotations

import socket
import time

import pytest

from llm_train_api import create_app
from llm_train_api.api import artifacts
from llm_train_api.api.gunicorn_worker import BUFFERED_BODY_BYTES, request_is_buffered
from llm_train_api.api.stream_hub import StreamHub
from llm_train_api.api.streams import DetachedStream, StreamSlots, TooManyStreams
from llm_train_api.artifacts.logs import LogFollower
from tests.helpers.clients import admin_client


def test_slots_cap_each_owner_and_the_process():
    slots = StreamSlots(per_process=3, per_owner=2)
    a1, a2 = slots.acquire("alice"), slots.acquire("alice")
    with pytest.raises(TooManyStreams, match="LOG_STREAMS_PER_USER=2"):
        slots.acquire("alice")
    slots.acquire("bob")
    with pytest.raises(TooManyStreams, match="LOG_STREAMS_PER_PROCESS=3") as refused:
        slots.acquire("carol")
    assert refused.value.retry_after > 0
    a1()
    a1()  # a second release of the same slot counts for nothing
    assert slots.active == 2 and slots.owned_by("alice") == 1
    slots.acquire("carol")
    a2()
    assert slots.owned_by("alice") == 0


def test_no_per_owner_cap_when_zero():
    slots = StreamSlots(per_process=5, per_owner=0)
    for _ in range(5):
        slots.acquire("alice")
    with pytest.raises(TooManyStreams):
        slots.acquire("alice")


@pytest.mark.parametrize(("received", "complete"), [
    (b"GET / HTTP/1.1\r\nHost: x\r\n", False),
    (b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", True),
    (b"POST / HTTP/1.1\r\nContent-Length: 5\r\n\r\nabc", False),
    (b"POST / HTTP/1.1\r\ncontent-length:  5 \r\n\r\nabcde", True),
    (b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", True),  # streams on a thread
    (b"PUT / HTTP/1.1\r\nContent-Length: %d\r\n\r\n" % (BUFFERED_BODY_BYTES + 1), True),
    (b"GET /" + b"a" * 200_000, True),  # far too long: the parser answers the error
])
def test_a_request_goes_to_a_thread_once_it_is_all_there(received, complete):
    assert request_is_buffered(received) is complete


def test_follow_beyond_the_per_user_cap_is_429_with_retry_after(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "EXECUTOR": "none",
                      "LOG_STREAMS_PER_USER": 1})
    client = admin_client(app)
    assert client.post("/jobs", json={"job_id": "j", "model_name": "gpt-nano",
                                      "dataset": "tiny"}).status_code == 201
    held = client.get("/jobs/j/logs?follow=true", buffered=False)
    next(iter(held.response))
    refused = client.get("/jobs/j/logs?follow=true")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) > 0
    assert refused.get_json()["code"] == 429
    held.close()  # the client went away: its slot is free again
    assert artifacts.active_followers(app) == 0
    again = client.get("/jobs/j/logs?follow=true", buffered=False)
    assert again.status_code == 200
    again.close()


class Recorder:
    """A DetachedStream's job states and release, as the hub sees them."""

    def __init__(self, status: str = "running") -> None:
        self.state = (status, 1)
        self.released = 0
        self.queries = 0

    def job_states(self, ids):
        self.queries += 1
        return {job_id: self.state for job_id in ids}

    def release(self) -> None:
        self.released += 1


def detached(path, recorder, job_id="j") -> DetachedStream:
    return DetachedStream(LogFollower(path, 0, max_s=60), job_id, 1, recorder.job_states,
                          recorder.release)


def read_all(sock: socket.socket, timeout: float = 5.0) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def wait_for(condition, timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_the_hub_streams_lines_then_ends_and_closes(tmp_path):
    hub = StreamHub(poll_s=0.05)
    log = tmp_path / "log"
    log.write_bytes(b"one\n")
    recorder = Recorder()
    server, client = socket.socketpair()
    hub.adopt(server, b"HEAD\r\n\r\n", detached(log, recorder))
    client.settimeout(5)
    got = b""
    while b"data: one" not in got:
        got += client.recv(65536)
    with log.open("ab") as f:
        f.write(b"two\n")
    recorder.state = ("succeeded", 1)
    got += read_all(client)  # the hub closes the socket after `event: end`
    assert got == (b"HEAD\r\n\r\nretry: 1000\n\nid: 4\ndata: one\n\n"
                   b"id: 8\ndata: two\n\nevent: end\ndata: succeeded\n\n")
    wait_for(lambda: recorder.released == 1 and hub.open_streams == 0)
    hub.stop()


def test_the_hub_asks_for_all_jobs_at_once_and_frees_a_slot_when_the_client_leaves(tmp_path):
    hub = StreamHub(poll_s=0.05)
    recorder = Recorder()
    pairs = [socket.socketpair() for _ in range(50)]
    for n, (server, _) in enumerate(pairs):
        hub.adopt(server, b"", detached(tmp_path / "log", recorder, job_id=f"j{n % 5}"))
    wait_for(lambda: recorder.queries >= 4)
    polls = recorder.queries
    time.sleep(0.3)
    # One query per poll for all 50 streams: ~6 polls in 0.3 s, not ~300 queries.
    assert recorder.queries - polls < 20
    pairs[0][1].close()  # this client goes away
    wait_for(lambda: recorder.released == 1)
    assert hub.open_streams == 49
    hub.stop()
    assert recorder.released == 50  # stopping the hub closes every stream
    for _, client in pairs[1:]:
        client.close()


def test_the_hub_cuts_off_a_client_that_does_not_read(tmp_path):
    hub = StreamHub(poll_s=0.05, max_buffer=64 * 1024)
    log = tmp_path / "log"
    log.write_bytes(b"x" * 100 + b"\n" * 1 + (b"y" * 1000 + b"\n") * 20_000)  # 20 MB
    recorder = Recorder()
    server, client = socket.socketpair()
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    hub.adopt(server, b"", detached(log, recorder))
    wait_for(lambda: recorder.released == 1, timeout=10)
    assert hub.open_streams == 0
    client.close()
    hub.stop()


def test_the_hub_keeps_streaming_while_the_database_is_away(tmp_path):
    hub = StreamHub(poll_s=0.05)
    log = tmp_path / "log"
    log.write_bytes(b"one\n")

    def broken(ids):
        raise ConnectionError("database away")

    stream = DetachedStream(LogFollower(log, 0, max_s=60), "j", 1, broken, lambda: None)
    server, client = socket.socketpair()
    hub.adopt(server, b"", stream)
    client.settimeout(5)
    got = b""
    while b"data: one" not in got:
        got += client.recv(65536)
    assert b"event: end" not in got
    hub.stop()
    client.close()
