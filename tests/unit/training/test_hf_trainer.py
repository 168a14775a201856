"""The fine-tuning trainer, in process, on a tiny random Llama: real training steps."""

from __future__ import annotations

import json
import threading

import pytest
import torch
from safetensors.torch import load_file

from llm_train_api.training.events import EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE, EventWriter
from llm_train_api.training.hf.trainer import execute

FAST = {"num_threads": 1, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}


def run(job_dir, model, data_dir, hp, dataset="chat", stop_at_step=None, stop=None):
    events: list[dict] = []
    spec = {"model_path": str(model), "dataset": dataset, "data_dir": str(data_dir),
            "hyperparameters": hp, "job_id": "t"}
    code = execute(spec, job_dir, EventWriter(enabled=False, listener=events.append),
                   stop, stop_at_step)
    return code, events


def of(events, name):
    return [e for e in events if e["event"] == name]


def losses(job_dir):
    lines = (job_dir / "metrics.jsonl").read_text().splitlines()
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in map(json.loads, lines)]


def test_lora_trains_only_the_adapters_and_the_loss_falls(tmp_path, tiny_hf_model,
                                                          chat_data_dir):
    hp = {**FAST, "max_steps": 30, "learning_rate": 0.01, "eval_interval": 5,
          "log_interval": 5, "warmup_steps": 2}
    code, events = run(tmp_path / "job", tiny_hf_model, chat_data_dir, hp)
    assert code == EXIT_OK, of(events, "error")
    start = of(events, "start")[0]
    assert start["method"] == "lora" and 0 < start["trainable_params"] < start["n_params"]
    vals = [m["val_loss"] for m in of(events, "metrics") if "val_loss" in m]
    assert vals[-1] < vals[0] - 0.3, vals
    assert {"train_token_accuracy", "tokens_per_s", "lr"} <= of(events, "metrics")[-1].keys()
    saved = load_file(tmp_path / "job/checkpoints/step-00000030/trainable.safetensors")
    assert saved and all("lora_" in name for name in saved)
    out = tmp_path / "job/output"
    assert (out / "adapter/adapter_model.safetensors").is_file()
    assert (out / "model/model.safetensors").is_file()
    assert not [p for p in out.rglob("*") if p.suffix in (".bin", ".pt", ".pth")]
    # The merged model differs from the base only through the adapters.
    base = load_file(tiny_hf_model / "model.safetensors")
    merged = load_file(out / "model/model.safetensors")
    assert torch.equal(base["model.embed_tokens.weight"], merged["model.embed_tokens.weight"])
    assert not torch.equal(base["model.layers.0.self_attn.q_proj.weight"],
                           merged["model.layers.0.self_attn.q_proj.weight"])


def test_full_fine_tuning_trains_every_weight_and_the_loss_falls(tmp_path, tiny_hf_model,
                                                                 chat_data_dir):
    hp = {"num_threads": 1, "method": "full", "max_steps": 20, "learning_rate": 0.003,
          "eval_interval": 5, "log_interval": 5}
    code, events = run(tmp_path / "job", tiny_hf_model, chat_data_dir, hp, dataset="qa")
    assert code == EXIT_OK, of(events, "error")
    start = of(events, "start")[0]
    assert start["trainable_params"] == start["n_params"]
    vals = [m["val_loss"] for m in of(events, "metrics") if "val_loss" in m]
    assert vals[-1] < vals[0] - 0.3, vals
    assert not (tmp_path / "job/output/adapter").exists()
    assert (tmp_path / "job/output/model/model.safetensors").is_file()


def test_max_steps_decides_the_run_length(tmp_path, tiny_hf_model, chat_data_dir):
    # 29 training conversations at batch 4: 8 steps an epoch; max_steps goes past it.
    hp = {**FAST, "max_steps": 11, "batch_size": 4, "epochs": 1, "eval_interval": 0,
          "merge_adapter": False}
    code, events = run(tmp_path / "job", tiny_hf_model, chat_data_dir, hp)
    assert code == EXIT_OK
    start = of(events, "start")[0]
    assert start["steps_per_epoch"] == 8 and start["total_steps"] == 11
    assert of(events, "done")[0]["step"] == 11 and losses(tmp_path / "job")[-1][0] == 11
    assert not (tmp_path / "job/output/model").exists()  # merge_adapter off


def test_resume_is_exact(tmp_path, tiny_hf_model, chat_data_dir):
    # Dropout on, so the RNG state must be restored too.
    hp = {**FAST, "lora": {"r": 8, "alpha": 16, "dropout": 0.1}, "max_steps": 8,
          "log_interval": 1, "eval_interval": 4, "checkpoint_interval": 100}
    code, _ = run(tmp_path / "whole", tiny_hf_model, chat_data_dir, hp)
    assert code == EXIT_OK
    code, events = run(tmp_path / "split", tiny_hf_model, chat_data_dir, hp, stop_at_step=4)
    assert code == EXIT_PREEMPTED and of(events, "checkpoint")[-1]["step"] == 4
    code, events = run(tmp_path / "split", tiny_hf_model, chat_data_dir, hp)
    assert code == EXIT_OK and of(events, "start")[0]["resumed_from_step"] == 4
    whole, split = losses(tmp_path / "whole"), losses(tmp_path / "split")
    assert [s for s, *_ in split] == [s for s, *_ in whole] == list(range(1, 9))
    flat = [[v for _, *values in rows for v in values if v is not None]
            for rows in (whole, split)]
    assert len(flat[0]) == 10 and flat[1] == pytest.approx(flat[0], rel=1e-5)
    a = load_file(tmp_path / "whole/output/adapter/adapter_model.safetensors")
    b = load_file(tmp_path / "split/output/adapter/adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_a_stop_request_checkpoints_and_exits_75(tmp_path, tiny_hf_model, chat_data_dir):
    stop = threading.Event()
    stop.set()
    code, events = run(tmp_path / "job", tiny_hf_model, chat_data_dir,
                       {**FAST, "max_steps": 5}, stop=stop)
    assert code == EXIT_PREEMPTED and of(events, "done")[0]["outcome"] == "preempted"
    assert (tmp_path / "job/checkpoints/latest.json").is_file()


def test_packing_and_truncation_are_reported(tmp_path, tiny_hf_model, chat_data_dir):
    hp = {**FAST, "max_steps": 2, "packing": True, "max_seq_length": 12}
    code, events = run(tmp_path / "job", tiny_hf_model, chat_data_dir, hp)
    assert code == EXIT_OK, of(events, "error")
    prepare, start = of(events, "prepare")[0], of(events, "start")[0]
    assert prepare["kind"] == "chat" and prepare["truncated"] > 0
    assert start["train_sequences"] < 29  # several conversations per sequence


@pytest.mark.parametrize(("hp", "dataset", "why"), [
    ({"method": "qlora"}, "chat", "qlora' needs a CUDA GPU"),
    ({"lora": {"target_modules": ["no_such_proj"]}}, "chat", "LoRA: "),
    ({"learning_rate": 0}, "chat", "learning_rate"),
    ({}, "nope", "Unknown dataset"),
])
def test_bad_jobs_exit_2_saying_why(tmp_path, tiny_hf_model, chat_data_dir, hp, dataset, why):
    code, events = run(tmp_path / "job", tiny_hf_model, chat_data_dir,
                       {"num_threads": 1, "device": "cpu", **hp}, dataset=dataset)
    assert code == EXIT_USAGE and why in of(events, "error")[0]["message"]


def test_a_chat_dataset_needs_a_chat_template(tmp_path, chat_data_dir):
    from tests.helpers.tiny_hf import build_model

    bare = build_model(tmp_path / "bare", chat_template=None)
    code, events = run(tmp_path / "job", bare, chat_data_dir, {**FAST, "max_steps": 1})
    assert code == EXIT_USAGE and "no chat template" in of(events, "error")[0]["message"]
