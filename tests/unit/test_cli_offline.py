"""Client commands of `llm-train-api` that need no server: the progress line, and `sample`
without torch; through click's CliRunner."""

from __future__ import annotations

import sys

from click.testing import CliRunner

from llm_train_api.cli.main import main
from llm_train_api.cli.progress import describe
from llm_train_api.client import Job
from tests.helpers.cli import one_error_line


def test_progress_line_with_and_without_a_bar():
    job = Job("j", status="running", progress={
        "phase": "training", "step": 120, "total_steps": 300, "fraction": 0.4, "eta_s": 63.2,
        "train_loss": 2.41234, "tokens_per_s": 52000.0})
    assert describe(job, bar=False) == (
        "j: step 120/300  40%  loss 2.4123  52.0k tok/s  ETA 1:03")
    assert describe(job, bar=True).startswith("j: [##########--------------]  step 120/300")
    assert describe(Job("j", status="queued"), bar=True) == "j: queued"
    failed = Job("j", status="failed", error_message="boom")
    assert describe(failed, bar=False) == "j: failed: boom"


def test_sample_without_torch_says_so_in_one_line(monkeypatch):
    monkeypatch.setitem(sys.modules, "torch", None)  # as if it were not installed
    result = CliRunner().invoke(main, ["sample", "any", "--url", "http://127.0.0.1:9"])
    assert "needs torch" in one_error_line(result)


def test_a_ray_address_without_the_ray_executor_is_refused_before_the_database(tmp_path,
                                                                               monkeypatch):
    instance = tmp_path / "instance"
    monkeypatch.setenv("LLM_TRAIN_API_INSTANCE_PATH", str(instance))
    monkeypatch.delenv("LLM_TRAIN_API_WORKER_EXECUTOR", raising=False)
    result = CliRunner().invoke(main, ["worker", "--ray-address", "http://127.0.0.1:9"])
    assert result.exit_code == 2, result.output
    assert "--ray-address is for the Ray executor" in result.output
    assert not instance.exists()  # nothing opened, nothing written


def test_tokens_commands_close_their_database(tmp_path, monkeypatch):
    from llm_train_api.store.database import Database

    monkeypatch.setenv("LLM_TRAIN_API_INSTANCE_PATH", str(tmp_path))
    closed: list[Database] = []
    close = Database.close
    monkeypatch.setattr(Database, "close", lambda self: (closed.append(self), close(self)))
    result = CliRunner().invoke(main, ["tokens", "create", "--name", "alice"])
    assert result.exit_code == 0, result.output
    result = CliRunner().invoke(main, ["tokens", "list", "--json"])
    assert result.exit_code == 0 and '"name": "alice"' in result.output
    assert len(closed) == 2
