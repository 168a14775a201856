"""Admission of a fine-tuning job (a Hugging Face-format model): the fine-tuning trainer's
own torch-free checks (training.hf.hyperparams), plus what only the service knows: which
model and datasets the name means for the owner, whether the workers can run QLoRA,
whether the run fits the workers' memory, and the name its result will take.

What can be fixed in the request is a 422 naming the field (AdmissionError); an
`output_model` that names a model the owner already has, or the result of another of
their queued or running jobs, is a 409 (ModelConflict), like an import over a model.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from llm_train_api.artifacts.homes import ResolvedDataset, resolve_owned_dataset
from llm_train_api.artifacts.model_errors import InvalidModel, ModelConflict, ModelNotFound
from llm_train_api.artifacts.models import is_valid_name
from llm_train_api.config import PREFIX
from llm_train_api.domain import GIB
from llm_train_api.services import finetune_memory
from llm_train_api.services.admission import dataset_kind
from llm_train_api.services.models import Place, ResolvedModel, is_builtin, resolve_for_owner
from llm_train_api.store.jobs import JobRepository
from llm_train_api.training.datasets import DatasetError
from llm_train_api.training.formats import CHAT, PREFERENCE, FormatError
from llm_train_api.training.hf.hyperparams import (
    DEFAULTS,
    validate_hyperparameters,
    weights_method,
)
from llm_train_api.training.hyperparams import HyperparameterError
from llm_train_api.training.spec import default_processes

DEFAULT_SEQ_LENGTH: int = DEFAULTS["max_seq_length"]


def _public(exc: Exception) -> str:
    # The trainer's messages name the folder they searched; clients get no paths.
    return re.sub(r" \(looked in [^)]*\)", "", str(exc))


def produces_model(hp: Mapping[str, Any]) -> bool:
    """Whether the run writes output/model (the merged or fully trained model), which is
    what becomes a model; QLoRA and merge_adapter=false leave an adapter only (DPO: as
    the weights it trains, LoRA or full)."""
    method = weights_method(hp)
    return method == "full" or (method == "lora" and hp["merge_adapter"])


@dataclass(frozen=True)
class FineTuneAdmission:
    dataset: ResolvedDataset
    validation: ResolvedDataset | None
    hyperparameters: dict[str, Any]  # as stored: the request's, with `method` filled in
    validated: dict[str, Any]  # normalised, every default filled in
    output_model: str | None
    memory: dict[str, int]


class _Fields(dict[str, Any]):
    def add(self, field: str, message: str, key: str | None = None) -> None:
        if key is None:
            self.setdefault(field, []).append(message)
        else:
            self.setdefault(field, {}).setdefault(key, []).append(message)


def _resolve(data_dir: str | os.PathLike[str], owner: str | None, name: str, field: str,
             errors: _Fields) -> tuple[ResolvedDataset, str] | None:
    try:
        dataset = resolve_owned_dataset(data_dir, owner, name)
        return dataset, dataset_kind(dataset)
    except (DatasetError, FormatError, OSError) as exc:
        errors.add(field, _public(exc))
        return None


def admit_finetune(
    model: ResolvedModel,
    body: Mapping[str, Any],
    *,
    job_id: str,
    owner: str | None,
    place: Place,
    memory_limit_bytes: int,
    qlora_workers: bool,
) -> tuple[FineTuneAdmission | None, _Fields]:
    """The admitted job, or None with the per-field reasons it cannot run.

    The stored hyperparameters are the request's with `method` filled in, and with
    `max_seq_length` set to the model's context where the default would exceed it."""
    errors = _Fields()
    raw = body["hyperparameters"]
    validated: dict[str, Any] | None = None
    try:
        validated = validate_hyperparameters(raw)
    except HyperparameterError as exc:
        errors["hyperparameters"] = exc.errors
    name = body["model_name"]
    template = bool(model.model["has_chat_template"])
    found = _resolve(place.data_dir, owner, body["dataset"], "dataset", errors)
    validation = (_resolve(place.data_dir, owner, body["validation_dataset"],
                           "validation_dataset", errors)
                  if body.get("validation_dataset") else None)
    for field, resolved in (("dataset", found), ("validation_dataset", validation)):
        if resolved is not None and resolved[1] == CHAT and not template:
            errors.add(field, f"{resolved[0].name!r} is a chat dataset, and model {name!r} "
                       "has no chat template to render it with: use an instruction or text "
                       "dataset, or a model with a chat template.")
    if validated is not None:
        _check_kinds(validated["method"], (("dataset", found),
                                           ("validation_dataset", validation)), errors)
    if found and validation and validation[0].home != found[0].home:
        errors.add("validation_dataset", "The validation dataset must live where the "
                   "dataset does: both your own, or both published.")
    resources = body.get("resources") or {}
    processes = default_processes(resources)
    memory: dict[str, int] = {}
    if validated is not None:
        context = model.model.get("context_length")
        if context and "max_seq_length" not in raw and DEFAULT_SEQ_LENGTH > context:
            validated["max_seq_length"] = context  # the default, cut to what the model has
        if context and validated["max_seq_length"] > context:
            errors.add("hyperparameters", f"max_seq_length {validated['max_seq_length']} "
                       f"is longer than model {name!r}'s context ({context} tokens).",
                       "max_seq_length")
        if validated["method"] == "qlora":
            if not qlora_workers:
                errors.add("hyperparameters", "qlora needs CUDA GPUs and bitsandbytes on "
                           f"the workers, and this service does not declare them "
                           f"({PREFIX}QLORA_WORKERS is off): use method lora.", "method")
            elif not resources.get("gpus"):
                errors.add("hyperparameters", "qlora runs on a GPU: ask for resources.gpus "
                           ">= 1.", "method")
            elif processes > 1:
                errors.add("hyperparameters", "qlora runs in one process only.", "method")
        if validated["batch_size"] % processes:
            errors.add("hyperparameters", f"batch_size is the global batch, split evenly "
                       f"over the {processes} processes: {validated['batch_size']} is not "
                       f"a multiple of {processes}.", "batch_size")
        else:
            memory = _memory(model, validated, processes, resources, memory_limit_bytes,
                             errors)
    output = body.get("output_model")
    if validated is not None and not produces_model(validated):
        if output is not None:
            errors.add("output_model", "This job saves an adapter only (qlora, or "
                       "merge_adapter false), which is not a model of its own: leave "
                       "output_model out, or use lora with merge_adapter.")
    else:
        output = output or job_id
        if not is_valid_name(output):
            errors.add("output_model", f"Invalid model name {output!r}: letters, digits, "
                       "'.', '_' and '-' (no '..'), starting with a letter or digit, at "
                       "most 128 characters.")
    if errors or validated is None or found is None:
        return None, errors
    hyperparameters = {**raw, "method": validated["method"]}
    if "max_seq_length" not in raw and validated["max_seq_length"] != DEFAULT_SEQ_LENGTH:
        hyperparameters["max_seq_length"] = validated["max_seq_length"]
    return FineTuneAdmission(found[0], validation[0] if validation else None, hyperparameters,
                             validated, output, memory), errors


def _check_kinds(method: str, datasets: tuple[tuple[str, tuple[ResolvedDataset, str] | None],
                                              ...], errors: _Fields) -> None:
    """DPO trains on preference pairs only, and preference pairs train with DPO only."""
    for field, resolved in datasets:
        if resolved is None:
            continue
        dataset, kind = resolved
        if method == "dpo" and kind != PREFERENCE:
            errors.add(field, f"{dataset.name!r} is a {kind} dataset; method dpo needs a "
                       "preference dataset (prompt, chosen, rejected; or input, "
                       "preferred_output, non_preferred_output).")
        elif method != "dpo" and kind == PREFERENCE:
            errors.add(field, f"{dataset.name!r} is a preference dataset: it trains with "
                       f"method dpo, not {method}.")


def _memory(model: ResolvedModel, hp: dict[str, Any], processes: int,
            resources: Mapping[str, Any], limit: int, errors: _Fields) -> dict[str, int]:
    assert model.path is not None
    params = int(model.model["param_count"])
    try:
        shape = finetune_memory.shape_of(model.path, params)
    except (InvalidModel, OSError) as exc:
        errors.add("model_name", f"The model's config.json cannot be read: {exc}")
        return {}
    breakdown = finetune_memory.memory_breakdown(params, shape, hp, hp["batch_size"]
                                                 // processes)
    # CPU ranks share the worker's memory; GPU ranks each have a device of their own.
    sharing = processes if not resources.get("gpus") else 1
    needed = breakdown["total"] * sharing
    if needed > limit:
        ranks = f" over {processes} processes" if sharing > 1 else ""
        errors.add("hyperparameters", (
            f"{hp['method']} fine-tuning of {params:,} parameters with batch_size "
            f"{hp['batch_size']} and max_seq_length {hp['max_seq_length']}{ranks} needs "
            f"about {needed / GIB:.1f} GiB (weights, trainable state, activations); "
            f"workers have {limit / GIB:.1f} GiB. Use lora, a smaller batch_size or "
            "max_seq_length, or gradient_checkpointing."), "_memory")
    return breakdown


def check_output_model(place: Place, owner: str | None, name: str, job_id: str,
                       jobs: JobRepository) -> None:
    """ModelConflict when `name` already means a model for the owner (other than this
    job's own result: an identical retry), or another of their queued or running jobs
    will produce it."""
    if is_builtin(name):
        raise ModelConflict(f"output_model {name!r} is the name of a built-in model; "
                            "choose another name.")
    try:
        existing = resolve_for_owner(place, owner, name).model
    except ModelNotFound:
        existing = None
    if existing is not None and existing.get("job_id") != job_id:
        raise ModelConflict(f"output_model {name!r} is taken: the name already means a "
                            "model for you (GET /models); choose another name.")
    pending = [j for j in jobs.output_model_in_use(name, owner=owner) if j != job_id]
    if pending:
        raise ModelConflict(f"output_model {name!r} is the result of your queued or "
                            f"running job(s) {', '.join(pending)}; choose another name.")
