"""Chaos: 30 real training jobs through two `llm-train-api worker` processes and a gunicorn
with two workers on PostgreSQL, while a random process among them is SIGKILLed every 2-4
seconds. Clients keep submitting, cancelling and reading through it.

What must hold: every job succeeds; no job ever has two trainers at once (in the process
table, sampled all along, and in the job's own events); every acknowledged write is there;
and the events tell of each lost worker. The randomness is seeded: a failure prints the
seed and the timeline of kills, and `LLM_TRAIN_API_CHAOS_SEED=<seed>` replays the choices.
"""

from __future__ import annotations

import os
import random
import threading
import time
from typing import Any

import pytest

from tests.helpers.chaos import (
    Kill,
    OutageProof,
    TrainerCensus,
    WorkerSupervisor,
    attempt_runs,
    format_timeline,
    kill_one,
    running,
    trainers_under,
)
from tests.helpers.live import wait_for
from tests.helpers.servers import TINY

pytestmark = [pytest.mark.slow, pytest.mark.postgres]

TRAINING_JOBS = 30
CANCELLED_JOBS = 6
# Kills stop after CHAOS_S (or once every job ended): at one kill every 2-4 s, a run on two
# busy cores (an interpreter, torch, a few steps) is killed about as often as it finishes,
# so the rest of the jobs finish in the calm that follows, by DEADLINE_S.
CHAOS_S = 90.0
DEADLINE_S = 200.0
# Short leases so that a killed worker's jobs come back within seconds; the heartbeat
# stays at most half the lease, as Settings requires.
CHAOS_ENV = {"LLM_TRAIN_API_LEASE_S": "3", "LLM_TRAIN_API_HEARTBEAT_S": "0.5",
             "LLM_TRAIN_API_POLL_S": "0.2", "LLM_TRAIN_API_CANCEL_GRACE_S": "0.5",
             "LLM_TRAIN_API_TRAINER_THREADS": "1", "LLM_TRAIN_API_WORKER_GPUS": ""}


def training_body(n: int) -> dict[str, Any]:
    # Each job's own seed and learning rate: what comes back must be this job's data.
    return {"job_id": f"chaos-{n:02d}", "model_name": "gpt-nano",
            "dataset": "builtin:tinytext", "max_attempts": 50,
            "hyperparameters": {**TINY, "max_steps": 6, "checkpoint_interval": 2,
                                "seed": 1000 + n, "learning_rate": 0.001 + n / 10_000}}


def doomed_body(n: int) -> dict[str, Any]:
    """A job cancelled soon after it is created: queued or already running by then."""
    return {"job_id": f"doomed-{n}", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "priority": -1000, "max_attempts": 50,
            "hyperparameters": {**TINY, "max_steps": 100_000}}


class Clients:
    """Two submitters and a reader, each with its own connection, all retrying through
    the outage; they record what the service acknowledged and what it failed to show."""

    def __init__(self, server: Any, seed: int) -> None:
        self.server = server
        self.seed = seed
        self.acked: dict[str, dict[str, Any]] = {}
        self.cancels: dict[str, str] = {}  # job id -> the message its acknowledged cancel sent
        self.problems: list[str] = []
        self.reads = 0
        self.retries = 0
        self.done = threading.Event()
        self._lock = threading.Lock()
        plan: list[dict[str, Any]] = [training_body(n) for n in range(TRAINING_JOBS)]
        plan += [doomed_body(n) for n in range(CANCELLED_JOBS)]
        random.Random(seed).shuffle(plan)
        self._shares = [plan[0::2], plan[1::2]]
        self._threads = [threading.Thread(target=self._submit, args=(share, seed + i),
                                          name=f"submitter-{i}", daemon=True)
                         for i, share in enumerate(self._shares)]
        self._reader = threading.Thread(target=self._read, name="reader", daemon=True)

    def start(self) -> None:
        for t in self._threads:
            t.start()
        self._reader.start()

    def submitted_all(self) -> bool:
        return not any(t.is_alive() for t in self._threads)

    def stop(self) -> None:
        self.done.set()
        for t in [*self._threads, self._reader]:
            t.join(timeout=90)

    def _submit(self, share: list[dict[str, Any]], seed: int) -> None:
        rng, http = random.Random(seed), OutageProof(self.server)
        try:
            for body in share:
                resp = http.call("POST", "/jobs", json=body)
                if resp.status_code not in (200, 201):
                    self.problems.append(f"POST {body['job_id']}: {resp.status_code} "
                                         f"{resp.text}")
                    continue
                with self._lock:
                    self.acked[body["job_id"]] = body
                if body["job_id"].startswith("doomed-"):
                    time.sleep(rng.uniform(0.0, 3.0))
                    message = f"cancelled by the chaos client ({body['job_id']})"
                    resp = http.call("PATCH", f"/jobs/{body['job_id']}/status",
                                     json={"status": "cancelled", "error_message": message})
                    if resp.status_code == 200:
                        self.cancels[body["job_id"]] = message
                    else:
                        self.problems.append(f"cancel {body['job_id']}: {resp.status_code} "
                                             f"{resp.text}")
                time.sleep(rng.uniform(0.2, 1.2))
        except AssertionError as exc:
            self.problems.append(str(exc))
        finally:
            self.retries += http.retries

    def _read(self) -> None:
        """Reads every acknowledged job back, over and over: none may ever be missing."""
        http = OutageProof(self.server)
        try:
            while not self.done.is_set():
                with self._lock:
                    ids = list(self.acked)
                for job_id in ids:
                    for path in (f"/jobs/{job_id}", f"/jobs/{job_id}/events"):
                        resp = http.call("GET", path)
                        self.reads += 1
                        if resp.status_code != 200:
                            self.problems.append(f"GET {path} of an acknowledged job: "
                                                 f"{resp.status_code} {resp.text}")
                    if self.done.is_set():
                        break
                self.done.wait(0.2)
        except AssertionError as exc:
            self.problems.append(str(exc))
        finally:
            self.retries += http.retries


def all_ended(http: OutageProof, clients: Clients) -> bool:
    if not clients.submitted_all():
        return False
    resp = http.call("GET", "/jobs?status=queued&status=running&limit=1000")
    return resp.status_code == 200 and resp.json() == []


def test_chaos_kills_lose_nothing_and_never_run_a_job_twice(tmp_path, pg_url,
                                                            gunicorn_factory):
    seed = int(os.environ.get("LLM_TRAIN_API_CHAOS_SEED") or random.randrange(2**31))
    rng = random.Random(seed)
    env = {"LLM_TRAIN_API_DATABASE_URL": pg_url, "LLM_TRAIN_API_EXECUTOR": "local",
           "LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path / "instance"), **CHAOS_ENV}
    server = gunicorn_factory(workers=2, env=env)
    jobs_dir = tmp_path / "instance" / "data" / "jobs"
    census = TrainerCensus(jobs_dir).start()
    # Two slots each: a worker's death takes two runs with it, and the 2-4 s between kills
    # still leave each worker long enough for runs to finish on two busy cores.
    workers = WorkerSupervisor(env, tmp_path, 2, ("--concurrency", "2"))
    clients = Clients(server, seed)
    kills: list[Kill] = []
    orphans: list[str] = []
    http = OutageProof(server)
    t0 = time.monotonic()
    try:
        clients.start()
        while time.monotonic() - t0 < CHAOS_S and not all_ended(http, clients):
            time.sleep(rng.uniform(2.0, 4.0))
            kill = kill_one(rng, server, workers, jobs_dir, t0)
            if kill is None:
                continue
            kills.append(kill)
            for pid in kill.trainers:  # the kernel kills them with their worker
                try:
                    wait_for(lambda pid=pid: not running(pid), 5, f"trainer {pid} to die")
                except AssertionError:
                    orphans.append(f"trainer {pid} outlived its worker {kill.pid}")
        chaos_s = time.monotonic() - t0
        while time.monotonic() - t0 < DEADLINE_S and not all_ended(http, clients):
            time.sleep(0.5)
        wall_s = time.monotonic() - t0
    finally:
        clients.stop()
        census.stop()
        workers.stop_all()
    report = format_timeline(seed, kills, (
        f"{chaos_s:.1f}s of chaos, {wall_s:.1f}s in all, {census.samples} census samples, "
        f"{clients.reads} reads, {clients.retries + http.retries} retried requests"))
    print(report)

    assert wait_for(lambda: not trainers_under(jobs_dir), 10, "every trainer to be gone")
    assert not clients.problems, f"{clients.problems}\n{report}"
    assert not orphans, f"{orphans}\n{report}"
    assert not census.doubles, f"two trainers of one job at once: {census.doubles}\n{report}"
    assert max(census.max_per_job.values(), default=0) <= 1, report
    assert len(clients.acked) == TRAINING_JOBS + CANCELLED_JOBS, report

    reader = server.session()
    final: dict[str, dict[str, Any]] = {}
    timelines: dict[str, list[dict[str, Any]]] = {}
    for job_id, body in clients.acked.items():
        job = reader.get(f"{server.url}/jobs/{job_id}", timeout=10).json()
        final[job_id] = job
        timelines[job_id] = reader.get(f"{server.url}/jobs/{job_id}/events?limit=1000",
                                       timeout=10).json()
        for key in ("model_name", "dataset", "hyperparameters", "max_attempts"):
            assert job[key] == body[key], f"{job_id}: {key} {job[key]} != {body[key]}"
        assert job["priority"] == body.get("priority", 0)
        created = [e for e in timelines[job_id] if e["kind"] == "created"]
        assert len(created) == 1, timelines[job_id]

    for job_id, job in final.items():
        events = timelines[job_id]
        runs = attempt_runs(events)  # raises when one run starts before the last ended
        assert [claim["attempt"] for claim, _ in runs] == list(range(1, len(runs) + 1))
        assert job["attempts"] == len(runs), (job, events)
        for claim, end in runs:
            assert claim["at"] <= end["at"] and end["attempt"] == claim["attempt"], events
        if job_id in clients.cancels:
            assert job["status"] == "cancelled", (job, report)
            assert job["error_message"] == clients.cancels[job_id], job
            last = events[-1]
            assert (last["kind"], last["to_status"], last["message"]) == (
                "status", "cancelled", clients.cancels[job_id]), events
            continue
        assert job["status"] == "succeeded", (job, events, report)
        claim, end = runs[-1]
        assert (end["kind"], end["to_status"]) == ("status", "succeeded"), events
        assert end["actor"] == claim["actor"], events  # the run's own worker finished it
        for _claim, end in runs[:-1]:
            assert end["kind"] == "lease_expired", events  # only kills ended the others

    # Each job running on a killed worker lost that run to an expired lease, and ran again.
    lost = 0
    for kill in kills:
        for job_id in kill.jobs:
            if job_id in clients.cancels:
                continue
            runs = attempt_runs(timelines[job_id])
            ended = [end for claim, end in runs if f":{kill.pid}:" in claim["actor"]]
            assert ended and ended[-1]["kind"] == "lease_expired", (
                f"{job_id} ran on worker {kill.pid} when it was killed", timelines[job_id],
                report)
            assert final[job_id]["attempts"] > 1
            lost += 1
    killed = {k.pid for k in kills if k.kind == "worker"}
    lapsed = [(job_id, claim["actor"]) for job_id, events in timelines.items()
              for claim, end in attempt_runs(events)
              if end["kind"] == "lease_expired"
              and int(claim["actor"].split(":")[-2]) not in killed]
    print(f"leases that expired under a live worker: {lapsed}")
    worker_kills = sum(k.kind == "worker" for k in kills)
    gunicorn_kills = sum(k.kind == "gunicorn" for k in kills)
    print(f"kills: {worker_kills} worker(s) ({lost} run(s) lost), {gunicorn_kills} gunicorn "
          f"worker(s); max attempts "
          f"{max(j['attempts'] for j in final.values())}; trainers per job at most "
          f"{max(census.max_per_job.values(), default=0)}")
    assert worker_kills and gunicorn_kills and lost, report  # the chaos did happen
