"""Creating a job, minus HTTP: the request body becomes a `NewJob` (admitted against the
trainer its model needs first, with the built-in executor), a dry run becomes a preview
(with a fine-tuning job's plan), and a user's queue is capped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from llm_train_api.artifacts.model_errors import ModelNotFound
from llm_train_api.config import PREFIX, Settings
from llm_train_api.domain import InvalidRequest, Job, JobStatus, NewJob, Principal, Role
from llm_train_api.services.admission import AdmissionError, admit, memory_limit_bytes
from llm_train_api.services.finetune_admission import admit_finetune, check_output_model
from llm_train_api.services.finetune_plan import PlanSlots, plan_run
from llm_train_api.services.models import Place, resolve_for_owner
from llm_train_api.services.ray_capacity import admission_problem as ray_admission_problem
from llm_train_api.store.jobs import JobRepository
from llm_train_api.training.spec import default_processes


def new_job_id() -> str:
    return f"job-{secrets.token_hex(8)}"


def builtin_executor(settings: Settings) -> bool:
    """Whether this service's own workers run the jobs (and so drive their statuses);
    with EXECUTOR=none an external system does, and the API is a plain registry."""
    return settings.EXECUTOR != "none"


FINE_TUNING_FIELDS = ("validation_dataset", "output_model")


def prepare_job(
    body: Mapping[str, Any],
    *,
    owner: str | None,
    settings: Settings,
    data_dir: str | os.PathLike[str],
    jobs: JobRepository | None = None,
) -> NewJob:
    """The job a validated request body asks for, owned by `owner`.

    With the built-in executor the job is admitted first (AdmissionError when it could not
    run) and records the sha256 of the dataset it names, as `owner` sees it, so that a
    worker can refuse data that changed under it. `model_name` means what it means for
    `owner` (services.models.resolve_for_owner): a built-in GPT goes to the built-in
    trainer's checks, a Hugging Face-format model to the fine-tuning trainer's; with
    `jobs`, the result's name (`output_model`) is checked against the owner's models
    and pending results (ModelConflict).
    """
    job_id = body.get("job_id") or new_job_id()
    fields = {name: body.get(name) for name in FINE_TUNING_FIELDS}
    common = {"job_id": job_id, "model_name": body["model_name"], "dataset": body["dataset"],
              "priority": body["priority"], "max_attempts": body["max_attempts"],
              "max_runtime_seconds": body["max_runtime_seconds"],
              "resources": body["resources"], "owner": owner}
    if not builtin_executor(settings):
        return NewJob(hyperparameters=body["hyperparameters"], **common, **fields)
    place = Place.of(data_dir, settings)
    try:
        model = resolve_for_owner(place, owner, body["model_name"])
    except ModelNotFound:
        model = None  # admit() says so, with the built-in models' names
    limit = memory_limit_bytes(settings.WORKER_MEMORY_GB)
    if model is None or model.kind == "builtin":
        dataset = admit(
            body["model_name"], body["dataset"], body["hyperparameters"],
            data_dir=data_dir, owner=owner, memory_limit_bytes=limit,
            resources=body["resources"], ray_address=settings.RAY_ADDRESS,
            ray_token=settings.RAY_TOKEN,
            fine_tuning_fields=tuple(name for name, value in fields.items()
                                     if value is not None),
        )
        return NewJob(hyperparameters=body["hyperparameters"],
                      dataset_sha256=dataset.sha256, model_kind="builtin", **common)
    admitted, errors = admit_finetune(model, body, job_id=job_id, owner=owner, place=place,
                                      memory_limit_bytes=limit,
                                      qlora_workers=settings.QLORA_WORKERS)
    too_big = ray_admission_problem(body["resources"], settings.RAY_ADDRESS,
                                    settings.RAY_TOKEN)
    if too_big:
        errors["resources"] = [too_big]
    if errors or admitted is None:
        raise AdmissionError(dict(errors))
    if jobs is not None and admitted.output_model is not None:
        check_output_model(place, owner, admitted.output_model, job_id, jobs)
    return NewJob(hyperparameters=admitted.hyperparameters,
                  dataset_sha256=admitted.dataset.sha256, model_kind="hf",
                  validation_dataset=fields["validation_dataset"],
                  output_model=admitted.output_model, **common)


def dry_run_plan(new: NewJob, *, settings: Settings, data_dir: str | os.PathLike[str],
                 planners: PlanSlots) -> dict[str, Any] | None:
    """What a fine-tuning job's run will be (examples, tokens, truncations, steps) and its
    memory estimate, for a dry run; None for other jobs. The job was admitted just before,
    so the names resolve; the counting is the trainer's own (services.finetune_plan)."""
    if new.model_kind != "hf":
        return None
    place = Place.of(data_dir, settings)
    model = resolve_for_owner(place, new.owner, new.model_name)
    body = {"model_name": new.model_name, "dataset": new.dataset,
            "hyperparameters": new.hyperparameters, "resources": new.resources,
            "validation_dataset": new.validation_dataset, "output_model": new.output_model}
    admitted, errors = admit_finetune(model, body, job_id=new.job_id, owner=new.owner,
                                      place=place, memory_limit_bytes=2**62,
                                      qlora_workers=True)
    if errors or admitted is None:
        raise AdmissionError(dict(errors))
    assert model.path is not None
    spec = {"job_id": new.job_id, "model_name": new.model_name,
            "model_path": str(model.path), "dataset": new.dataset,
            "validation_dataset": new.validation_dataset,
            "hyperparameters": new.hyperparameters, "data_dir": admitted.dataset.home,
            "processes": default_processes(new.resources)}
    plan = plan_run(spec, timeout_s=settings.PLAN_TIMEOUT_S, slots=planners)
    return {**plan, "method": admitted.validated["method"],
            "estimated_memory_bytes": admitted.memory.get("total"),
            "memory": admitted.memory}


def check_priority(priority: int, settings: Settings, principal: Principal) -> None:
    """Refuse a user's priority above MAX_USER_PRIORITY (InvalidRequest). Only users are
    bounded by it: admins and workers act for the whole service."""
    limit = settings.MAX_USER_PRIORITY
    if principal.role is Role.USER and priority > limit:
        raise InvalidRequest(
            f"priority {priority} is above {PREFIX}MAX_USER_PRIORITY ({limit}), the highest "
            "a user may set.",
            {"json": {"priority": [f"Must be at most {limit} ({PREFIX}MAX_USER_PRIORITY) "
                                   "for the user role."]}})


def queued_cap(settings: Settings, principal: Principal) -> int:
    """How many queued jobs the caller may have (0: no cap). Only users are capped: admins
    and workers act for the whole service."""
    return settings.MAX_QUEUED_PER_USER if principal.role is Role.USER else 0


def preview(new: NewJob, now: datetime | None = None) -> Job:
    """What the job would look like if created now: a dry run's answer."""
    now = now or datetime.now(timezone.utc)
    return Job(new.job_id, new.model_name, new.dataset, new.hyperparameters, JobStatus.QUEUED,
               now, now, None, None, None, 0, new.priority, new.max_attempts, 0,
               new.max_runtime_seconds, new.resources, new.dataset_sha256, None, None,
               new.owner, new.validation_dataset, new.output_model, new.model_kind,
               origin=new.origin)
