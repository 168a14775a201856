"""Dispatch and cancel latency of the local executor, on SQLite and on PostgreSQL.

For each of N jobs, with one idle worker: the time from POST /jobs to the job being
`running` (as GET shows it), then, once its trainer process exists, the time from POST
/jobs/{id}/cancel to that process being gone. Real gunicorn, a real worker process, default
settings (LLM_TRAIN_API_POLL_S=0.5), on loopback.

    .venv/bin/python bench/worker/run.py [--jobs 50] [--db sqlite|postgres|both]
    .venv/bin/python bench/worker/run.py --ray [--jobs 10]   (Ray vs local: ray_latency.py)
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import requests
from sqlalchemy import create_engine, text

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN = os.environ.get("LLM_TRAIN_API_TEST_PG_URL",
                          "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def wait_ready(base: str, timeout: float = 30.0) -> None:
    """Until the API answers /readyz, then a moment for the worker to start polling."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if requests.get(base + "/readyz", timeout=1).status_code == 200:
                break
        except requests.RequestException:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError("server did not start")
        time.sleep(0.1)
    time.sleep(2)


def measure(db: str, jobs: int) -> dict[str, list[float]]:
    scratch = Path(tempfile.mkdtemp(prefix="bench_worker_"))
    schema = None
    if db == "sqlite":
        url = f"sqlite:///{scratch / 'jobs.sqlite3'}"
    else:
        schema = f"bench_worker_{uuid.uuid4().hex[:8]}"
        with create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        url = f"{PG_ADMIN}?options=-csearch_path%3D{schema}"
    port = free_port()
    env = {**os.environ, "LLM_TRAIN_API_DATABASE_URL": url,
           "LLM_TRAIN_API_INSTANCE_PATH": str(scratch), "LLM_TRAIN_API_ACCESS_LOG": "",
           "LLM_TRAIN_API_TRAINER_THREADS": "1",
           # Dispatch latency, not authentication (bench/run auth measures that).
           "LLM_TRAIN_API_AUTH": "disabled"}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-w", "2", "-b",
         f"127.0.0.1:{port}", "wsgi:app"], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    worker = subprocess.Popen([sys.executable, "-m", "llm_train_api.cli", "worker"], cwd=REPO,
                              env=env, start_new_session=True, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    results: dict[str, list[float]] = {"dispatch": [], "cancel": []}
    try:
        wait_ready(base)
        session = requests.Session()
        for n in range(jobs):
            body = {"job_id": f"lat{n}", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
                    "hyperparameters": {"max_steps": 1_000_000, "epochs": 10_000,
                                        "batch_size": 4, "block_size": 32}}
            t0 = time.perf_counter()
            assert session.post(base + "/jobs", json=body, timeout=10).status_code == 201
            while True:
                job = session.get(f"{base}/jobs/lat{n}", timeout=10).json()
                if job["status"] == "running":
                    results["dispatch"].append(time.perf_counter() - t0)
                    break
                time.sleep(0.005)
            while not (job.get("progress") or {}).get("pid"):
                time.sleep(0.02)
                job = session.get(f"{base}/jobs/lat{n}", timeout=10).json()
            pid = job["progress"]["pid"]
            t1 = time.perf_counter()
            assert session.post(f"{base}/jobs/lat{n}/cancel", timeout=10).status_code == 200
            while alive(pid):
                time.sleep(0.005)
            results["cancel"].append(time.perf_counter() - t1)
        return results
    finally:
        for proc in (worker, server):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
        if schema:
            with create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT").connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))


def main() -> None:
    if "--ray" in sys.argv[1:]:  # `bench/run worker --ray`: dispatch latency through Ray
        from ray_latency import main as ray_main

        ray_main([a for a in sys.argv[1:] if a != "--ray"])
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    args = parser.parse_args()
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {args.jobs} jobs each, one worker, "
          "POLL_S=0.5 (default)\n")
    print("| database | dispatch p50 | dispatch p95 | cancel→exit p50 | cancel→exit p95 |")
    print("|---|---:|---:|---:|---:|")
    for db in dbs:
        r = measure(db, args.jobs)
        print(f"| {db} | {statistics.median(r['dispatch']) * 1000:.0f} ms | "
              f"{percentile(r['dispatch'], 0.95) * 1000:.0f} ms | "
              f"{statistics.median(r['cancel']) * 1000:.0f} ms | "
              f"{percentile(r['cancel'], 0.95) * 1000:.0f} ms |", flush=True)


if __name__ == "__main__":
    main()
