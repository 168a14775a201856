"""A principal is its name: a token name keeps the role it was first issued with, on both
databases, whoever races to issue it."""

from __future__ import annotations

import threading

import pytest
from click.testing import CliRunner

from llm_train_api import create_app
from llm_train_api.store.database import Database
from llm_train_api.store.tokens import NameTaken, TokenRepository
from tests.helpers.clients import admin_client, client_as


def test_a_name_keeps_its_role(database):
    tokens = TokenRepository(database)
    tokens.create("alice", "user")
    tokens.create("alice", "user")  # rotation: another key of the same principal
    with pytest.raises(NameTaken, match="already belongs to a principal with role user"):
        tokens.create("alice", "admin")
    tokens.revoke(name="alice")
    # Revoked tokens still name the principal that owns alice's jobs and datasets.
    with pytest.raises(NameTaken):
        tokens.create("alice", "worker")
    assert {(t.name, t.role.value) for t in tokens.list()} == {("alice", "user")}
    assert len(tokens.list()) == 2


def test_racing_issuers_give_a_name_one_role(db_url):
    """Each thread has its own Database (engine, pool, group committer), as processes do."""
    databases = [Database.from_url(db_url) for _ in range(3)]
    try:
        for i in range(8):
            barrier = threading.Barrier(len(databases))
            outcomes: list[str] = []

            def issue(database, role, name=f"n{i}", barrier=barrier, outcomes=outcomes):
                barrier.wait()
                try:
                    TokenRepository(database).create(name, role)
                    outcomes.append(role)
                except NameTaken:
                    outcomes.append("refused")

            threads = [threading.Thread(target=issue, args=(d, role)) for d, role in
                       zip(databases, ["user", "admin", "worker"], strict=True)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert sorted(outcomes).count("refused") == 2, outcomes
        roles = {}
        for t in TokenRepository(databases[0]).list():
            roles.setdefault(t.name, set()).add(t.role)
        assert all(len(r) == 1 for r in roles.values()), roles
    finally:
        for d in databases:
            d.close()


def test_a_user_named_admin_cannot_read_the_admins_jobs(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none"})
    admin = admin_client(app)
    assert admin.post("/jobs", json={"job_id": "secret", "model_name": "m",
                                     "dataset": "d"}).status_code == 201
    with pytest.raises(NameTaken):
        client_as(app, "admin", "user")
    app.extensions["llm_train_api.runtime"].close()


def test_the_cli_refuses_a_name_of_another_role(tmp_path, monkeypatch):
    from llm_train_api.cli.main import main

    monkeypatch.setenv("LLM_TRAIN_API_INSTANCE_PATH", str(tmp_path))
    runner = CliRunner()
    assert runner.invoke(main, ["tokens", "create", "--name", "ops", "--role",
                                "admin"]).exit_code == 0
    refused = runner.invoke(main, ["tokens", "create", "--name", "ops", "--role", "user"])
    assert refused.exit_code == 2
    error = [line for line in refused.output.splitlines() if line.startswith("Error:")]
    assert error == ["Error: The name 'ops' already belongs to a principal with role admin; "
                     "a token for it must have that role. Choose another name."]
    assert runner.invoke(main, ["tokens", "create", "--name", "ops", "--role",
                                "admin"]).exit_code == 0
