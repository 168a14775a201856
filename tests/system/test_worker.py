"""Jobs really run: a real gunicorn, real worker processes, real training of tiny models,
real processes killed for real. On SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

from tests.helpers.live import (
    alive,
    events,
    get,
    submit,
    trainer_events,
    wait_for,
    wait_progress,
    wait_status,
)
from tests.helpers.servers import REPO_ROOT, TINY


def test_a_job_trains_to_success(service):
    service.start_worker()
    submit(service, "ok", max_steps=30, checkpoint_interval=10)
    job = wait_status(service, "ok", {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error_message"]
    assert job["attempts"] == 1 and job["started_at"] and job["finished_at"]
    assert job["progress"]["step"] == 30 and job["progress"]["fraction"] == 1.0
    curve = service.http.get(f"{service.url}/jobs/ok/metrics", timeout=10).json()
    assert [p["step"] for p in curve] == list(range(1, 31))
    assert curve[-1]["train_loss"] < curve[0]["train_loss"]
    newer = service.http.get(f"{service.url}/jobs/ok/metrics?after_step=28", timeout=10).json()
    assert [p["step"] for p in newer] == [29, 30]
    kinds = [(e["kind"], e["to_status"]) for e in events(service, "ok")]
    assert kinds == [("created", "queued"), ("claimed", "running"), ("status", "succeeded")]
    folders = list((service.data_dir / "jobs").glob("ok-*"))
    assert len(folders) == 1
    assert {"ckpt_latest.pt", "ckpt_best.pt", "metrics.jsonl", "train.log"} <= {
        p.name for p in folders[0].iterdir()}


def test_cancel_kills_the_trainer_process(service):
    service.start_worker()
    submit(service, "long", max_steps=100_000)
    job = wait_progress(service, "long", "step", 3)
    pid = job["progress"]["pid"]
    assert alive(pid)
    t0 = time.monotonic()
    resp = service.http.post(f"{service.url}/jobs/long/cancel", timeout=10)
    assert resp.status_code == 200 and resp.json()["status"] == "cancelled"
    wait_for(lambda: not alive(pid), 15, "the trainer to die")
    # Killed on the cancel, not at the end of its 100k steps (the bench measures the delay).
    assert time.monotonic() - t0 < 10
    time.sleep(1.0)
    assert get(service, "long")["status"] == "cancelled"


def test_deleting_a_running_job_kills_its_trainer(service):
    service.start_worker()
    submit(service, "doomed", max_steps=100_000)
    job = wait_progress(service, "doomed", "step", 3)
    pid = job["progress"]["pid"]
    assert service.http.delete(f"{service.url}/jobs/doomed", timeout=10).status_code == 204
    wait_for(lambda: not alive(pid), 5, "the trainer to die")


def test_kill_9_of_a_worker_requeues_and_resumes_from_the_checkpoint(service):
    first = service.start_worker()
    submit(service, "phoenix", max_steps=400, checkpoint_interval=5)
    job = wait_progress(service, "phoenix", "last_checkpoint_step", 5)
    trainer = job["progress"]["pid"]
    first.stop(signal.SIGKILL)
    wait_for(lambda: not alive(trainer), 5, "the orphaned trainer to die with its worker")
    service.start_worker()
    done = wait_status(service, "phoenix", {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 2
    kinds = [e["kind"] for e in events(service, "phoenix")]
    assert kinds == ["created", "claimed", "lease_expired", "claimed", "status"]
    starts = trainer_events(service, "phoenix", "start")
    assert not starts[0]["resumed_from_step"] and starts[-1]["resumed_from_step"] >= 5


def test_a_trainer_killed_from_outside_is_retried(service):
    service.start_worker()
    submit(service, "oom", max_steps=150, checkpoint_interval=5)
    job = wait_progress(service, "oom", "last_checkpoint_step", 5)
    os.kill(job["progress"]["pid"], signal.SIGKILL)  # as the OOM killer would
    done = wait_status(service, "oom", {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 2
    requeue = [e for e in events(service, "oom") if e["kind"] == "requeued"]
    assert len(requeue) == 1 and "killed by SIGKILL" in requeue[0]["message"]


def test_three_workers_run_each_of_twenty_jobs_exactly_once(service):
    for n in range(20):
        submit(service, f"many{n:02d}", max_steps=2)
    for _ in range(3):
        service.start_worker()
    for n in range(20):
        job = wait_status(service, f"many{n:02d}", {"succeeded", "failed"}, timeout=240)
        assert job["status"] == "succeeded", job["error_message"]
        assert job["attempts"] == 1
        assert [e["kind"] for e in events(service, f"many{n:02d}")].count("claimed") == 1
    actors = {e["actor"] for n in range(20) for e in events(service, f"many{n:02d}")
              if e["kind"] == "claimed"}
    assert len(actors) >= 2, "the jobs were not spread over the workers"


def test_a_failing_trainer_ends_failed_with_its_error(service):
    datasets = service.data_dir / "datasets"
    datasets.mkdir(parents=True)
    (datasets / "small.txt").write_text("tiny corpus. " * 50)
    body = {"job_id": "bad", "model_name": "gpt-nano", "dataset": "small",
            "hyperparameters": {**TINY, "max_steps": 5}}
    assert service.http.post(service.url + "/jobs", json=body, timeout=10).status_code == 201
    (datasets / "small.txt").write_text("the data changed after the job was accepted")
    service.start_worker()
    job = wait_status(service, "bad", {"succeeded", "failed"})
    assert job["status"] == "failed" and "changed since the job was created" in job[
        "error_message"]


def test_deadline_exceeded_fails_the_job(service):
    service.start_worker()
    body = {"job_id": "slow", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "hyperparameters": {**TINY, "max_steps": 100_000}, "max_runtime_seconds": 3}
    assert service.http.post(service.url + "/jobs", json=body, timeout=10).status_code == 201
    job = wait_status(service, "slow", {"succeeded", "failed"}, timeout=60)
    assert job["status"] == "failed" and "deadline exceeded" in job["error_message"]


def test_graceful_worker_shutdown_hands_the_job_back_without_spending_an_attempt(service):
    worker = service.start_worker()
    submit(service, "handback", max_steps=300, checkpoint_interval=5)
    wait_progress(service, "handback", "step", 6)
    assert worker.stop(signal.SIGTERM) == 0
    job = get(service, "handback")
    assert job["status"] == "queued" and job["attempts"] == 0
    service.start_worker()
    done = wait_status(service, "handback", {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded" and done["attempts"] == 1


def test_a_users_own_dataset_trains_and_stays_hers(service):
    """Datasets are named per owner, and the worker finds the job's dataset in its owner's
    home: a job on alice's own `mine` trains; bob cannot see it nor name it."""
    def token(name: str) -> str:
        out = subprocess.run([sys.executable, "-m", "llm_train_api.cli", "tokens", "create",
                              "--name", name, "--role", "user"], cwd=REPO_ROOT,
                             env=service.env, capture_output=True, text=True, check=True)
        return out.stdout.strip().splitlines()[-1]

    alice, bob = service.session(), service.session()
    alice.headers["Authorization"] = f"Bearer {token('alice')}"
    bob.headers["Authorization"] = f"Bearer {token('bob')}"
    text = ("the quick brown fox jumps over the lazy dog\n" * 200).encode()
    put = alice.put(f"{service.url}/datasets/mine", data=text,
                    headers={"Content-Type": "text/plain"}, timeout=10)
    assert put.status_code == 201 and put.json()["owner"] == "alice"
    assert not (service.data_dir / "datasets" / "mine.txt").exists()  # not published
    body = {"job_id": "hers", "model_name": "gpt-nano", "dataset": "mine",
            "hyperparameters": {**TINY, "max_steps": 10}}
    refused = bob.post(f"{service.url}/jobs", json={**body, "job_id": "his"}, timeout=10)
    assert refused.status_code == 422 and "dataset" in refused.json()["errors"]["json"]
    assert bob.get(f"{service.url}/datasets/mine", timeout=10).status_code == 404
    assert alice.post(f"{service.url}/jobs", json=body, timeout=10).status_code == 201
    service.start_worker()
    job = wait_status(service, "hers", {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error_message"]
    assert job["owner"] == "alice"
    assert bob.get(f"{service.url}/jobs/hers", timeout=10).status_code == 404
