"""What a fine-tuning run will be, before it runs: the examples, tokens, truncations,
sequences and steps, from the model's own tokenizer and chat template. For DPO the
examples are preference pairs (``pairs`` counts them; ``truncated`` counts the pairs with
an answer cut; a pair's tokens are both its sequences').

:func:`plan_data` is the trainer's own data preparation (the trainer calls it), so a plan
and a run can never disagree. The API answers a dry run with it; the API process imports
neither torch nor transformers, so it runs this module as a subprocess::

    python -m llm_train_api.training.hf.plan < spec.json

reads a spec (as ``spec.json``) on stdin and prints one JSON object: the plan, or
``{"error": ..., "field": ...}`` with exit code 2 when the spec or the data is refused
(``field`` names the request field to blame: ``dataset``, ``validation_dataset``,
``hyperparameters`` or ``model_name``).
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm_train_api.training.datasets import DatasetError
from llm_train_api.training.events import EXIT_FAILED, EXIT_OK, EXIT_USAGE
from llm_train_api.training.formats import PREFERENCE, FormatError
from llm_train_api.training.hf.spec import ValidSpec, validate_spec
from llm_train_api.training.hyperparams import HyperparameterError
from llm_train_api.training.spec import SpecError


def steps_per_epoch(n_sequences: int, hp: Mapping[str, Any]) -> int:
    return max(1, math.ceil(n_sequences / (hp["batch_size"] * hp["gradient_accumulation_steps"])))


def total_steps_for(n_sequences: int, hp: Mapping[str, Any]) -> int:
    """``max_steps`` when set (it decides, as in transformers' Trainer), else epochs."""
    return hp["max_steps"] or hp["epochs"] * steps_per_epoch(n_sequences, hp)


@dataclass
class DataPlan:
    """The rendered data of a run and its length."""

    train: Any  # data.Prepared of the dataset
    validation: Any  # data.Prepared of the validation dataset, if the spec names one
    train_seqs: list[Any]
    val_seqs: list[Any]
    steps_per_epoch: int
    total_steps: int

    def summary(self) -> dict[str, Any]:
        sets = [self.train] + ([self.validation] if self.validation is not None else [])
        pairs = ({"pairs": sum(len(s.examples) for s in sets)}
                 if self.train.kind == PREFERENCE else {})
        return {
            "kind": self.train.kind, "records": sum(s.records for s in sets), **pairs,
            "examples": sum(len(s.examples) for s in sets),
            "tokens": sum(s.tokens for s in sets),
            "truncated": sum(s.truncated for s in sets),
            "dropped": sum(s.dropped for s in sets),
            "train_sequences": len(self.train_seqs), "val_sequences": len(self.val_seqs),
            "train_tokens": sum(len(s.input_ids) for s in self.train_seqs),
            "val_tokens": sum(len(s.input_ids) for s in self.val_seqs),
            "steps_per_epoch": self.steps_per_epoch, "total_steps": self.total_steps}


def plan_data(valid: ValidSpec, tokenizer: Any) -> DataPlan:
    """Render the datasets, hold out the validation examples, pack, count the steps."""
    from llm_train_api.training.hf import data as hfdata

    hp = valid.hp
    pairs = hp["method"] == "dpo"
    train_set = hfdata.prepare(tokenizer, valid.dataset_path, hp["max_seq_length"], pairs)
    val_set = None
    if valid.validation_path is not None:
        val_set = hfdata.prepare(tokenizer, valid.validation_path, hp["max_seq_length"],
                                 pairs)
        train_examples, val_examples = train_set.examples, val_set.examples
    else:
        train_examples, val_examples = hfdata.split(train_set.examples, hp["val_fraction"],
                                                    hp["seed"])
    train_seqs = hfdata.sequences(train_examples, hp["max_seq_length"], hp["packing"])
    val_seqs = hfdata.sequences(val_examples, hp["max_seq_length"], hp["packing"])
    return DataPlan(train_set, val_set, train_seqs, val_seqs,
                    steps_per_epoch(len(train_seqs), hp),
                    total_steps_for(len(train_seqs), hp))


def _field(exc: Exception, spec: Mapping[str, Any]) -> str:
    if isinstance(exc, HyperparameterError):
        return "hyperparameters"
    if isinstance(exc, DatasetError | FormatError):
        validation = spec.get("validation_dataset")
        return "validation_dataset" if validation and validation in str(exc) else "dataset"
    return "model_name"


def main() -> int:
    spec: Any = {}
    try:
        spec = json.loads(sys.stdin.read())
        valid = validate_spec(spec)
        from llm_train_api.training.hf import modeling

        plan = plan_data(valid, modeling.load_tokenizer(valid.model_path))
    except (SpecError, HyperparameterError, DatasetError, FormatError, ValueError) as exc:
        field = _field(exc, spec if isinstance(spec, dict) else {})
        print(json.dumps({"error": str(exc), "field": field}))
        return EXIT_USAGE
    except Exception as exc:  # noqa: BLE001 - the caller reads one JSON line either way
        print(json.dumps({"error": f"{type(exc).__name__}: {exc}", "field": None}))
        return EXIT_FAILED
    print(json.dumps(plan.summary()))
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
