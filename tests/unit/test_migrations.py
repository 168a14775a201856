"""A database created by the first release is upgraded in place, keeping its jobs."""

from __future__ import annotations

from sqlalchemy import create_engine, inspect, text

from llm_train_api.domain import JobStatus
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.migrations import LATEST_VERSION
from llm_train_api.store.queue import JobQueue
from llm_train_api.store.webhooks import WebhookRepository

# The schema exactly as version 1 created it (frozen here on purpose).
V1_DDL = [
    """CREATE TABLE jobs (seq INTEGER PRIMARY KEY, id VARCHAR(128) NOT NULL UNIQUE,
       model_name VARCHAR(256) NOT NULL, dataset VARCHAR(256) NOT NULL,
       hyperparameters TEXT NOT NULL, request_hash VARCHAR(64) NOT NULL,
       status VARCHAR(16) NOT NULL, previous_status VARCHAR(16), error_message TEXT,
       created_us BIGINT NOT NULL, updated_us BIGINT NOT NULL, started_us BIGINT,
       finished_us BIGINT, version INTEGER NOT NULL)""",
    "CREATE INDEX ix_jobs_created ON jobs (created_us, seq)",
    "CREATE INDEX ix_jobs_status_created ON jobs (status, created_us, seq)",
    "CREATE INDEX ix_jobs_model_created ON jobs (model_name, created_us, seq)",
    "CREATE INDEX ix_jobs_dataset_created ON jobs (dataset, created_us, seq)",
    """CREATE TABLE job_events (seq INTEGER PRIMARY KEY, job_id VARCHAR(128) NOT NULL,
       at_us BIGINT NOT NULL, kind VARCHAR(32) NOT NULL, from_status VARCHAR(16),
       to_status VARCHAR(16), actor VARCHAR(128), message TEXT)""",
    "CREATE INDEX ix_job_events_job ON job_events (job_id, seq)",
    "CREATE TABLE schema_version (id INTEGER PRIMARY KEY, version INTEGER NOT NULL)",
    "INSERT INTO schema_version VALUES (1, 1)",
    """INSERT INTO jobs (id, model_name, dataset, hyperparameters, request_hash, status,
       created_us, updated_us, version) VALUES ('old', 'gpt-mini', 'd', '{"lr": 0.1}',
       'x', 'queued', 1700000000000000, 1700000000000000, 1)""",
    """INSERT INTO job_events (job_id, at_us, kind, to_status)
       VALUES ('old', 1700000000000000, 'created', 'queued')""",
]


def test_a_version_1_database_is_upgraded_and_keeps_its_jobs(tmp_path):
    url = f"sqlite:///{tmp_path / 'v1.sqlite3'}"
    engine = create_engine(url)
    with engine.begin() as conn:
        for statement in V1_DDL:
            conn.execute(text(statement))
    engine.dispose()

    database = Database.from_url(url)
    assert database.ping() == LATEST_VERSION >= 3
    jobs = JobRepository(database)
    job = jobs.get_job("old")
    assert job.hyperparameters == {"lr": 0.1} and job.status is JobStatus.QUEUED
    assert (job.priority, job.attempts, job.max_attempts) == (0, 0, 3)
    assert job.owner is None  # made before auth: only admins and workers see it
    # Made before fine-tuning: no validation data, no output model, the kind unrecorded
    # (workers run such a job with the built-in trainer).
    assert (job.validation_dataset, job.output_model, job.model_kind) == (None, None, None)
    # Made before the OpenAI-compatible API (schema v9): a native job.
    assert (job.origin, job.metadata, job.suffix) == (None, None, None)
    claimed = JobQueue(database, jobs).claim("w", 30)
    assert claimed.id == "old" and claimed.attempts == 1
    events, _ = jobs.job_events("old")
    assert [(e.kind, e.attempt) for e in events] == [("created", None), ("claimed", 1)]
    # v8: webhooks, and the outbox a finished run writes to.
    hooks = WebhookRepository(database)
    hook = hooks.create(owner=None, all_jobs=True, url="http://h", events=["job.succeeded"],
                        description=None, secret="whsec_AAAA")
    JobQueue(database, jobs).finish("old", "w", JobStatus.SUCCEEDED)
    assert [d.event_type for d in hooks.deliveries(hook.id)[0]] == ["job.succeeded"]
    database.close()
    # Opening it again is a no-op.
    again = Database.from_url(url)
    assert again.ping() == LATEST_VERSION
    again.close()


def test_version_10_drops_the_indexes_that_others_serve(tmp_path):
    url = f"sqlite:///{tmp_path / 'v9.sqlite3'}"
    Database.from_url(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:  # the two indexes as versions 2 and 3 created them
        conn.execute(text("CREATE INDEX ix_jobs_lease ON jobs (status, lease_expires_us)"))
        conn.execute(text("CREATE INDEX ix_jobs_owner_status ON jobs (owner, status)"))
        conn.execute(text("UPDATE schema_version SET version = 9"))

    database = Database.from_url(url)
    assert database.ping() == LATEST_VERSION >= 10
    database.close()
    names = {index["name"] for index in inspect(engine).get_indexes("jobs")}
    engine.dispose()
    assert not names & {"ix_jobs_lease", "ix_jobs_owner_status"}
    assert {"ix_jobs_claim", "ix_jobs_owner_claim"} <= names
