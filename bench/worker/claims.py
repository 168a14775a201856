"""Time claims on a deep queue: 10,000 queued jobs of 20 owners, 200 claims in a row.

    .venv/bin/python bench/worker/claims.py [sqlite|postgres] [SCHEDULING ...]

Each claim is `JobQueue.claim` as a worker calls it (one statement plus its event row,
committed); claimed jobs stay `running`, so the fair order sees the running counts grow.
PostgreSQL comes from LLM_TRAIN_API_TEST_PG_URL (a throwaway schema is made and dropped).
"""

from __future__ import annotations

import inspect
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from urllib.parse import quote

from sqlalchemy import create_engine, text

from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import JobQueue
from llm_train_api.store.tables import jobs

QUEUED, OWNERS, CLAIMS = 10_000, 20, 200
PG = os.environ.get("LLM_TRAIN_API_TEST_PG_URL",
                    "postgresql+psycopg://postgres@127.0.0.1:5432/test")


def fill(database: Database) -> None:
    rng = random.Random(12)
    rows = [{"id": f"job-{i}", "model_name": "gpt-nano", "dataset": "d",
             "hyperparameters": "{}", "request_hash": "0" * 64, "status": "queued",
             "created_us": 1_000_000 + i, "updated_us": 1_000_000 + i, "version": 1,
             "priority": rng.choice((0, 0, 0, 1, 5)), "owner": f"user{rng.randrange(OWNERS)}"}
            for i in range(QUEUED)]
    with database.engine.begin() as conn:
        conn.execute(jobs.insert(), rows)
        if database.is_postgresql:
            conn.execute(text("ANALYZE jobs"))


def time_claims(url: str, scheduling: str) -> list[float]:
    database = Database.from_url(url)
    try:
        fill(database)
        kw = {"scheduling": scheduling} if "scheduling" in inspect.signature(
            JobQueue.__init__).parameters else {}
        queue = JobQueue(database, JobRepository(database), **kw)
        times = []
        for _ in range(CLAIMS):
            t0 = time.perf_counter()
            assert queue.claim("bench", 60) is not None
            times.append(time.perf_counter() - t0)
        return times
    finally:
        database.close()


def run(backend: str, scheduling: str) -> None:
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            times = time_claims(f"sqlite:///{tmp}/jobs.sqlite3", scheduling)
    else:
        schema = f"bench_{uuid.uuid4().hex[:12]}"
        admin = create_engine(PG, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        try:
            sep = "&" if "?" in PG else "?"
            times = time_claims(f"{PG}{sep}options={quote(f'-csearch_path={schema}')}",
                                scheduling)
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
            admin.dispose()
    ms = sorted(t * 1000 for t in times)
    print(f"{backend:8} {scheduling:9} {CLAIMS} claims: total {sum(ms):7.1f} ms, "
          f"median {statistics.median(ms):.2f} ms, p95 {ms[int(len(ms) * 0.95)]:.2f} ms, "
          f"max {ms[-1]:.2f} ms")


if __name__ == "__main__":
    backends = [a for a in sys.argv[1:] if a in ("sqlite", "postgres")] or ["sqlite", "postgres"]
    schedulings = [a for a in sys.argv[1:] if a not in ("sqlite", "postgres")] or ["priority"]
    for b in backends:
        for s in schedulings:
            run(b, s)
