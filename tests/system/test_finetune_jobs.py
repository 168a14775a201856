"""Fine-tuning jobs for real: a real gunicorn and a real `llm-train-api worker` fine-tune a
tiny Llama imported over PUT /models on a chat dataset uploaded over PUT /datasets; the
result becomes a model that a second job fine-tunes again; a worker killed with SIGKILL
mid-run leads to a resumed attempt that finishes and registers the model."""

from __future__ import annotations

import io
import signal
import tarfile

import pytest

from tests.helpers.finetune import import_model_and_chat
from tests.helpers.live import (
    alive,
    events,
    frozen_at,
    trainer_events,
    wait_for,
    wait_status,
)

pytestmark = pytest.mark.slow

HP = {"max_steps": 16, "batch_size": 4, "learning_rate": 0.01, "warmup_steps": 2,
      "log_interval": 2, "eval_interval": 8, "checkpoint_interval": 4,
      "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}
# Long enough that the worker is killed mid-run, short enough to finish after the resume.
KILLED_RUN_STEPS = 120


def _post(service, body: dict, query: str = "") -> dict:
    resp = service.http.post(f"{service.url}/jobs{query}", json=body, timeout=180)
    assert resp.status_code in (200, 201), resp.text
    return resp.json()


def test_lora_job_result_becomes_a_model_that_trains_again(service, tiny_hf_model):
    import_model_and_chat(service, tiny_hf_model)
    body = {"job_id": "ft", "model_name": "tiny", "dataset": "chat", "hyperparameters": HP,
            "output_model": "tiny-chat"}
    preview = _post(service, body, "?dry_run=true")
    plan = preview["plan"]
    assert plan["kind"] == "chat" and plan["records"] == 32 and plan["truncated"] == 0
    assert plan["total_steps"] == 16 and plan["method"] == "lora"
    assert plan["train_sequences"] + plan["val_sequences"] == plan["examples"] == 32
    assert plan["estimated_memory_bytes"] > 0
    assert service.http.get(f"{service.url}/jobs/ft", timeout=10).status_code == 404

    service.start_worker()
    assert _post(service, body)["model_kind"] == "hf"
    job = wait_status(service, "ft", {"succeeded", "failed"}, timeout=150)
    assert job["status"] == "succeeded", job["error_message"]
    assert job["progress"]["step"] == 16
    assert job["fine_tuned_model"] == "tiny-chat"
    curve = service.http.get(f"{service.url}/jobs/ft/metrics", timeout=10).json()
    assert [p["step"] for p in curve] == list(range(2, 17, 2))
    vals = [p["val_loss"] for p in curve if p.get("val_loss") is not None]
    assert curve[-1]["train_loss"] < curve[0]["train_loss"] and vals[-1] < vals[0], curve
    tuned = service.http.get(f"{service.url}/models/tiny-chat", timeout=10).json()
    assert (tuned["kind"], tuned["source"], tuned["base_model"], tuned["job_id"],
            tuned["method"]) == ("hf", "job", "tiny", "ft", "lora")
    assert "tiny-chat" in {m["name"] for m in service.http.get(
        f"{service.url}/models", timeout=10).json()}

    again = {"job_id": "ft2", "model_name": "tiny-chat", "dataset": "chat",
             "hyperparameters": {**HP, "max_steps": 4, "eval_interval": 0}}
    assert _post(service, again)["output_model"] == "ft2"
    job = wait_status(service, "ft2", {"succeeded", "failed"}, timeout=150)
    assert job["status"] == "succeeded", job["error_message"]
    second = service.http.get(f"{service.url}/models/ft2", timeout=10).json()
    assert second["base_model"] == "tiny-chat"


def test_kill_9_of_the_worker_resumes_the_fine_tuning_run_to_its_model(service,
                                                                        tiny_hf_model,
                                                                        tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    import_model_and_chat(service, tiny_hf_model)
    first = service.start_worker()
    _post(service, {"job_id": "phoenix", "model_name": "tiny", "dataset": "chat",
                    "output_model": "risen",
                    "hyperparameters": {**HP, "max_steps": KILLED_RUN_STEPS,
                                        "checkpoint_interval": 2, "eval_interval": 0}})
    # Frozen so that the run cannot end before its worker dies.
    with frozen_at(service, "phoenix", "checkpoint", 2) as trainer:
        first.stop(signal.SIGKILL)
        wait_for(lambda: not alive(trainer), 10, "the orphaned trainer to die with its worker")
    service.start_worker()
    job = wait_status(service, "phoenix", {"succeeded", "failed"}, timeout=120)
    assert job["status"] == "succeeded", job["error_message"]
    assert (job["attempts"], job["fine_tuned_model"]) == (2, "risen")
    timeline = events(service, "phoenix")
    assert [e["kind"] for e in timeline][:4] == ["created", "claimed", "lease_expired",
                                                 "claimed"]
    assert timeline[3]["attempt"] == 2
    starts = trainer_events(service, "phoenix", "start")
    assert not starts[0]["resumed_from_step"] and starts[-1]["resumed_from_step"] >= 2
    model = service.http.get(f"{service.url}/models/risen", timeout=10).json()
    assert (model["source"], model["job_id"], model["base_model"]) == ("job", "phoenix", "tiny")
    # The registered result downloads and loads as it is.
    resp = service.http.get(f"{service.url}/models/risen/archive", timeout=30)
    assert resp.status_code == 200 and int(resp.headers["Content-Length"]) == len(resp.content)
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        tar.extractall(tmp_path / "risen", filter="data")
    AutoTokenizer.from_pretrained(tmp_path / "risen", local_files_only=True)
    AutoModelForCausalLM.from_pretrained(tmp_path / "risen", local_files_only=True,
                                         use_safetensors=True)
