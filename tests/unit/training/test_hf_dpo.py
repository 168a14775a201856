"""DPO: our loss and rewards against TRL's DPOTrainer on the same log-probabilities, the
LoRA reference, and real DPO runs of the fine-tuning trainer on the tiny Llama."""

from __future__ import annotations

import contextlib
import copy
import json
import math

import pytest
import torch

from llm_train_api.training.events import EXIT_OK, EXIT_PREEMPTED, EXIT_USAGE
from llm_train_api.training.hf import data as hfdata
from llm_train_api.training.hf.dpo import adapter_reference, dpo_loss, sequence_logps
from llm_train_api.training.hf.preference import render_pair
from tests.helpers.tiny_hf import preference_records, write_jsonl
from tests.unit.training.test_hf_trainer import of, run

NO_AUTOCAST = contextlib.nullcontext()
FAST = {"method": "dpo", "num_threads": 1, "lora": {"r": 8, "alpha": 16, "dropout": 0.0},
        "learning_rate": 0.01}


@pytest.fixture(scope="module")
def models(tiny_hf_model):
    """(policy, reference, tokenizer): the tiny Llama and a perturbed copy of it, so the
    rewards are not all zero."""
    from transformers import AutoModelForCausalLM

    from llm_train_api.training.hf import modeling

    reference = AutoModelForCausalLM.from_pretrained(tiny_hf_model).eval()
    policy = copy.deepcopy(reference)
    torch.manual_seed(1)
    with torch.no_grad():
        for param in policy.parameters():
            param.add_(0.2 * torch.randn_like(param))
    return policy, reference, modeling.load_tokenizer(tiny_hf_model)


@pytest.mark.parametrize("loss_type", ["sigmoid", "hinge", "ipo"])
@pytest.mark.parametrize("shape", ["trl", "text"])
def test_loss_and_rewards_match_trl(models, tmp_path, loss_type, shape):
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    policy, reference, tokenizer = models
    records = preference_records(6, shape)
    pairs = [render_pair(tokenizer, r) for r in records]
    batch = hfdata.collate([p.chosen for p in pairs] + [p.rejected for p in pairs],
                           tokenizer.pad_token_id, torch.device("cpu"))
    beta, n = 0.3, len(pairs)
    with torch.no_grad():
        logps, tokens = sequence_logps(policy, batch, NO_AUTOCAST)
        ref, _ = sequence_logps(reference, batch, NO_AUTOCAST)
    losses, chosen, rejected = dpo_loss(logps[:n], logps[n:], ref[:n], ref[n:], beta=beta,
                                        loss_type=loss_type, chosen_tokens=tokens[:n],
                                        rejected_tokens=tokens[n:])
    # TRL scores the same batch, its completion mask being our loss mask (float32: TRL's
    # default bf16 autocast would change the numbers, not the formula).
    config = DPOConfig(output_dir=str(tmp_path), beta=beta, loss_type=[loss_type],
                       report_to=[], use_cpu=True, bf16=False, precompute_ref_log_probs=False)
    trainer = DPOTrainer(model=copy.deepcopy(policy), ref_model=copy.deepcopy(reference),
                         args=config, train_dataset=Dataset.from_list(records),
                         processing_class=tokenizer)
    trainer.model.eval()
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"],
              "completion_mask": (batch["labels"] != hfdata.IGNORE).long()}
    with torch.no_grad():
        trl_loss = trainer._compute_loss(trainer.model, inputs, False)
    trl = {k: v[-1] for k, v in trainer._metrics["eval"].items()}
    assert float(losses.mean()) == pytest.approx(float(trl_loss), rel=1e-5)
    assert float(logps[:n].mean()) == pytest.approx(trl["logps/chosen"], rel=1e-5)
    assert float(chosen.mean()) == pytest.approx(trl["rewards/chosen"], rel=1e-4, abs=1e-6)
    assert float(rejected.mean()) == pytest.approx(trl["rewards/rejected"], rel=1e-4,
                                                   abs=1e-6)
    assert float((chosen - rejected).mean()) == pytest.approx(trl["rewards/margins"],
                                                              rel=1e-4, abs=1e-6)
    assert float((chosen > rejected).float().mean()) == trl["rewards/accuracies"]
    assert 0 < trl["rewards/accuracies"] < 1  # the perturbation ranks some pairs each way


def test_the_lora_reference_is_the_base_model(models, tiny_hf_model):
    from transformers import AutoModelForCausalLM

    from llm_train_api.training.hf import modeling

    _, base, tokenizer = models
    pairs = [render_pair(tokenizer, r) for r in preference_records(4)]
    batch = hfdata.collate([p.chosen for p in pairs], tokenizer.pad_token_id,
                           torch.device("cpu"))
    hp = {"method": "lora", "gradient_checkpointing": False,
          "lora": {"r": 4, "alpha": 8, "dropout": 0.0, "target_modules": "all-linear"}}
    model = modeling.prepare_for_training(
        AutoModelForCausalLM.from_pretrained(tiny_hf_model), hp, 0)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "lora_B" in name:
                param.add_(0.5)  # adapters that change the model
        trained = sequence_logps(model, batch, NO_AUTOCAST)[0]
        expected = sequence_logps(base, batch, NO_AUTOCAST)[0]
    reference = adapter_reference(model, NO_AUTOCAST)(batch)
    assert torch.allclose(reference, expected, atol=1e-5)
    assert not torch.allclose(trained, expected, atol=1e-2)


@pytest.fixture
def pref_dir(chat_data_dir):
    write_jsonl(chat_data_dir / "datasets" / "pref.jsonl", preference_records(32))
    write_jsonl(chat_data_dir / "datasets" / "pref-openai.jsonl",
                preference_records(32, "openai"))
    return chat_data_dir


def metrics_lines(job_dir):
    return [json.loads(line) for line in (job_dir / "metrics.jsonl").read_text().splitlines()]


def test_dpo_run_raises_the_margins_and_ranks_the_pairs(tmp_path, tiny_hf_model, pref_dir):
    hp = {**FAST, "max_steps": 12, "eval_interval": 4, "log_interval": 4}
    code, events = run(tmp_path / "job", tiny_hf_model, pref_dir, hp, dataset="pref-openai")
    assert code == EXIT_OK, of(events, "error")
    assert of(events, "prepare")[0]["kind"] == "preference"
    start = of(events, "start")[0]
    assert start["method"] == "dpo" and 0 < start["trainable_params"] < start["n_params"]
    assert start["tokens_per_step"] == 2 * 4 * 1024  # each pair is two sequences
    rows = metrics_lines(tmp_path / "job")
    keys = {"train_loss", "rewards/chosen", "rewards/rejected", "rewards/margins",
            "rewards/accuracies", "val_loss", "val_rewards/margins", "val_rewards/accuracies"}
    assert all(keys <= row.keys() for row in rows)
    margins = [r["rewards/margins"] for r in rows]
    assert margins == sorted(margins) and margins[-1] > 1.0, margins
    assert rows[-1]["rewards/accuracies"] > 0.5 and rows[-1]["val_rewards/accuracies"] > 0.5
    assert rows[-1]["train_loss"] < math.log(2) - 0.3
    assert (tmp_path / "job/output/model/model.safetensors").is_file()


def test_dpo_resume_is_exact(tmp_path, tiny_hf_model, pref_dir):
    hp = {**FAST, "lora": {"r": 8, "alpha": 16, "dropout": 0.1}, "max_steps": 6,
          "log_interval": 1, "eval_interval": 3, "merge_adapter": False}
    assert run(tmp_path / "whole", tiny_hf_model, pref_dir, hp, dataset="pref")[0] == EXIT_OK
    code, _ = run(tmp_path / "split", tiny_hf_model, pref_dir, hp, dataset="pref",
                  stop_at_step=3)
    assert code == EXIT_PREEMPTED
    code, events = run(tmp_path / "split", tiny_hf_model, pref_dir, hp, dataset="pref")
    assert code == EXIT_OK and of(events, "start")[0]["resumed_from_step"] == 3
    whole, split = metrics_lines(tmp_path / "whole"), metrics_lines(tmp_path / "split")
    drop = ("lr", "elapsed_s", "tokens_per_s")
    assert len(whole) == len(split) == 6
    for a, b in zip(whole, split, strict=True):
        assert {k for k in a if k not in drop} == {k for k in b if k not in drop}
        for key in a:
            if key not in drop:
                assert b[key] == pytest.approx(a[key], rel=1e-5, abs=1e-6), key


@pytest.mark.parametrize(("method", "dataset", "why"), [
    ("dpo", "chat", "method dpo needs a preference dataset"),
    ("lora", "pref", "it trains with method dpo only"),
])
def test_the_dataset_kind_must_match_the_method(tmp_path, tiny_hf_model, pref_dir, method,
                                                dataset, why):
    code, events = run(tmp_path / "job", tiny_hf_model, pref_dir,
                       {**FAST, "method": method, "max_steps": 1}, dataset=dataset)
    assert code == EXIT_USAGE and why in of(events, "error")[0]["message"]


def test_full_weight_dpo_trains_every_weight_against_a_frozen_reference(tmp_path,
                                                                        tiny_hf_model,
                                                                        pref_dir):
    hp = {"method": "dpo", "num_threads": 1, "learning_rate": 0.003, "max_steps": 6,
          "eval_interval": 3, "log_interval": 3,
          "dpo": {"full_weights": True, "loss_type": "hinge", "beta": 0.5}}
    code, events = run(tmp_path / "job", tiny_hf_model, pref_dir, hp, dataset="pref")
    assert code == EXIT_OK, of(events, "error")
    start = of(events, "start")[0]
    assert start["trainable_params"] == start["n_params"]  # the reference is not trained
    rows = metrics_lines(tmp_path / "job")
    assert rows[-1]["rewards/margins"] > rows[0]["rewards/margins"] > 0, rows
    assert not (tmp_path / "job/output/adapter").exists()
    assert (tmp_path / "job/output/model/model.safetensors").is_file()
