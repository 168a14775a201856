"""PostgreSQL: a committed create, cancel or delete reaches a worker that LISTENs, so an
idle worker starts or stops a job at once instead of at its next poll. Real PostgreSQL,
real LISTEN, through the queue's own `listen()`."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator

import pytest

from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import JobQueue

pytestmark = pytest.mark.postgres


@pytest.fixture
def database(pg_url: str) -> Iterator[Database]:
    d = Database.from_url(pg_url)
    yield d
    d.close()


class Listener:
    """A thread iterating over `JobQueue.listen()`, as the worker's listener does."""

    def __init__(self, queue: JobQueue) -> None:
        self._database = queue.database
        self.heard = threading.Event()
        self.ready = threading.Event()
        self.stop = threading.Event()
        self._thread = threading.Thread(target=self._run, args=(queue,), daemon=True)
        self._thread.start()
        assert self.ready.wait(10)

    def _run(self, queue: JobQueue) -> None:
        with queue.listen() as notifications:
            self.ready.set()
            for _ in notifications:
                if self.stop.is_set():
                    return
                self.heard.set()

    def expect(self, what: str) -> None:
        assert self.heard.wait(10), f"no notification after {what}"
        self.heard.clear()

    def close(self) -> None:
        self.stop.set()
        self._database.notify("stop")  # the iterator only yields on a notification
        self._thread.join(10)
        assert not self._thread.is_alive()


def test_a_create_a_cancel_and_a_delete_each_wake_a_listening_worker(
        database: Database) -> None:
    jobs = JobRepository(database)
    listener = Listener(JobQueue(database, jobs))
    try:
        job_id = f"wake-{uuid.uuid4().hex[:8]}"
        jobs.create_job(NewJob(job_id, "m", "d", {}), actor="admin")
        listener.expect("a create")
        jobs.transition(job_id, JobStatus.CANCELLED, actor="admin")
        listener.expect("a cancel")
        jobs.delete_job(job_id, actor="admin")
        listener.expect("a delete")
    finally:
        listener.close()
