"""Multi-process jobs through the whole service: a real gunicorn, a real local worker, the
trainer under real torchrun with two gloo ranks on CPU. On SQLite and on PostgreSQL."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from tests.helpers.ddp import torchrun_rank
from tests.helpers.live import (
    alive,
    get,
    trainer_events,
    wait_for,
    wait_printed,
    wait_progress,
    wait_status,
)
from tests.helpers.servers import TINY

pytestmark = pytest.mark.slow


def submit_ddp(server, job_id: str, resources: dict, **hp) -> dict:
    body = {"job_id": job_id, "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "hyperparameters": {**TINY, **hp}, "resources": resources}
    resp = server.http.post(server.url + "/jobs", json=body, timeout=10)
    assert resp.status_code == 201, resp.text
    return resp.json()


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def ranks_under(pid: int) -> dict[int, int]:
    """{pid: RANK} of the live torchrun ranks descending from ``pid``."""
    parents = _parents()
    found: dict[int, int] = {}
    for child in parents:
        p, depth = child, 0
        while p in parents and p != pid and depth < 10:
            p, depth = parents[p], depth + 1
        if p != pid or child == pid or not alive(child):
            continue
        rank = torchrun_rank(child)
        if rank is not None:
            found[child] = rank
    return found


def test_a_two_process_job_trains_to_success_with_two_ranks(service):
    service.start_worker()
    job = submit_ddp(service, "ddp", {"cpus": 2, "processes": 2}, max_steps=60,
                     checkpoint_interval=20)
    assert job["resources"]["processes"] == 2
    launcher = wait_printed(service, "ddp", "metrics", 2)
    ranks = wait_for(lambda: ranks_under(launcher), 10, "the ranks")
    assert sorted(ranks.values()) == [0, 1], ranks
    job = wait_status(service, "ddp", {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error_message"]
    assert job["progress"]["step"] == 60
    curve = service.http.get(f"{service.url}/jobs/ddp/metrics", timeout=10).json()
    assert [p["step"] for p in curve] == list(range(1, 61))  # rank 0's, once each
    (start,) = trainer_events(service, "ddp", "start")
    assert start["processes"] == 2 and start["batch_size_per_process"] == 2
    assert not any(alive(pid) for pid in ranks)


def test_cancelling_a_two_process_job_kills_every_rank(service):
    service.start_worker()
    submit_ddp(service, "ddp-cancel", {"cpus": 2, "processes": 2}, max_steps=100_000)
    job = wait_progress(service, "ddp-cancel", "step", 2)
    ranks = wait_for(lambda: ranks_under(job["progress"]["pid"]), 10, "the ranks")
    assert len(ranks) == 2
    resp = service.http.post(f"{service.url}/jobs/ddp-cancel/cancel", timeout=10)
    assert resp.status_code == 200
    wait_for(lambda: not any(alive(pid) for pid in ranks), 15, "every rank to die")
    assert get(service, "ddp-cancel")["status"] == "cancelled"


def test_a_sigterm_from_outside_is_exit_75_requeued_and_resumed(service):
    """The worker tells "preempted" (75: requeue) from "failed" (1) by the exit code, which
    torchrun alone would turn into 1; the launcher keeps it 75."""
    service.start_worker()
    submit_ddp(service, "ddp-pre", {"cpus": 2, "processes": 2}, max_steps=600,
               checkpoint_interval=1000)
    # An operator or a preempting scheduler.
    os.kill(wait_printed(service, "ddp-pre", "metrics", 5), signal.SIGTERM)
    job = wait_status(service, "ddp-pre", {"succeeded", "failed"}, timeout=180)
    assert job["status"] == "succeeded", job["error_message"]
    assert job["attempts"] == 2
    starts = trainer_events(service, "ddp-pre", "start")
    assert len(starts) == 2 and starts[1]["resumed_from_step"] >= 5
    curve = service.http.get(f"{service.url}/jobs/ddp-pre/metrics", timeout=10).json()
    assert [p["step"] for p in curve] == list(range(1, 601))


def test_a_rank_killed_by_the_oom_killer_requeues_the_job(service):
    """As for a single trainer killed by a signal the worker did not send: retried."""
    service.start_worker()
    submit_ddp(service, "ddp-oom", {"cpus": 2, "processes": 2}, max_steps=600,
               checkpoint_interval=5)
    launcher = wait_printed(service, "ddp-oom", "metrics", 6)
    ranks = wait_for(lambda: ranks_under(launcher), 10, "the ranks")
    os.kill(next(pid for pid, rank in ranks.items() if rank == 1), signal.SIGKILL)
    job = wait_status(service, "ddp-oom", {"succeeded", "failed"}, timeout=180)
    assert job["status"] == "succeeded", job["error_message"]
    assert job["attempts"] == 2
    assert trainer_events(service, "ddp-oom", "start")[1]["resumed_from_step"] >= 5
