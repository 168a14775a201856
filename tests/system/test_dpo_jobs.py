"""DPO jobs for real: a real gunicorn and a real `llm-train-api worker` fine-tune a tiny
Llama (imported over PUT /models) with supervised LoRA on chat data, then run DPO from
that result on a preference dataset uploaded over PUT /datasets whose chosen answers are
learnable (the right answer followed by "thanks"; the rejected one "no"): the reward
margins rise, the reward accuracy ends above 0.5, and the result becomes a model."""

from __future__ import annotations

import json

import pytest

from tests.helpers.hf_models import tar_archive
from tests.helpers.live import wait_status
from tests.helpers.tiny_hf import chat_records, preference_records

pytestmark = pytest.mark.slow

LORA = {"r": 8, "alpha": 16, "dropout": 0.0}
SFT = {"max_steps": 8, "batch_size": 4, "learning_rate": 0.01, "log_interval": 4,
       "eval_interval": 0, "lora": LORA}
DPO = {"method": "dpo", "dpo": {"beta": 0.1}, "max_steps": 16, "batch_size": 4,
       "learning_rate": 0.01, "log_interval": 2, "eval_interval": 4, "lora": LORA}


def _put(service, path: str, data: bytes, content_type: str) -> None:
    resp = service.http.put(f"{service.url}{path}", data=data,
                            headers={"Content-Type": content_type}, timeout=30)
    assert resp.status_code == 201, resp.text


def _post(service, body: dict, query: str = "") -> dict:
    resp = service.http.post(f"{service.url}/jobs{query}", json=body, timeout=180)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def _jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def test_dpo_from_a_supervised_result_raises_the_reward_margins(service, tiny_hf_model):
    files = {p.name: p.read_bytes() for p in tiny_hf_model.iterdir() if p.is_file()}
    _put(service, "/models/tiny", tar_archive(files), "application/x-tar")
    _put(service, "/datasets/chat.jsonl", _jsonl(chat_records(32)), "application/jsonl")
    _put(service, "/datasets/prefs.jsonl", _jsonl(preference_records(40, "openai")),
         "application/jsonl")
    assert service.http.get(f"{service.url}/datasets/prefs",
                            timeout=10).json()["kind"] == "preference"

    service.start_worker()
    _post(service, {"job_id": "sft", "model_name": "tiny", "dataset": "chat",
                    "hyperparameters": SFT, "output_model": "tiny-sft"})
    job = wait_status(service, "sft", {"succeeded", "failed"}, timeout=150)
    assert job["status"] == "succeeded", job["error_message"]

    body = {"job_id": "dpo", "model_name": "tiny-sft", "dataset": "prefs",
            "hyperparameters": DPO, "output_model": "tiny-dpo"}
    plan = _post(service, body, "?dry_run=true")["plan"]
    assert (plan["kind"], plan["method"], plan["records"], plan["pairs"],
            plan["truncated"], plan["dropped"]) == ("preference", "dpo", 40, 40, 0, 0)
    assert plan["train_sequences"] + plan["val_sequences"] == 40 and plan["total_steps"] == 16
    assert plan["memory"]["reference"] == 0 and plan["estimated_memory_bytes"] > 0
    # A preference set is not supervised data, and DPO needs one: 422s naming the dataset.
    for wrong in ({**body, "hyperparameters": SFT}, {**body, "dataset": "chat"}):
        resp = service.http.post(f"{service.url}/jobs", json=wrong, timeout=60)
        assert resp.status_code == 422 and "dataset" in resp.json()["errors"]["json"]

    _post(service, body)
    job = wait_status(service, "dpo", {"succeeded", "failed"}, timeout=150)
    assert job["status"] == "succeeded", job["error_message"]
    curve = service.http.get(f"{service.url}/jobs/dpo/metrics", timeout=10).json()
    assert [p["step"] for p in curve] == list(range(2, 17, 2))
    margins = [p["rewards/margins"] for p in curve]
    accuracies = [p["rewards/accuracies"] for p in curve]
    assert margins[-1] > margins[0] + 0.5 and margins[-1] > 1.0, margins
    assert accuracies[-1] > 0.5, accuracies
    assert curve[-1]["train_loss"] < curve[0]["train_loss"], curve
    vals = [p for p in curve if p.get("val_rewards/accuracies") is not None]
    assert [p["step"] for p in vals] == [4, 8, 12, 16]
    assert vals[-1]["val_rewards/accuracies"] > 0.5 and vals[-1]["val_loss"] < vals[0]["val_loss"]
    assert vals[-1]["val_rewards/margins"] > vals[0]["val_rewards/margins"]
    print("DPO curve:", [(p["step"], round(p["rewards/margins"], 3),
                          p["rewards/accuracies"], round(p["train_loss"], 3)) for p in curve])
    print("DPO validation:", [(p["step"], round(p["val_rewards/margins"], 3),
                               p["val_rewards/accuracies"]) for p in vals])
    tuned = service.http.get(f"{service.url}/models/tiny-dpo", timeout=10).json()
    assert (tuned["base_model"], tuned["job_id"], tuned["method"]) == ("tiny-sft", "dpo", "dpo")
