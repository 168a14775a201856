"""Auth where it crosses processes: several gunicorn workers and several hosts on one
database. The guarantees come from the database, so they are tested on SQLite and on
PostgreSQL."""

from __future__ import annotations

import subprocess
import sys

import pytest
import requests
from sqlalchemy import create_engine, func, select

from llm_train_api.store.tables import api_tokens
from tests.helpers.servers import REPO_ROOT


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db(request, tmp_path) -> str:
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'jobs.sqlite3'}"
    return request.getfixturevalue("pg_url")


def fresh(url: str, token: str | None) -> int:
    """One request on a new connection, so gunicorn spreads them over its workers."""
    headers = {"Connection": "close"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    return requests.get(url + "/jobs", headers=headers, timeout=10).status_code


def count_tokens(db: str) -> int:
    engine = create_engine(db)
    with engine.connect() as conn:
        n = conn.execute(select(func.count()).select_from(api_tokens)).scalar_one()
    engine.dispose()
    return n


def test_one_bootstrap_token_when_many_workers_and_hosts_start_together(
        gunicorn_factory, db, tmp_path):
    hosts = [gunicorn_factory(workers=4, env={"LLM_TRAIN_API_DATABASE_URL": db,
                                              "LLM_TRAIN_API_INSTANCE_PATH":
                                              str(tmp_path / f"host{i}")})
             for i in range(2 if db.startswith("postgresql") else 1)]
    assert count_tokens(db) == 1
    holders = [h for h in hosts if h.token]
    assert len(holders) == 1  # only the host that issued it has the file
    for host in hosts:
        codes = {fresh(host.url, holders[0].token) for _ in range(12)}
        assert codes == {200}


def test_a_revoked_token_is_refused_at_once_by_every_worker(gunicorn_factory, db, tmp_path):
    instance = str(tmp_path / "instance")
    env = {"LLM_TRAIN_API_DATABASE_URL": db, "LLM_TRAIN_API_INSTANCE_PATH": instance}
    server = gunicorn_factory(workers=3, env=env)
    cli = [sys.executable, "-m", "llm_train_api.cli", "tokens"]
    run_env = {**server.env}
    out = subprocess.run([*cli, "create", "--name", "eve", "--role", "user"], cwd=REPO_ROOT,
                         env=run_env, capture_output=True, text=True, check=True)
    token = out.stdout.strip().splitlines()[-1]
    assert {fresh(server.url, token) for _ in range(12)} == {200}
    subprocess.run([*cli, "revoke", "--name", "eve"], cwd=REPO_ROOT, env=run_env, check=True,
                   capture_output=True)
    # No cache anywhere: the very next request, on any worker, is refused.
    assert {fresh(server.url, token) for _ in range(12)} == {401}
    assert {fresh(server.url, server.token) for _ in range(6)} == {200}
    assert fresh(server.url, None) == 401
