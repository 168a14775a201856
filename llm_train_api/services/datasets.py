"""Whose datasets a caller reads and writes: the ownership rules of `/datasets`.

A user reads their own datasets and the published ones (their own first), and writes only
their own; an admin reads and writes the published ones. A dataset still named by queued
or running jobs cannot be replaced or deleted. The files themselves are artifacts.datasets.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable
from dataclasses import replace

from llm_train_api.artifacts import datasets as dataset_files
from llm_train_api.artifacts.datasets import DatasetInfo, UploadResult
from llm_train_api.artifacts.homes import owner_home
from llm_train_api.config import Settings
from llm_train_api.domain import Principal, Role
from llm_train_api.services import storage
from llm_train_api.store.jobs import JobRepository

Home = tuple[str, str | None]  # a data root, and the owner whose datasets it holds


def read_homes(data_dir: str | os.PathLike[str], principal: Principal) -> list[Home]:
    """The data roots the caller reads datasets from, in lookup order, with their owner."""
    if principal.role is Role.USER:
        return [(owner_home(data_dir, principal.name), principal.name), (str(data_dir), None)]
    return [(str(data_dir), None)]


def write_home(data_dir: str | os.PathLike[str], principal: Principal) -> Home:
    """Where the caller's uploads go: a user's own home; an admin publishes."""
    if principal.role is Role.USER:
        return owner_home(data_dir, principal.name), principal.name
    return str(data_dir), None


def _owned(info: DatasetInfo, owner: str | None) -> DatasetInfo:
    return info if info.builtin or owner is None else replace(info, owner=owner)


def list_visible(data_dir: str | os.PathLike[str], principal: Principal) -> list[DatasetInfo]:
    """Built-in and published datasets, then (for a user) the caller's own."""
    published = dataset_files.list_infos(data_dir)
    own = [_owned(info, owner) for home, owner in read_homes(data_dir, principal)
           if owner is not None
           for info in dataset_files.list_infos(home) if not info.builtin]
    return published + own


def get_visible(data_dir: str | os.PathLike[str], principal: Principal,
                name: str) -> DatasetInfo:
    """The dataset `name` means for the caller (NotFound when it means none)."""
    for home, owner in read_homes(data_dir, principal):
        try:
            return _owned(dataset_files.get_info(home, name), owner)
        except dataset_files.NotFound:
            continue
    raise dataset_files.NotFound(f"Dataset {name!r} not found.")


def in_use_by(jobs: JobRepository, owner: str | None) -> Callable[[str], list[str]]:
    """Queued or running jobs naming this dataset in any of its spellings: the owner's
    jobs for a user's own dataset, anyone's for a published one."""

    def in_use(stem: str) -> list[str]:
        ids: list[str] = []
        for alias in dataset_files.aliases(stem):
            ids.extend(i for i in jobs.dataset_in_use(alias, owner=owner) if i not in ids)
        return ids

    return in_use


def upload(
    data_dir: str | os.PathLike[str],
    principal: Principal,
    stem: str,
    fmt: str,
    chunks: Iterable[bytes],
    *,
    jobs: JobRepository,
    settings: Settings,
) -> UploadResult:
    """Store an upload as the caller's dataset (a user's own, capped at
    MAX_DATASETS_PER_USER and by their storage quota; an admin's published)."""
    home, owner = write_home(data_dir, principal)
    cap = settings.MAX_DATASETS_PER_USER if owner is not None else 0
    quota = storage.upload_quota(data_dir, principal, jobs, settings)
    result = dataset_files.store_upload(home, stem, fmt, chunks,
                                        max_bytes=settings.MAX_DATASET_BYTES,
                                        in_use=in_use_by(jobs, owner), max_count=cap,
                                        quota=quota)
    return replace(result, info=_owned(result.info, owner))


def delete(data_dir: str | os.PathLike[str], principal: Principal, name: str, *,
           jobs: JobRepository) -> None:
    """Delete the caller's dataset `name`. A user asking to delete a published one is told
    it is read-only for them (ReadOnly), not that it does not exist."""
    home, owner = write_home(data_dir, principal)
    try:
        dataset_files.delete_dataset(home, name, in_use=in_use_by(jobs, owner))
    except dataset_files.NotFound as exc:
        if owner is not None and _published(data_dir, name):
            raise dataset_files.ReadOnly(
                f"Dataset {name!r} is published; only an admin can delete it.") from None
        raise exc


def _published(data_dir: str | os.PathLike[str], name: str) -> bool:
    if not dataset_files.is_valid_name(name):
        return False
    try:
        dataset_files.get_info(data_dir, name)
    except dataset_files.DatasetFileError:
        return False
    return True
