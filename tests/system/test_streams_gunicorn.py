"""Log streams and slow clients against a real gunicorn running the service's worker class:
neither holds one of the few request threads, so health checks and job reads are answered
while they are open, and the caps and timeouts hold across real sockets."""

from __future__ import annotations

import json
import socket
import time
from datetime import datetime
from pathlib import Path

import pytest

from llm_train_api.artifacts.jobs import job_dir_of
from llm_train_api.domain import to_epoch_us

# One process with one thread: anything that held the thread would stall every request.
ONE_THREAD = {"LLM_TRAIN_API_THREADS": "1", "LLM_TRAIN_API_REQUEST_HEAD_TIMEOUT_S": "2"}


def new_job(server, job_id: str) -> Path:
    """A queued job, and the path of its log (written by the test, as a trainer would)."""
    resp = server.http.post(server.url + "/jobs", json={
        "job_id": job_id, "model_name": "gpt-nano", "dataset": "tiny",
        "hyperparameters": {}})
    assert resp.status_code == 201, resp.text
    created_us = to_epoch_us(datetime.fromisoformat(resp.json()["created_at"]))
    folder = job_dir_of(Path(server.env["LLM_TRAIN_API_INSTANCE_PATH"]) / "data", job_id,
                        created_us)
    folder.mkdir(parents=True, exist_ok=True)
    return folder / "train.log"


def open_stream(server, job_id: str, last_event_id: str | None = None) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    head = (f"GET /jobs/{job_id}/logs?follow=true HTTP/1.1\r\nHost: t\r\n"
            f"Authorization: Bearer {server.token}\r\n")
    if last_event_id:
        head += f"Last-Event-ID: {last_event_id}\r\n"
    sock.sendall((head + "\r\n").encode())
    return sock


def read_until(sock: socket.socket, marker: bytes, timeout: float = 15.0) -> bytes:
    """Everything the server sent until `marker` appeared, or the socket closed."""
    data = b""
    deadline = time.monotonic() + timeout
    while marker not in data and time.monotonic() < deadline:
        sock.settimeout(max(0.1, deadline - time.monotonic()))
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            break
        if not chunk:
            break
        data += chunk
    return data


def read_to_end(sock: socket.socket, timeout: float = 15.0) -> bytes:
    return read_until(sock, b"\0never\0", timeout)


def quick_get(server, path: str) -> int:
    """A fresh connection's GET; fails the test if it is not answered within 5 s."""
    with server.session() as s:
        return s.get(server.url + path, timeout=5).status_code


def test_open_streams_leave_the_only_thread_free_and_all_get_the_lines(gunicorn_factory):
    server = gunicorn_factory(workers=1, env={**ONE_THREAD,
                                              "LLM_TRAIN_API_LOG_STREAMS_PER_USER": "50"})
    log = new_job(server, "streamed")
    log.write_text("before\n")
    streams = [open_stream(server, "streamed") for _ in range(30)]
    for sock in streams:
        assert read_until(sock, b"data: before\n").startswith(b"HTTP/1.1 200 OK\r\n")
    # 30 streams are open on a process with one thread: it still answers at once.
    assert quick_get(server, "/healthz") == 200
    assert quick_get(server, "/jobs/streamed") == 200
    with log.open("a") as f:
        f.write("after\n")
    for sock in streams:
        assert b"data: after\n" in read_until(sock, b"data: after\n")
    assert server.http.patch(server.url + "/jobs/streamed/status",
                             json={"status": "cancelled"}).status_code == 200
    for sock in streams:
        tail = read_to_end(sock)  # the server ends the stream and closes the connection
        assert tail.endswith(b"event: end\ndata: cancelled\n\n")
        sock.close()


def test_a_reconnecting_stream_resumes_after_the_last_event(gunicorn_factory):
    server = gunicorn_factory(workers=1, env=ONE_THREAD)
    log = new_job(server, "resumed")
    log.write_text("one\ntwo\nthree\n")
    server.http.patch(server.url + "/jobs/resumed/status", json={"status": "cancelled"})
    sock = open_stream(server, "resumed", last_event_id="4")  # after "one\n"
    body = read_to_end(sock).split(b"\r\n\r\n", 1)[1]
    sock.close()
    assert body == (b"retry: 1000\n\nid: 8\ndata: two\n\nid: 14\ndata: three\n\n"
                    b"event: end\ndata: cancelled\n\n")


def test_slow_senders_wait_outside_the_thread_and_are_cut_off(gunicorn_factory):
    server = gunicorn_factory(workers=1, env=ONE_THREAD)
    slow = []
    for _ in range(20):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHo")  # and then nothing more
        slow.append(sock)
    started = time.monotonic()
    assert quick_get(server, "/healthz") == 200
    assert quick_get(server, "/jobs?limit=1") == 200
    for sock in slow:
        answer = read_to_end(sock, timeout=10)
        head, _, body = answer.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408"), answer
        assert json.loads(body)["code"] == 408
        sock.close()
    assert time.monotonic() - started < 8  # REQUEST_HEAD_TIMEOUT_S is 2 s here


def test_a_client_sending_a_byte_a_second_is_cut_off_at_the_deadline(gunicorn_factory):
    server = gunicorn_factory(workers=1, env=ONE_THREAD)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    started = time.monotonic()
    cut = False
    for byte in b"GET /healthz HTTP/1.1\r\nX-Slow: " + b"a" * 30:
        try:
            sock.sendall(bytes([byte]))
        except OSError:
            cut = True
            break
        time.sleep(0.5)
        if time.monotonic() - started > 6:
            break
    answer = b"" if cut else read_to_end(sock, timeout=5)
    sock.close()
    assert cut or answer.startswith(b"HTTP/1.1 408")
    assert time.monotonic() - started < 10  # a deadline for the whole head, not per byte


def test_pipelined_and_kept_alive_requests_are_all_answered(gunicorn_factory):
    server = gunicorn_factory(workers=1, env=ONE_THREAD)
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    request = b"GET /healthz HTTP/1.1\r\nHost: t\r\n\r\n"
    sock.sendall(request * 3)  # three requests in one write
    answers = read_until(sock, b"\0", timeout=3)
    assert answers.count(b"HTTP/1.1 200 OK") == 3
    sock.sendall(request)  # the connection is still kept alive
    assert read_until(sock, b'"ok"}', timeout=5).startswith(b"HTTP/1.1 200 OK")
    sock.close()


@pytest.mark.parametrize("caps", [{"LLM_TRAIN_API_LOG_STREAMS_PER_USER": "2"},
                                  {"LLM_TRAIN_API_LOG_STREAMS_PER_PROCESS": "2",
                                   "LLM_TRAIN_API_LOG_STREAMS_PER_USER": "0"}])
def test_streams_beyond_a_cap_are_429_and_a_closed_one_frees_its_slot(gunicorn_factory, caps):
    server = gunicorn_factory(workers=1, env={**ONE_THREAD, **caps})
    new_job(server, "capped")
    first, second = open_stream(server, "capped"), open_stream(server, "capped")
    for sock in (first, second):
        assert read_until(sock, b"retry: ").startswith(b"HTTP/1.1 200 OK")
    refused = server.http.get(server.url + "/jobs/capped/logs?follow=true", timeout=5)
    assert refused.status_code == 429
    assert int(refused.headers["Retry-After"]) > 0
    assert "LLM_TRAIN_API_LOG_STREAMS_PER_" in refused.json()["message"]
    first.close()  # the server notices the client left and frees the slot
    deadline = time.monotonic() + 10
    while True:
        third = open_stream(server, "capped")
        head = read_until(third, b"\r\n\r\n", timeout=5)
        if head.startswith(b"HTTP/1.1 200 OK") or time.monotonic() > deadline:
            break
        third.close()
        time.sleep(0.3)
    assert head.startswith(b"HTTP/1.1 200 OK")
    for sock in (second, third):
        sock.close()


def test_an_upload_that_stalls_is_a_408_and_stores_nothing(gunicorn_factory):
    server = gunicorn_factory(workers=1, env={**ONE_THREAD,
                                              "LLM_TRAIN_API_REQUEST_READ_TIMEOUT_S": "2"})
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=15)
    size = 5 * 1024 * 1024  # above what the event loop buffers: the body streams on a thread
    sock.sendall((f"PUT /datasets/stalled HTTP/1.1\r\nHost: t\r\n"
                  f"Authorization: Bearer {server.token}\r\nContent-Type: text/plain\r\n"
                  f"Content-Length: {size}\r\n\r\n").encode() + b"line\n" * 1000)
    started = time.monotonic()
    answer = read_to_end(sock, timeout=15)  # and then the client sends nothing more
    sock.close()
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408"), answer[:300]
    assert json.loads(body)["code"] == 408
    assert time.monotonic() - started < 12
    assert quick_get(server, "/healthz") == 200  # the thread is free again
    assert server.http.get(server.url + "/datasets/stalled").status_code == 404
