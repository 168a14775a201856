"""Fixtures both tiers share: the app on a temporary database, real PostgreSQL schemas and
a trainer data folder. Tests that need PostgreSQL fail loudly when it is unreachable.

The process fixtures (gunicorn, worker processes) live in tests/system/conftest.py.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from sqlalchemy import create_engine, text
from sqlalchemy.exc import OperationalError

from llm_train_api import create_app
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import JobQueue
from tests.helpers import properties  # noqa: F401 - registers the quick profile
from tests.helpers.clients import admin_client
from tests.helpers.training import PARAGRAPH

PG_SERVER_URL = os.environ.get(
    "LLM_TRAIN_API_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test"
)


@pytest.fixture(scope="session")
def pg_server() -> str:
    engine = create_engine(PG_SERVER_URL)
    try:
        with engine.connect() as conn:
            conn.execute(text("SELECT 1"))
    except OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is required and unreachable at {PG_SERVER_URL} "
            f"(set LLM_TRAIN_API_TEST_PG_URL): {exc}",
            pytrace=False,
        )
    finally:
        engine.dispose()
    return PG_SERVER_URL


@pytest.fixture
def pg_url(pg_server: str) -> Iterator[str]:
    """A fresh, empty schema for one test, dropped afterwards."""
    schema = f"t_{uuid.uuid4().hex[:16]}"
    admin = create_engine(pg_server, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    sep = "&" if "?" in pg_server else "?"
    yield f"{pg_server}{sep}options={quote(f'-csearch_path={schema}')}"
    with admin.connect() as conn:
        conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
    admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    return request.getfixturevalue("pg_url")


@pytest.fixture
def database(db_url: str) -> Iterator[Database]:
    d = Database.from_url(db_url)
    yield d
    d.close()


@pytest.fixture
def jobs(database: Database) -> JobRepository:
    """What the API calls."""
    return JobRepository(database)


@pytest.fixture
def queue(database: Database, jobs: JobRepository) -> JobQueue:
    """What workers call (its `jobs` is the repository above)."""
    return JobQueue(database, jobs)


@pytest.fixture
def app(tmp_path):
    """The seed's pure registry (EXECUTOR=none): any model and dataset name is accepted."""
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none"})
    yield app
    app.extensions["llm_train_api.runtime"].close()


@pytest.fixture
def admitting_app(tmp_path):
    """The built-in executor (the default) with a 24 GB worker: POST /jobs admits only jobs
    that can run."""
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "WORKER_MEMORY_GB": 24})
    yield app
    app.extensions["llm_train_api.runtime"].close()


@pytest.fixture
def client(app):
    """As the admin: auth is on (the default), and tests of other roles use `client_as`."""
    return admin_client(app)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """A trainer data folder with one small, repetitive corpus (`repeat`)."""
    root = tmp_path / "data"
    (root / "datasets").mkdir(parents=True)
    (root / "datasets" / "repeat.txt").write_text(PARAGRAPH * 30, encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def tiny_hf_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 2-layer random Llama with a word-level tokenizer and a chat template, saved in
    Hugging Face format (safetensors) once per session; see tests/helpers/tiny_hf.py."""
    from tests.helpers.tiny_hf import build_model

    return build_model(tmp_path_factory.mktemp("tiny-hf") / "model")


@pytest.fixture
def chat_data_dir(tmp_path: Path) -> Path:
    """A data folder with a small chat dataset (`chat`) and an instruction one (`qa`)."""
    from tests.helpers.tiny_hf import QA, chat_records, write_jsonl

    root = tmp_path / "data"
    write_jsonl(root / "datasets" / "chat.jsonl", chat_records(32))
    write_jsonl(root / "datasets" / "qa.jsonl",
                [{"prompt": q + " ?", "completion": a} for q, a in QA * 4])
    return root
