"""The job spec the worker hands the trainer, and its torch-free validation.

``spec.json`` is ``{"job_id", "model_name", "dataset", "hyperparameters", "data_dir"}``.
:func:`validate_spec` checks everything that can be checked without torch (model name,
hyperparameters, dataset name and existence), so the CLI refuses a bad job in a fraction
of a second, before importing torch, and the API can run the very same checks.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_train_api.training.catalog import get_model_spec
from llm_train_api.training.datasets import default_data_dir, resolve_dataset
from llm_train_api.training.hyperparams import validate_hyperparameters

SPEC_FIELDS = ("job_id", "model_name", "dataset", "hyperparameters", "data_dir")


class SpecError(ValueError):
    """The job cannot run as specified (exit code 2): fix the spec, don't retry."""


@dataclass
class RunSpec:
    """What the worker asks for; stored verbatim as ``spec.json`` in the job folder."""

    model_name: str
    dataset: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    job_id: str | None = None

    @classmethod
    def from_dict(cls, data: Any) -> RunSpec:
        if not isinstance(data, Mapping):
            raise SpecError("The spec must be a JSON object.")
        unknown = set(data) - set(SPEC_FIELDS)
        if unknown:
            raise SpecError(f"Unknown spec field(s): {', '.join(sorted(map(str, unknown)))}.")
        for key in ("model_name", "dataset"):
            if not isinstance(data.get(key), str):
                raise SpecError(f"The spec needs a string {key!r}.")
        hp = data.get("hyperparameters") or {}
        if not isinstance(hp, Mapping):
            raise SpecError("'hyperparameters' must be an object.")
        data_dir, job_id = data.get("data_dir"), data.get("job_id")
        if data_dir is not None and not isinstance(data_dir, str):
            raise SpecError("'data_dir' must be a string.")
        return cls(data["model_name"], data["dataset"], dict(hp), data_dir,
                   None if job_id is None else str(job_id))

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "model_name": self.model_name, "dataset": self.dataset,
                "hyperparameters": self.hyperparameters, "data_dir": self.data_dir}


def validate_spec(data: RunSpec | Mapping[str, Any]) -> tuple[RunSpec, dict[str, Any], Path]:
    """Return ``(spec, normalised hyperparameters, dataset path)`` or raise.

    Raises :class:`SpecError`, :class:`~.catalog.UnknownModel`,
    :class:`~.hyperparams.HyperparameterError` or :class:`~.datasets.DatasetError`.
    """
    spec = data if isinstance(data, RunSpec) else RunSpec.from_dict(data)
    get_model_spec(spec.model_name)
    hp = validate_hyperparameters(spec.hyperparameters, spec.model_name)
    path = resolve_dataset(spec.dataset, default_data_dir(spec.data_dir))
    return spec, hp, path


def run_command(
    job_dir: str | os.PathLike[str],
    spec_file: str | os.PathLike[str] | None = None,
    python: str | None = None,
) -> list[str]:
    """argv the worker should execute for a job (``spec_file`` defaults to
    ``JOB_DIR/spec.json``, which the worker may write with :func:`write_spec`)."""
    argv = [python or sys.executable, "-m", "llm_train_api.training", "run",
            "--job-dir", os.fspath(job_dir)]
    if spec_file is not None:
        argv += ["--spec", os.fspath(spec_file)]
    return argv


def write_spec(job_dir: str | os.PathLike[str], spec: RunSpec | Mapping[str, Any]) -> Path:
    """Write ``JOB_DIR/spec.json`` (local job folders) and return its path."""
    run_spec = spec if isinstance(spec, RunSpec) else RunSpec.from_dict(spec)
    folder = Path(job_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.json"
    tmp = folder / ".spec.json.tmp"
    tmp.write_text(json.dumps(run_spec.to_dict(), indent=2) + "\n", encoding="utf-8")
    os.replace(tmp, path)
    return path
