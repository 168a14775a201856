"""The fine-tuning job spec, its torch-free validation, and the command a worker runs.

``spec.json`` is ``{"job_id", "model_name", "model_path", "dataset", "validation_dataset",
"hyperparameters", "data_dir", "processes"}``. ``model_path`` is a local folder in Hugging
Face format (``config.json``, tokenizer files, ``*.safetensors`` weights), e.g. what the
model registry imported; ``model_name`` is only reported. Datasets resolve as for the
built-in trainer (:func:`~llm_train_api.training.datasets.resolve_dataset`).

:func:`validate_spec` checks all that can be checked without torch: the fields, the
hyperparameters, the datasets, and that the model folder holds safetensors weights (a
folder with only pickled ``.bin``/``.pt`` weights is refused: loading a pickle can run
code). The trainer runs it again before importing torch, so a bad job exits 2 at once.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from llm_train_api.training.datasets import default_data_dir, resolve_dataset
from llm_train_api.training.hf.hyperparams import validate_hyperparameters
from llm_train_api.training.spec import (
    SpecError,
    check_global_batch,
    check_processes,
    spec_hyperparameters,
    spec_job_id,
    spec_object,
    spec_processes,
    trainer_command,
)

SPEC_FIELDS = ("job_id", "model_name", "model_path", "dataset", "validation_dataset",
               "hyperparameters", "data_dir", "processes")
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
MODULE = "llm_train_api.training.hf"
#: The job folder's subfolder of results: ``adapter/`` and ``model/`` (Hugging Face format).
OUTPUT_FOLDER = "output"


@dataclass
class FineTuneSpec:
    """What to fine-tune; stored verbatim as ``spec.json`` in the job folder."""

    model_path: str
    dataset: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    validation_dataset: str | None = None
    data_dir: str | None = None
    job_id: str | None = None
    model_name: str | None = None
    processes: int = 1

    @classmethod
    def from_dict(cls, data: Any) -> FineTuneSpec:
        data = spec_object(data, SPEC_FIELDS)
        for key in ("model_path", "dataset"):
            if not isinstance(data.get(key), str) or not data[key]:
                raise SpecError(f"The spec needs a string {key!r}.")
        for key in ("validation_dataset", "data_dir", "model_name"):
            if data.get(key) is not None and not isinstance(data[key], str):
                raise SpecError(f"{key!r} must be a string.")
        hp = spec_hyperparameters(data)
        return cls(data["model_path"], data["dataset"], hp,
                   data.get("validation_dataset"), data.get("data_dir"), spec_job_id(data),
                   data.get("model_name"), spec_processes(data))

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "model_name": self.model_name,
                "model_path": self.model_path, "dataset": self.dataset,
                "validation_dataset": self.validation_dataset,
                "hyperparameters": self.hyperparameters, "data_dir": self.data_dir,
                "processes": self.processes}


@dataclass(frozen=True)
class ValidSpec:
    """A validated spec: normalised hyperparameters and resolved paths."""

    spec: FineTuneSpec
    hp: dict[str, Any]
    model_path: Path
    dataset_path: Path
    validation_path: Path | None


def check_model_folder(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is a Hugging Face model folder with safetensors weights, else
    :class:`SpecError` saying what is missing (or that its weights are pickles)."""
    folder = Path(path)
    if not folder.is_dir():
        raise SpecError(f"Model folder {str(folder)!r} does not exist.")
    if not (folder / "config.json").is_file():
        raise SpecError(f"Model folder {folder.name!r} has no config.json; it is not a "
                        "Hugging Face-format model.")
    names = [p.name for p in folder.iterdir() if p.is_file()]
    if not any(n.endswith(".safetensors") for n in names):
        pickles = sorted(n for n in names if n.endswith(PICKLE_SUFFIXES))
        if pickles:
            raise SpecError(
                f"Model folder {folder.name!r} holds only pickled weights ({', '.join(pickles)})"
                "; loading a pickle can run arbitrary code, so only safetensors weights are "
                "accepted. Convert the model to safetensors (save_pretrained with "
                "safe_serialization=True) and import it again.")
        raise SpecError(f"Model folder {folder.name!r} holds no *.safetensors weights.")
    return folder


def validate_spec(data: FineTuneSpec | Mapping[str, Any]) -> ValidSpec:
    """Everything torch-free; raises SpecError, HyperparameterError or DatasetError."""
    spec = data if isinstance(data, FineTuneSpec) else FineTuneSpec.from_dict(data)
    check_processes(spec.processes)
    hp = validate_hyperparameters(spec.hyperparameters)
    check_global_batch(hp["batch_size"], spec.processes)
    data_dir = default_data_dir(spec.data_dir)
    dataset = resolve_dataset(spec.dataset, data_dir)
    validation = (resolve_dataset(spec.validation_dataset, data_dir)
                  if spec.validation_dataset else None)
    return ValidSpec(spec, hp, check_model_folder(spec.model_path), dataset, validation)


def run_command(
    job_dir: str | os.PathLike[str],
    spec_file: str | os.PathLike[str] | None = None,
    python: str | None = None,
    processes: int = 1,
) -> list[str]:
    """argv for a worker: ``python -m llm_train_api.training.hf run --job-dir DIR``; with
    ``processes > 1`` under torchrun under :mod:`llm_train_api.training.launch`, exactly as
    :func:`llm_train_api.training.spec.run_command` does for the built-in trainer."""
    return trainer_command(MODULE, job_dir, spec_file, python, processes)
