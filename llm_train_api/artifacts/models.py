"""Imported Hugging Face-format models on disk: import (streamed, checked, atomic),
describe, list, delete. Torch- and transformers-free; used by the `/models` API.

Layout under a data root (DATA_DIR for published models, an owner's home for theirs)::

    <root>/models/<name>/              the model folder, as a trainer loads it
    <root>/models/<name>/.model.json   its description (architecture, sizes, sha256, ...)
    <root>/models/.upload-<hex>/       an import in progress
    <root>/models/.lock                serialises the commit step across processes

An import unpacks into a staging folder beside the models, writes the description there
too, then moves the folder into place with one rename: a new model appears whole; a
replaced one is swapped with the old version atomically (renameat2's RENAME_EXCHANGE where
the filesystem has it, two renames otherwise) and the old version removed afterwards.
Entries starting with "." are never models, so neither an unfinished import nor a removal
in progress is ever listed.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import os
import re
import shutil
import sys
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from llm_train_api.artifacts import hf_folder
from llm_train_api.artifacts.dataset_errors import DiskFull, OverQuota
from llm_train_api.artifacts.datasets import DISK_FULL_ERRNOS, StorageQuota
from llm_train_api.artifacts.jobs import tree_bytes
from llm_train_api.artifacts.model_archive import CHUNK_BYTES, Unpacked, unpack
from llm_train_api.artifacts.model_errors import (
    InvalidModelName,
    ModelConflict,
    ModelNotFound,
)
from llm_train_api.training.storage import fsync_dir

MODELS_FOLDER = "models"
META_NAME = ".model.json"
LOCK_NAME = ".lock"
STAGING_PREFIX = ".upload-"
TRASH_PREFIX = ".removing-"
NAME_MAX_LENGTH = 128
# Letters, digits, '_', '-' and single dots, starting with a letter or digit: safe as a
# folder name and a URL segment, never '..'.
NAME_PATTERN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.(?!\.))*$")


@dataclass(frozen=True)
class ModelInfo:
    """A Hugging Face-format model, as GET /models/{name} describes it."""

    name: str
    architecture: str
    model_type: str | None
    param_count: int
    context_length: int | None
    vocab_size: int | None
    has_chat_template: bool
    size_bytes: int
    sha256: str
    created_at: datetime
    # "upload" (imported through the API), "root" (a MODEL_ROOTS folder) or "job" (the
    # result of a fine-tuning job, artifacts.finetuned)
    source: str
    owner: str | None = None  # None: published, usable by everyone
    kind: str = "hf"
    # Fine-tuned results only: the model the job started from, the job, its method.
    base_model: str | None = None
    job_id: str | None = None
    method: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat(timespec="microseconds")
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ModelInfo:
        return cls(**{**data, "created_at": datetime.fromisoformat(data["created_at"])})


@dataclass(frozen=True)
class ImportResult:
    info: ModelInfo
    created: bool


def check_name(name: str) -> None:
    """InvalidModelName unless `name` could name a model."""
    if len(name) > NAME_MAX_LENGTH or not NAME_PATTERN.match(name):
        raise InvalidModelName(
            f"Invalid model name {name!r}: use letters, digits, '.', '_' and '-' (no '..'), "
            f"starting with a letter or digit, at most {NAME_MAX_LENGTH} characters.")


def is_valid_name(name: str) -> bool:
    return len(name) <= NAME_MAX_LENGTH and bool(NAME_PATTERN.match(name))


def models_root(data_root: str | os.PathLike[str]) -> Path:
    return Path(data_root) / MODELS_FOLDER


def folder_in(root: Path, name: str) -> Path | None:
    """The folder of the model `name` in `root` (a folder of models), if there is one."""
    if not is_valid_name(name):
        return None
    folder = root / name
    return folder if folder.is_dir() and not folder.is_symlink() else None


def model_path(data_root: str | os.PathLike[str], name: str) -> Path | None:
    """The folder of the imported model `name` under this data root, if there is one."""
    return folder_in(models_root(data_root), name)


def _now() -> datetime:
    return datetime.now(timezone.utc)


def stored_names(root: Path) -> list[str]:
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    return sorted(e.name for e in entries if is_valid_name(e.name)
                  and e.is_dir(follow_symlinks=False))


def folders_bytes(root: Path, except_name: str | None = None) -> int:
    """Bytes of the models in `root` (entries starting with "." excluded), without
    `except_name`."""
    return sum(tree_bytes(root / name) for name in stored_names(root) if name != except_name)


def stored_bytes(data_root: str | os.PathLike[str], except_name: str | None = None) -> int:
    """Bytes of the models imported under this data root (imports in progress excluded),
    without `except_name` (the model an import replaces)."""
    return folders_bytes(models_root(data_root), except_name)


def get_info(data_root: str | os.PathLike[str], name: str) -> ModelInfo:
    folder = model_path(data_root, name)
    if folder is None:
        raise ModelNotFound(f"Model {name!r} not found.")
    try:
        return replace(ModelInfo.from_json(orjson.loads((folder / META_NAME).read_bytes())),
                       name=name)
    except (OSError, ValueError, KeyError, TypeError):
        # Written before the folder was moved into place, so only an operator's hand can
        # lose it: describe the files again.
        return _describe_again(folder, name)


def _describe_again(folder: Path, name: str) -> ModelInfo:
    info = describe_folder(folder, name, source="upload")
    with contextlib.suppress(OSError):  # a cache
        write_meta(folder, info)
    return info


def folder_files(folder: Path) -> list[str]:
    """The model files of a folder (symlinks followed: a Hugging Face cache snapshot is
    made of links to its blobs); anything else in it is ignored."""
    return sorted(entry.name for entry in os.scandir(folder)
                  if hf_folder.is_model_file(entry.name) and entry.is_file())


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
    return digest.hexdigest()


def describe_folder(folder: Path, name: str, *, source: str) -> ModelInfo:
    """Check and describe a model folder already on disk, hashing every file (slow for
    big models: callers cache the result)."""
    files = folder_files(folder)
    description = hf_folder.describe(folder, files)
    unpacked = Unpacked({f: ((folder / f).stat().st_size, file_sha256(folder / f))
                         for f in files})
    created = datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc)
    return ModelInfo(name=name, **vars(description), size_bytes=unpacked.size_bytes,
                     sha256=unpacked.sha256, created_at=created, source=source)


def list_infos(data_root: str | os.PathLike[str]) -> list[ModelInfo]:
    """The models imported under this data root, by name."""
    infos = []
    for name in stored_names(models_root(data_root)):
        with contextlib.suppress(ModelNotFound, hf_folder.InvalidModel, OSError):
            infos.append(get_info(data_root, name))
    return infos


@contextlib.contextmanager
def commit_lock(root: Path) -> Iterator[None]:
    """Serialise the short commit step (checks, renames) across threads and processes."""
    fd = os.open(root / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def write_meta(folder: Path, info: ModelInfo) -> None:
    with open(folder / META_NAME, "wb") as f:
        f.write(orjson.dumps(info.to_json()))
        f.flush()
        os.fsync(f.fileno())


def quota_room(data_root: str | os.PathLike[str], name: str, quota: StorageQuota | None,
               size: int = 0) -> int:
    """How many bytes the import of `name` may take under `quota` (OverQuota once `size`
    is over it). A replaced model's old version is freed, so it is not counted."""
    if quota is None:
        return sys.maxsize
    models, elsewhere = stored_bytes(data_root, name), quota.elsewhere()
    room = quota.limit_bytes - models - elsewhere
    if size > room or room <= 0:
        gib = 1024**3
        raise OverQuota(
            f"Storage quota exceeded: this model would bring your storage to at least "
            f"{(models + elsewhere + max(size, 1)) / gib:.3f} GiB, over {quota.setting} GiB "
            f"(your other models take {models / gib:.3f} GiB, your datasets and jobs' "
            f"folders {elsewhere / gib:.3f} GiB). Nothing was stored: delete models, "
            "datasets or jobs you no longer need, then retry.",
            usage_bytes=models + elsewhere, limit_bytes=quota.limit_bytes)
    return room


def refuse_if_in_use(name: str, in_use: Callable[[str], list[str]], action: str) -> None:
    jobs = in_use(name)
    if jobs:
        raise ModelConflict(f"Model {name!r} is used by queued or running jobs: "
                            f"{', '.join(jobs)}. Wait for them to finish or cancel them, "
                            f"then it can be {action}.")


def store_import(
    data_root: str | os.PathLike[str],
    name: str,
    stream: BinaryIO,
    *,
    max_bytes: int,
    in_use: Callable[[str], list[str]],
    quota: StorageQuota | None = None,
    owner: str | None = None,
) -> ImportResult:
    """Unpack the archive in `stream` as the model `name`, replacing an older version.

    `in_use(name)` lists the queued or running jobs that name the current version
    (ModelConflict if any); `quota` caps what the owner stores. Both are checked before
    unpacking (the quota also while unpacking) and again under the commit lock. On any
    failure the staging folder is removed: nothing is left behind.
    """
    check_name(name)
    root = models_root(data_root)
    staging = root / f"{STAGING_PREFIX}{uuid.uuid4().hex}"
    try:
        root.mkdir(parents=True, exist_ok=True)
        if model_path(data_root, name) is not None:
            refuse_if_in_use(name, in_use, "replaced")
        room = [quota_room(data_root, name, quota)]

        def on_bytes(total: int) -> None:
            if total > room[0]:  # measure again: OverQuota unless space was freed
                room[0] = quota_room(data_root, name, quota, total)

        staging.mkdir()
        unpacked = unpack(stream, staging, max_bytes=max_bytes, on_bytes=on_bytes)
        description = hf_folder.describe(staging, unpacked.files)
        info = ModelInfo(name=name, **vars(description), size_bytes=unpacked.size_bytes,
                         sha256=unpacked.sha256, created_at=_now(), source="upload",
                         owner=owner)
        write_meta(staging, info)
        fsync_dir(staging)
        with commit_lock(root):
            final = root / name
            created = model_path(data_root, name) is None
            if not created:
                refuse_if_in_use(name, in_use, "replaced")
            quota_room(data_root, name, quota, unpacked.size_bytes)
            if created:
                os.rename(staging, final)
            else:
                swap(staging, final)  # the old version is now at `staging`
            fsync_dir(root)
        return ImportResult(info=info, created=created)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFull(f"The disk holding the models is full ({exc.strerror}): model "
                           f"{name!r} was not stored. Free some space (or ask an operator "
                           "to), then retry.") from exc
        raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap(new: Path, final: Path) -> None:
    """Put `new` at `final` and the old `final` at `new`, atomically where possible."""
    if _exchange(new, final):
        return
    trash = final.with_name(f"{TRASH_PREFIX}{uuid.uuid4().hex}")
    os.rename(final, trash)
    os.rename(new, final)
    os.rename(trash, new)


def _exchange(a: Path, b: Path) -> bool:
    """renameat2(RENAME_EXCHANGE): swap two paths in one step. False where the C library
    or the filesystem lacks it."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), str(b))


def delete_model(data_root: str | os.PathLike[str], name: str, *,
                 in_use: Callable[[str], list[str]]) -> None:
    """Remove the imported model `name` (ModelNotFound, or ModelConflict while jobs name
    it)."""
    remove_folder(models_root(data_root), name, in_use=in_use)


def remove_folder(root: Path, name: str, *, in_use: Callable[[str], list[str]]) -> None:
    """Remove the model `name` from `root` (ModelNotFound, or ModelConflict while jobs name
    it). The folder is first renamed out of sight, so no reader sees half of it."""
    if folder_in(root, name) is None:
        raise ModelNotFound(f"Model {name!r} not found.")
    trash = root / f"{TRASH_PREFIX}{uuid.uuid4().hex}"
    with commit_lock(root):
        if folder_in(root, name) is None:
            raise ModelNotFound(f"Model {name!r} not found.")
        refuse_if_in_use(name, in_use, "deleted")
        os.rename(root / name, trash)
        fsync_dir(root)
    shutil.rmtree(trash, ignore_errors=True)
