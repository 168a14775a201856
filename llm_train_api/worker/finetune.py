"""What a worker does for a fine-tuning job (a Hugging Face-format model) besides what it
does for every job: resolve the model's folder when it claims the job (the job trains
what the name means for its owner now; a model deleted since creation fails the job
cleanly), and register the merged result as a model when the run succeeds.

The registered model is `output/model`, the merged (LoRA) or fully trained weights in
Hugging Face format, moved out of the job folder (artifacts.finetuned), so it loads like
any imported model and a later job can fine-tune it again. The adapter stays in the job
folder (`output/adapter`).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from llm_train_api.artifacts import finetuned
from llm_train_api.artifacts.homes import ResolvedDataset, owner_home, resolve_owned_dataset
from llm_train_api.artifacts.model_errors import ModelError, ModelNotFound
from llm_train_api.domain import Job
from llm_train_api.services.models import Place, resolve_for_owner
from llm_train_api.training.datasets import DatasetError
from llm_train_api.training.hf.spec import OUTPUT_FOLDER, FineTuneSpec

MODEL_OUTPUT = "model"


def is_finetune(job: Job) -> bool:
    return job.model_kind == "hf"


def finetune_spec(job: Job, place: Place, dataset: ResolvedDataset,
                  hyperparameters: dict[str, Any], processes: int) -> FineTuneSpec | str:
    """The spec the fine-tuning trainer runs, or why the job cannot run any more."""
    try:
        model = resolve_for_owner(place, job.owner, job.model_name)
    except ModelNotFound:
        return (f"model {job.model_name!r} no longer exists (deleted since the job was "
                "created)")
    if model.path is None:
        return (f"model {job.model_name!r} is now a built-in GPT, not the Hugging "
                "Face-format model the job was created for; resubmit the job")
    if job.validation_dataset:
        try:
            validation = resolve_owned_dataset(place.data_dir, job.owner,
                                               job.validation_dataset)
        except DatasetError as exc:
            return f"validation dataset unavailable: {exc}"
        if validation.home != dataset.home:
            return ("the validation dataset no longer lives where the dataset does (both "
                    "the owner's, or both published)")
    return FineTuneSpec(str(model.path), job.dataset, hyperparameters,
                        job.validation_dataset, dataset.home, job.id, job.model_name,
                        processes)


def register_result(job: Job, folder: Path, data_dir: str) -> str | None:
    """Register the succeeded job's `output/model` as the model `output_model`; None when
    done (or nothing to register), else why it could not be."""
    if not job.output_model:
        return None
    output = folder / OUTPUT_FOLDER / MODEL_OUTPUT
    if not output.is_dir():
        return (f"the run succeeded but wrote no {OUTPUT_FOLDER}/{MODEL_OUTPUT}, so model "
                f"{job.output_model!r} was not registered")
    try:
        finetuned.register(owner_home(data_dir, job.owner), job.output_model, output,
                           owner=job.owner, job_id=job.id, base_model=job.model_name,
                           method=str(job.hyperparameters.get("method", "lora")))
    except (ModelError, OSError) as exc:
        return (f"the run succeeded, but its model could not be registered as "
                f"{job.output_model!r}: {exc}")
    return None
