"""services.job_creation: a request body becomes a NewJob (admitted with the built-in
executor), a dry run a preview, and users' queues are capped; no HTTP involved."""

from __future__ import annotations

import pytest

from llm_train_api.config import Settings
from llm_train_api.domain import GIB, JobStatus, Principal, Role
from llm_train_api.services.admission import AdmissionError, memory_limit_bytes
from llm_train_api.services.job_creation import prepare_job, preview, queued_cap

BODY = {"model_name": "gpt-nano", "dataset": "builtin:tinytext", "hyperparameters": {},
        "priority": 0, "max_attempts": 3, "max_runtime_seconds": None, "resources": None}


def test_a_registry_accepts_any_names_and_pins_nothing(tmp_path):
    new = prepare_job({**BODY, "model_name": "anything", "dataset": "nope"}, owner="alice",
                      settings=Settings(EXECUTOR="none"), data_dir=tmp_path)
    assert new.dataset_sha256 is None and new.owner == "alice"
    assert new.job_id.startswith("job-")


def test_the_builtin_executor_admits_and_pins_the_datasets_hash(tmp_path):
    settings = Settings(EXECUTOR="local", WORKER_MEMORY_GB=64)
    new = prepare_job({**BODY, "job_id": "mine"}, owner=None, settings=settings,
                      data_dir=tmp_path)
    assert new.job_id == "mine" and len(new.dataset_sha256) == 64
    with pytest.raises(AdmissionError) as info:
        prepare_job({**BODY, "dataset": "missing"}, owner="alice", settings=settings,
                    data_dir=tmp_path)
    assert set(info.value.errors["json"]) == {"dataset"}


def test_preview_is_the_queued_job_and_only_users_are_capped():
    new = prepare_job(BODY, owner=None, settings=Settings(EXECUTOR="none"), data_dir=".")
    job = preview(new)
    assert job.status is JobStatus.QUEUED and job.id == new.job_id and job.attempts == 0
    settings = Settings(MAX_QUEUED_PER_USER=7)
    assert queued_cap(settings, Principal("a", Role.USER, 1)) == 7
    assert queued_cap(settings, Principal("r", Role.ADMIN, 2)) == 0


def test_memory_limit_is_the_setting_else_this_machine():
    assert memory_limit_bytes(1.5) == int(1.5 * GIB)
    assert memory_limit_bytes(0) > 0
