"""Loading a pretrained model and tokenizer from a local folder, offline, safetensors only,
and preparing it for LoRA, QLoRA or full fine-tuning with peft.

Nothing downloads: the Hugging Face offline switches are forced before transformers is
imported, every load passes ``local_files_only=True``, and ``trust_remote_code`` stays off
(a model folder's Python files never run). Weights load with ``use_safetensors=True``: a
pickled ``.bin`` cannot be loaded even by mistake.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

for _name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"):
    os.environ[_name] = "1"
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

import torch  # noqa: E402
import transformers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer  # noqa: E402

from llm_train_api.training.spec import SpecError  # noqa: E402

transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()


def load_tokenizer(path: Path) -> Any:
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True,
                                                  trust_remote_code=False)
    except (OSError, ValueError) as exc:
        raise SpecError(f"Cannot load the tokenizer of {path.name!r}: {exc}") from None
    if tokenizer.pad_token_id is None:
        if tokenizer.eos_token_id is None:
            raise SpecError(f"The tokenizer of {path.name!r} has neither a pad nor an "
                            "end-of-sequence token.")
        tokenizer.pad_token = tokenizer.eos_token  # padding never carries loss
    return tokenizer


def check_qlora(device: torch.device) -> None:
    """QLoRA needs bitsandbytes' 4-bit kernels, which need CUDA: say which is missing."""
    if device.type != "cuda":
        raise SpecError("method 'qlora' needs a CUDA GPU (4-bit weights through "
                        "bitsandbytes); use method 'lora' on this machine.")
    if importlib.util.find_spec("bitsandbytes") is None:
        raise SpecError("method 'qlora' needs the bitsandbytes package, which is not "
                        "installed on this worker; use method 'lora', or install it.")


def load_model(path: Path, hp: dict[str, Any], device: torch.device,
               dtype: torch.dtype) -> Any:
    """The base model, with trainable weights in float32 and frozen ones in ``dtype``.

    Full fine-tuning keeps float32 master weights (AdamW on bf16 weights loses small
    updates) and computes in ``dtype`` under autocast; LoRA loads the frozen base in
    ``dtype`` to save memory, and peft keeps the adapters in float32.
    """
    kwargs: dict[str, Any] = {"local_files_only": True, "use_safetensors": True,
                              "trust_remote_code": False}
    if hp["method"] == "qlora":
        check_qlora(device)
        from transformers import BitsAndBytesConfig

        kwargs["quantization_config"] = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dtype)
        kwargs["device_map"] = {"": device.index or 0}
    kwargs["dtype"] = torch.float32 if hp["method"] == "full" else dtype
    try:
        model = AutoModelForCausalLM.from_pretrained(path, **kwargs)
    except (OSError, ValueError) as exc:
        raise SpecError(f"Cannot load the model {path.name!r}: {exc}") from None
    if hp["method"] != "qlora":
        model.to(device)
    model.config.use_cache = False  # the KV cache is for generation, not training
    return model


def prepare_for_training(model: Any, hp: dict[str, Any], seed: int) -> Any:
    """Adapters (LoRA/QLoRA) or every weight (full) trainable; gradient checkpointing."""
    if hp["gradient_checkpointing"]:
        model.gradient_checkpointing_enable(
            gradient_checkpointing_kwargs={"use_reentrant": False})
    if hp["method"] == "full":
        for param in model.parameters():
            param.requires_grad_(True)
        return model
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if hp["method"] == "qlora":
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=hp["gradient_checkpointing"])
    lora = hp["lora"]
    config = LoraConfig(r=lora["r"], lora_alpha=lora["alpha"], lora_dropout=lora["dropout"],
                        target_modules=lora["target_modules"], task_type="CAUSAL_LM")
    torch.manual_seed(seed)  # the adapters' initialisation
    try:
        return get_peft_model(model, config)
    except ValueError as exc:  # e.g. target modules the model does not have
        raise SpecError(f"LoRA: {exc}") from None


def trainable_parameters(model: Any) -> dict[str, torch.nn.Parameter]:
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def save_outputs(model: Any, tokenizer: Any, hp: dict[str, Any], folder: Path) -> list[str]:
    """The fine-tuned result in Hugging Face format, safetensors only: ``adapter/`` (LoRA,
    peft's ``save_pretrained``) and ``model/`` (LoRA merged into the base when
    ``merge_adapter``, or the fully fine-tuned model). Returns the folders written."""
    written = []
    folder.mkdir(parents=True, exist_ok=True)
    if hp["method"] != "full":
        model.save_pretrained(folder / "adapter", safe_serialization=True)
        tokenizer.save_pretrained(folder / "adapter")
        written.append("adapter")
        if not (hp["merge_adapter"] and hp["method"] == "lora"):
            return written
        model = model.merge_and_unload()
    model.config.use_cache = True
    model.save_pretrained(folder / "model", safe_serialization=True)
    tokenizer.save_pretrained(folder / "model")
    written.append("model")
    return written


def next_token_logits(model: Any, batch: Mapping[str, torch.Tensor], autocast: Any
                      ) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits of each position's next token (in float32, for a stable loss) and the
    labels they are scored against: the shift every causal-LM loss makes."""
    with autocast:
        logits = model(input_ids=batch["input_ids"],
                       attention_mask=batch["attention_mask"]).logits
    return logits[:, :-1].float(), batch["labels"][:, 1:]
