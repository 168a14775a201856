"""Behaviour that crosses processes, against a real `gunicorn wsgi:app` with several workers;
and the gunicorn configuration itself, the same from `llm-train-api serve` anywhere and from
`gunicorn wsgi:app` in the checkout."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from llm_train_api.api.lingering import DRAIN_MAX_SECONDS
from llm_train_api.api.metrics import MULTIPROC_SUBDIR
from llm_train_api.cli.serve import gunicorn_argv
from tests.helpers.servers import REPO_ROOT, free_port


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def server_env(request, tmp_path) -> dict[str, str]:
    if request.param == "sqlite":
        return {"LLM_TRAIN_API_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}"}
    return {"LLM_TRAIN_API_DATABASE_URL": request.getfixturevalue("pg_url")}


def body(job_id: str) -> dict:
    return {"job_id": job_id, "model_name": "gpt-nano", "dataset": "tiny",
            "hyperparameters": {"learning_rate": 0.001}}


def fresh_get(server, url: str) -> requests.Response:
    # A new connection per request, so gunicorn spreads them over its workers.
    with server.session() as s:
        return s.get(url, timeout=10, headers={"Connection": "close"})


def test_workers_see_each_others_writes(gunicorn_factory, server_env):
    server = gunicorn_factory(workers=3, env=server_env)
    assert len(server.worker_pids()) == 3
    ids = [f"w{i}" for i in range(30)]

    def create_then_read(job_id):
        with server.session() as s:
            resp = s.post(server.url + "/jobs", json=body(job_id), timeout=10,
                          headers={"Connection": "close"})
        assert resp.status_code == 201, resp.text
        # Read back immediately through other connections (other workers).
        return [fresh_get(server, f"{server.url}/jobs/{job_id}").status_code for _ in range(3)]

    with ThreadPoolExecutor(6) as pool:
        reads = list(pool.map(create_then_read, ids))
    assert all(code == 200 for codes in reads for code in codes)
    listed = fresh_get(server, server.url + "/jobs?limit=1000").json()
    assert sorted(j["id"] for j in listed) == sorted(ids)


def test_racing_status_changes_over_http_have_one_winner(gunicorn_factory, server_env):
    server = gunicorn_factory(workers=3, env=server_env)
    for i in range(5):
        server.http.post(server.url + "/jobs", json=body(f"r{i}"), timeout=10)
        server.http.patch(f"{server.url}/jobs/r{i}/status", json={"status": "running"}, timeout=10)
    targets = ["succeeded", "failed", "cancelled"] * 4
    for i in range(5):
        barrier = threading.Barrier(len(targets))

        def attempt(target, job_id=f"r{i}", barrier=barrier):
            barrier.wait()
            with server.session() as s:
                return s.patch(f"{server.url}/jobs/{job_id}/status", json={"status": target},
                               timeout=20, headers={"Connection": "close"})

        with ThreadPoolExecutor(len(targets)) as pool:
            responses = list(pool.map(attempt, targets))
        assert all(r.status_code in (200, 409) for r in responses), [r.text for r in responses]
        final = fresh_get(server, f"{server.url}/jobs/r{i}").json()["status"]
        # Every 200 reports the winner's status: a loser with another target always gets 409.
        oks = {r.json()["status"] for r in responses if r.status_code == 200}
        assert oks == {final}
        losers = [r for r in responses if r.status_code == 409]
        assert len(losers) == targets.count("succeeded") * 2
        events = fresh_get(server, f"{server.url}/jobs/r{i}/events").json()
        assert [e["to_status"] for e in events] == ["queued", "running", final]


def test_nothing_acknowledged_is_lost_on_kill_9(gunicorn_factory, server_env):
    server = gunicorn_factory(workers=2, env=server_env)
    acked: dict[str, set[str]] = {}
    stop = threading.Event()

    def writer(n):
        i = 0
        with server.session() as s:
            while not stop.is_set():
                job_id = f"k{n}-{i}"
                try:
                    r = s.post(server.url + "/jobs", json=body(job_id), timeout=5)
                    if r.status_code == 201:
                        # While the PATCH is in flight either status is legitimate.
                        acked[job_id] = {"queued", "running"}
                        r = s.patch(f"{server.url}/jobs/{job_id}/status",
                                    json={"status": "running"}, timeout=5)
                        acked[job_id] = {"running"} if r.status_code == 200 else {"queued"}
                except requests.RequestException:
                    return
                i += 1

    threads = [threading.Thread(target=writer, args=(n,)) for n in range(4)]
    for t in threads:
        t.start()
    time.sleep(2.0)
    server.kill_hard()  # mid-traffic, no graceful shutdown
    stop.set()
    for t in threads:
        t.join()
    assert len(acked) > 20, "too few writes before the kill to prove anything"

    restarted = gunicorn_factory(workers=2, env=server_env)
    for job_id, statuses in acked.items():
        resp = fresh_get(restarted, f"{restarted.url}/jobs/{job_id}")
        assert resp.status_code == 200, f"acknowledged job {job_id} lost"
        assert resp.json()["status"] in statuses, f"acknowledged change on {job_id} lost"
    assert sum(statuses == {"running"} for statuses in acked.values()) > 10


def oversized_job(size: int):
    """A job document of about `size` bytes, sent in pieces (chunked unless joined)."""
    yield b'{"model_name": "m", "dataset": "d", "hyperparameters": {"x": "'
    for _ in range(size // 8192):
        yield b"y" * 8192
    yield b'"}}'


def test_oversized_bodies_get_their_413_not_a_reset(gunicorn_factory):
    # The 413 is decided with most of the body still unread. Closing on unread bytes makes
    # the kernel send a RST that discards the response the client has not read yet: without
    # the drain, about one try in three ended in "connection reset" instead of the 413.
    server = gunicorn_factory(workers=1)
    json_header = {"Content-Type": "application/json"}
    for _ in range(6):
        chunked = server.http.post(server.url + "/jobs", data=oversized_job(2 << 20),
                                   headers=json_header, timeout=30)
        assert chunked.status_code == 413 and chunked.json()["code"] == 413
        declared = server.http.post(server.url + "/jobs",
                                    data=b"".join(oversized_job(3 << 20)),
                                    headers=json_header, timeout=30)
        assert declared.status_code == 413 and declared.json()["code"] == 413
    # Under the limit, a chunked body is read whole (not cut at the limit) and accepted.
    small = server.http.post(server.url + "/jobs", data=oversized_job(32768),
                             headers=json_header, timeout=30)
    assert small.status_code == 201, small.text
    assert len(server.http.get(server.url + "/jobs", timeout=10).json()) == 1


def test_a_stalled_oversized_body_gets_its_413_at_once_and_is_let_go(gunicorn_factory):
    server = gunicorn_factory(workers=1)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        piece = b'{"x": "' + b"y" * (2 << 20)
        sock.sendall(b"POST /jobs HTTP/1.1\r\nHost: api\r\n"
                     b"Authorization: Bearer " + server.token.encode() + b"\r\n"
                     b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
                     + b"%x\r\n" % len(piece) + piece + b"\r\n")
        # The body never ends. The 413 is sent before the rest is drained, not after the
        # drain gives up, so a client that reads early can stop sending.
        sock.settimeout(DRAIN_MAX_SECONDS - 1)
        assert sock.recv(65536).startswith(b"HTTP/1.1 413 ")
        # Then the server stops waiting for the rest and closes: the thread is free again.
        sock.settimeout(60)
        try:
            while sock.recv(65536):
                pass
        except ConnectionResetError:
            pass
    assert server.http.get(server.url + "/jobs", timeout=10).json() == []


def test_an_upload_refused_before_reading_gets_its_401(gunicorn_factory):
    server = gunicorn_factory(workers=1)
    lines = b"".join(b"line %d of a dataset nobody may upload\n" % i for i in range(100_000))
    assert len(lines) > 3 << 20
    for _ in range(4):
        refused = requests.put(server.url + "/datasets/big", data=lines, timeout=30,
                               headers={"Content-Type": "text/plain"})
        assert refused.status_code == 401 and refused.json()["code"] == 401
    datasets = server.http.get(server.url + "/datasets", timeout=10).json()
    assert "big" not in {d["name"] for d in datasets}


@pytest.mark.postgres
def test_two_hosts_on_one_postgres_share_one_set_of_jobs(gunicorn_factory, pg_url):
    env = {"LLM_TRAIN_API_DATABASE_URL": pg_url}
    host_a = gunicorn_factory(workers=2, env=env)
    host_b = gunicorn_factory(workers=2, env=env)
    created = host_a.http.post(host_a.url + "/jobs", json=body("shared"), timeout=10)
    assert created.status_code == 201
    retried = host_b.http.post(host_b.url + "/jobs", json=body("shared"), timeout=10)
    assert retried.status_code == 200
    moved = host_b.http.patch(host_b.url + "/jobs/shared/status", json={"status": "running"},
                           timeout=10)
    assert moved.status_code == 200
    assert fresh_get(host_a, host_a.url + "/jobs/shared").json()["status"] == "running"
    late = host_a.http.patch(host_a.url + "/jobs/shared/status", json={"status": "queued"},
                          headers={"If-Match": '"0-1"'}, timeout=10)
    assert late.status_code == 412


# What gunicorn ends up with, from its own config loading: every setting, hooks by name.
_EFFECTIVE = """
import json, sys
from gunicorn.app.wsgiapp import WSGIApplication
sys.argv = ["gunicorn", *sys.argv[1:]]
cfg = WSGIApplication("%(prog)s [OPTIONS] [APP_MODULE]").cfg
def shown(value):
    if callable(value):
        return f"{value.__module__}.{value.__qualname__}"
    return value if isinstance(value, (str, int, float, bool, type(None), list)) else repr(value)
# Not configuration but the invocation: the config file, the app, the folder it ran in.
invocation = ("config", "wsgi_app", "default_proc_name", "chdir")
print(json.dumps({name: shown(s.get()) for name, s in cfg.settings.items()
                  if name not in invocation}))
"""


def effective_gunicorn_settings(argv: list[str], cwd, env: dict[str, str]) -> dict:
    out = subprocess.run([sys.executable, "-c", _EFFECTIVE, *argv], cwd=cwd, env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout)


def test_serve_gets_the_package_configuration_anywhere_and_the_checkout_the_same(tmp_path):
    env = {**os.environ, "LLM_TRAIN_API_WORKERS": "3", "LLM_TRAIN_API_THREADS": "5",
           "LLM_TRAIN_API_BIND": "127.0.0.1:8123", "LLM_TRAIN_API_ACCESS_LOG": ""}
    # `llm-train-api serve` from a folder that is not the checkout (as from a wheel).
    served = effective_gunicorn_settings(gunicorn_argv(None, None)[3:], tmp_path, env)
    assert served["workers"] == 3 and served["threads"] == 5
    # gunicorn's gthread worker with JSON error answers, and an access log without tokens.
    assert served["worker_class"] == "llm_train_api.api.gunicorn_worker.ServiceWorker"
    assert served["logger_class"] == "llm_train_api.api.gunicorn_logging.RedactingLogger"
    assert served["bind"] == ["127.0.0.1:8123"]
    assert served["accesslog"] is None and served["preload_app"] is False
    assert served["on_starting"] == "llm_train_api.api.gunicorn_conf.on_starting"
    assert served["child_exit"] == "llm_train_api.api.gunicorn_conf.child_exit"
    # `gunicorn wsgi:app` in the checkout reads gunicorn.conf.py: exactly the same settings.
    checkout = effective_gunicorn_settings(["wsgi:app"], REPO_ROOT, env)
    assert checkout == served
    # Command-line options still win over the configuration.
    explicit = effective_gunicorn_settings(gunicorn_argv("127.0.0.1:9", 2)[3:], tmp_path, env)
    assert explicit["workers"] == 2 and explicit["bind"] == ["127.0.0.1:9"]


def test_workers_default_to_two_per_core_plus_one_at_most_nine(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LLM_TRAIN_API_WORKERS"}
    served = effective_gunicorn_settings(gunicorn_argv(None, None)[3:], tmp_path, env)
    assert served["workers"] == min(2 * (os.cpu_count() or 1) + 1, 9)
    assert served["threads"] == 4 and served["bind"] == ["127.0.0.1:8000"]


def test_a_real_serve_outside_the_checkout_runs_the_package_configuration(tmp_path):
    port = free_port()
    instance = tmp_path / "instance"
    env = {**os.environ, "LLM_TRAIN_API_INSTANCE_PATH": str(instance),
           "LLM_TRAIN_API_EXECUTOR": "none", "LLM_TRAIN_API_WORKERS": "2",
           "LLM_TRAIN_API_BIND": f"127.0.0.1:{port}", "LLM_TRAIN_API_ACCESS_LOG": ""}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)
    log = open(tmp_path / "serve.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "llm_train_api.cli", "serve"],
                            cwd=tmp_path, env=env, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 30
        while True:
            assert proc.poll() is None, (tmp_path / "serve.log").read_text()
            assert time.monotonic() < deadline, (tmp_path / "serve.log").read_text()
            try:
                if requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                time.sleep(0.1)
        workers = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True,
                                 text=True).stdout.split()
        assert len(workers) == 2
        # The Prometheus hooks ran: the master prepared the shared samples folder, and the
        # workers write their request metrics there.
        samples = instance / MULTIPROC_SUBDIR
        assert samples.is_dir()
        assert list(samples.glob("*.db")), "no multiprocess samples: the hooks did not run"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
        log.close()


def raw_exchange(port: int, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """Send `request` as is on a new connection; the status, headers and body of the answer
    (gunicorn closes the connection after its own error answers)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        data = b""
        try:
            while chunk := sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            pass
    head, _, content = data.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, content


@pytest.mark.parametrize(("request_bytes", "statuses"), [
    pytest.param(b"GET /jobs?x=" + b"a" * 10_000 + b" HTTP/1.1\r\nHost: api\r\n\r\n",
                 {414}, id="10 KB request line"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: api\r\nX-Big: " + b"b" * 20_000
                 + b"\r\n\r\n", {400, 431}, id="20 KB header"),
    pytest.param(b"GET /healthz HTTP/1.1\r\nHost: api\r\n"
                 + b"".join(b"X-F%d: v\r\n" % i for i in range(200)) + b"\r\n",
                 {400, 431}, id="200 header fields"),
    pytest.param(b"NOT A REQUEST LINE\r\n\r\n", {400}, id="bad request line"),
])
def test_the_servers_own_4xx_answers_are_the_json_error_shape(gunicorn_factory, request_bytes,
                                                              statuses):
    server = gunicorn_factory(workers=1)
    for _ in range(3):
        status, headers, content = raw_exchange(server.port, request_bytes)
        assert status in statuses, content
        assert headers["content-type"] == "application/json"
        assert int(headers["content-length"]) == len(content)
        error = json.loads(content)
        assert set(error) == {"code", "status", "message"} and error["code"] == status
        assert error["message"] and "<" not in error["message"]
    # And it keeps serving.
    assert server.http.get(server.url + "/healthz", timeout=10).status_code == 200
    assert server.http.get(server.url + "/jobs", timeout=10).json() == []


def test_tokens_never_reach_the_access_log(gunicorn_factory, tmp_path):
    access_log = tmp_path / "access.log"
    server = gunicorn_factory(workers=1, env={"LLM_TRAIN_API_ACCESS_LOG": str(access_log)})
    token = server.token
    assert token and token.startswith("ltk_")
    requests.get(f"{server.url}/jobs?access_token={token}", timeout=10)
    requests.get(f"{server.url}/jobs?limit=5&token=s3cret-value&status=queued", timeout=10)
    requests.get(f"{server.url}/jobs?api_key=another-secret", timeout=10)
    requests.get(f"{server.url}/jobs?whatever={token}", timeout=10)
    requests.get(f"{server.url}/jobs/{token}", timeout=10)
    raw_exchange(server.port, b"GET /jobs?access_token=" + token.encode()
                 + b" HTTP/1.1\r\nHost: api\r\n" + b"".join(b"X-F%d: v\r\n" % i
                                                           for i in range(200)) + b"\r\n")
    server.http.get(f"{server.url}/jobs?limit=1", timeout=10)
    deadline = time.monotonic() + 10
    while "limit=1 " not in (text := access_log.read_text() if access_log.exists() else ""):
        assert time.monotonic() < deadline, text
        time.sleep(0.1)
    assert text.count("\n") >= 6, text
    assert token not in text and token[4:20] not in text
    for secret in ("s3cret-value", "another-secret"):
        assert secret not in text
    assert "access_token=[redacted]" in text and "token=[redacted]" in text
    assert "api_key=[redacted]" in text and "whatever=[redacted]" in text
    assert "/jobs/[redacted]" in text
    # Other parameters stay readable.
    assert "limit=5" in text and "status=queued" in text
