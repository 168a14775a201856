"""Creating a job, minus HTTP: the request body becomes a `NewJob` (admitted against the
trainer first, with the built-in executor), a dry run becomes a preview, and a user's
queue is capped.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from llm_train_api.config import PREFIX, Settings
from llm_train_api.domain import InvalidRequest, Job, JobStatus, NewJob, Principal, Role
from llm_train_api.services.admission import admit, memory_limit_bytes


def new_job_id() -> str:
    return f"job-{secrets.token_hex(8)}"


def builtin_executor(settings: Settings) -> bool:
    """Whether this service's own workers run the jobs (and so drive their statuses);
    with EXECUTOR=none an external system does, and the API is a plain registry."""
    return settings.EXECUTOR != "none"


def prepare_job(
    body: Mapping[str, Any],
    *,
    owner: str | None,
    settings: Settings,
    data_dir: str | os.PathLike[str],
) -> NewJob:
    """The job a validated request body asks for, owned by `owner`.

    With the built-in executor the job is admitted first (AdmissionError when it could not
    run) and records the sha256 of the dataset it names, as `owner` sees it, so that a
    worker can refuse data that changed under it.
    """
    dataset_sha256 = None
    if builtin_executor(settings):
        dataset = admit(
            body["model_name"], body["dataset"], body["hyperparameters"],
            data_dir=data_dir, owner=owner,
            memory_limit_bytes=memory_limit_bytes(settings.WORKER_MEMORY_GB),
            resources=body["resources"], ray_address=settings.RAY_ADDRESS,
            ray_token=settings.RAY_TOKEN,
        )
        dataset_sha256 = dataset.sha256
    return NewJob(
        job_id=body.get("job_id") or new_job_id(),
        model_name=body["model_name"],
        dataset=body["dataset"],
        hyperparameters=body["hyperparameters"],
        priority=body["priority"],
        max_attempts=body["max_attempts"],
        max_runtime_seconds=body["max_runtime_seconds"],
        resources=body["resources"],
        dataset_sha256=dataset_sha256,
        owner=owner,
    )


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
               new.owner)
