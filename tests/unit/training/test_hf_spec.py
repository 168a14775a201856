"""The fine-tuning spec and hyperparameters: validated without torch, every bad key named."""

from __future__ import annotations

import pytest

from llm_train_api.training.hf.hyperparams import validate_hyperparameters
from llm_train_api.training.hf.spec import FineTuneSpec, run_command, validate_spec
from llm_train_api.training.hyperparams import HyperparameterError
from llm_train_api.training.spec import SpecError


def test_defaults_and_lora_settings():
    hp = validate_hyperparameters({"lora": {"r": 4, "target_modules": ["q_proj", "v_proj"]}})
    assert hp["method"] == "lora" and hp["max_steps"] is None and hp["packing"] is False
    assert hp["lora"] == {"r": 4, "alpha": 32.0, "dropout": 0.05,
                          "target_modules": ["q_proj", "v_proj"]}


def test_bad_hyperparameters_are_named():
    with pytest.raises(HyperparameterError) as info:
        validate_hyperparameters({
            "lr": 0.1, "method": "prefix", "max_seq_length": 4, "packing": "yes",
            "batch_size": True, "lora": {"rank": 2, "r": 0, "dropout": 1.5,
                                         "target_modules": "all"}})
    assert info.value.errors == {
        "lr": ["Unknown hyperparameter."],
        "method": ["Must be one of: lora, full, qlora, dpo."],
        "max_seq_length": ["Must be at least 8."],
        "packing": ["Not a valid boolean."],
        "batch_size": ["Not a valid integer."],
        "lora.rank": ["Unknown hyperparameter."],
        "lora.r": ["Must be at least 1."],
        "lora.dropout": ["Must be at most 0.9."],
        "lora.target_modules": ["Must be 'all-linear' or a non-empty list of module names."],
    }


def test_lora_settings_with_full_fine_tuning_are_refused():
    with pytest.raises(HyperparameterError) as info:
        validate_hyperparameters({"method": "full", "lora": {"r": 4}})
    assert info.value.errors == {"lora": ["Only for LoRA training (method lora or qlora, "
                                          "or dpo without full_weights)."]}


def test_spec_fields(tmp_path):
    with pytest.raises(SpecError, match="Unknown spec field"):
        FineTuneSpec.from_dict({"model_path": "m", "dataset": "d", "model": "x"})
    with pytest.raises(SpecError, match="model_path"):
        FineTuneSpec.from_dict({"dataset": "d"})
    with pytest.raises(SpecError, match="processes"):
        FineTuneSpec.from_dict({"model_path": "m", "dataset": "d", "processes": True})


def test_a_pickle_only_model_folder_is_refused(tmp_path, chat_data_dir):
    folder = tmp_path / "pickled"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "pytorch_model.bin").write_bytes(b"not even read")
    spec = {"model_path": str(folder), "dataset": "chat", "data_dir": str(chat_data_dir)}
    with pytest.raises(SpecError, match=r"only pickled weights \(pytorch_model.bin\)"):
        validate_spec(spec)
    (folder / "pytorch_model.bin").unlink()
    with pytest.raises(SpecError, match="no \\*.safetensors weights"):
        validate_spec(spec)
    with pytest.raises(SpecError, match="does not exist"):
        validate_spec({**spec, "model_path": str(tmp_path / "nowhere")})


def test_global_batch_must_split_over_processes(tiny_hf_model, chat_data_dir):
    with pytest.raises(SpecError, match="divisible"):
        validate_spec({"model_path": str(tiny_hf_model), "dataset": "chat", "processes": 2,
                       "data_dir": str(chat_data_dir), "hyperparameters": {"batch_size": 3}})


def test_run_command_keeps_the_launcher_contract():
    argv = run_command("/jobs/j1", python="py")
    assert argv == ["py", "-m", "llm_train_api.training.hf", "run", "--job-dir", "/jobs/j1"]
    ddp = run_command("/jobs/j1", python="py", processes=2)
    assert ddp[:4] == ["py", "-m", "llm_train_api.training.launch", "--"]
    assert ddp[-5:] == ["-m", "llm_train_api.training.hf", "run", "--job-dir", "/jobs/j1"]
    assert "--nproc-per-node" in ddp
