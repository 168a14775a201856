"""Behaviour that crosses processes, against a real `gunicorn wsgi:app` with several workers."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests


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


def test_oversized_chunked_body_is_413_not_truncated(gunicorn_factory):
    server = gunicorn_factory(workers=1)

    def chunks(size):
        head = b'{"model_name": "m", "dataset": "d", "hyperparameters": {"x": "'
        yield head
        for _ in range(size // 8192):
            yield b"y" * 8192
        yield b'"}}'

    big = server.http.post(server.url + "/jobs", data=chunks(2 * 1024 * 1024), timeout=30,
                        headers={"Content-Type": "application/json"})
    assert big.status_code == 413 and big.json()["code"] == 413
    small = server.http.post(server.url + "/jobs", data=chunks(32768), timeout=30,
                          headers={"Content-Type": "application/json"})
    assert small.status_code == 201, small.text
    assert len(server.http.get(server.url + "/jobs", timeout=10).json()) == 1


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
