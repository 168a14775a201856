"""/metrics against a real gunicorn with several worker processes: request histograms add
up across processes (prometheus_client's multiprocess mode, set up by gunicorn.conf.py),
the job figures are read from the database, and the exposition parses.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import create_engine, func, select

from llm_train_api.api.metrics import MULTIPROC_SUBDIR
from llm_train_api.store import tables
from tests.helpers.servers import REPO_ROOT, GunicornServer

WORKERS = 3
METRICS_TOKEN = "scrape-me-0123456789"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One gunicorn for the module (auth off: the job figures are the subject here), whose
    multiprocess directory holds a stale file from a "previous run" before it starts."""
    root = tmp_path_factory.mktemp("prometheus")
    stale_dir = root / "instance" / MULTIPROC_SUBDIR
    stale_dir.mkdir(parents=True)
    (stale_dir / "histogram_999999.db").write_bytes(b"left over from a previous run")
    srv = GunicornServer(
        workers=WORKERS,
        env={"LLM_TRAIN_API_INSTANCE_PATH": str(root / "instance"),
             "LLM_TRAIN_API_DATABASE_URL": f"sqlite:///{root / 'jobs.sqlite3'}",
             "LLM_TRAIN_API_EXECUTOR": "none", "LLM_TRAIN_API_AUTH": "disabled",
             "LLM_TRAIN_API_ACCESS_LOG": ""},
        log_path=root / "gunicorn.log")
    srv.start()
    srv.root = root
    srv.multiproc_dir = stale_dir
    yield srv
    srv.stop()


def scrape(server, **headers) -> dict[str, list]:
    """{family name: [samples]} from one GET /metrics."""
    resp = requests.get(server.url + "/metrics", headers=headers, timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    families = {}
    for family in text_string_to_metric_families(resp.text):
        families[family.name] = family.samples
    return families


def value(samples, name: str, **labels) -> float:
    found = [s.value for s in samples if s.name == name
             and all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, samples)
    return found[0]


def request_count(families, endpoint: str, method: str = "GET") -> float:
    samples = families.get("llm_train_api_http_request_duration_seconds", [])
    return sum(s.value for s in samples
               if s.name == "llm_train_api_http_request_duration_seconds_count"
               and s.labels["endpoint"] == endpoint and s.labels["method"] == method)


def test_the_master_empties_the_multiprocess_directory_at_start(server):
    assert not (server.multiproc_dir / "histogram_999999.db").exists()


def test_exposition_parses_and_names_every_family(server):
    families = scrape(server)
    assert {"llm_train_api_http_request_duration_seconds", "llm_train_api_jobs",
            "llm_train_api_queue_depth", "llm_train_api_queue_oldest_age_seconds",
            "llm_train_api_dispatch_latency_seconds", "llm_train_api_dispatch_latency_window_jobs",
            "llm_train_api_database_up"} <= set(families)
    assert value(families["llm_train_api_database_up"], "llm_train_api_database_up") == 1
    # OpenMetrics for scrapers that ask for it.
    resp = requests.get(server.url + "/metrics", timeout=10,
                        headers={"Accept": "application/openmetrics-text; version=1.0.0"})
    assert resp.headers["Content-Type"].startswith("application/openmetrics-text")
    assert resp.text.rstrip().endswith("# EOF")


def test_request_counts_add_up_across_worker_processes(server):
    """Requests go out in concurrent batches until at least two worker processes have served
    some: sequential connections can all land on the one process the kernel wakes first, and
    a sum over one process proves nothing."""
    before = request_count(scrape(server), "health.Liveness")

    def healthz(_: int) -> int:
        # No session: a new connection each time, so gunicorn spreads them over its workers.
        return requests.get(server.url + "/healthz", timeout=10).status_code

    sent = 0
    writers: set[str] = set()
    with ThreadPoolExecutor(max_workers=24) as pool:
        for _ in range(20):
            assert set(pool.map(healthz, range(48))) == {200}
            sent += 48
            writers = {p.name.rsplit("_", 1)[-1]
                       for p in server.multiproc_dir.glob("histogram_*.db")}
            if len(writers) >= 2:
                break
    assert len(writers) >= 2, f"only {writers} served requests; the sum proves nothing"
    assert request_count(scrape(server), "health.Liveness") == before + sent


def test_status_classes_and_unmatched_urls_are_labelled(server):
    requests.get(server.url + "/healthz", timeout=10)
    requests.get(server.url + "/jobs/no-such-job", timeout=10)
    requests.get(server.url + "/no/such/path", timeout=10)
    requests.request("BREW", server.url + "/healthz", timeout=10)  # 405
    # Refused by a before_request hook, before any view runs: timed all the same.
    refused = requests.post(server.url + "/jobs", data="{}", timeout=10,
                            headers={"Content-Type": "text/plain"})
    assert refused.status_code == 415
    samples = scrape(server)["llm_train_api_http_request_duration_seconds"]
    counts = {(s.labels["endpoint"], s.labels["status"]) for s in samples
              if s.name.endswith("_count")}
    assert ("jobs.JobResource", "4xx") in counts
    assert ("unmatched", "4xx") in counts
    assert value(samples, "llm_train_api_http_request_duration_seconds_count",
                 endpoint="jobs.Jobs", method="POST", status="4xx") >= 1
    methods = {s.labels["method"] for s in samples if s.name.endswith("_count")}
    assert "other" in methods and "BREW" not in methods
    buckets = [s for s in samples if s.name.endswith("_bucket")
               and s.labels["endpoint"] == "health.Liveness" and s.labels["le"] == "+Inf"]
    assert buckets and all(b.value >= 1 for b in buckets)


def test_jobs_by_status_match_the_database(server):
    http = requests.Session()
    for i, target in enumerate(["queued", "queued", "running", "running", "succeeded",
                                "failed", "cancelled", "queued", "paused"]):
        job_id = f"m{i}"
        resp = http.post(server.url + "/jobs", json={"job_id": job_id, "model_name": "m",
                                                     "dataset": "d"}, timeout=10)
        assert resp.status_code == 201, resp.text
        path = ["running", target] if target in ("succeeded", "failed") else [target]
        for status in path:
            if status != "queued":
                resp = http.patch(f"{server.url}/jobs/{job_id}/status",
                                  json={"status": status}, timeout=10)
                assert resp.status_code == 200, resp.text
    engine = create_engine(f"sqlite:///{server.root / 'jobs.sqlite3'}")
    with engine.connect() as conn:
        in_db = dict(conn.execute(select(tables.jobs.c.status, func.count())
                                  .group_by(tables.jobs.c.status)).all())
    engine.dispose()
    assert in_db == {"queued": 3, "running": 2, "succeeded": 1, "failed": 1, "cancelled": 1,
                     "paused": 1}
    families = scrape(server)
    for status in ("queued", "running", "succeeded", "failed", "cancelled", "paused"):
        assert value(families["llm_train_api_jobs"], "llm_train_api_jobs",
                     status=status) == in_db.get(status, 0)
    assert value(families["llm_train_api_queue_depth"], "llm_train_api_queue_depth") == 3
    assert value(families["llm_train_api_queue_oldest_age_seconds"],
                 "llm_train_api_queue_oldest_age_seconds") > 0


def test_dispatch_latency_is_creation_to_first_start(server):
    http = requests.Session()
    assert http.post(server.url + "/jobs", json={"job_id": "slow-start", "model_name": "m",
                                                 "dataset": "d"}, timeout=10).status_code == 201
    time.sleep(1.2)
    assert http.patch(server.url + "/jobs/slow-start/status", json={"status": "running"},
                      timeout=10).status_code == 200
    # A requeue and a second start must not change the first start's latency.
    assert http.patch(server.url + "/jobs/slow-start/status", json={"status": "queued"},
                      timeout=10).status_code == 200
    assert http.patch(server.url + "/jobs/slow-start/status", json={"status": "running"},
                      timeout=10).status_code == 200
    families = scrape(server)
    latency = families["llm_train_api_dispatch_latency_seconds"]
    slowest = value(latency, "llm_train_api_dispatch_latency_seconds", quantile="1")
    assert 1.2 <= slowest < 10
    median = value(latency, "llm_train_api_dispatch_latency_seconds", quantile="0.5")
    assert 0 <= median <= slowest
    assert value(families["llm_train_api_dispatch_latency_window_jobs"],
                 "llm_train_api_dispatch_latency_window_jobs") >= 1


def test_counts_survive_a_worker_process_dying(server):
    for _ in range(10):
        requests.get(server.url + "/healthz", timeout=10)
    before = request_count(scrape(server), "health.Liveness")
    victim = server.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        pids = server.worker_pids()
        if victim not in pids and len(pids) == WORKERS:
            break
        time.sleep(0.1)
    else:
        raise AssertionError("gunicorn did not replace the killed worker")
    # The dead process's samples stay in the sum: counters never go backwards.
    assert request_count(scrape(server), "health.Liveness") >= before


def test_metrics_and_ui_stay_out_of_the_openapi_document(server):
    paths = requests.get(server.url + "/openapi.json", timeout=10).json()["paths"]
    assert not [p for p in paths if p.startswith(("/metrics", "/ui"))]


def test_scrapes_need_the_metrics_token_or_an_admin_when_auth_is_on(tmp_path):
    srv = GunicornServer(
        workers=1,
        env={"LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path / "instance"),
             "LLM_TRAIN_API_AUTH": "required", "LLM_TRAIN_API_METRICS_TOKEN": METRICS_TOKEN,
             "LLM_TRAIN_API_ACCESS_LOG": ""},
        log_path=tmp_path / "gunicorn.log")
    srv.start()
    try:
        assert requests.get(srv.url + "/metrics", timeout=10).status_code == 401
        wrong = requests.get(srv.url + "/metrics", timeout=10,
                             headers={"Authorization": "Bearer not-a-token"})
        assert wrong.status_code == 401
        scraped = scrape(srv, Authorization=f"Bearer {METRICS_TOKEN}")
        assert "llm_train_api_jobs" in scraped
        # The metrics token opens /metrics only.
        other = requests.get(srv.url + "/jobs", timeout=10,
                             headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
        assert other.status_code == 401
    finally:
        srv.stop()


def test_without_prometheus_client_metrics_is_a_404_and_the_rest_works(tmp_path):
    """prometheus_client is an optional extra: block its import in a fresh interpreter."""
    script = f"""
import sys
sys.modules["prometheus_client"] = None  # what an environment without the extra looks like
from llm_train_api import create_app
app = create_app({{"INSTANCE_PATH": {str(tmp_path / "instance")!r}, "AUTH": "disabled",
                  "EXECUTOR": "none"}})
client = app.test_client()
resp = client.get("/metrics")
assert resp.status_code == 404, resp.status_code
assert resp.is_json and "prometheus_client" in resp.json["message"], resp.data
assert client.get("/healthz").status_code == 200
assert client.post("/jobs", json={{"model_name": "m", "dataset": "d"}}).status_code == 201
assert "prometheus_client" not in sys.modules or sys.modules["prometheus_client"] is None
print("ok")
"""
    out = subprocess.run([sys.executable, "-c", script], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=60, env={**os.environ})
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr



@pytest.mark.postgres
def test_the_job_figures_on_postgresql(gunicorn_factory, pg_url):
    server = gunicorn_factory(workers=2, env={"LLM_TRAIN_API_DATABASE_URL": pg_url,
                                              "LLM_TRAIN_API_AUTH": "disabled",
                                              "LLM_TRAIN_API_ACCESS_LOG": ""})
    http = requests.Session()
    for job_id in ("p1", "p2", "p3"):
        assert http.post(server.url + "/jobs", json={"job_id": job_id, "model_name": "m",
                                                     "dataset": "d"}, timeout=10).status_code == 201
    time.sleep(0.3)
    for job_id, status in (("p1", "running"), ("p2", "cancelled")):
        assert http.patch(f"{server.url}/jobs/{job_id}/status", json={"status": status},
                          timeout=10).status_code == 200
    families = scrape(server)
    jobs = families["llm_train_api_jobs"]
    assert [value(jobs, "llm_train_api_jobs", status=s) for s in ("queued", "running",
                                                                  "cancelled")] == [1, 1, 1]
    assert value(families["llm_train_api_dispatch_latency_window_jobs"],
                 "llm_train_api_dispatch_latency_window_jobs") == 1
    assert 0.3 <= value(families["llm_train_api_dispatch_latency_seconds"],
                        "llm_train_api_dispatch_latency_seconds", quantile="1") < 10
