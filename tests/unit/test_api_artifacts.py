"""A job's log (whole, tail, SSE follow) and its artifact files."""

from __future__ import annotations

import os
import threading
import time

import pytest

from llm_train_api import create_app
from llm_train_api.api import artifacts
from llm_train_api.artifacts import jobs as jobfiles
from tests.helpers.clients import admin_client


@pytest.fixture
def app(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "LOG_FOLLOW_MAX_S": 5})
    yield app
    app.extensions["llm_train_api.runtime"].close()


def new_job(client, job_id="job-a"):
    resp = client.post("/jobs", json={"job_id": job_id, "model_name": "gpt-nano",
                                      "dataset": "builtin:tinytext"})
    assert resp.status_code == 201, resp.get_json()
    return job_id


def folder(app, job_id):
    job = app.extensions["llm_train_api.runtime"].jobs.get_job(job_id)
    path = jobfiles.job_dir(app.extensions["llm_train_api.runtime"].data_dir, job)
    path.mkdir(parents=True, exist_ok=True)
    return path


def error(resp, code):
    assert resp.status_code == code, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json" and resp.get_json()["code"] == code
    return resp.get_json()


LOG = b"".join(b"line %d\n" % i for i in range(10_000))


# ----------------------------------------------------------------------------- logs


def test_log_whole_and_tail(client, app):
    job_id = new_job(client)
    (folder(app, job_id) / "train.log").write_bytes(LOG)
    resp = client.get(f"/jobs/{job_id}/logs")
    assert resp.status_code == 200 and resp.mimetype == "text/plain"
    assert resp.data == LOG
    tail = client.get(f"/jobs/{job_id}/logs?tail=3")
    assert tail.data == b"line 9997\nline 9998\nline 9999\n"
    assert client.get(f"/jobs/{job_id}/logs?tail=1").data == b"line 9999\n"
    assert client.get(f"/jobs/{job_id}/logs?tail=100000").data == LOG
    # Spans several 64 KiB blocks read backwards.
    assert client.get(f"/jobs/{job_id}/logs?tail=9000").data == LOG.split(b"\n", 1000)[-1]


def test_tail_without_final_newline(client, app):
    job_id = new_job(client)
    (folder(app, job_id) / "train.log").write_bytes(b"a\nb\nc")
    assert client.get(f"/jobs/{job_id}/logs?tail=2").data == b"b\nc"


def test_log_before_the_job_logged_is_empty(client):
    job_id = new_job(client)
    resp = client.get(f"/jobs/{job_id}/logs?tail=5")
    assert resp.status_code == 200 and resp.data == b""


@pytest.mark.parametrize("query", ["tail=0", "tail=100001", "tail=x", "follow=maybe", "bogus=1"])
def test_bad_log_parameters_are_422(client, query):
    job_id = new_job(client)
    error(client.get(f"/jobs/{job_id}/logs?{query}"), 422)


def test_log_of_unknown_job_is_404(client):
    error(client.get("/jobs/nope/logs"), 404)
    error(client.get("/jobs/..%2e/logs"), 404)


def parse_sse(raw: str) -> list[dict]:
    events = []
    for block in raw.split("\n\n"):
        fields: dict = {}
        for line in block.split("\n"):
            if not line or line.startswith(":"):
                continue
            key, _, value = line.partition(": ")
            fields.setdefault(key, []).append(value)
        if fields:
            events.append(fields)
    return events


def test_follow_streams_new_lines_until_the_job_ends(client, app):
    job_id = new_job(client)
    log = folder(app, job_id) / "train.log"
    log.write_bytes(b"first\n")

    def writer():
        other = admin_client(app)
        time.sleep(0.3)
        other.patch(f"/jobs/{job_id}/status", json={"status": "running"})
        with open(log, "ab") as f:
            for i in range(5):
                f.write(b"step %d\r\n" % i if i == 2 else b"step %d\n" % i)
                f.flush()
                time.sleep(0.1)
            f.write(b"half a li")
            f.flush()
            time.sleep(0.6)
            f.write(b"ne\nunterminated")
        other.patch(f"/jobs/{job_id}/status", json={"status": "succeeded"})

    thread = threading.Thread(target=writer)
    resp = client.get(f"/jobs/{job_id}/logs?follow=true", buffered=False)
    assert resp.status_code == 200 and resp.mimetype == "text/event-stream"
    thread.start()
    raw = b"".join(resp.response).decode()
    thread.join()
    assert raw.startswith("retry: ")
    events = parse_sse(raw)
    data = [e["data"][0] for e in events if "data" in e and "event" not in e]
    assert data == ["first", "step 0", "step 1", "step 2", "step 3", "step 4", "half a line",
                    "unterminated"]
    # A CRLF line ending is one line end: no empty data field after it.
    assert [e["data"] for e in events if e.get("data", [""])[0] == "step 2"] == [["step 2"]]
    # It ended with the job (an `end` event), not by the time limit (a `timeout` event).
    assert events[-1] == {"event": ["end"], "data": ["succeeded"]}
    # Ids are byte offsets: reconnecting with Last-Event-ID resumes after that line.
    ids = [int(e["id"][0]) for e in events if "id" in e]
    assert ids == sorted(ids) and ids[-1] == log.stat().st_size
    resumed = client.get(f"/jobs/{job_id}/logs?follow=true",
                         headers={"Last-Event-ID": str(ids[-3])})
    again = [e["data"][0] for e in parse_sse(resumed.get_data(as_text=True)) if "id" in e]
    assert again == data[-2:]


@pytest.mark.parametrize("last_id", ["abc", "-5", "9" * 5000, ""])
def test_a_last_event_id_that_is_no_offset_starts_from_the_beginning(client, app, last_id):
    job_id = new_job(client)
    (folder(app, job_id) / "train.log").write_bytes(b"one\ntwo\n")
    client.patch(f"/jobs/{job_id}/status", json={"status": "cancelled"})
    resp = client.get(f"/jobs/{job_id}/logs?follow=true", headers={"Last-Event-ID": last_id})
    assert resp.status_code == 200  # a 5000-digit id was a 500
    events = parse_sse(resp.get_data(as_text=True))
    assert [e["data"] for e in events if "id" in e] == [["one"], ["two"]]


def test_follow_with_tail_of_a_finished_job_ends_at_once(client, app):
    job_id = new_job(client)
    (folder(app, job_id) / "train.log").write_bytes(LOG)
    client.patch(f"/jobs/{job_id}/status", json={"status": "cancelled"})
    raw = client.get(f"/jobs/{job_id}/logs?follow=true&tail=2").get_data(as_text=True)
    events = parse_sse(raw)
    assert [e.get("data") for e in events[1:-1]] == [["line 9998"], ["line 9999"]]
    assert events[-1] == {"event": ["end"], "data": ["cancelled"]}


def test_follow_times_out_for_reconnection(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "EXECUTOR": "none",
                      "LOG_FOLLOW_MAX_S": 0.6})
    client = admin_client(app)
    job_id = new_job(client)
    started = time.monotonic()
    raw = client.get(f"/jobs/{job_id}/logs?follow=true").get_data(as_text=True)
    assert 0.5 < time.monotonic() - started < 10  # waited for the limit, then let go
    assert parse_sse(raw)[-1] == {"event": ["timeout"], "data": ["reconnect"]}
    app.extensions["llm_train_api.runtime"].close()


def test_follow_stops_when_the_client_goes_away(client, app):
    job_id = new_job(client)
    resp = client.get(f"/jobs/{job_id}/logs?follow=true", buffered=False)
    chunks = iter(resp.response)
    assert next(chunks).startswith(b"retry:")
    assert artifacts.active_followers(app) == 1
    resp.close()  # what the WSGI server does when the socket breaks: GeneratorExit
    assert artifacts.active_followers(app) == 0


def test_follow_ends_when_the_job_is_deleted(client):
    job_id = new_job(client)
    resp = client.get(f"/jobs/{job_id}/logs?follow=true", buffered=False)
    chunks = iter(resp.response)
    next(chunks)
    client.delete(f"/jobs/{job_id}")
    assert b"event: end\ndata: deleted" in b"".join(chunks)


# ----------------------------------------------------------------------------- artifacts


def populate(app, job_id):
    path = folder(app, job_id)
    (path / "ckpt_best.pt").write_bytes(b"\x80\x02fake checkpoint" * 100)
    (path / "metrics.jsonl").write_bytes(b'{"step": 1, "loss": 5.5}\n')
    (path / "train.log").write_bytes(b"hello\n")
    (path / "spec.json").write_bytes(b"{}")
    (path / "notes.md").write_bytes(b"# notes")
    (path / ".ckpt_latest.pt.tmp-1-abc").write_bytes(b"partial")  # a write in progress
    (path / "sub").mkdir()
    return path


def test_list_artifacts(client, app):
    job_id = new_job(client)
    assert client.get(f"/jobs/{job_id}/artifacts").get_json() == []
    populate(app, job_id)
    listed = client.get(f"/jobs/{job_id}/artifacts").get_json()
    assert [(a["name"], a["kind"]) for a in listed] == [
        ("ckpt_best.pt", "checkpoint"), ("metrics.jsonl", "metrics"), ("notes.md", "other"),
        ("spec.json", "spec"), ("train.log", "log")]
    assert listed[0]["size_bytes"] == 1700 and listed[0]["modified_at"].endswith("+00:00")


def test_download_artifact(client, app):
    job_id = new_job(client)
    path = populate(app, job_id)
    resp = client.get(f"/jobs/{job_id}/artifacts/ckpt_best.pt")
    assert resp.status_code == 200 and resp.mimetype == "application/octet-stream"
    assert resp.data == (path / "ckpt_best.pt").read_bytes()
    assert resp.headers["Content-Disposition"].startswith("attachment")
    assert "ckpt_best.pt" in resp.headers["Content-Disposition"]
    ranged = client.get(f"/jobs/{job_id}/artifacts/ckpt_best.pt", headers={"Range": "bytes=0-1"})
    assert ranged.status_code == 206 and ranged.data == b"\x80\x02"
    assert client.get(f"/jobs/{job_id}/artifacts/metrics.jsonl").data.startswith(b'{"step"')


def test_unknown_job_or_file_is_404(client, app):
    error(client.get("/jobs/nope/artifacts"), 404)
    error(client.get("/jobs/nope/artifacts/train.log"), 404)
    job_id = new_job(client)
    error(client.get(f"/jobs/{job_id}/artifacts/train.log"), 404)  # nothing written yet
    populate(app, job_id)
    error(client.get(f"/jobs/{job_id}/artifacts/missing.pt"), 404)


@pytest.mark.parametrize("raw", ["..%2F..%2F..%2Fjobs.sqlite3", "..", "%2e%2e", "sub",
                                 "..%5Cspec.json", "spec.json%00", "%2Fetc%2Fpasswd",
                                 ".ckpt_latest.pt.tmp-1-abc", "%2E%2E%2Fother", "a%20b"])
def test_path_tricks_are_404(client, app, raw):
    job_id = new_job(client)
    populate(app, job_id)
    error(client.get(f"/jobs/{job_id}/artifacts/{raw}"), 404)


def test_symlinks(client, app, tmp_path):
    job_id = new_job(client)
    path = populate(app, job_id)
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret")
    os.symlink(secret, path / "escape.log")
    os.symlink("/etc/passwd", path / "passwd")
    os.symlink("train.log", path / "alias.log")  # inside: allowed
    error(client.get(f"/jobs/{job_id}/artifacts/escape.log"), 404)
    error(client.get(f"/jobs/{job_id}/artifacts/passwd"), 404)
    assert client.get(f"/jobs/{job_id}/artifacts/alias.log").data == b"hello\n"
    names = [a["name"] for a in client.get(f"/jobs/{job_id}/artifacts").get_json()]
    assert "escape.log" not in names and "passwd" not in names and "alias.log" in names


def test_sse_framing_of_carriage_returns():
    from llm_train_api.artifacts.logs import sse_event as _sse_event

    # A progress bar's bare CRs become separate data fields of one event; a CRLF ending is
    # one line end (no empty field), so clients see the line exactly once.
    assert _sse_event(b"10%\r20%\r30%", 7) == b"id: 7\ndata: 10%\ndata: 20%\ndata: 30%\n\n"
    assert _sse_event(b"line 3\r", 42) == b"id: 42\ndata: line 3\n\n"
