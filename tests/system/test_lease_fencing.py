"""A worker that stops renewing its lease without dying (frozen, or stuck on a database
that does not answer) must not leave its trainer running: once the lease lapses another
worker takes the job, and the two trainers would train the same job in the same folder.
"""

from __future__ import annotations

import os
import signal

import pytest

from tests.helpers.chaos import running
from tests.helpers.live import events, submit, wait_for, wait_progress
from tests.helpers.servers import WorkerProcess

pytestmark = pytest.mark.postgres

LEASE_ENV = {"LLM_TRAIN_API_LEASE_S": "3", "LLM_TRAIN_API_HEARTBEAT_S": "0.5",
             "LLM_TRAIN_API_POLL_S": "0.2", "LLM_TRAIN_API_CANCEL_GRACE_S": "0.5",
             "LLM_TRAIN_API_TRAINER_THREADS": "1", "LLM_TRAIN_API_WORKER_GPUS": ""}


def test_the_trainer_of_a_frozen_worker_is_gone_before_its_job_is_claimed_again(
        tmp_path, pg_url, gunicorn_factory):
    env = {"LLM_TRAIN_API_DATABASE_URL": pg_url, "LLM_TRAIN_API_EXECUTOR": "local",
           "LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path / "instance"), **LEASE_ENV}
    server = gunicorn_factory(workers=1, env=env)
    frozen = WorkerProcess(env, tmp_path / "frozen.log")
    second: WorkerProcess | None = None
    try:
        # A quiet trainer: its output never fills the pipe that the frozen worker no
        # longer reads, so nothing but the fencing can stop it.
        submit(server, "stuck", max_steps=1_000_000, log_interval=100_000,
               checkpoint_interval=100_000)
        trainer = wait_progress(server, "stuck", "pid", 1)["progress"]["pid"]
        os.kill(frozen.proc.pid, signal.SIGSTOP)
        second = WorkerProcess(env, tmp_path / "second.log")
        wait_for(lambda: [e["kind"] for e in events(server, "stuck")].count("claimed") == 2,
                 60, "the second worker to claim the job")
        assert not running(trainer), "the frozen worker's trainer still trains the job"
        kinds = [e["kind"] for e in events(server, "stuck")]
        assert kinds == ["created", "claimed", "lease_expired", "claimed"], kinds
    finally:
        os.kill(frozen.proc.pid, signal.SIGCONT)
        frozen.stop(signal.SIGKILL)
        if second is not None:
            second.stop(signal.SIGKILL)
