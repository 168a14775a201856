"""The Worker loop with fine-tuning jobs, on a real SQLite store with the in-memory
executor: the spec it hands the fine-tuning trainer (the model's folder resolved at claim
time), a model deleted since creation, and a succeeded run's model registered."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_train_api.artifacts import finetuned
from llm_train_api.artifacts.homes import owner_home
from llm_train_api.artifacts.jobs import job_dir
from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.store.database import Database
from llm_train_api.store.jobs import JobRepository
from llm_train_api.store.queue import JobQueue
from llm_train_api.training.events import EXIT_OK
from llm_train_api.training.hf.spec import FineTuneSpec
from llm_train_api.training.spec import RunSpec
from tests.helpers.hf_models import tiny_llama, write_folder
from tests.helpers.tiny_hf import chat_records, write_jsonl
from tests.helpers.worker import FakeExecutor, build_worker

OWNER = "alice"


@pytest.fixture
def setup(tmp_path: Path) -> Iterator[tuple[JobQueue, FakeExecutor, object, Path]]:
    database = Database.from_url(f"sqlite:///{tmp_path / 'jobs.sqlite3'}")
    queue = JobQueue(database, JobRepository(database))
    data_dir = tmp_path / "data"
    home = Path(owner_home(data_dir, OWNER))
    write_folder(home / "models" / "llama", tiny_llama())
    write_jsonl(home / "datasets" / "chat.jsonl", chat_records(4))
    write_jsonl(home / "datasets" / "val.jsonl", chat_records(2))
    executor = FakeExecutor()
    yield queue, executor, build_worker(queue, data_dir, executor, concurrency=2), data_dir
    database.close()


def submit(queue: JobQueue, job_id: str, **kw) -> None:
    queue.jobs.create_job(NewJob(job_id, "llama", "chat", {"method": "lora"}, owner=OWNER,
                                 model_kind="hf", output_model=f"{job_id}-model", **kw))


def test_the_fine_tuning_spec_names_the_owners_model_folder(setup):
    queue, executor, worker, data_dir = setup
    submit(queue, "ft", validation_dataset="val")
    worker.tick()
    spec = executor.runs["ft"].spec
    assert isinstance(spec, FineTuneSpec)
    home = owner_home(data_dir, OWNER)
    assert spec.model_path == str(Path(home) / "models" / "llama")
    assert (spec.dataset, spec.validation_dataset, spec.data_dir) == ("chat", "val", home)
    queue.jobs.create_job(NewJob("nano", "gpt-nano", "builtin:tinytext", {}))
    worker.tick()
    assert isinstance(executor.runs["nano"].spec, RunSpec)


def test_a_model_deleted_since_creation_fails_the_job_saying_so(setup):
    queue, executor, worker, data_dir = setup
    submit(queue, "ft")
    (Path(owner_home(data_dir, OWNER)) / "models" / "llama").rename(data_dir / "gone")
    worker.tick()
    job = queue.jobs.get_job("ft")
    assert job.status is JobStatus.FAILED and "no longer exists" in job.error_message
    assert "ft" not in executor.runs


def test_a_succeeded_run_registers_its_model_and_a_rerun_replaces_it(setup):
    queue, executor, worker, data_dir = setup
    submit(queue, "ft")
    worker.tick()
    folder = job_dir(data_dir, queue.jobs.get_job("ft"))
    write_folder(folder / "output" / "model", tiny_llama())
    executor.runs["ft"].rc = EXIT_OK
    worker.tick()
    assert queue.jobs.get_job("ft").status is JobStatus.SUCCEEDED
    home = owner_home(data_dir, OWNER)
    info = finetuned.get_info(home, "ft-model")
    assert (info.base_model, info.job_id, info.method, info.owner, info.source) == (
        "llama", "ft", "lora", OWNER, "job")
    assert not (folder / "output" / "model").exists()  # moved, not copied
    meta = json.loads((finetuned.model_path(home, "ft-model") / ".model.json").read_text())
    assert meta["job_id"] == "ft"


def test_a_result_name_taken_meanwhile_fails_the_job_and_keeps_the_result(setup):
    queue, executor, worker, data_dir = setup
    home = owner_home(data_dir, OWNER)
    submit(queue, "ft")
    worker.tick()
    other = Path(data_dir) / "other"
    write_folder(other, tiny_llama())
    finetuned.register(home, "ft-model", other, owner=OWNER, job_id="someone-else",
                       base_model="llama", method="full")
    folder = job_dir(data_dir, queue.jobs.get_job("ft"))
    write_folder(folder / "output" / "model", tiny_llama())
    executor.runs["ft"].rc = EXIT_OK
    worker.tick()
    job = queue.jobs.get_job("ft")
    assert job.status is JobStatus.FAILED and "could not be registered" in job.error_message
    assert (folder / "output" / "model" / "config.json").is_file()
    assert finetuned.get_info(home, "ft-model").job_id == "someone-else"
