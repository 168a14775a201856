"""Hyperparameters of the fine-tuning trainer, validated without torch (the API may call it).

Same conventions as :mod:`llm_train_api.training.hyperparams`: a complete, normalised dict
comes back (defaults filled in), or :class:`HyperparameterError` whose ``errors`` names
each offending key (``lora.r`` for a key of the ``lora`` object), unknown keys included.

Run length: a step is one optimizer update over ``batch_size * gradient_accumulation_steps``
sequences (examples, or packs of examples with ``packing``); an epoch is one pass over the
training sequences. ``max_steps``, when given, decides the run length on its own (as in
transformers' Trainer): the data is repeated as often as needed, or the run stops early.

Preference tuning is ``method: "dpo"`` on a preference dataset; the ``dpo`` object holds
its settings (``beta``, ``loss_type``, ``full_weights``). It trains LoRA adapters (the
``lora`` object applies) unless ``full_weights`` is true; :func:`weights_method` says which
weights a run trains, whatever the method.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llm_train_api.training.hyperparams import (
    HyperparameterError,
    Param,
    check_params,
    hyperparameters_object,
)

METHODS = ("lora", "full", "qlora", "dpo")
#: DPO losses (TRL's names and formulas): the logistic loss of the DPO paper, its hinge
#: (SLiC) form, and IPO's squared loss on length-normalised log-ratios.
DPO_LOSS_TYPES = ("sigmoid", "hinge", "ipo")
#: What a DPO run reports besides the loss (TRL's names): per logged step, and per
#: validation (with ``val_loss``). The worker and the API pass exactly these through.
REWARD_METRICS = ("rewards/chosen", "rewards/rejected", "rewards/margins",
                  "rewards/accuracies")
VAL_REWARD_METRICS = ("val_rewards/margins", "val_rewards/accuracies")
ALL_LINEAR = "all-linear"

SCHEMA: tuple[Param, ...] = (
    Param("method", "choice", "lora",
          "lora: train low-rank adapters on a frozen model; full: train every weight; "
          "qlora: LoRA on a 4-bit model (needs CUDA and bitsandbytes); dpo: preference tuning "
          "(DPO) on a preference dataset, see the dpo object.", choices=METHODS),
    Param("max_seq_length", "int", 1024,
          "Tokens per sequence; longer examples are truncated (and counted).",
          minimum=8, maximum=131_072),
    Param("packing", "bool", False,
          "Pack several short examples into one sequence of up to max_seq_length."),
    Param("learning_rate", "float", 2e-4,
          "Peak AdamW learning rate (LoRA: ~1e-4..3e-4; full: ~1e-5..5e-5).",
          minimum=0.0, maximum=1.0, exclusive_minimum=True),
    Param("epochs", "int", 1, "Passes over the training sequences, unless max_steps is set.",
          minimum=1, maximum=10_000),
    Param("max_steps", "int", None, "Optimizer steps; when set it decides the run length.",
          minimum=1, maximum=10_000_000, nullable=True),
    Param("batch_size", "int", 4,
          "Sequences per micro-batch, all processes together (N processes must divide it).",
          minimum=1, maximum=4096),
    Param("gradient_accumulation_steps", "int", 1, "Micro-batches per optimizer step.",
          minimum=1, maximum=1024),
    Param("warmup_steps", "int", 0, "Linear warmup steps from ~0 to learning_rate.",
          minimum=0, maximum=10_000_000),
    Param("lr_schedule", "choice", "cosine",
          "After warmup: cosine decay to 10% of learning_rate, linear decay to 0, or constant.",
          choices=("cosine", "linear", "constant")),
    Param("weight_decay", "float", 0.0, "Decoupled AdamW decay on 2-D weights.",
          minimum=0.0, maximum=10.0),
    Param("grad_clip", "float", 1.0, "Max global gradient norm; 0 disables clipping.",
          minimum=0.0, maximum=1e6),
    Param("eval_interval", "int", 100, "Validation every N steps (and at the end); 0 = end only.",
          minimum=0, maximum=10_000_000),
    Param("eval_steps", "int", 20, "Validation batches per evaluation, at most.",
          minimum=1, maximum=100_000),
    Param("checkpoint_interval", "int", 100,
          "A checkpoint every N steps (and at the end); 0 = end only.",
          minimum=0, maximum=10_000_000),
    Param("keep_checkpoints", "int", 3,
          "Checkpoints kept besides the best (lowest val_loss); older ones are deleted.",
          minimum=1, maximum=1000),
    Param("log_interval", "int", 10, "A metrics line every N steps.",
          minimum=1, maximum=10_000_000),
    Param("val_fraction", "float", 0.1,
          "Examples held out for validation (a seeded draw) when the spec names no "
          "validation_dataset; 0 = no validation.", minimum=0.0, maximum=0.5),
    Param("seed", "int", 42, "Seeds LoRA initialisation, dropout, the split and the order.",
          minimum=0, maximum=2**31 - 1),
    Param("device", "choice", "auto", "auto = cuda when available, else cpu.",
          choices=("auto", "cpu", "cuda")),
    Param("dtype", "choice", "auto",
          "Compute dtype. auto = bfloat16 on CUDA if supported (else float16 with a "
          "GradScaler), float32 on CPU.", choices=("auto", "float32", "bfloat16", "float16")),
    Param("gradient_checkpointing", "bool", False,
          "Recompute activations in backward: less memory, about a third more compute."),
    Param("merge_adapter", "bool", True,
          "LoRA: also save the model with the adapter merged in (output/model)."),
    Param("num_threads", "int", 0, "torch CPU threads; 0 keeps torch's default.",
          minimum=0, maximum=1024),
)
LORA_SCHEMA: tuple[Param, ...] = (
    Param("r", "int", 16, "Adapter rank.", minimum=1, maximum=4096),
    Param("alpha", "float", 32.0, "Scaling numerator: updates are scaled by alpha / r.",
          minimum=0.0, maximum=1e6, exclusive_minimum=True),
    Param("dropout", "float", 0.05, "Dropout on the adapter's input.", minimum=0.0,
          maximum=0.9),
)
DPO_SCHEMA: tuple[Param, ...] = (
    Param("beta", "float", 0.1,
          "How far from the reference model the policy may move: higher keeps it closer.",
          minimum=0.0, maximum=1000.0, exclusive_minimum=True),
    Param("loss_type", "choice", "sigmoid",
          "sigmoid: the DPO paper's loss; hinge: SLiC's hinge on the same margin; ipo: "
          "IPO's squared loss on per-token log-ratios.", choices=DPO_LOSS_TYPES),
    Param("full_weights", "bool", False,
          "Train every weight (a frozen copy of the starting model is the reference: "
          "twice the weights in memory) instead of LoRA adapters (the reference is the "
          "model with its adapters disabled: no copy)."),
)
DPO_DEFAULTS: dict[str, Any] = {p.name: p.default for p in DPO_SCHEMA}
LORA_DEFAULTS: dict[str, Any] = {p.name: p.default for p in LORA_SCHEMA}
LORA_DEFAULTS["target_modules"] = ALL_LINEAR
DEFAULTS: dict[str, Any] = {p.name: p.default for p in SCHEMA}
DEFAULTS["lora"] = LORA_DEFAULTS
DEFAULTS["dpo"] = DPO_DEFAULTS


def weights_method(hp: Mapping[str, Any]) -> str:
    """Which weights a validated run trains: ``lora``, ``full`` or ``qlora`` (DPO trains
    LoRA adapters, or every weight with ``dpo.full_weights``)."""
    if hp["method"] == "dpo":
        return "full" if hp["dpo"]["full_weights"] else "lora"
    return hp["method"]


def hyperparameter_schema() -> list[dict[str, Any]]:
    """JSON-able schema; ``lora`` is an object whose keys are listed under ``properties``."""
    lora = {"name": "lora", "type": "object", "default": dict(LORA_DEFAULTS),
            "doc": "LoRA settings (method lora or qlora).", "nullable": False,
            "properties": [p.to_dict() for p in LORA_SCHEMA] + [{
                "name": "target_modules", "type": "string or array of strings",
                "default": ALL_LINEAR, "nullable": False,
                "doc": "Modules that get adapters: 'all-linear' (every linear layer but "
                       "the output head) or a list of module names, e.g. [\"q_proj\", "
                       "\"v_proj\"]."}]}
    dpo = {"name": "dpo", "type": "object", "default": dict(DPO_DEFAULTS),
           "doc": "DPO settings (method dpo).", "nullable": False,
           "properties": [p.to_dict() for p in DPO_SCHEMA]}
    return [p.to_dict() for p in SCHEMA] + [lora, dpo]


def _check_targets(value: Any) -> tuple[Any, str | None]:
    if value == ALL_LINEAR:
        return value, None
    if (isinstance(value, list) and value
            and all(isinstance(v, str) and v.strip() for v in value)):
        return list(value), None
    return None, f"Must be {ALL_LINEAR!r} or a non-empty list of module names."


def validate_hyperparameters(hyperparameters: Mapping[str, Any] | None) -> dict[str, Any]:
    """Validate and normalise; raise :class:`HyperparameterError` naming every bad key."""
    hyperparameters = hyperparameters_object(hyperparameters)
    errors: dict[str, list[str]] = {}
    result = dict(DEFAULTS)
    result["lora"] = dict(LORA_DEFAULTS)
    result["dpo"] = dict(DPO_DEFAULTS)
    check_params(SCHEMA, hyperparameters, "", result, errors, frozenset({"lora", "dpo"}))
    lora = hyperparameters.get("lora")
    if lora is not None:
        if not isinstance(lora, Mapping):
            errors["lora"] = ["Must be an object."]
        else:
            check_params(LORA_SCHEMA, lora, "lora.", result["lora"], errors,
                         frozenset({"target_modules"}))
            if "target_modules" in lora:
                targets, error = _check_targets(lora["target_modules"])
                if error:
                    errors["lora.target_modules"] = [error]
                else:
                    result["lora"]["target_modules"] = targets
    _check_dpo(hyperparameters.get("dpo"), result, errors)
    if lora is not None and weights_method(result) == "full" and "lora" not in errors:
        errors["lora"] = ["Only for LoRA training (method lora or qlora, or dpo without "
                          "full_weights)."]
    if errors:
        raise HyperparameterError(errors)
    return result


def _check_dpo(dpo: Any, result: dict[str, Any], errors: dict[str, list[str]]) -> None:
    """The ``dpo`` object, and what DPO rules out: ``packing`` (a pair's two answers are
    scored as whole sequences of their own)."""
    if dpo is not None:
        if not isinstance(dpo, Mapping):
            errors["dpo"] = ["Must be an object."]
        else:
            check_params(DPO_SCHEMA, dpo, "dpo.", result["dpo"], errors)
            if result["method"] != "dpo" and "method" not in errors:
                errors["dpo"] = ["Only for method dpo."]
    if result["method"] == "dpo" and result["packing"]:
        errors["packing"] = ["Not with method dpo: each answer of a pair is scored as a "
                             "sequence of its own."]
