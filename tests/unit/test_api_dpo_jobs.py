"""DPO jobs over HTTP (Flask's test client): preference uploads detected in both shapes
and their bad lines refused, the admission rules that tie method dpo to preference data
(422 naming the field, nothing created), and DPO's share of the memory estimate."""

from __future__ import annotations

import json

import pytest

from llm_train_api.services.finetune_memory import memory_breakdown
from llm_train_api.training.hf.hyperparams import validate_hyperparameters
from tests.helpers.clients import client_as
from tests.helpers.hf_models import tar_archive, tiny_llama
from tests.helpers.tiny_hf import chat_records, preference_records

TAR = "application/x-tar"
JSONL = "application/jsonl"


def lines(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


@pytest.fixture
def alice(admitting_app):
    client = client_as(admitting_app, "alice", "user")
    assert client.put("/models/llama", data=tar_archive(tiny_llama()), content_type=TAR
                      ).status_code == 201
    for name, records in (("chat", chat_records(8)), ("pref", preference_records(8)),
                          ("pref-openai", preference_records(8, "openai"))):
        resp = client.put(f"/datasets/{name}.jsonl", data=lines(records), content_type=JSONL)
        assert resp.status_code == 201, resp.get_json()
    return client


def test_both_preference_shapes_upload_as_kind_preference(alice):
    for name in ("pref", "pref-openai"):
        assert alice.get(f"/datasets/{name}").get_json()["kind"] == "preference"


@pytest.mark.parametrize(("record", "where"), [
    ({"prompt": "a", "chosen": "b"}, "Line 3: with a string 'prompt', 'rejected'"),
    ({"input": {"messages": [{"role": "user", "content": "q"}]},
      "preferred_output": [{"role": "user", "content": "x"}],
      "non_preferred_output": [{"role": "assistant", "content": "y"}]},
     "Line 3: preferred_output[0] must be an assistant message"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]},
     "Line 3 is a chat record, but the file is preference"),
])
def test_a_bad_preference_line_is_422_naming_it_and_changes_nothing(alice, record, where):
    body = lines(preference_records(2) + [record])
    resp = alice.put("/datasets/pref.jsonl", data=body, content_type=JSONL)
    assert resp.status_code == 422 and where in resp.get_json()["message"], resp.get_json()
    assert alice.get("/datasets/pref").get_json()["lines"] == 8


def test_a_dpo_job_on_a_preference_dataset(alice):
    resp = alice.post("/jobs", json={
        "job_id": "dpo", "model_name": "llama", "dataset": "pref-openai",
        "validation_dataset": "pref",
        "hyperparameters": {"method": "dpo", "dpo": {"beta": 0.2}, "max_steps": 5}})
    assert resp.status_code == 201, resp.get_json()
    job = resp.get_json()
    assert job["model_kind"] == "hf" and job["output_model"] == "dpo"
    assert job["hyperparameters"]["method"] == "dpo"
    assert job["hyperparameters"]["dpo"] == {"beta": 0.2}


@pytest.mark.parametrize(("body", "field", "needle"), [
    ({"dataset": "chat"}, "dataset", "method dpo needs a preference dataset"),
    ({"validation_dataset": "chat"}, "validation_dataset",
     "method dpo needs a preference dataset"),
    ({"hyperparameters": {"method": "lora"}}, "dataset", "trains with method dpo, not lora"),
    ({"hyperparameters": {"method": "full"}}, "dataset", "trains with method dpo, not full"),
    ({"hyperparameters": {"method": "dpo", "dpo": {"beta": 0}}}, "hyperparameters",
     "dpo.beta"),
    ({"hyperparameters": {"method": "dpo", "dpo": {"loss_type": "kto"}}}, "hyperparameters",
     "dpo.loss_type"),
    ({"hyperparameters": {"method": "dpo", "dpo": {"reference": "x"}}}, "hyperparameters",
     "dpo.reference"),
    ({"hyperparameters": {"method": "dpo", "packing": True}}, "hyperparameters", "packing"),
    ({"hyperparameters": {"method": "dpo", "dpo": {"full_weights": True},
                          "lora": {"r": 4}}}, "hyperparameters", "Only for LoRA"),
    ({"hyperparameters": {"method": "lora", "dpo": {"beta": 0.5}}, "dataset": "chat"},
     "hyperparameters", "Only for method dpo"),
])
def test_dpo_refusals_are_422_naming_the_field_and_create_nothing(alice, body, field, needle):
    request = {"model_name": "llama", "dataset": "pref",
               "hyperparameters": {"method": "dpo"}, **body}
    resp = alice.post("/jobs", json=request)
    assert resp.status_code == 422, resp.get_json()
    errors = resp.get_json()["errors"]["json"]
    assert needle in json.dumps(errors[field]), errors
    assert alice.get("/jobs").get_json() == []


def test_dpo_memory_counts_both_answers_and_the_full_weight_reference():
    shape = {"layers": 32, "hidden": 4096, "mlp": 11008, "vocab": 32000}
    n, base = 7_000_000_000, {"dtype": "bfloat16", "max_seq_length": 1024}

    def estimate(**hp):
        return memory_breakdown(n, shape, validate_hyperparameters({**base, **hp}), 1)

    sft, dpo = estimate(method="lora"), estimate(method="dpo")
    assert dpo["activations"] == 2 * sft["activations"]  # chosen and rejected
    assert dpo["weights"] == sft["weights"] and dpo["reference"] == 0  # adapters disabled
    assert "reference" not in sft
    full_sft = estimate(method="full")
    full_dpo = estimate(method="dpo", dpo={"full_weights": True})
    assert full_dpo["trainable_state"] == full_sft["trainable_state"] == 16 * n
    assert full_dpo["reference"] == 2 * n  # a frozen bfloat16 copy
    assert full_dpo["total"] > full_sft["total"] + 2 * n
