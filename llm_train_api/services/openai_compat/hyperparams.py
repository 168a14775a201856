"""OpenAI's fine-tuning request (`hyperparameters`, `method`, `seed`) as the native
fine-tuning trainer's hyperparameters, and the native ones back as OpenAI's.

- `n_epochs` is `epochs`; `batch_size` is `batch_size`; `learning_rate_multiplier`
  multiplies the trainer's default `learning_rate` (training.hf.hyperparams); `"auto"`
  means the trainer's default. `seed` is `seed`.
- `method.type` `supervised` is the trainer's default method (LoRA). `dpo` is the
  trainer's `method: "dpo"` (LoRA adapters, TRL's sigmoid loss) with `beta` as `dpo.beta`;
  the training file must then be a preference dataset (OpenAI's `input` /
  `preferred_output` / `non_preferred_output` records or TRL's), which admission checks.
  `reinforcement` is not supported.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

from llm_train_api.training.hf.hyperparams import DEFAULTS

DEFAULT_LEARNING_RATE: float = DEFAULTS["learning_rate"]
DEFAULT_BETA: float = DEFAULTS["dpo"]["beta"]
AUTO = "auto"
METHOD_TYPES = ("supervised", "dpo", "reinforcement")

# OpenAI's name -> (native name, numeric type, minimum, maximum, exclusive minimum).
_PARAMS: dict[str, tuple[str, type, float, float, bool]] = {
    "n_epochs": ("epochs", int, 1, 50, False),
    "batch_size": ("batch_size", int, 1, 256, False),
    "learning_rate_multiplier": ("learning_rate", float, 0.0, 10.0, True),
    "beta": ("beta", float, 0.0, 2.0, True),
}


class TranslationError(ValueError):
    """A request field OpenAI's API would refuse, or one this service does not support:
    a 400 naming `param`."""

    def __init__(self, message: str, param: str | None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


def _number(name: str, value: Any, param: str) -> float | int | None:
    """The value of one OpenAI hyperparameter (None for "auto"); TranslationError."""
    _native, kind, low, high, exclusive = _PARAMS[name]
    if value == AUTO or value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TranslationError(f"{param} must be 'auto' or a number.", param)
    if kind is int and (isinstance(value, float) and not value.is_integer()):
        raise TranslationError(f"{param} must be 'auto' or an integer.", param)
    if not math.isfinite(value) or value < low or value > high or (exclusive and value == low):
        bound = f"above {low}" if exclusive else f"at least {low}"
        raise TranslationError(f"{param} must be 'auto' or a number {bound} and at most "
                               f"{high}.", param)
    return int(value) if kind is int else float(value)


def _translate(values: Mapping[str, Any], allowed: tuple[str, ...],
               where: str) -> dict[str, Any]:
    if not isinstance(values, Mapping):
        raise TranslationError(f"{where} must be an object.", where)
    native: dict[str, Any] = {}
    for name, value in values.items():
        param = f"{where}.{name}"
        if name not in allowed:
            raise TranslationError(f"Unknown hyperparameter {name!r}: {where} takes "
                                   f"{', '.join(allowed)}.", param)
        number = _number(name, value, param)
        if number is None:
            continue
        native_name = _PARAMS[name][0]
        native[native_name] = (DEFAULT_LEARNING_RATE * number
                               if name == "learning_rate_multiplier" else number)
    return native


SUPERVISED = ("n_epochs", "batch_size", "learning_rate_multiplier")
DPO = ("n_epochs", "batch_size", "learning_rate_multiplier", "beta")


def dpo_hyperparameters(values: Mapping[str, Any], where: str) -> dict[str, Any]:
    """A DPO method's hyperparameters as the native trainer's: `method: "dpo"` and its `dpo`
    object (`beta`; "auto" leaves the trainer's default)."""
    native = _translate(values, DPO, where)
    beta = native.pop("beta", None)
    return {"method": "dpo", "dpo": {} if beta is None else {"beta": beta}, **native}


def native_hyperparameters(body: Mapping[str, Any]) -> dict[str, Any]:
    """The native hyperparameters an OpenAI create body asks for (TranslationError)."""
    legacy = body.get("hyperparameters")
    method = body.get("method")
    if legacy is not None and method is not None:
        raise TranslationError("Give either `method` or the deprecated `hyperparameters`, "
                               "not both.", "hyperparameters")
    if method is None:
        native = _translate({} if legacy is None else legacy, SUPERVISED,
                            "hyperparameters")
    else:
        native = _method_hyperparameters(method)
    if body.get("seed") is not None:
        native["seed"] = body["seed"]
    return native


def _settings(method: Mapping[str, Any], kind: str) -> Mapping[str, Any]:
    """`method[kind]`'s hyperparameters (an object, or absent)."""
    settings = method.get(kind)
    if settings is None:
        return {}
    if not isinstance(settings, Mapping):
        raise TranslationError(f"method.{kind} must be an object.", f"method.{kind}")
    hyperparameters = settings.get("hyperparameters")
    return {} if hyperparameters is None else hyperparameters


def _method_hyperparameters(method: Mapping[str, Any]) -> dict[str, Any]:
    kind = method.get("type")
    if kind == "supervised":
        return _translate(_settings(method, "supervised"), SUPERVISED,
                          "method.supervised.hyperparameters")
    if kind == "dpo":
        return dpo_hyperparameters(_settings(method, "dpo"), "method.dpo.hyperparameters")
    if kind == "reinforcement":
        raise TranslationError("Reinforcement fine-tuning (method.type 'reinforcement', "
                               "graders) is not supported by this service.", "method.type",
                               "unsupported_method")
    raise TranslationError("method.type must be 'supervised' or 'dpo'.", "method.type")


def openai_hyperparameters(native: Mapping[str, Any]) -> dict[str, Any]:
    """The resolved hyperparameters of a job, in OpenAI's names (what the job object shows:
    `auto` already replaced by the value the trainer uses)."""
    out: dict[str, Any] = {
        "n_epochs": native.get("epochs", DEFAULTS["epochs"]),
        "batch_size": native.get("batch_size", DEFAULTS["batch_size"]),
    }
    rate = native.get("learning_rate", DEFAULT_LEARNING_RATE)
    out["learning_rate_multiplier"] = (round(rate / DEFAULT_LEARNING_RATE, 10)
                                       if isinstance(rate, (int, float)) else None)
    if native.get("method") == "dpo":
        dpo = native.get("dpo")
        out["beta"] = (dpo.get("beta", DEFAULT_BETA) if isinstance(dpo, Mapping)
                       else DEFAULT_BETA)
    return out


def openai_method(native: Mapping[str, Any]) -> dict[str, Any]:
    """The job object's `method`: DPO for a native DPO job, supervised otherwise."""
    hyperparameters = openai_hyperparameters(native)
    if native.get("method") == "dpo":
        return {"type": "dpo", "dpo": {"hyperparameters": hyperparameters}}
    return {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}}
