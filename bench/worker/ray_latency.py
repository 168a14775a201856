"""Dispatch latency through Ray, side by side with the local executor, in one run.

For each of N jobs, with one idle worker (local) or one idle dispatcher (Ray, a private
head on loopback started here, 2 CPUs): the time from POST /jobs to
- `running` in the API (the claim),
- the run started: Ray's own status RUNNING (Ray), the trainer's pid in `progress` (local),
- the first progress step (the trainer's first `metrics` line, recorded in the database),
then, from POST /jobs/{id}/cancel, the time until the run is gone (Ray status STOPPED, or the
trainer process exited). SQLite, real gunicorn, default POLL_S.

    .venv/bin/python bench/worker/ray_latency.py [--jobs 10]     (or: bench/run worker --ray)
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO), str(Path(__file__).resolve().parent)]

from run import alive, free_port, percentile, wait_ready  # noqa: E402 - bench/worker/run.py

from tests.helpers.ray_cluster import RayHead  # noqa: E402 - the same private head as the tests


def measure(executor: str, jobs: int, head: RayHead | None) -> dict[str, list[float]]:
    scratch = Path(tempfile.mkdtemp(prefix=f"bench_{executor}_"))
    port = free_port()
    env = {**os.environ, "LLM_TRAIN_API_DATABASE_URL": f"sqlite:///{scratch / 'jobs.sqlite3'}",
           "LLM_TRAIN_API_INSTANCE_PATH": str(scratch), "LLM_TRAIN_API_ACCESS_LOG": "",
           "LLM_TRAIN_API_TRAINER_THREADS": "1", "LLM_TRAIN_API_AUTH": "disabled",
           "LLM_TRAIN_API_RAY_PYTHON": sys.executable}
    server = subprocess.Popen(
        [sys.executable, "-m", "gunicorn", "-c", "gunicorn.conf.py", "-w", "2", "-b",
         f"127.0.0.1:{port}", "wsgi:app"], cwd=REPO, env=env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    argv = [sys.executable, "-m", "llm_train_api.cli", "worker"]
    if executor == "ray":
        assert head is not None
        argv += ["--executor", "ray", "--ray-address", head.address]
    worker = subprocess.Popen(argv, cwd=REPO, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    client = None
    if head is not None:
        from ray.job_submission import JobSubmissionClient

        client = JobSubmissionClient(head.address)
    base = f"http://127.0.0.1:{port}"
    out: dict[str, list[float]] = {"claimed": [], "started": [], "first_step": [], "cancel": []}
    try:
        wait_ready(base)
        session = requests.Session()
        for n in range(jobs):
            job_id = f"{executor}{n}"
            body = {"job_id": job_id, "model_name": "gpt-nano", "dataset": "builtin:tinytext",
                    "hyperparameters": {"max_steps": 1_000_000, "epochs": 10_000,
                                        "batch_size": 4, "block_size": 32, "log_interval": 1,
                                        "eval_interval": 0}}
            t0 = time.perf_counter()
            assert session.post(base + "/jobs", json=body, timeout=10).status_code == 201
            marks: dict[str, float] = {}
            job: dict = {}
            while "first_step" not in marks:
                job = session.get(f"{base}/jobs/{job_id}", timeout=10).json()
                now = time.perf_counter() - t0
                progress = job.get("progress") or {}
                if job["status"] == "running":
                    marks.setdefault("claimed", now)
                if executor == "local" and progress.get("pid"):
                    marks.setdefault("started", now)
                sid = progress.get("ray_submission_id")
                if client is not None and sid and "started" not in marks \
                        and str(client.get_job_status(sid).value) == "RUNNING":
                    marks["started"] = time.perf_counter() - t0
                if (progress.get("step") or 0) >= 1:
                    marks.setdefault("started", now)
                    marks["first_step"] = now
                if job["status"] not in ("queued", "running"):
                    raise RuntimeError(f"{job_id} ended early: {job}")
                time.sleep(0.01)
            for key, value in marks.items():
                out[key].append(value)
            progress = job["progress"]
            t1 = time.perf_counter()
            assert session.post(f"{base}/jobs/{job_id}/cancel", timeout=10).status_code == 200
            if executor == "local":
                while alive(progress["pid"]):
                    time.sleep(0.005)
            else:
                assert client is not None
                while str(client.get_job_status(progress["ray_submission_id"]).value) \
                        != "STOPPED":
                    time.sleep(0.02)
            out["cancel"].append(time.perf_counter() - t1)
        return out
    finally:
        for proc in (worker, server):
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)


def _ms(values: list[float]) -> str:
    return (f"{statistics.median(values) * 1000:.0f} / {percentile(values, 0.95) * 1000:.0f} ms"
            if values else "-")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=10)
    args = parser.parse_args(argv)
    print(f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"{time.strftime('%Y-%m-%d %H:%M %Z')}; {args.jobs} jobs per executor, SQLite, "
          "POLL_S=0.5 (default); Ray head on loopback, 2 CPUs; p50 / p95\n")
    print("| executor | created → running (claim) | → run started | → first step "
          "| cancel → run gone |")
    print("|---|---:|---:|---:|---:|")
    head = RayHead()
    head.start()
    try:
        for executor in ("local", "ray"):
            r = measure(executor, args.jobs, head if executor == "ray" else None)
            print(f"| {executor} | {_ms(r['claimed'])} | {_ms(r['started'])} | "
                  f"{_ms(r['first_step'])} | {_ms(r['cancel'])} |", flush=True)
    finally:
        head.stop()


if __name__ == "__main__":
    main()
