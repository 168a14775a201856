"""Admission: with the built-in executor, a job is checked against the trainer before it is
accepted, so that a typo fails the POST with a 422 instead of a worker an hour later.

Everything here imports without torch: the catalog, the hyperparameter schema and dataset
resolution are the trainer's own torch-free modules, so the API and the trainer can never
disagree about what is valid.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from typing import Any

from llm_train_api.artifacts.homes import ResolvedDataset, resolve_owned_dataset
from llm_train_api.domain import GIB, InvalidRequest
from llm_train_api.services.ray_capacity import admission_problem as ray_admission_problem
from llm_train_api.training.catalog import UnknownModel, estimate_memory_for, get_model_spec
from llm_train_api.training.datasets import DatasetError, source_files
from llm_train_api.training.formats import TEXT, FormatError, read_records
from llm_train_api.training.hyperparams import HyperparameterError, validate_hyperparameters
from llm_train_api.training.spec import default_processes

ADMISSION_MESSAGE = "The job cannot run as specified: see `errors`."


class AdmissionError(InvalidRequest):
    """The job would fail on a worker; `fields` says why, per field, in marshmallow's shape
    ({field: [message, ...]}), and `errors` puts that under the request body (`json`)."""

    def __init__(self, fields: dict[str, Any]) -> None:
        super().__init__(ADMISSION_MESSAGE, {"json": fields})
        self.fields = fields


def dataset_kind(dataset: ResolvedDataset) -> str:
    """chat, instruction or text: the kind of the dataset's first record (FormatError).
    Reads one line at most: a plain-text file is text whatever it holds."""
    files = source_files(dataset.path)
    if files and files[0].suffix != ".jsonl":
        return TEXT
    for record in read_records(files[:1]):
        return record.kind
    raise FormatError(f"Dataset {dataset.name!r} holds no records.")


def machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def memory_limit_bytes(worker_memory_gb: float) -> int:
    """What one job may use: LLM_TRAIN_API_WORKER_MEMORY_GB when set (workers on other
    hosts), else this machine's memory (workers on this host)."""
    return int(worker_memory_gb * GIB) if worker_memory_gb else machine_memory_bytes()


def admit(
    model_name: str,
    dataset: str,
    hyperparameters: dict[str, Any],
    *,
    data_dir: str | os.PathLike[str],
    owner: str | None = None,
    memory_limit_bytes: int,
    resources: Mapping[str, Any] | None = None,
    ray_address: str = "",
    ray_token: str = "",
    fine_tuning_fields: tuple[str, ...] = (),
) -> ResolvedDataset:
    """Check that the job can run; return its dataset, resolved for `owner`, whose sha256
    the new job records.

    The dataset is resolved here, once per job (see artifacts.homes). With `ray_address`
    (LLM_TRAIN_API_RAY_ADDRESS; `ray_token`, LLM_TRAIN_API_RAY_TOKEN, for a cluster with
    token authentication) a job that no node of that cluster can hold is refused.

    With ``resources`` asking for several processes (DDP), ``batch_size`` - the global
    batch - must split evenly over them, and on CPU the ranks' memory adds up on one host.

    The built-in trainer trains text only: a chat or instruction dataset is refused, and
    so are the `fine_tuning_fields` the request set (validation_dataset, output_model).
    """
    errors: dict[str, Any] = {}
    try:
        get_model_spec(model_name)
    except UnknownModel as exc:
        errors["model_name"] = [str(exc)]
    validated: dict[str, Any] | None = None
    if "model_name" not in errors:
        try:
            validated = validate_hyperparameters(hyperparameters, model_name)
        except HyperparameterError as exc:
            errors["hyperparameters"] = exc.errors
    resolved: ResolvedDataset | None = None
    try:
        resolved = resolve_owned_dataset(data_dir, owner, dataset)
        resolved.sha256  # noqa: B018 - hashed now: an unreadable file is the client's 422
        kind = dataset_kind(resolved)
        if kind != TEXT:
            errors["dataset"] = [
                f"{dataset!r} is {'an' if kind[0] in 'aeiou' else 'a'} {kind} dataset; the "
                f"built-in GPTs train on text only: use a text dataset, or fine-tune a "
                "Hugging Face-format model (GET /models)."]
    except (DatasetError, FormatError) as exc:
        # The trainer's CLI message names the folder it searched; clients get no paths.
        errors["dataset"] = [re.sub(r" \(looked in [^)]*\)", "", str(exc))]
    for field in fine_tuning_fields:
        errors[field] = [f"Only for fine-tuning a Hugging Face-format model; {model_name!r} "
                         "is a built-in GPT."]
    processes = default_processes(resources)
    if validated is not None and validated["batch_size"] % processes:
        errors.setdefault("hyperparameters", {})["batch_size"] = [
            f"batch_size is the global batch, split evenly over the {processes} processes: "
            f"{validated['batch_size']} is not a multiple of {processes}."
        ]
    elif validated is not None:
        per_rank = {**validated, "batch_size": validated["batch_size"] // processes}
        # CPU ranks share the worker's memory; GPU ranks each have a device of their own.
        sharing = processes if not (resources or {}).get("gpus") else 1
        needed = estimate_memory_for(model_name, per_rank) * sharing
        if needed > memory_limit_bytes:
            ranks = f" over {processes} processes" if sharing > 1 else ""
            errors.setdefault("hyperparameters", {})["_memory"] = [
                f"{model_name} with batch_size {validated['batch_size']} and block_size "
                f"{validated['block_size']}{ranks} needs about {needed / GIB:.1f} GiB "
                f"(parameters, gradients, AdamW state, activations); workers have "
                f"{memory_limit_bytes / GIB:.1f} GiB. Use a smaller model or batch"
                + (", or fewer processes." if sharing > 1 else ".")
            ]
    # A job that no Ray node can hold would wait forever.
    too_big = ray_admission_problem(resources, ray_address, ray_token)
    if too_big:
        errors["resources"] = [too_big]
    if errors:
        raise AdmissionError(errors)
    assert resolved is not None
    return resolved


__all__ = ["AdmissionError", "admit", "dataset_kind", "machine_memory_bytes",
           "memory_limit_bytes"]
