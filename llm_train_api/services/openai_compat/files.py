"""OpenAI files as datasets: an uploaded file is the caller's dataset named by its id
(`file-<hex>`), stored, checked, counted against quotas and owned exactly as an upload
to `PUT /datasets/{name}` is (services.datasets). What OpenAI's file object has and a
dataset has not (the uploaded file's name, its purpose) is kept next to it, in
`<datasets>/.openai/<id>.json`; a dataset that lost that note (deleted and re-made
through the native API) still reads as a file, named `<id>.jsonl`.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path

from llm_train_api.artifacts import datasets as dataset_files
from llm_train_api.artifacts.datasets import DatasetInfo
from llm_train_api.config import Settings
from llm_train_api.domain import Principal
from llm_train_api.services import datasets as dataset_access
from llm_train_api.services.openai_compat.names import is_file_id, new_file_id
from llm_train_api.store.jobs import JobRepository
from llm_train_api.training.datasets import datasets_root, resolve_dataset

NOTES_FOLDER = ".openai"
PURPOSE = "fine-tune"
FILENAME_MAX_LENGTH = 255


@dataclass(frozen=True)
class StoredFile:
    """An uploaded file: its dataset, and the name it was uploaded with."""

    info: DatasetInfo
    filename: str
    purpose: str = PURPOSE

    @property
    def id(self) -> str:
        return self.info.name


def _notes(home: str) -> Path:
    return datasets_root(home) / NOTES_FOLDER


def _read_note(home: str, file_id: str) -> dict[str, str]:
    try:
        note = json.loads((_notes(home) / f"{file_id}.json").read_text("utf-8"))
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def _write_note(home: str, file_id: str, note: dict[str, str]) -> None:
    folder = _notes(home)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f".{file_id}.tmp"
    tmp.write_text(json.dumps(note), "utf-8")
    os.replace(tmp, folder / f"{file_id}.json")


def _as_file(home: str, info: DatasetInfo) -> StoredFile:
    note = _read_note(home, info.name)
    return StoredFile(info, str(note.get("filename") or f"{info.name}.jsonl"),
                      str(note.get("purpose") or PURPOSE))


def upload(data_dir: str | os.PathLike[str], principal: Principal, filename: str,
           chunks: Iterable[bytes], *, jobs: JobRepository, settings: Settings
           ) -> StoredFile:
    """Store an upload as a new JSON Lines dataset of the caller's, under a new file id
    (the dataset checks, caps and quotas of services.datasets.upload apply)."""
    file_id = new_file_id()
    result = dataset_access.upload(data_dir, principal, file_id, "jsonl", chunks, jobs=jobs,
                                   settings=settings)
    home, _owner = dataset_access.write_home(data_dir, principal)
    _write_note(home, file_id, {"filename": filename, "purpose": PURPOSE})
    return StoredFile(result.info, filename)


def list_files(data_dir: str | os.PathLike[str], principal: Principal) -> list[StoredFile]:
    """The caller's uploaded files, newest first (ties by id)."""
    home, owner = dataset_access.write_home(data_dir, principal)
    found = [_as_file(home, info if owner is None else _with_owner(info, owner))
             for info in dataset_files.list_infos(home) if is_file_id(info.name)]
    found.sort(key=lambda f: (f.info.created_at, f.id), reverse=True)
    return found


def _with_owner(info: DatasetInfo, owner: str) -> DatasetInfo:
    return replace(info, owner=owner)


def get_file(data_dir: str | os.PathLike[str], principal: Principal,
             file_id: str) -> StoredFile:
    """The caller's file `file_id` (dataset_files.NotFound when they have none)."""
    if not is_file_id(file_id):
        raise dataset_files.NotFound(f"No such file: {file_id!r}.")
    home, _owner = dataset_access.write_home(data_dir, principal)
    try:
        info = dataset_files.get_info(home, file_id)
    except dataset_files.NotFound:
        raise dataset_files.NotFound(f"No such file: {file_id!r}.") from None
    return _as_file(home, info)


def file_path(data_dir: str | os.PathLike[str], principal: Principal, file_id: str) -> Path:
    """Where the caller's file `file_id` is on disk (NotFound when they have none)."""
    get_file(data_dir, principal, file_id)
    home, _owner = dataset_access.write_home(data_dir, principal)
    return resolve_dataset(file_id, home)


def delete_file(data_dir: str | os.PathLike[str], principal: Principal, file_id: str, *,
                jobs: JobRepository) -> None:
    """Delete the caller's file and its dataset (Conflict while queued or running jobs
    train on it; NotFound when they have none)."""
    get_file(data_dir, principal, file_id)
    dataset_access.delete(data_dir, principal, file_id, jobs=jobs)
    home, _owner = dataset_access.write_home(data_dir, principal)
    with contextlib.suppress(FileNotFoundError):
        (_notes(home) / f"{file_id}.json").unlink()
