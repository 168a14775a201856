"""`llm-train-api up`: the API and a worker together; Ctrl-C leaves no process behind."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import requests

from tests.helpers.servers import REPO_ROOT, free_port


def descendants(pid: int) -> set[int]:
    found, frontier = set(), [pid]
    while frontier:
        parent = frontier.pop()
        out = subprocess.run(["pgrep", "-P", str(parent)], capture_output=True, text=True)
        kids = {int(p) for p in out.stdout.split()}
        found |= kids
        frontier += kids
    return found


def test_up_serves_runs_a_job_and_stops_cleanly_on_ctrl_c(tmp_path):
    port = free_port()
    env = {**os.environ, "LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path),
           "LLM_TRAIN_API_WORKERS": "2", "LLM_TRAIN_API_POLL_S": "0.2",
           "LLM_TRAIN_API_TRAINER_THREADS": "1", "LLM_TRAIN_API_ACCESS_LOG": ""}
    proc = subprocess.Popen(
        [sys.executable, "-m", "llm_train_api.cli", "up", "--bind", f"127.0.0.1:{port}"],
        cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        # `up` announces the URL, then (first start) the admin token it wrote.
        lines: list[str] = []
        while not any("export LLM_TRAIN_API_TOKEN=" in line for line in lines):
            line = proc.stdout.readline()
            assert line, "".join(lines)
            lines.append(line)
        listening = next(i for i, line in enumerate(lines)
                         if f"listening on http://127.0.0.1:{port}" in line)
        token = (tmp_path / "admin-token").read_text().strip()
        assert f"export LLM_TRAIN_API_TOKEN={token}" in "".join(lines[listening:])
        url = f"http://127.0.0.1:{port}"
        http = requests.Session()
        http.headers["Authorization"] = f"Bearer {token}"
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if requests.get(url + "/readyz", timeout=1).status_code == 200:
                    break
            except requests.RequestException:
                time.sleep(0.2)
        body = {"job_id": "demo", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
                "hyperparameters": {"max_steps": 5, "epochs": 100, "batch_size": 4,
                                    "block_size": 32}}
        assert http.post(url + "/jobs", json=body, timeout=10).status_code == 201
        deadline = time.monotonic() + 60
        while http.get(url + "/jobs/demo", timeout=5).json()["status"] != "succeeded":
            assert time.monotonic() < deadline, "the job did not run"
            time.sleep(0.3)
        family = descendants(proc.pid)
        assert len(family) >= 3  # gunicorn master + its workers + the job worker
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=40) == 0
        time.sleep(0.5)
        left = {pid for pid in family if os.path.exists(f"/proc/{pid}")}
        assert not left, f"orphans after Ctrl-C: {left}"
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.stdout.close()
