"""Admission: with the built-in executor, a job is checked against the trainer before it is
accepted, so that a typo fails the POST with a 422 instead of a worker an hour later.

Everything here imports without torch: the catalog, the hyperparameter schema and dataset
resolution are the trainer's own torch-free modules, so the API and the trainer can never
disagree about what is valid.
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from llm_train_api.services.ray_capacity import admission_problem as ray_admission_problem
from llm_train_api.training.catalog import UnknownModel, estimate_memory_for, get_model_spec
from llm_train_api.training.datasets import DatasetError, resolve_dataset, source_files
from llm_train_api.training.hyperparams import HyperparameterError, validate_hyperparameters
from llm_train_api.training.spec import default_processes

GIB = 1024**3


class AdmissionError(ValueError):
    """Field-level reasons, in marshmallow's shape: {field: [message, ...]}."""

    def __init__(self, errors: dict[str, Any]) -> None:
        super().__init__("The job cannot run as specified.")
        self.errors = errors


def machine_memory_bytes() -> int:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


def admit(
    model_name: str,
    dataset: str,
    hyperparameters: dict[str, Any],
    *,
    data_dir: str,
    memory_limit_bytes: int,
    resources: Mapping[str, Any] | None = None,
    ray_address: str = "",
) -> str:
    """Check that the job can run; return the dataset's sha256 to pin it to the job.

    With ``resources`` asking for several processes (DDP), ``batch_size`` - the global
    batch - must split evenly over them, and on CPU the ranks' memory adds up on one host.
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
    sha256 = None
    try:
        sha256 = dataset_sha256(resolve_dataset(dataset, data_dir))
    except DatasetError as exc:
        # The trainer's CLI message names the folder it searched; clients get no paths.
        errors["dataset"] = [re.sub(r" \(looked in [^)]*\)", "", str(exc))]
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
    # --- cluster capacity (issue 6): a job no Ray node can hold would wait forever ---
    too_big = ray_admission_problem(resources, ray_address)
    if too_big:
        errors["resources"] = [too_big]
    if errors:
        raise AdmissionError(errors)
    assert sha256 is not None
    return sha256


_hash_cache: dict[tuple[tuple[str, int, int], ...], str] = {}
_hash_lock = threading.Lock()


def dataset_sha256(path: Path) -> str:
    """Content hash of a dataset (its files' names and bytes), cached by stat signature so
    that creating many jobs on one large dataset reads it once. `path` comes from
    resolve_dataset, which has already refused anything outside the datasets folder."""
    files = source_files(path)
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"\0{file.name}\0".encode())
        with open(file, "rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


__all__ = ["AdmissionError", "admit", "dataset_sha256", "machine_memory_bytes"]
