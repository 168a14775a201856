"""What a LoRA fine-tune leaves behind loads back as the model it trained: after real
training steps on the tiny random Llama, the adapter (peft on the base), the merged model,
and the merged model downloaded as an archive and extracted give the trained model's
logits, and `generate` continues a chat prompt as the trained model does."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llm_train_api.artifacts.folder_archive import FolderArchive
from llm_train_api.artifacts.models import folder_files
from llm_train_api.training.events import EXIT_OK, EventWriter
from llm_train_api.training.hf.generate import generate, prompt_ids
from llm_train_api.training.hf.hyperparams import validate_hyperparameters
from llm_train_api.training.hf.modeling import (
    load_model,
    load_tokenizer,
    prepare_for_training,
    trainable_parameters,
)
from llm_train_api.training.hf.trainer import execute
from tests.helpers.tiny_hf import chat_records, write_jsonl

HP = {"num_threads": 1, "max_steps": 12, "learning_rate": 0.01, "eval_interval": 0,
      "log_interval": 4, "checkpoint_interval": 12, "lora": {"r": 8, "alpha": 16,
                                                           "dropout": 0.0}}
PROMPT = "what is two plus two"
TOLERANCE = {"rtol": 1e-4, "atol": 1e-4}


@pytest.fixture(scope="module")
def trained(tiny_hf_model, tmp_path_factory) -> Path:
    """The job folder of a real 12-step LoRA fine-tune of the tiny Llama."""
    root = tmp_path_factory.mktemp("reload")
    write_jsonl(root / "data" / "datasets" / "chat.jsonl", chat_records(32))
    spec = {"model_path": str(tiny_hf_model), "dataset": "chat",
            "data_dir": str(root / "data"), "hyperparameters": HP, "job_id": "t"}
    events: list[dict] = []
    code = execute(spec, root / "job", EventWriter(enabled=False, listener=events.append),
                   None, None)
    assert code == EXIT_OK, [e for e in events if e["event"] == "error"]
    return root / "job"


def _trained_model(base: Path, job: Path):
    """The model as training left it: the base prepared as the trainer prepares it, with
    the trained weights of the last checkpoint."""
    hp = validate_hyperparameters(HP)
    model = prepare_for_training(load_model(base, hp, torch.device("cpu"), torch.float32),
                                 hp, hp["seed"])
    weights = load_file(job / "checkpoints" / "step-00000012" / "trainable.safetensors")
    params = trainable_parameters(model)
    assert set(weights) == set(params)
    with torch.no_grad():
        for name, param in params.items():
            param.copy_(weights[name])
    return model.eval()


def _logits(model, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def _input(folder: Path) -> torch.Tensor:
    return torch.tensor([prompt_ids(load_tokenizer(folder), PROMPT, chat=True)])


def _auto(folder: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(folder, local_files_only=True,
                                                use_safetensors=True).eval()


def test_adapter_and_merged_model_give_the_trained_logits(trained, tiny_hf_model):
    from peft import PeftModel

    ids = _input(tiny_hf_model)
    expected = _logits(_trained_model(tiny_hf_model, trained), ids)
    base = _logits(_auto(tiny_hf_model), ids)
    assert not torch.allclose(base, expected, **TOLERANCE)  # training changed something
    adapter = PeftModel.from_pretrained(_auto(tiny_hf_model), trained / "output" / "adapter")
    torch.testing.assert_close(_logits(adapter.eval(), ids), expected, **TOLERANCE)
    merged = trained / "output" / "model"
    torch.testing.assert_close(_logits(_auto(merged), ids), expected, **TOLERANCE)
    assert _input(merged).tolist() == ids.tolist()  # the tokenizer travels with it


def test_the_merged_models_archive_extracts_to_a_loadable_folder(trained, tiny_hf_model,
                                                                  tmp_path):
    from transformers import AutoTokenizer

    merged = trained / "output" / "model"
    stream = FolderArchive(merged, folder_files(merged))
    data = b"".join(stream)
    stream.close()
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        tar.extractall(tmp_path / "x", filter="data")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "x", local_files_only=True)
    assert tokenizer.chat_template == load_tokenizer(tiny_hf_model).chat_template
    ids = _input(tmp_path / "x")
    torch.testing.assert_close(_logits(_auto(tmp_path / "x"), ids),
                               _logits(_trained_model(tiny_hf_model, trained), ids),
                               **TOLERANCE)


def _greedy(model, tokenizer, ids: torch.Tensor, n: int) -> str:
    out: list[int] = []
    for _ in range(n):
        token = int(_logits(model, ids)[0, -1].argmax())
        if token == tokenizer.eos_token_id:
            break
        out.append(token)
        ids = torch.cat([ids, torch.tensor([[token]])], dim=1)
    return tokenizer.decode(out, skip_special_tokens=True)


def test_generate_continues_the_chat_prompt_as_the_trained_model(trained, tiny_hf_model):
    merged = trained / "output" / "model"
    want = _greedy(_trained_model(tiny_hf_model, trained), load_tokenizer(merged),
                   _input(merged), 6)
    got = generate(merged, PROMPT, chat=True, max_new_tokens=6, temperature=0)
    assert got == want
    sampled = generate(merged, PROMPT, chat=True, max_new_tokens=6, seed=3)
    assert sampled == generate(merged, PROMPT, chat=True, max_new_tokens=6, seed=3)
