"""Hyperparameter schema and validation (torch-free: the API validates jobs with it).

:func:`validate_hyperparameters` returns a complete, normalised dict (defaults filled in)
or raises :class:`HyperparameterError` whose ``errors`` maps each offending key to a list
of messages, in the shape marshmallow uses, so the API can return it as-is.

Run length: one epoch is one pass over the training tokens, so
``steps_per_epoch = ceil(train_tokens / (batch_size * block_size *
gradient_accumulation_steps))`` and the run has ``epochs * steps_per_epoch`` optimizer
steps; ``max_steps``, when given, decides the run length instead (more or fewer steps than
the epochs would give, as in transformers' Trainer).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm_train_api.training.catalog import MODELS, UnknownModel, get_model_spec


class HyperparameterError(ValueError):
    """Invalid hyperparameters; ``errors`` is ``{key: [message, ...]}``."""

    def __init__(self, errors: dict[str, list[str]]) -> None:
        self.errors = errors
        details = "; ".join(f"{k}: {' '.join(v)}" for k, v in errors.items())
        super().__init__(f"Invalid hyperparameters: {details}")


@dataclass(frozen=True)
class Param:
    """One hyperparameter. ``kind`` is int, float, bool or choice."""

    name: str
    kind: str
    default: Any
    doc: str
    minimum: float | None = None
    maximum: float | None = None
    exclusive_minimum: bool = False
    choices: tuple[str, ...] | None = None
    nullable: bool = False

    def to_dict(self, max_block_size: int | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {
            "name": self.name,
            "type": {"int": "integer", "float": "number", "bool": "boolean"}.get(
                self.kind, "string"
            ),
            "default": self.default,
            "doc": self.doc,
            "nullable": self.nullable,
        }
        maximum = self.maximum
        if self.name == "block_size" and max_block_size is not None:
            maximum = max_block_size
        if self.minimum is not None:
            out["exclusive_minimum" if self.exclusive_minimum else "minimum"] = self.minimum
        if maximum is not None:
            out["maximum"] = maximum
        if self.choices is not None:
            out["choices"] = list(self.choices)
        return out


_MAX_BLOCK = max(spec.block_size for spec in MODELS.values())

SCHEMA: tuple[Param, ...] = (
    Param("learning_rate", "float", 3e-4, "Peak AdamW learning rate, reached after warmup.",
          minimum=0.0, maximum=1.0, exclusive_minimum=True),
    Param("epochs", "int", 1, "Passes over the training tokens, unless max_steps is set.",
          minimum=1, maximum=10000),
    Param("batch_size", "int", 8,
          "Sequences per micro-batch, all processes together: with resources.processes = N "
          "each trains on batch_size / N (N must divide it); memory scales with that.",
          minimum=1, maximum=4096),
    Param("block_size", "int", 256, "Context length in bytes; at most the model's maximum.",
          minimum=8, maximum=_MAX_BLOCK),
    Param("max_steps", "int", None,
          "Optimizer steps; when set it decides the run length; null = epochs decide.",
          minimum=1, maximum=10_000_000, nullable=True),
    Param("warmup_steps", "int", 20, "Linear warmup steps from ~0 to learning_rate.",
          minimum=0, maximum=10_000_000),
    Param("lr_schedule", "choice", "cosine",
          "After warmup: cosine decay to 10% of learning_rate, or constant.",
          choices=("cosine", "constant")),
    Param("weight_decay", "float", 0.1, "Decoupled AdamW decay on 2-D weights only.",
          minimum=0.0, maximum=10.0),
    Param("grad_clip", "float", 1.0, "Max global gradient norm; 0 disables clipping.",
          minimum=0.0, maximum=1e6),
    Param("dropout", "float", 0.0, "Dropout on attention, residual and embeddings.",
          minimum=0.0, maximum=0.9),
    Param("gradient_accumulation_steps", "int", 1,
          "Micro-batches per optimizer step (larger effective batch, same memory).",
          minimum=1, maximum=1024),
    Param("eval_interval", "int", 100, "Validation every N steps (and at the end); 0 = end only.",
          minimum=0, maximum=10_000_000),
    Param("eval_steps", "int", 20, "Validation batches per evaluation.",
          minimum=1, maximum=10_000),
    Param("checkpoint_interval", "int", 100,
          "Save a checkpoint every N steps (and at the end); 0 = end only.",
          minimum=0, maximum=10_000_000),
    Param("keep_checkpoints", "int", 3,
          "Checkpoints kept besides the best (lowest val_loss); older ones are deleted.",
          minimum=1, maximum=1000),
    Param("log_interval", "int", 10, "Emit a metrics line every N steps.",
          minimum=1, maximum=10_000_000),
    Param("val_fraction", "float", 0.1, "Fraction of tokens (the tail) held out for validation.",
          minimum=0.0, maximum=0.5, exclusive_minimum=True),
    Param("seed", "int", 1337, "Seeds initialisation, dropout and batch sampling.",
          minimum=0, maximum=2**31 - 1),
    Param("device", "choice", "auto", "auto = cuda when available, else cpu.",
          choices=("auto", "cpu", "cuda")),
    Param("dtype", "choice", "auto",
          "auto = bfloat16 on CUDA if supported (else float16 with a GradScaler), "
          "float32 on CPU.",
          choices=("auto", "float32", "bfloat16", "float16")),
    Param("compile", "bool", False, "Wrap the model in torch.compile (needs a C compiler)."),
    Param("num_threads", "int", 0, "torch CPU threads; 0 keeps torch's default.",
          minimum=0, maximum=1024),
)

DEFAULTS: dict[str, Any] = {p.name: p.default for p in SCHEMA}


def hyperparameter_schema(model_name: str | None = None) -> list[dict[str, Any]]:
    """JSON-able schema; with ``model_name`` the block_size maximum is that model's."""
    max_block = get_model_spec(model_name).block_size if model_name else None
    return [p.to_dict(max_block) for p in SCHEMA]


def check_value(param: Param, value: Any) -> tuple[Any, str | None]:
    """``(normalised value, None)`` or ``(None, why)``."""
    if value is None:
        return (None, None) if param.nullable else (None, "Field may not be null.")
    if param.kind == "bool":
        if not isinstance(value, bool):
            return None, "Not a valid boolean."
        return value, None
    if param.kind == "choice":
        if not isinstance(value, str) or value not in (param.choices or ()):
            return None, f"Must be one of: {', '.join(param.choices or ())}."
        return value, None
    # bool is an int subclass; True as a batch size is a client bug, not a 1.
    if isinstance(value, bool):
        return None, "Not a valid number." if param.kind == "float" else "Not a valid integer."
    if param.kind == "int":
        if not isinstance(value, int):
            return None, "Not a valid integer."
    else:
        if not isinstance(value, (int, float)):
            return None, "Not a valid number."
        value = float(value)
        if not math.isfinite(value):
            return None, "Must be a finite number."
    lo, hi = param.minimum, param.maximum
    if lo is not None and (value <= lo if param.exclusive_minimum else value < lo):
        bound = f"greater than {lo:g}" if param.exclusive_minimum else f"at least {lo:g}"
        return None, f"Must be {bound}."
    if hi is not None and value > hi:
        return None, f"Must be at most {hi:g}."
    return value, None


def hyperparameters_object(hyperparameters: Any) -> Mapping[str, Any]:
    """``hyperparameters`` as given (``None`` is ``{}``); anything but an object is an error."""
    if hyperparameters is None:
        return {}
    if not isinstance(hyperparameters, Mapping):
        raise HyperparameterError({"hyperparameters": ["Must be an object."]})
    return hyperparameters


def check_params(schema: tuple[Param, ...], values: Mapping[str, Any], prefix: str,
                 result: dict[str, Any], errors: dict[str, list[str]],
                 extra: frozenset[str] = frozenset()) -> None:
    """Check ``values`` against ``schema``: each valid value goes into ``result``, each bad
    or unknown key (but those in ``extra``, which the caller checks) into ``errors`` as
    ``prefix + key``."""
    by_name = {p.name: p for p in schema}
    for key, value in values.items():
        if key in extra:
            continue
        param = by_name.get(key) if isinstance(key, str) else None
        if param is None:
            errors[f"{prefix}{key}"] = ["Unknown hyperparameter."]
            continue
        normalised, error = check_value(param, value)
        if error:
            errors[f"{prefix}{key}"] = [error]
        else:
            result[key] = normalised


def validate_hyperparameters(
    hyperparameters: Mapping[str, Any] | None, model_name: str | None = None
) -> dict[str, Any]:
    """Validate and normalise ``hyperparameters``; defaults fill missing keys.

    With ``model_name`` the cross-field limit ``block_size <= model max`` is checked too
    (an unknown model name is reported under ``model_name``). Floats come back as
    ``float``; ints stay ``int``.
    """
    hyperparameters = hyperparameters_object(hyperparameters)
    errors: dict[str, list[str]] = {}
    result = dict(DEFAULTS)
    check_params(SCHEMA, hyperparameters, "", result, errors)
    if model_name is not None:
        try:
            spec = get_model_spec(model_name)
        except UnknownModel as exc:
            errors["model_name"] = [str(exc)]
        else:
            if "block_size" not in errors and result["block_size"] > spec.block_size:
                errors["block_size"] = [
                    f"Must be at most {spec.block_size} for model {spec.name}."
                ]
    if errors:
        raise HyperparameterError(errors)
    return result
