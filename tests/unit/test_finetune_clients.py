"""Fine-tuning jobs through the Python client and the CLI, over real HTTP against the app
served from a thread of this process: the fine-tuning fields reach the API, and its
refusals come back as the client's errors."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_train_api import create_app
from llm_train_api.cli.jobs import finetune_hp
from llm_train_api.cli.main import main
from llm_train_api.client import Client, Conflict, RetryPolicy, ValidationError
from tests.helpers.hf_models import tiny_llama, write_folder
from tests.helpers.servers import ThreadedServer
from tests.helpers.tiny_hf import chat_records, write_jsonl

NO_RETRY = RetryPolicy(attempts=1, backoff_s=0.01, max_backoff_s=0.01)


@pytest.fixture
def server(tmp_path) -> Iterator[ThreadedServer]:
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "WORKER_MEMORY_GB": 8})
    with ThreadedServer(app) as server:
        server.token = (Path(app.instance_path) / "admin-token").read_text().strip()
        yield server
    app.extensions["llm_train_api.runtime"].close()


@pytest.fixture
def api(server, tmp_path) -> Iterator[Client]:
    with Client(server.url, token=server.token, retry=NO_RETRY) as api:
        api.import_model("llama", write_folder(tmp_path / "llama", tiny_llama()))
        api.upload_dataset("chat.jsonl", write_jsonl(tmp_path / "chat.jsonl",
                                                     chat_records(8)))
        yield api


def test_the_client_creates_a_fine_tuning_job(api):
    job = api.create_job("llama", "chat", {"method": "full"}, job_id="ft",
                         output_model="mine", validation_dataset="chat")
    assert (job.model_kind, job.output_model, job.validation_dataset) == ("hf", "mine", "chat")
    assert job.hyperparameters["method"] == "full"
    with pytest.raises(Conflict):
        api.create_job("llama", "chat", output_model="mine")
    with pytest.raises(ValidationError) as info:
        api.create_job("llama", "chat", {"lora": {"rank": 2}})
    assert "lora.rank" in str(info.value.errors)


def test_the_cli_sets_method_and_lora_over_the_hyperparameters(api, server):
    assert finetune_hp({"lora": {"alpha": 8}, "max_steps": 3}, "lora", 4, None) == {
        "lora": {"alpha": 8, "r": 4}, "max_steps": 3, "method": "lora"}
    result = CliRunner().invoke(main, [
        "jobs", "submit", "--model", "llama", "--dataset", "chat", "--method", "lora",
        "--lora-r", "4", "--hp", "max_steps=3", "--output-model", "tuned", "--job-id", "cli",
        "--json", "--url", server.url, "--token", server.token])
    assert result.exit_code == 0, result.output
    job = json.loads(result.output)
    assert job["hyperparameters"] == {"max_steps": 3, "method": "lora", "lora": {"r": 4},
                                      "max_seq_length": 64}
    assert job["output_model"] == "tuned" and job["model_kind"] == "hf"
