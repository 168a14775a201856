"""DPO through the Python client and the CLI, over real HTTP against the app served from a
thread of this process: the dpo options reach the job, and the rewards a DPO run reports
go from the trainer's metrics event through the worker's tracker and the store to
`GET /jobs/{id}/metrics`, the client's MetricPoint.rewards and `jobs metrics` columns."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_train_api import create_app
from llm_train_api.cli.main import main
from llm_train_api.client import Client, RetryPolicy
from llm_train_api.worker.progress import ProgressTracker
from tests.helpers.hf_models import tiny_llama, write_folder
from tests.helpers.servers import ThreadedServer
from tests.helpers.tiny_hf import preference_records, write_jsonl

NO_RETRY = RetryPolicy(attempts=1, backoff_s=0.01, max_backoff_s=0.01)
REWARDS = {"rewards/chosen": 0.25, "rewards/rejected": -0.5, "rewards/margins": 0.75,
           "rewards/accuracies": 0.875}


@pytest.fixture
def server(tmp_path) -> Iterator[ThreadedServer]:
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "WORKER_MEMORY_GB": 8})
    with ThreadedServer(app) as server:
        server.token = (Path(app.instance_path) / "admin-token").read_text().strip()
        server.queue = app.extensions["llm_train_api.runtime"].queue
        yield server
    app.extensions["llm_train_api.runtime"].close()


@pytest.fixture
def api(server, tmp_path) -> Iterator[Client]:
    with Client(server.url, token=server.token, retry=NO_RETRY) as api:
        api.import_model("llama", write_folder(tmp_path / "llama", tiny_llama()))
        api.upload_dataset("pref.jsonl", write_jsonl(tmp_path / "pref.jsonl",
                                                     preference_records(8, "openai")))
        yield api


def cli(server, *args: str) -> str:
    result = CliRunner().invoke(main, [*args, "--url", server.url, "--token", server.token])
    assert result.exit_code == 0, result.output
    return result.output


def test_the_cli_submits_a_dpo_job_and_shows_its_rewards(api, server):
    job = json.loads(cli(server, "jobs", "submit", "--model", "llama", "--dataset", "pref",
                         "--method", "dpo", "--dpo-beta", "0.2", "--dpo-loss-type", "ipo",
                         "--hp", "max_steps=3", "--job-id", "dpo", "--json"))
    assert job["hyperparameters"]["method"] == "dpo"
    assert job["hyperparameters"]["dpo"] == {"beta": 0.2, "loss_type": "ipo"}
    assert api.get_dataset("pref").kind == "preference"

    # What the worker makes of the trainer's metrics events, stored as it stores them.
    tracker = ProgressTracker()
    tracker.apply({"event": "metrics", "step": 1, "train_loss": 0.6, **REWARDS})
    tracker.apply({"event": "metrics", "step": 2, "train_loss": 0.5, "val_loss": 0.55,
                   **REWARDS, "rewards/margins": 1.5, "val_rewards/margins": 1.25,
                   "val_rewards/accuracies": 1.0, "not_a_metric": 3})
    progress, points, _ = tracker.take()
    assert server.queue.claim("w1", 30).id == "dpo"
    assert server.queue.record_progress("dpo", "w1", progress, points)

    curve = api.job_metrics("dpo")
    assert curve[0].rewards == REWARDS
    assert curve[1].rewards["rewards/margins"] == 1.5
    assert curve[1].rewards["val_rewards/accuracies"] == 1.0
    assert "not_a_metric" not in curve[1].extra

    table = cli(server, "jobs", "metrics", "dpo").splitlines()
    header = table[0].split()
    assert header[-6:] == ["REWARDS/CHOSEN", "REWARDS/REJECTED", "REWARDS/MARGINS",
                           "REWARDS/ACCURACIES", "VAL_REWARDS/MARGINS",
                           "VAL_REWARDS/ACCURACIES"]
    assert table[1].split()[-6:] == ["0.25", "-0.5", "0.75", "0.875", "-", "-"]
    assert table[2].split()[-6:] == ["0.25", "-0.5", "1.5", "0.875", "1.25", "1"]
