"""The job spec the worker hands the trainer, and its torch-free validation.

``spec.json`` is ``{"job_id", "model_name", "dataset", "hyperparameters", "data_dir",
"processes"}``; ``processes`` (data-parallel ranks, default 1) may be absent, as in spec files
written before DDP existed.
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
from typing import Any, Protocol

from llm_train_api.training.catalog import get_model_spec
from llm_train_api.training.datasets import default_data_dir, resolve_dataset
from llm_train_api.training.hyperparams import validate_hyperparameters

SPEC_FIELDS = ("job_id", "model_name", "dataset", "hyperparameters", "data_dir", "processes")
MAX_PROCESSES = 64


class SpecError(ValueError):
    """The job cannot run as specified (exit code 2): fix the spec, don't retry."""


class TrainerSpecLike(Protocol):
    """A trainer's spec (:class:`RunSpec`, the fine-tuning trainer's ``FineTuneSpec``)."""

    def to_dict(self) -> dict[str, Any]: ...


def spec_object(data: Any, fields: tuple[str, ...]) -> Mapping[str, Any]:
    """``data`` if it is an object with no keys but ``fields``, else :class:`SpecError`."""
    if not isinstance(data, Mapping):
        raise SpecError("The spec must be a JSON object.")
    unknown = set(data) - set(fields)
    if unknown:
        raise SpecError(f"Unknown spec field(s): {', '.join(sorted(map(str, unknown)))}.")
    return data


def spec_hyperparameters(data: Mapping[str, Any]) -> dict[str, Any]:
    """The spec's ``hyperparameters`` (absent or null: none), as a new dict."""
    hp = data.get("hyperparameters") or {}
    if not isinstance(hp, Mapping):
        raise SpecError("'hyperparameters' must be an object.")
    return dict(hp)


def spec_job_id(data: Mapping[str, Any]) -> str | None:
    job_id = data.get("job_id")
    return None if job_id is None else str(job_id)


def spec_processes(data: Mapping[str, Any]) -> int:
    """The spec's ``processes`` (absent or null: 1), checked."""
    processes = data.get("processes")
    return check_processes(1 if processes is None else processes)


def spec_text(spec: TrainerSpecLike) -> str:
    """The text of ``spec.json``."""
    return json.dumps(spec.to_dict(), indent=2) + "\n"


@dataclass
class RunSpec:
    """What the worker asks for; stored verbatim as ``spec.json`` in the job folder."""

    model_name: str
    dataset: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    data_dir: str | None = None
    job_id: str | None = None
    #: Data-parallel ranks on this node. Above 1 the job runs under torchrun (see
    #: :func:`run_command`); ``hyperparameters["batch_size"]`` stays the global batch.
    processes: int = 1

    @classmethod
    def from_dict(cls, data: Any) -> RunSpec:
        data = spec_object(data, SPEC_FIELDS)
        for key in ("model_name", "dataset"):
            if not isinstance(data.get(key), str):
                raise SpecError(f"The spec needs a string {key!r}.")
        hp = spec_hyperparameters(data)
        data_dir = data.get("data_dir")
        if data_dir is not None and not isinstance(data_dir, str):
            raise SpecError("'data_dir' must be a string.")
        return cls(data["model_name"], data["dataset"], hp, data_dir, spec_job_id(data),
                   spec_processes(data))

    def to_dict(self) -> dict[str, Any]:
        return {"job_id": self.job_id, "model_name": self.model_name, "dataset": self.dataset,
                "hyperparameters": self.hyperparameters, "data_dir": self.data_dir,
                "processes": self.processes}


def check_processes(value: Any) -> int:
    """``value`` as a rank count, or :class:`SpecError` (bools are a client bug, not 1)."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise SpecError("'processes' must be an integer.")
    if not 1 <= value <= MAX_PROCESSES:
        raise SpecError(f"'processes' must be between 1 and {MAX_PROCESSES}, not {value}.")
    return value


def default_processes(resources: Mapping[str, Any] | None) -> int:
    """Ranks for a job's ``resources``: ``processes`` if given, else one per GPU when it
    asks for several (a multi-GPU job that used one GPU would waste the rest), else 1."""
    resources = resources or {}
    if resources.get("processes") is not None:
        return int(resources["processes"])
    gpus = int(resources.get("gpus") or 0)
    return gpus if gpus > 1 else 1


def validate_spec(data: RunSpec | Mapping[str, Any]) -> tuple[RunSpec, dict[str, Any], Path]:
    """Return ``(spec, normalised hyperparameters, dataset path)`` or raise.

    Raises :class:`SpecError`, :class:`~.catalog.UnknownModel`,
    :class:`~.hyperparams.HyperparameterError` or :class:`~.datasets.DatasetError`.
    """
    spec = data if isinstance(data, RunSpec) else RunSpec.from_dict(data)
    check_processes(spec.processes)
    get_model_spec(spec.model_name)
    hp = validate_hyperparameters(spec.hyperparameters, spec.model_name)
    check_global_batch(hp["batch_size"], spec.processes)
    path = resolve_dataset(spec.dataset, default_data_dir(spec.data_dir))
    return spec, hp, path


def check_global_batch(batch_size: int, processes: int) -> int:
    """Per-rank batch for a global ``batch_size`` split over ``processes`` ranks.

    ``batch_size`` means the same thing at any rank count (sequences per micro-step, all
    ranks together), so a loss curve is comparable across 1 and N processes; an uneven
    split would weight ranks differently in the gradient average, so it is refused.
    """
    if batch_size % processes:
        raise SpecError(
            f"batch_size {batch_size} is the global batch and must be divisible by the "
            f"{processes} processes (each rank trains on batch_size / processes sequences); "
            f"use a multiple of {processes}."
        )
    return batch_size // processes


def run_command(
    job_dir: str | os.PathLike[str],
    spec_file: str | os.PathLike[str] | None = None,
    python: str | None = None,
    processes: int = 1,
) -> list[str]:
    """argv the worker should execute for a job (``spec_file`` defaults to
    ``JOB_DIR/spec.json``, which the worker may write with :func:`write_spec`).

    With ``processes > 1`` the trainer runs under torchrun (:func:`torchrun_command`),
    itself under :mod:`llm_train_api.training.launch`, which keeps the single-process
    contract that executors rely on: exit 75 when preempted (torchrun alone exits 1), one
    ``error`` + ``done`` pair naming the rank that failed first, SIGTERM forwarded once,
    and no rank outliving a SIGKILLed launcher.
    """
    return trainer_command("llm_train_api.training", job_dir, spec_file, python, processes)


def trainer_command(module: str, job_dir: str | os.PathLike[str],
                    spec_file: str | os.PathLike[str] | None, python: str | None,
                    processes: int) -> list[str]:
    """``python -m MODULE run --job-dir DIR [--spec FILE]``, under torchrun under
    :mod:`llm_train_api.training.launch` when ``processes > 1`` (see :func:`run_command`)."""
    argv = [python or sys.executable, "-m", module, "run", "--job-dir", os.fspath(job_dir)]
    if spec_file is not None:
        argv += ["--spec", os.fspath(spec_file)]
    if check_processes(processes) == 1:
        return argv
    return [python or sys.executable, "-m", "llm_train_api.training.launch", "--",
            *torchrun_command(argv, processes)]


def torchrun_command(trainer_argv: list[str], processes: int) -> list[str]:
    """``trainer_argv`` (``python -m llm_train_api.training run ...``) as a one-node
    torchrun launch of ``processes`` ranks; ``--standalone`` picks a free rendezvous port,
    so jobs on one host never collide."""
    python, dash_m, module, *rest = trainer_argv
    assert dash_m == "-m", trainer_argv
    return [python, "-m", "torch.distributed.run", "--standalone",
            "--nproc-per-node", str(processes), "-m", module, *rest]


def write_spec(job_dir: str | os.PathLike[str],
               spec: TrainerSpecLike | Mapping[str, Any]) -> Path:
    """Write ``JOB_DIR/spec.json`` (local job folders), atomically, and return its path.
    ``spec`` is either trainer's spec; a mapping is read as a :class:`RunSpec`."""
    trainer_spec = RunSpec.from_dict(spec) if isinstance(spec, Mapping) else spec
    folder = Path(job_dir)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "spec.json"
    tmp = folder / ".spec.json.tmp"
    tmp.write_text(spec_text(trainer_spec), encoding="utf-8")
    os.replace(tmp, path)
    return path
