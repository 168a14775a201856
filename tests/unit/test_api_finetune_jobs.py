"""POST /jobs for Hugging Face-format models, through Flask's test client: which trainer's
rules apply, the refusals (422 naming the field, 409 for a taken output name) that change
nothing, the memory estimate, and a dry run that plans the run with the trainer's code."""

from __future__ import annotations

import json

import pytest

from llm_train_api import create_app
from llm_train_api.api.jobs import PLANNERS_KEY
from llm_train_api.artifacts import finetuned
from llm_train_api.artifacts.homes import owner_home
from llm_train_api.services.finetune_memory import memory_breakdown
from tests.helpers.clients import client_as
from tests.helpers.hf_models import tar_archive, tiny_llama, write_folder
from tests.helpers.tiny_hf import QA, chat_records

TAR = "application/x-tar"
CHAT = "".join(json.dumps(r) + "\n" for r in chat_records(16)).encode()
QA_LINES = "".join(json.dumps({"prompt": q + " ?", "completion": a}) + "\n"
                   for q, a in QA).encode()


@pytest.fixture
def app(admitting_app):
    return admitting_app


@pytest.fixture
def alice(app):
    client = client_as(app, "alice", "user")
    files = tiny_llama()
    assert client.put("/models/llama", data=tar_archive(files), content_type=TAR
                      ).status_code == 201
    plain = {**files, "tokenizer_config.json": b'{"bos_token": "<s>"}'}
    assert client.put("/models/plain", data=tar_archive(plain), content_type=TAR
                      ).status_code == 201
    for name, body in (("chat.jsonl", CHAT), ("qa.jsonl", QA_LINES)):
        resp = client.put(f"/datasets/{name}", data=body, content_type="application/jsonl")
        assert resp.status_code in (200, 201), resp.get_json()
    return client


def jobs_of(client) -> list[str]:
    return [j["id"] for j in client.get("/jobs").get_json()]


def test_a_lora_job_on_an_imported_model(alice):
    resp = alice.post("/jobs", json={"job_id": "ft", "model_name": "llama",
                                     "dataset": "chat", "hyperparameters": {"max_steps": 5}})
    assert resp.status_code == 201, resp.get_json()
    job = resp.get_json()
    assert job["model_kind"] == "hf" and job["output_model"] == "ft"
    # method filled in; the default max_seq_length cut to the model's 64-token context
    assert job["hyperparameters"] == {"max_steps": 5, "method": "lora", "max_seq_length": 64}
    assert len(job["dataset_sha256"]) == 64 and job["validation_dataset"] is None
    builtin = alice.post("/jobs", json={"model_name": "gpt-nano",
                                        "dataset": "builtin:tinytext"}).get_json()
    assert builtin["model_kind"] == "builtin" and builtin["output_model"] is None


@pytest.mark.parametrize("body,field,needle", [
    ({"hyperparameters": {"lora": {"rank": 4}}}, "hyperparameters", "lora.rank"),
    ({"hyperparameters": {"block_size": 64}}, "hyperparameters", "block_size"),
    ({"hyperparameters": {"method": "qlora"}}, "hyperparameters", "QLORA_WORKERS"),
    ({"hyperparameters": {"max_seq_length": 4096}}, "hyperparameters", "context"),
    ({"model_name": "plain"}, "dataset", "no chat template"),
    ({"validation_dataset": "missing"}, "validation_dataset", "missing"),
    ({"output_model": "../x"}, "output_model", "Invalid model name"),
    ({"hyperparameters": {"merge_adapter": False}, "output_model": "x"}, "output_model",
     "adapter only"),
    ({"model_name": "gpt-nano", "dataset": "chat"}, "dataset", "text only"),
    ({"model_name": "gpt-nano", "dataset": "builtin:tinytext", "output_model": "x"},
     "output_model", "built-in GPT"),
])
def test_refusals_are_422_naming_the_field_and_create_nothing(alice, body, field, needle):
    resp = alice.post("/jobs", json={"model_name": "llama", "dataset": "chat", **body})
    assert resp.status_code == 422, resp.get_json()
    errors = resp.get_json()["errors"]["json"]
    assert needle in json.dumps(errors[field]), errors
    assert jobs_of(alice) == []


def test_a_chat_model_trains_instruction_data_without_a_template(alice):
    resp = alice.post("/jobs", json={"model_name": "plain", "dataset": "qa",
                                     "validation_dataset": "qa"})
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["validation_dataset"] == "qa"


def test_qlora_is_admitted_when_the_workers_have_it(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "QLORA_WORKERS": True})
    client = client_as(app, "bob", "user")
    client.put("/models/llama", data=tar_archive(tiny_llama()), content_type=TAR)
    client.put("/datasets/chat.jsonl", data=CHAT, content_type="application/jsonl")
    body = {"model_name": "llama", "dataset": "chat", "hyperparameters": {"method": "qlora"}}
    no_gpu = client.post("/jobs", json=body)
    assert "resources.gpus" in json.dumps(no_gpu.get_json()["errors"])
    ok = client.post("/jobs", json={**body, "resources": {"gpus": 1}})
    assert ok.status_code == 201 and ok.get_json()["output_model"] is None
    app.extensions["llm_train_api.runtime"].close()


def test_output_model_taken_is_409(alice):
    for name in ("llama", "gpt2"):
        resp = alice.post("/jobs", json={"model_name": "llama", "dataset": "chat",
                                         "output_model": name})
        assert resp.status_code == 409, resp.get_json()
    first = alice.post("/jobs", json={"job_id": "a", "model_name": "llama",
                                      "dataset": "chat", "output_model": "mine"})
    assert first.status_code == 201
    second = alice.post("/jobs", json={"model_name": "llama", "dataset": "chat",
                                       "output_model": "mine"})
    assert second.status_code == 409 and "a" in second.get_json()["message"]
    retry = alice.post("/jobs", json={"job_id": "a", "model_name": "llama",
                                      "dataset": "chat", "output_model": "mine"})
    assert retry.status_code == 200
    assert jobs_of(alice) == ["a"]


def test_another_users_model_is_not_a_model_for_me(app, alice):
    bob = client_as(app, "bob", "user")
    bob.put("/datasets/chat.jsonl", data=CHAT, content_type="application/jsonl")
    resp = bob.post("/jobs", json={"model_name": "llama", "dataset": "chat"})
    assert resp.status_code == 422 and "model_name" in resp.get_json()["errors"]["json"]


def test_memory_admission_counts_the_method(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "WORKER_MEMORY_GB": 0.3})
    client = client_as(app, "c", "user")
    client.put("/models/llama", data=tar_archive(tiny_llama()), content_type=TAR)
    client.put("/datasets/chat.jsonl", data=CHAT, content_type="application/jsonl")
    body = {"model_name": "llama", "dataset": "chat"}
    assert client.post("/jobs", json={**body, "hyperparameters": {
        "max_seq_length": 64, "batch_size": 4}}).status_code == 201
    big = client.post("/jobs", json={**body, "hyperparameters": {
        "max_seq_length": 64, "batch_size": 4096}})
    assert big.status_code == 422
    assert "_memory" in big.get_json()["errors"]["json"]["hyperparameters"]
    app.extensions["llm_train_api.runtime"].close()


def test_lora_state_covers_only_the_adapters():
    shape = {"layers": 32, "hidden": 4096, "mlp": 11008, "vocab": 32000}
    hp = {"dtype": "bfloat16", "max_seq_length": 1024, "gradient_checkpointing": False,
          "lora": {"r": 16}}
    lora = memory_breakdown(7_000_000_000, shape, {**hp, "method": "lora"}, 1)
    full = memory_breakdown(7_000_000_000, shape, {**hp, "method": "full"}, 1)
    assert lora["trainable_params"] == 16 * 32 * (8 * 4096 + 3 * (4096 + 11008))
    assert lora["trainable_state"] == 16 * lora["trainable_params"]
    assert full["trainable_state"] == 16 * 7_000_000_000
    assert lora["weights"] == 2 * 7_000_000_000 < full["weights"]
    checkpointed = memory_breakdown(7_000_000_000, shape, {
        **hp, "method": "lora", "gradient_checkpointing": True}, 1)
    assert checkpointed["activations"] < lora["activations"]


def test_a_fine_tuned_model_is_listed_used_and_deleted_like_a_model(app, alice, tmp_path):
    data_dir = app.extensions["llm_train_api.runtime"].data_dir
    made = alice.post("/jobs", json={"job_id": "made", "model_name": "llama",
                                     "dataset": "chat", "output_model": "tuned"})
    assert made.status_code == 201
    result = write_folder(tmp_path / "result", tiny_llama())
    finetuned.register(owner_home(data_dir, "alice"), "tuned", result, owner="alice",
                       job_id="made", base_model="llama", method="lora")
    listed = {m["name"]: m for m in alice.get("/models").get_json()}
    tuned = listed["tuned"]
    assert (tuned["kind"], tuned["source"], tuned["base_model"], tuned["job_id"],
            tuned["method"], tuned["owner"]) == ("hf", "job", "llama", "made", "lora", "alice")
    assert alice.get("/models/tuned").get_json()["job_id"] == "made"
    assert "tuned" not in {m["name"] for m in client_as(app, "bob", "user")
                           .get("/models").get_json()}
    # A name means one model: no import over it.
    assert alice.put("/models/tuned", data=tar_archive(tiny_llama()),
                     content_type=TAR).status_code == 409
    again = alice.post("/jobs", json={"job_id": "again", "model_name": "tuned",
                                      "dataset": "chat"})
    assert again.status_code == 201 and again.get_json()["model_kind"] == "hf"
    busy = alice.delete("/models/tuned")
    assert busy.status_code == 409 and "again" in busy.get_json()["message"]
    assert alice.post("/jobs/again/cancel").status_code == 200
    assert alice.delete("/models/tuned").status_code == 204
    assert alice.get("/models/tuned").status_code == 404
    assert alice.get("/jobs/made").status_code == 200  # the job stays


def test_a_dry_run_beyond_the_planner_slots_is_a_503_with_retry_after(app, alice):
    """Each dry run of a fine-tuning job runs a planner process; a process runs at most
    PLANS_PER_PROCESS of them, and answers the next at once, creating nothing."""
    planners = app.extensions[PLANNERS_KEY]
    body = {"job_id": "busy", "model_name": "llama", "dataset": "chat",
            "hyperparameters": {"max_steps": 5}}
    holders = [planners.hold() for _ in range(planners.limit)]
    for held in holders:
        held.__enter__()
    try:
        resp = alice.post("/jobs?dry_run=true", json=body)
        assert resp.status_code == 503, resp.get_json()
        assert resp.headers["Retry-After"] == "5"
        assert "PLANS_PER_PROCESS" in resp.get_json()["message"]
        assert "busy" not in jobs_of(alice)
    finally:
        for held in holders:
            held.__exit__(None, None, None)
    # Freed: the next dry run gets a planner process. The hand-written test tokenizer is
    # not one it can load, so the answer is the planner's own refusal, without Retry-After.
    resp = alice.post("/jobs?dry_run=true", json=body)
    assert resp.status_code == 503
    assert resp.get_json()["message"].startswith("The run could not be planned on this server")
    assert "Retry-After" not in resp.headers
    assert "busy" not in jobs_of(alice)
