"""The OpenAI-compatible API's translations, without HTTP: model names both ways,
hyperparameters and methods into the trainer's and back, and the status table."""

from __future__ import annotations

import dataclasses

import pytest

from llm_train_api.artifacts.models import is_valid_name
from llm_train_api.domain import JobStatus
from llm_train_api.services.openai_compat import hyperparams, names, statuses
from llm_train_api.services.openai_compat.hyperparams import TranslationError
from llm_train_api.training.hf.hyperparams import DEFAULTS, validate_hyperparameters


def test_fine_tuned_model_names_round_trip():
    job = names.new_job_id()
    assert job.startswith("ftjob-") and len(job) == 30
    for suffix in (None, "bot", "x" * 64):
        native = names.native_model_name(job, suffix)
        assert is_valid_name(native)  # the native registry accepts it
        assert names.suffix_of_native(native, job) == suffix
        openai = names.openai_model_name("llama", "alice", suffix, job)
        assert names.job_of_model_name(openai) == job
    assert names.openai_model_name("llama", None, "bot", job) == f"ft:llama:local:bot:{job}"
    # a base that is itself an ft: name keeps the job id last
    nested = names.openai_model_name(f"ft:llama:alice:{job}", "alice", None, "ftjob-2")
    assert names.job_of_model_name(nested) == "ftjob-2"
    assert names.job_of_model_name("llama") is None
    assert names.job_of_model_name("ft:x") is None
    assert names.suffix_of_native("ft-a-other", job) is False
    assert names.suffix_of_native(job, job) is False


def test_hyperparameters_translate_to_the_trainers():
    body = {"method": {"type": "supervised", "supervised": {"hyperparameters": {
        "n_epochs": 3, "batch_size": 8, "learning_rate_multiplier": 0.5}}}, "seed": 9}
    native = hyperparams.native_hyperparameters(body)
    assert native == {"epochs": 3, "batch_size": 8, "learning_rate": pytest.approx(1e-4),
                      "seed": 9}
    assert hyperparams.native_hyperparameters({"hyperparameters": {
        "n_epochs": "auto", "batch_size": "auto"}}) == {}
    # back: "auto" resolved to the trainer's defaults
    assert hyperparams.openai_hyperparameters({}) == {
        "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 1.0}
    assert hyperparams.openai_hyperparameters(native)["learning_rate_multiplier"] == 0.5


@pytest.mark.parametrize(("body", "param"), [
    ({"hyperparameters": {"n_epochs": True}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"batch_size": 257}}, "hyperparameters.batch_size"),
    ({"hyperparameters": {"learning_rate_multiplier": 0}},
     "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"beta": 0.1}}, "hyperparameters.beta"),
    ({"method": {"type": "supervised", "supervised": []}}, "method.supervised"),
    ({"method": {"type": "other"}}, "method.type"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 2.5}}}},
     "method.dpo.hyperparameters.beta"),
    ({"method": {"type": "dpo", "dpo": []}}, "method.dpo"),
])
def test_refusals_name_the_param(body, param):
    with pytest.raises(TranslationError) as refused:
        hyperparams.native_hyperparameters(body)
    assert refused.value.param == param


def test_dpo_translates_to_the_trainers_dpo_object():
    body = {"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.3,
                                                                  "n_epochs": 2}}}}
    native = hyperparams.native_hyperparameters(body)
    assert native == {"method": "dpo", "dpo": {"beta": 0.3}, "epochs": 2}
    # the trainer's own validation takes it as it is
    resolved = validate_hyperparameters(native)
    assert resolved["method"] == "dpo" and resolved["dpo"]["beta"] == 0.3
    assert hyperparams.native_hyperparameters({"method": {"type": "dpo"}}) == {
        "method": "dpo", "dpo": {}}
    assert hyperparams.openai_method(native) == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0, "beta": 0.3}}}
    # a native DPO job's default beta reads as the trainer's default
    assert hyperparams.openai_method({"method": "dpo"})["dpo"]["hyperparameters"][
        "beta"] == DEFAULTS["dpo"]["beta"]
    assert hyperparams.openai_method({"method": "full"})["type"] == "supervised"


def test_every_native_status_has_an_openai_one():
    for status in JobStatus:
        assert statuses.openai_status(status) in statuses.OPENAI_STATUSES
    assert statuses.openai_status("paused") == "paused"


def test_a_checkpoint_reads_as_openais_checkpoint_object():
    from datetime import datetime, timezone

    from llm_train_api.domain import Job
    from llm_train_api.services.openai_compat.objects import checkpoint_object

    now = datetime(2026, 1, 1, tzinfo=timezone.utc)
    job = Job("ftjob-1", "llama", "file-1", {}, JobStatus.RUNNING, now, now, None, now, None,
              1, owner="alice", suffix="s", api="openai", model_kind="hf")
    checkpoint = checkpoint_object(job, 8, now, {"train_loss": 1.5, "val_loss": 1.75,
                                                 "val_token_accuracy": 0.25,
                                                 "val_perplexity": 5.75})
    assert checkpoint == {
        "id": "ftckpt-ftjob-1-8", "object": "fine_tuning.job.checkpoint",
        "created_at": int(now.timestamp()), "fine_tuning_job_id": "ftjob-1",
        "fine_tuned_model_checkpoint": "ft:llama:alice:s:ftjob-1:ckpt-step-8",
        "step_number": 8, "metrics": {
            "step": 8, "train_loss": 1.5, "train_mean_token_accuracy": None,
            "valid_loss": 1.75, "valid_mean_token_accuracy": 0.25, "full_valid_loss": None,
            "full_valid_mean_token_accuracy": None}}
    # a native job's checkpoints are named after the model it registers, or its id
    native = dataclasses.replace(job, api=None, output_model="mine")
    assert checkpoint_object(native, 8, now)["fine_tuned_model_checkpoint"] == \
        "mine:ckpt-step-8"
    assert checkpoint_object(dataclasses.replace(native, output_model=None), 8, now)[
        "fine_tuned_model_checkpoint"] == "ftjob-1:ckpt-step-8"
    # and the SDK parses it as its own
    from openai.types.fine_tuning.jobs import FineTuningJobCheckpoint

    parsed = FineTuningJobCheckpoint.model_validate(checkpoint)
    assert parsed.metrics.valid_loss == 1.75 and parsed.step_number == 8
