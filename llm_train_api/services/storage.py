"""The per-user storage quota (LLM_TRAIN_API_MAX_STORAGE_GB_PER_USER): a user's own
datasets, imported and fine-tuned models, plus their jobs' folders (checkpoints, logs,
metrics).

Usage is measured on the filesystem each time it is needed, never cached: a stale figure
could only let a user past the cap. Finding a user's job folders takes one indexed query
for their jobs' ids and creation times (which name the folders), then a walk of those
folders. Only users are capped: admins and workers act for the whole service.

An upload is checked before, while and after it streams (artifacts.datasets.store_upload,
artifacts.models.store_import, under the commit lock of the home's datasets or models, so
concurrent uploads of one kind cannot overshoot). A new job is
refused once the user is over the cap; the job itself grows its folder later, so the cap
is a soft one for checkpoints: a user's last job may take them past it, and then they can
start no other until they free space.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from llm_train_api.artifacts import finetuned
from llm_train_api.artifacts import models as model_files
from llm_train_api.artifacts.datasets import StorageQuota, stored_bytes
from llm_train_api.artifacts.homes import owner_home
from llm_train_api.artifacts.jobs import job_dirs_bytes
from llm_train_api.config import Settings
from llm_train_api.domain import GIB, JobNotFound, Principal, QuotaExceeded, Role
from llm_train_api.store.jobs import JobRepository

SETTING = "LLM_TRAIN_API_MAX_STORAGE_GB_PER_USER"
REASON = "storage_quota_exceeded"


class StorageQuotaExceeded(QuotaExceeded):
    """A user already over their storage quota asked for a new job: 429, like the other
    per-user caps."""

    def __init__(self, usage_bytes: int, limit_bytes: int, limit_gb: float,
                 datasets_bytes: int, models_bytes: int, jobs_bytes: int) -> None:
        self.setting = SETTING
        self.cap = limit_bytes
        self.usage_bytes = usage_bytes
        self.limit_bytes = limit_bytes
        message = (
            f"Storage quota exceeded: you store {usage_bytes / GIB:.3f} GiB, at or over "
            f"{SETTING}={limit_gb:g} GiB (datasets {datasets_bytes / GIB:.3f} GiB, models "
            f"{models_bytes / GIB:.3f} GiB, job folders {jobs_bytes / GIB:.3f} GiB). Delete "
            "datasets, models or finished jobs, then retry.")
        super(QuotaExceeded, self).__init__(message)


@dataclass(frozen=True)
class Usage:
    datasets_bytes: int
    models_bytes: int
    jobs_bytes: int

    @property
    def total(self) -> int:
        return self.datasets_bytes + self.models_bytes + self.jobs_bytes


def limit_bytes(settings: Settings, principal: Principal) -> int:
    """The caller's storage cap in bytes; 0 for none (admins, workers, or no cap set)."""
    if principal.role is not Role.USER or settings.MAX_STORAGE_GB_PER_USER <= 0:
        return 0
    return int(settings.MAX_STORAGE_GB_PER_USER * GIB)


def jobs_bytes(data_dir: str | os.PathLike[str], owner: str, jobs: JobRepository) -> int:
    return job_dirs_bytes(data_dir, jobs.owner_incarnations(owner))


def models_bytes(home: str) -> int:
    """Imported and fine-tuned models of a home."""
    return model_files.stored_bytes(home) + finetuned.stored_bytes(home)


def usage(data_dir: str | os.PathLike[str], owner: str, jobs: JobRepository) -> Usage:
    home = owner_home(data_dir, owner)
    return Usage(stored_bytes(home), models_bytes(home), jobs_bytes(data_dir, owner, jobs))


def upload_quota(data_dir: str | os.PathLike[str], principal: Principal, jobs: JobRepository,
                 settings: Settings) -> StorageQuota | None:
    """The quota a user's dataset upload is held to (None: not capped); besides their
    datasets, it counts their models and job folders."""
    cap = limit_bytes(settings, principal)
    if not cap:
        return None
    home, owner = owner_home(data_dir, principal.name), principal.name
    return StorageQuota(cap, f"{SETTING}={settings.MAX_STORAGE_GB_PER_USER:g}",
                        lambda: models_bytes(home) + jobs_bytes(data_dir, owner, jobs))


def model_quota(data_dir: str | os.PathLike[str], principal: Principal, jobs: JobRepository,
                settings: Settings) -> StorageQuota | None:
    """The quota a user's model import is held to (None: not capped); besides their
    models, it counts their datasets and job folders."""
    cap = limit_bytes(settings, principal)
    if not cap:
        return None
    home, owner = owner_home(data_dir, principal.name), principal.name
    return StorageQuota(cap, f"{SETTING}={settings.MAX_STORAGE_GB_PER_USER:g}",
                        lambda: stored_bytes(home) + finetuned.stored_bytes(home)
                        + jobs_bytes(data_dir, owner, jobs))


def check_room_for_job(data_dir: str | os.PathLike[str], principal: Principal,
                       jobs: JobRepository, settings: Settings, job_id: str) -> None:
    """StorageQuotaExceeded when the caller, a user, is already at or over their cap,
    unless the caller already has a job `job_id`: then the create adds nothing (an
    identical retry stays an idempotent 200, a different body its 409)."""
    cap = limit_bytes(settings, principal)
    if not cap:
        return
    used = usage(data_dir, principal.name, jobs)
    if used.total < cap:
        return
    try:
        if jobs.get_job(job_id).owner == principal.name:
            return
    except JobNotFound:
        pass
    raise StorageQuotaExceeded(used.total, cap, settings.MAX_STORAGE_GB_PER_USER,
                               used.datasets_bytes, used.models_bytes, used.jobs_bytes)
