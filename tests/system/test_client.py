"""The Python client (llm_train_api.client) against real gunicorn servers: every method,
pagination, each typed error, safe retries through a proxy that breaks connections, and
a job that really trains while its log is followed."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import pytest

from llm_train_api.client import (
    ApiConnectionError,
    BadRequest,
    Client,
    Conflict,
    Forbidden,
    NotFound,
    PreconditionFailed,
    RetryPolicy,
    ServiceUnavailable,
    TooManyRequests,
    Unauthorized,
    ValidationError,
)
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import JobQueue
from tests.helpers.servers import REPO_ROOT, TINY, GunicornServer

FAST_RETRY = RetryPolicy(attempts=3, backoff_s=0.01, max_backoff_s=0.05)


def api_for(server, **kwargs) -> Client:
    return Client(server.url, token=server.token, **kwargs)


# ----------------------------------------------------------------------------- no server


def test_the_client_imports_without_flask_or_torch():
    code = ("import sys, llm_train_api.client, llm_train_api.cli.common; "
            "bad = [m for m in sys.modules if m.split('.')[0] in ('flask', 'torch', "
            "'sqlalchemy', 'marshmallow')]; print(bad); sys.exit(1 if bad else 0)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr


def test_job_metrics_returns_a_curve_longer_than_one_page(gunicorn_factory, tmp_path):
    db = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    server = gunicorn_factory(workers=1, env={"LLM_TRAIN_API_DATABASE_URL": db})
    with api_for(server) as api:
        job = api.create_job("gpt-nano", "tiny", {"learning_rate": 0.001}, job_id="long")
        database = Database.from_url(db)
        try:
            queue = JobQueue(database, JobRepository(database))
            assert queue.claim("w1", 30).id == job.id
            queue.record_progress(job.id, "w1", {"step": 10_050},
                                  [{"step": s, "train_loss": 1.0} for s in range(1, 10_051)])
        finally:
            database.close()
        # The server answers at most 10,000 points a request; the client follows the Link.
        assert [p.step for p in api.job_metrics(job.id)] == list(range(1, 10_051))
        assert [p.step for p in api.job_metrics(job.id, after_step=10_040)] == list(
            range(10_041, 10_051))


# ----------------------------------------------------------------------------- registry


@pytest.fixture(scope="module")
def registry_server(tmp_path_factory):
    """One gunicorn in registry mode (EXECUTOR=none, as `gunicorn_factory` starts it) for
    all the tests of this module that need no worker: starting one per test would cost
    more than the tests. Tests use their own ids and names. Log streams end after 1 s (to
    exercise reconnection) and users may queue one job (to meet the quota)."""
    tmp = tmp_path_factory.mktemp("registry")
    server = GunicornServer(workers=2, log_path=tmp / "gunicorn.log", env={
        "LLM_TRAIN_API_INSTANCE_PATH": str(tmp / "instance"), "LLM_TRAIN_API_EXECUTOR": "none",
        "LLM_TRAIN_API_LOG_FOLLOW_MAX_S": "1", "LLM_TRAIN_API_MAX_QUEUED_PER_USER": "1"})
    server.start()
    yield server
    server.stop()


@pytest.fixture
def registry(registry_server):
    """The shared registry server and an admin client for it."""
    with api_for(registry_server) as api:
        yield registry_server, api


def test_jobs_every_method_and_error_in_registry_mode(registry):
    server, api = registry
    assert api.healthz().status == "ok"
    ready = api.readyz()
    assert ready.ok and ready.schema_version and ready.database == "sqlite"

    job = api.create_job("gpt-mini", "dataset-v1", {"learning_rate": 0.001}, priority=5)
    assert job.id.startswith("job-") and job.status == "queued" and job.priority == 5
    assert job.created_at.tzinfo is not None and job.etag
    again = api.create_job("gpt-mini", "dataset-v1", {"learning_rate": 0.001}, priority=5,
                           job_id=job.id)
    assert again.created_at == job.created_at  # the same job: a safe retry
    with pytest.raises(Conflict) as conflict:
        api.create_job("gpt-mini", "dataset-v2", job_id=job.id)
    assert "already taken" in conflict.value.message

    preview = api.create_job("m", "d", job_id="dry", dry_run=True)
    assert preview.id == "dry" and preview.status == "queued"
    with pytest.raises(NotFound) as missing:
        api.get_job("dry")
    assert missing.value.code == "not_found" and str(missing.value).startswith("404 not_found")

    with pytest.raises(ValidationError) as invalid:
        api.create_job("m", "d", priority=5000)
    assert "json.priority" in invalid.value.field_errors

    assert api.get_job(job.id).hyperparameters == {"learning_rate": 0.001}
    stale = api.get_job(job.id)
    running = api.update_status(job.id, "running", if_match=stale)
    assert running.status == "running" and running.started_at is not None
    with pytest.raises(PreconditionFailed):
        api.update_status(job.id, "succeeded", if_match=stale.etag)
    done = api.update_status(job.id, "succeeded", if_match=running)
    assert done.status == "succeeded" and done.finished_at is not None
    with pytest.raises(Conflict) as illegal:
        api.update_status(job.id, "queued")
    assert illegal.value.details["current_status"] == "succeeded"
    assert api.cancel_job(job.id).status == "succeeded"  # already final: unchanged

    first = api.job_events_page(job.id, limit=1)
    assert len(first) == 1 and first.next_cursor
    assert [(e.kind, e.to_status) for e in api.job_events(job.id, page_size=1)] == [
        ("created", "queued"), ("status", "running"), ("status", "succeeded")]
    assert isinstance(first.items[0].at, datetime)

    assert api.job_metrics(job.id) == [] and api.job_metrics(job.id, after_step=3) == []
    assert api.job_logs(job.id) == "" and api.list_artifacts(job.id) == []
    with pytest.raises(NotFound):
        api.download_artifact(job.id, "ckpt_best.pt", server.log_path.parent / "x.pt")
    assert not (server.log_path.parent / "x.pt").exists()

    stale = api.create_job("m", "d", job_id="to-cancel")
    cancelled = api.cancel_job(stale.id)
    assert cancelled.status == "cancelled"
    with pytest.raises(PreconditionFailed):
        api.delete_job(stale.id, if_match=stale)
    api.delete_job(cancelled.id, if_match=cancelled)
    with pytest.raises(NotFound):
        api.delete_job(cancelled.id)
    with pytest.raises(NotFound):
        api.job_events_page("no-such-job")
    with pytest.raises(BadRequest):
        api.list_jobs_page(cursor="not-a-cursor")



def test_list_jobs_follows_link_pages_with_filters(registry):
    _, api = registry
    m = "m-pages"  # this test's jobs, on a server that other tests share
    ids = [api.create_job(m, "d" if n % 2 else "e", job_id=f"p{n}").id for n in range(7)]
    api.cancel_job("p6")
    page = api.list_jobs_page(model_name=m, limit=3)
    assert [j.id for j in page] == ["p6", "p5", "p4"] and page.next_cursor
    assert [j.id for j in api.list_jobs_page(model_name=m, limit=3,
                                             cursor=page.next_cursor)] == ["p3", "p2", "p1"]
    assert [j.id for j in api.list_jobs(model_name=m, page_size=2)] == ids[::-1]
    assert [j.id for j in api.list_jobs(model_name=m, dataset="d", page_size=1)] == [
        "p5", "p3", "p1"]
    assert [j.id for j in api.list_jobs(model_name=m, status=["cancelled"])] == ["p6"]
    future = datetime(2100, 1, 1, tzinfo=timezone.utc)
    assert list(api.list_jobs(created_after=future)) == []
    assert len(list(api.list_jobs(created_before=future, model_name=m))) == 7


def test_models_and_datasets(registry, tmp_path):
    _, api = registry
    names = [m.name for m in api.list_models()]
    assert names[0] == "gpt-nano" and "gpt2" in names
    nano = api.get_model("gpt-nano")
    assert nano.param_count == 146352 and any(h["name"] == "learning_rate"
                                              for h in nano.hyperparameters)
    with pytest.raises(NotFound):
        api.get_model("gpt-9000")

    poems = tmp_path / "poems.txt"
    poems.write_text("roses are red\nviolets are blue\n")
    created = api.upload_dataset("poems", poems)
    assert created.format == "txt" and created.lines == 2 and created.size_bytes == 31
    poems.write_text("only one line now\n")
    with open(poems, "rb") as f:
        replaced = api.upload_dataset("poems", f)
    assert replaced.sha256 != created.sha256 and replaced.lines == 1
    chat = tmp_path / "chat.jsonl"
    chat.write_text(json.dumps({"text": "hello"}) + "\n")
    assert api.upload_dataset("chat", chat).format == "jsonl"
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"no_text": 1}\n')
    with pytest.raises(ValidationError):
        api.upload_dataset("bad", bad)
    listed = {d.name: d for d in api.list_datasets()}
    assert {"builtin:tinytext", "poems", "chat"} <= set(listed)
    assert listed["builtin:tinytext"].builtin and not listed["poems"].builtin
    assert api.get_dataset("poems").sha256 == replaced.sha256
    with pytest.raises(Forbidden):
        api.delete_dataset("builtin:tinytext")
    api.delete_dataset("poems")
    with pytest.raises(NotFound):
        api.get_dataset("poems")


def user_token(server, name: str) -> str:
    """A token for a new `user` principal, issued the way an operator does."""
    out = subprocess.run([sys.executable, "-m", "llm_train_api.cli", "tokens", "create",
                          "--name", name, "--role", "user"], cwd=REPO_ROOT, env=server.env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def test_auth_and_quota_errors_are_typed(registry_server):
    server = registry_server
    assert server.token, "the server runs with authentication, as by default"
    with api_for(server) as admin:
        assert admin.whoami().role == "admin"
    with Client(server.url, token="not-a-token") as intruder, pytest.raises(Unauthorized):
        intruder.list_jobs_page()
    with Client(server.url) as anonymous, pytest.raises(Unauthorized):
        anonymous.get_job("x")
    with Client(server.url, token=user_token(server, "alice")) as alice:
        assert (alice.whoami().name, alice.whoami().role) == ("alice", "user")
        # Alice's first job goes through, but its answer is lost: the retry finds her
        # quota full (the server counts the job being retried, see the report) and the
        # client recognises the job as the one it sent.
        proxy = FaultyProxy(server.port, "drop")
        with Client(proxy.url, token=alice.token, retry=FAST_RETRY) as flaky:
            job = flaky.create_job("m", "d", job_id="alice-1")
        proxy.close()
        assert job.owner == "alice" and proxy.broken == 1
        with pytest.raises(TooManyRequests):
            alice.create_job("m", "d", job_id="alice-2")
        with pytest.raises(Forbidden):
            alice.update_status("alice-1", "running")
        assert alice.cancel_job("alice-1").status == "cancelled"
        alice.create_job("m", "d", job_id="alice-2")  # the cancelled one no longer counts


def test_an_identical_create_at_the_quota_is_answered_with_the_job(registry_server):
    server = registry_server
    assert server.token, "the server runs with authentication"
    with Client(server.url, token=user_token(server, "bob"), retry=FAST_RETRY) as bob:
        job = bob.create_job("m", "d", job_id="bob-1")
        assert bob.create_job("m", "d", job_id="bob-1").created_at == job.created_at


# ----------------------------------------------------------------------------- retries


class FaultyProxy:
    """A TCP proxy in front of a real server that breaks the first `faults` connections,
    then forwards faithfully. `drop`: the request reaches the server, which answers, but the
    answer is thrown away and the connection closed (a lost response). `503`: the proxy
    answers 503 itself, as a load balancer would during a restart."""

    def __init__(self, upstream_port: int, fault: str, faults: int = 1) -> None:
        self.upstream = ("127.0.0.1", upstream_port)
        self.fault = fault
        self.faults_left = faults
        self.broken = 0
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        # One request per connection (Connection: close upstream), so that every request
        # passes through here, whatever the client's keep-alive does.
        request = _read_request(conn)
        if self.faults_left > 0:
            self.faults_left -= 1
            self.broken += 1  # before answering: the client may look at once
            if self.fault == "drop":
                with socket.create_connection(self.upstream) as up:
                    up.sendall(request)
                    up.recv(1)  # the server has answered, so it has done the work
            else:
                body = b'{"code": 503, "status": "Service Unavailable", "message": "restart"}'
                conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
                             b"application/json\r\nRetry-After: 0\r\nConnection: close\r\n"
                             b"Content-Length: " + str(len(body)).encode() + b"\r\n\r\n" + body)
            conn.close()
            return
        with socket.create_connection(self.upstream) as up:
            up.sendall(request)
            _pipe(up, conn)

    def close(self) -> None:
        self.sock.close()


def _read_request(conn: socket.socket) -> bytes:
    data = b""
    while b"\r\n\r\n" not in data:
        data += conn.recv(65536)
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    length = 0
    kept = [lines[0]]
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
        if name.strip().lower() != b"connection":
            kept.append(line)
    while len(body) < length:
        body += conn.recv(65536)
    return b"\r\n".join([*kept, b"Connection: close"]) + b"\r\n\r\n" + body


def _pipe(src: socket.socket, dst: socket.socket) -> None:
    try:
        while block := src.recv(65536):
            dst.sendall(block)
    except OSError:
        pass
    finally:
        for s in (src, dst):
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


def test_a_create_whose_answer_is_lost_is_retried_without_a_duplicate(registry):
    server, direct = registry
    proxy = FaultyProxy(server.port, "drop")
    with Client(proxy.url, token=server.token, retry=FAST_RETRY) as api:
        job = api.create_job("m-lost", "d", {"lr": 0.1})  # the client made the job_id
    proxy.close()
    assert proxy.broken == 1 and job.status == "queued"
    assert [j.id for j in direct.list_jobs(model_name="m-lost")] == [job.id]  # created once
    assert [e.kind for e in direct.job_events(job.id)] == ["created"]


def test_503_is_retried_and_an_unconditional_patch_is_not(registry):
    server, direct = registry
    direct.create_job("m", "d", job_id="j1")
    proxy = FaultyProxy(server.port, "503", faults=2)
    with Client(proxy.url, token=server.token, retry=FAST_RETRY) as api:
        assert api.get_job("j1").id == "j1"  # two 503s, then the answer
        assert proxy.broken == 2
        proxy.fault, proxy.faults_left = "drop", 1
        with pytest.raises(ApiConnectionError):
            api.update_status("j1", "running")  # no If-Match: never sent twice
        assert proxy.broken == 3
        assert direct.get_job("j1").status == "running"  # the lost change did happen
        # With If-Match the retry is safe: it finds the change made, and says so.
        proxy.faults_left = 1
        current = direct.get_job("j1")
        assert api.update_status("j1", "succeeded", if_match=current).status == "succeeded"
        assert proxy.broken == 4
        # A DELETE whose answer was lost: the retry's 404 means it was done.
        proxy.faults_left = 1
        api.delete_job("j1")
        assert proxy.broken == 5
    proxy.close()
    with pytest.raises(NotFound):
        direct.get_job("j1")
    unavailable = FaultyProxy(server.port, "503", faults=9)
    with pytest.raises(ServiceUnavailable), Client(unavailable.url, retry=FAST_RETRY) as api:
        api.healthz()
    assert unavailable.broken == FAST_RETRY.attempts
    unavailable.close()


# ----------------------------------------------------------------------------- logs


def test_follow_logs_reconnects_across_server_timeouts(registry):
    """The server ends each stream after 1 s; the follower resumes at the last byte it saw
    and stops at `event: end`. The test writes the log itself, as a worker would."""
    server, api = registry
    job = api.create_job("m", "d", job_id="logged")
    api.update_status("logged", "running")
    created_hex = job.etag.strip('"').split("-")[0]  # the ETag is "<created_us>-<v>"
    folder = server.log_path.parent / "instance" / "data" / "jobs" / f"logged-{created_hex}"
    folder.mkdir(parents=True)
    log = folder / "train.log"
    log.write_text("line 0\n")
    follower = api.follow_logs("logged")

    def writer() -> None:  # its own client: a Session is not for two threads at once
        for n in range(1, 6):
            time.sleep(0.6)
            with open(log, "a") as f:
                f.write(f"line {n}\r\nwith a carriage return\n" if n == 3 else f"line {n}\n")
        time.sleep(0.5)
        with api_for(server) as other:
            other.update_status("logged", "failed", "boom")

    thread = threading.Thread(target=writer)
    thread.start()
    got = [line.text for line in follower]
    thread.join()
    assert got == ["line 0", "line 1", "line 2", "line 3", "with a carriage return",
                   "line 4", "line 5"]
    assert follower.final_status == "failed"
    assert api.job_logs("logged", tail=2) == "line 4\nline 5\n"
    # Resuming from a line's offset gives exactly the lines after it.
    offsets = [line.offset for line in api.follow_logs("logged")]
    assert [line.text for line in api.follow_logs("logged", last_event_id=offsets[4])] \
        == ["line 4", "line 5"]
    assert [line.text for line in api.follow_logs("logged", tail=1)] == ["line 5"]


# ----------------------------------------------------------------------------- training


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
def test_a_job_trains_while_the_client_follows_it(service, tmp_path):
    with api_for(service) as api:
        corpus = tmp_path / "corpus.txt"
        corpus.write_text((Path(REPO_ROOT) / "llm_train_api/training/data/tinytext.txt")
                          .read_text()[:20000])
        api.upload_dataset("corpus", corpus)
        with pytest.raises(ValidationError) as refused:
            api.create_job("gpt-nonexistent", "corpus", TINY)
        assert "model_name" in str(refused.value.errors)
        job = api.create_job("gpt-nano", "corpus", {**TINY, "max_steps": 30,
                                                    "checkpoint_interval": 10})
        blocker = api.create_job("gpt-nano", "corpus", {**TINY, "max_steps": 100_000},
                                 priority=-1)
        with pytest.raises(Conflict):
            api.delete_dataset("corpus")  # queued jobs use it
        with pytest.raises(PreconditionFailed):
            api.update_status(job.id, "cancelled", if_match='"0-0"')
        service.start_worker()
        follower = api.follow_logs(job.id)
        lines = [line.text for line in follower]
        assert follower.final_status == "succeeded"
        assert any('"event":"done"' in line for line in lines), lines[-5:]

        done = api.get_job(job.id)
        assert done.status == "succeeded" and done.attempts == 1
        assert done.progress_info.step == 30 and done.progress_info.fraction == 1.0
        curve = api.job_metrics(job.id)
        assert [p.step for p in curve] == list(range(1, 31))
        assert curve[-1].train_loss < curve[0].train_loss
        assert [p.step for p in api.job_metrics(job.id, after_step=28)] == [29, 30]
        artifacts = {a.name: a for a in api.list_artifacts(job.id)}
        assert artifacts["ckpt_latest.pt"].kind == "checkpoint"
        target = tmp_path / "dl"
        target.mkdir()
        size = api.download_artifact(job.id, "ckpt_latest.pt", target)
        assert size == artifacts["ckpt_latest.pt"].size_bytes
        assert (target / "ckpt_latest.pt").stat().st_size == size
        assert [e.kind for e in api.job_events(job.id)] == ["created", "claimed", "status"]

        deadline = time.monotonic() + 60
        while api.get_job(blocker.id).status != "running" and time.monotonic() < deadline:
            time.sleep(0.2)
        assert api.cancel_job(blocker.id).status == "cancelled"
        api.delete_dataset("corpus")  # no job uses it any more
