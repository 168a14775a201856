"""The composition root: what one process of the service needs, built once from Settings.

`create_app` builds a Runtime and keeps it in `app.extensions`; `llm-train-api worker` and
`llm-train-api tokens` build one without Flask. Nothing else opens databases or decides
where files live.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from llm_train_api.config import Settings, default_instance_path
from llm_train_api.store.database import Database, sqlite_url_for
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import JobQueue
from llm_train_api.store.stats import JobStats
from llm_train_api.store.tokens import TokenRepository
from llm_train_api.store.webhooks import WebhookRepository

DATABASE_FILENAME = "llm_train_api.sqlite3"


@dataclass
class Runtime:
    settings: Settings
    # Local state: the SQLite default, the bootstrap admin token, Prometheus samples.
    instance_path: Path
    # Datasets and job folders (checkpoints, logs, metrics).
    data_dir: Path
    database: Database
    # What the API calls.
    jobs: JobRepository
    # What workers call: claims, leases, progress, the end of runs.
    queue: JobQueue
    tokens: TokenRepository
    # What /metrics reads at scrape time.
    stats: JobStats
    # Webhook endpoints and the outbox their senders work through.
    webhooks: WebhookRepository

    @classmethod
    def build(cls, settings: Settings) -> Runtime:
        """Open (and migrate) the database and wire the repositories onto it."""
        instance = Path(settings.INSTANCE_PATH or default_instance_path())
        os.makedirs(instance, exist_ok=True)
        data_dir = Path(settings.DATA_DIR or instance / "data")
        url = settings.DATABASE_URL or sqlite_url_for(str(instance / DATABASE_FILENAME))
        database = Database.from_url(url, durability=settings.DURABILITY,
                                     pool_size=settings.DB_POOL_SIZE,
                                     busy_timeout_s=settings.DB_BUSY_TIMEOUT_S)
        jobs = JobRepository(database)
        queue = JobQueue(database, jobs, max_running_per_user=settings.MAX_RUNNING_PER_USER,
                         scheduling=settings.SCHEDULING)
        return cls(settings=settings, instance_path=instance, data_dir=data_dir,
                   database=database, jobs=jobs, queue=queue,
                   tokens=TokenRepository(database), stats=JobStats(database),
                   webhooks=WebhookRepository(database))

    def close(self) -> None:
        self.database.close()
