"""Fixtures of the system tier: real `gunicorn wsgi:app` processes, worker processes and a
private Ray head."""

from __future__ import annotations

import signal
from collections.abc import Iterator

import pytest

from tests.helpers.ray_cluster import RayHead
from tests.helpers.servers import FAST, GunicornServer, WorkerProcess


@pytest.fixture
def gunicorn_factory(tmp_path) -> Iterator:
    """Start real `gunicorn wsgi:app` processes; all are stopped at teardown."""
    started: list[GunicornServer] = []

    def start(workers: int = 3, env: dict[str, str] | None = None) -> GunicornServer:
        server = GunicornServer(
            workers=workers,
            env={"LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path / "instance"),
                 "LLM_TRAIN_API_EXECUTOR": "none", **(env or {})},
            log_path=tmp_path / f"gunicorn-{len(started)}.log",
        )
        started.append(server)
        server.start()
        return server

    yield start
    for server in started:
        server.stop()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def service(request, tmp_path, gunicorn_factory):
    """A gunicorn API with the built-in executor, and a factory of worker processes."""
    if request.param == "sqlite":
        db = f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    else:
        db = request.getfixturevalue("pg_url")
    env = {"LLM_TRAIN_API_DATABASE_URL": db, "LLM_TRAIN_API_EXECUTOR": "local",
           "LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path / "instance"), **FAST}
    server = gunicorn_factory(workers=2, env=env)
    workers: list[WorkerProcess] = []

    def start_worker(**extra: str) -> WorkerProcess:
        w = WorkerProcess({**env, **extra}, tmp_path / f"worker-{len(workers)}.log")
        workers.append(w)
        return w

    server.start_worker = start_worker
    server.data_dir = tmp_path / "instance" / "data"
    yield server
    for w in workers:
        w.stop(signal.SIGKILL)


@pytest.fixture(scope="session")
def ray_head() -> Iterator[RayHead]:
    """One private Ray head for the session (starting one takes seconds)."""
    head = RayHead()
    head.start()
    yield head
    head.stop()
