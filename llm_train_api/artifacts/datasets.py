"""Dataset files on disk: upload (streamed, validated, atomic), metadata, listing, delete.

Torch-free; used by the `/datasets` API. Layout, where `training.datasets.resolve_dataset`
looks for a dataset called `name`::

    DATA_DIR/datasets/<name>.txt | <name>.jsonl     the dataset itself
    DATA_DIR/datasets/.meta/<name>.json            its metadata (sha256, size, lines, ...)
    DATA_DIR/datasets/.upload-*.tmp                an upload in progress
    DATA_DIR/datasets/.meta/.lock                  serialises the commit step across processes

Entries starting with "." are invisible to `resolve_dataset`/`list_datasets`, so neither
the metadata nor an unfinished upload can ever be mistaken for a dataset. The metadata
records the file's (inode, size, mtime) signature: when the file was replaced behind the
API's back, or a crash fell between moving the file and its metadata into place, the
metadata is recomputed from the file on the next read.

An upload is written to a temporary file in the same folder while its sha256, size and
line count are computed and its content validated, then fsynced and moved into place with
`os.replace` (and the folder fsynced): readers see the old dataset or the new one, never a
part of either.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import logging
import os
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

import orjson

# The errors live in dataset_errors.py; callers name them through this module too.
from llm_train_api.artifacts.dataset_errors import (
    Conflict,
    DatasetFileError,
    DiskFull,
    InvalidContent,
    InvalidName,
    NotFound,
    OverQuota,
    ReadOnly,
    TooLarge,
    TooMany,
)
from llm_train_api.artifacts.dataset_validation import JsonlValidator, TextValidator
from llm_train_api.artifacts.jobs import tree_bytes
from llm_train_api.training.datasets import (
    BUILTIN_DATASETS,
    BUILTIN_PREFIX,
    DATASET_SUFFIXES,
    DatasetError,
    builtin_dir,
    check_dataset_name,
    datasets_root,
    resolve_dataset,
    source_files,
)
from llm_train_api.training.formats import TEXT
from llm_train_api.training.storage import fsync_dir

META_FOLDER = ".meta"
LOCK_NAME = ".lock"
TMP_PREFIX = ".upload-"
CHUNK_BYTES = 1024 * 1024
FORMATS = {"txt": ".txt", "jsonl": ".jsonl"}

log = logging.getLogger("llm_train_api.artifacts")


DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


@dataclass(frozen=True)
class StorageQuota:
    """A cap on what one owner stores: the datasets in the home being uploaded to, plus
    `elsewhere()` bytes they hold outside it (their jobs' folders). `setting` names the
    cap in refusals ("NAME=value")."""

    limit_bytes: int
    setting: str
    elsewhere: Callable[[], int]


def stored_bytes(data_dir: str | os.PathLike[str], except_stem: str | None = None) -> int:
    """Bytes of the datasets stored under this data root, without uploads in progress and
    metadata; without the dataset `except_stem` (the one an upload replaces)."""
    root = datasets_root(data_dir)
    skip = set(aliases(except_stem)) if except_stem is not None else set()
    total = 0
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return 0
    for entry in entries:
        if entry.name.startswith(".") or entry.name in skip:
            continue
        try:
            if entry.is_dir(follow_symlinks=False):
                total += tree_bytes(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
        except OSError:
            continue  # removed while we looked
    return total


def _quota_room(data_dir: str | os.PathLike[str], stem: str, quota: StorageQuota | None,
                size: int = 0) -> int:
    """How many bytes the upload of `stem` may have under `quota` (OverQuota once `size`
    is over it). Replacing a dataset frees its old version, so that one is not counted."""
    if quota is None:
        return sys.maxsize
    datasets, elsewhere = stored_bytes(data_dir, stem), quota.elsewhere()
    room = quota.limit_bytes - datasets - elsewhere
    if size > room or room <= 0:
        gib = 1024**3
        raise OverQuota(
            f"Storage quota exceeded: this upload would bring your storage to at least "
            f"{(datasets + elsewhere + max(size, 1)) / gib:.3f} GiB, over "
            f"{quota.setting} GiB (your other datasets take {datasets / gib:.3f} GiB, "
            f"your jobs' folders {elsewhere / gib:.3f} GiB). Nothing was stored: delete "
            "datasets or jobs you no longer need, then retry.",
            usage_bytes=datasets + elsewhere, limit_bytes=quota.limit_bytes)
    return room


def count_stored(data_dir: str | os.PathLike[str]) -> int:
    """How many datasets are stored under this data root (built-ins excluded)."""
    return len(list_infos(data_dir)) - len(BUILTIN_DATASETS)


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    format: str  # txt | jsonl | folder
    sha256: str | None
    size_bytes: int
    lines: int | None
    created_at: datetime
    builtin: bool = False
    owner: str | None = None  # None: built in or published, usable by everyone
    # What the records are (training.formats: chat | instruction | text); a .txt file is
    # text; None for folders and for a file that no longer validates.
    kind: str | None = None

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["created_at"] = self.created_at.isoformat(timespec="microseconds")
        return data


def split_name(name: str) -> tuple[str, str | None]:
    """`foo.txt` -> ("foo", "txt"); `foo` -> ("foo", None). Validates the name (InvalidName,
    or ReadOnly for the reserved `builtin:` prefix)."""
    if name.startswith(BUILTIN_PREFIX):
        raise ReadOnly(f"Dataset {name!r} is built in and read-only; the 'builtin:' prefix "
                       "is reserved.")
    try:
        check_dataset_name(name)
    except DatasetError as exc:
        raise InvalidName(str(exc)) from None
    for fmt, suffix in FORMATS.items():
        if name.endswith(suffix) and len(name) > len(suffix):
            stem = name[: -len(suffix)]
            try:
                check_dataset_name(stem)
            except DatasetError as exc:
                raise InvalidName(str(exc)) from None
            return stem, fmt
    return name, None


def is_valid_name(name: str) -> bool:
    try:
        split_name(name)
    except DatasetFileError:
        return False
    return True


def aliases(stem: str) -> list[str]:
    """Every name a job may use to refer to the dataset stored as `stem`."""
    return [stem] + [stem + suffix for suffix in DATASET_SUFFIXES]


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _signature(st: os.stat_result) -> list[int]:
    return [st.st_ino, st.st_size, st.st_mtime_ns]


def _meta_dir(root: Path) -> Path:
    return root / META_FOLDER


def _meta_path(root: Path, stem: str) -> Path:
    return _meta_dir(root) / f"{stem}.json"


def _write_json_atomic(path: Path, data: dict[str, Any]) -> None:
    tmp = path.with_name(f".{path.name}.tmp-{uuid.uuid4().hex[:8]}")
    try:
        with open(tmp, "wb") as f:
            f.write(orjson.dumps(data))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _scan(file: Path) -> tuple[str, int, int, str | None]:
    """sha256, size, line count and record kind of a file, streaming. The kind is None
    when the file (put there behind the API's back) does not validate."""
    digest, size, newlines, last = hashlib.sha256(), 0, 0, b""
    validator: JsonlValidator | None = JsonlValidator() if file.suffix == ".jsonl" else None
    with open(file, "rb") as f:
        while chunk := f.read(CHUNK_BYTES):
            digest.update(chunk)
            size += len(chunk)
            newlines += chunk.count(b"\n")
            last = chunk[-1:]
            if validator is not None:
                try:
                    validator.feed(chunk)
                except InvalidContent:
                    validator = None
    kind: str | None = TEXT
    if file.suffix == ".jsonl":
        kind = None
        if validator is not None:
            with contextlib.suppress(InvalidContent):
                validator.feed(b"", final=True)
                kind = validator.kind
    return digest.hexdigest(), size, newlines + (1 if size and last != b"\n" else 0), kind


_hash_cache: dict[tuple[tuple[str, int, int], ...], str] = {}
_hash_lock = threading.Lock()


def dataset_sha256(path: Path) -> str:
    """Content hash of a resolved dataset (its files' names and bytes), pinned to a job at
    creation and checked by the worker before it trains. Cached by the files' stat
    signature, so that many jobs on one large dataset read it once per process. `path`
    comes from `resolve_dataset`, which has already refused anything outside its folder."""
    files = source_files(path)
    key = tuple((str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files)
    with _hash_lock:
        cached = _hash_cache.get(key)
    if cached is not None:
        return cached
    digest = hashlib.sha256()
    for file in files:
        digest.update(f"\0{file.name}\0".encode())
        with open(file, "rb") as f:
            while chunk := f.read(CHUNK_BYTES):
                digest.update(chunk)
    value = digest.hexdigest()
    with _hash_lock:
        _hash_cache[key] = value
    return value


def _file_info(root: Path, stem: str, file: Path, fmt: str) -> DatasetInfo:
    """Metadata of a stored file, from its sidecar when that still describes the file."""
    st = file.stat()
    meta_file = _meta_path(root, stem)
    meta: Any = {}
    try:
        meta = orjson.loads(meta_file.read_bytes())
        # Metadata written before kinds existed has no "kind": it is recomputed once.
        if (meta.get("signature") == _signature(st) and meta.get("format") == fmt
                and "kind" in meta):
            return DatasetInfo(name=stem, format=fmt, sha256=meta["sha256"],
                               size_bytes=meta["size_bytes"], lines=meta["lines"],
                               created_at=datetime.fromisoformat(meta["created_at"]),
                               kind=meta["kind"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    sha, size, lines, kind = _scan(file)
    created = datetime.fromtimestamp(st.st_mtime, timezone.utc)
    with contextlib.suppress(AttributeError, ValueError, KeyError, TypeError):
        if meta.get("signature") == _signature(st):  # the same file: keep its upload date
            created = datetime.fromisoformat(meta["created_at"])
    info = DatasetInfo(name=stem, format=fmt, sha256=sha, size_bytes=size, lines=lines,
                       created_at=created, kind=kind)
    with contextlib.suppress(OSError):  # a cache: failing to write it changes nothing
        _meta_dir(root).mkdir(parents=True, exist_ok=True)
        _write_json_atomic(meta_file, {**info.to_json(), "signature": _signature(st)})
    return info


@cache
def _builtin_info(key: str) -> DatasetInfo:
    file = builtin_dir() / BUILTIN_DATASETS[key]
    sha, size, lines, kind = _scan(file)
    return DatasetInfo(name=BUILTIN_PREFIX + key, format=file.suffix[1:], sha256=sha,
                       size_bytes=size, lines=lines, kind=kind,
                       created_at=datetime.fromtimestamp(file.stat().st_mtime, timezone.utc),
                       builtin=True)


def _folder_info(name: str, folder: Path, root: Path) -> DatasetInfo:
    files = source_files(folder, root)
    stats = [f.stat() for f in files]
    return DatasetInfo(name=name, format="folder", sha256=None,
                       size_bytes=sum(s.st_size for s in stats), lines=None,
                       created_at=datetime.fromtimestamp(
                           max((s.st_mtime for s in stats), default=0), timezone.utc))


def _stored(root: Path, stem: str) -> tuple[Path, str] | None:
    """The file or folder `resolve_dataset(stem)` would pick, with its format."""
    try:
        real = resolve_dataset(stem, root.parent)
    except DatasetError:
        return None
    if real.is_dir():
        return real, "folder"
    return real, real.suffix[1:]


def get_info(data_dir: str | os.PathLike[str], name: str) -> DatasetInfo:
    if name.startswith(BUILTIN_PREFIX):
        key = name[len(BUILTIN_PREFIX):]
        if key not in BUILTIN_DATASETS:
            raise NotFound(f"Dataset {name!r} not found.")
        return _builtin_info(key)
    if not is_valid_name(name):
        raise NotFound(f"Dataset {name!r} not found.")
    stem, _fmt = split_name(name)
    root = datasets_root(data_dir)
    found = _stored(root, stem) if root.is_dir() else None
    if found is None:
        raise NotFound(f"Dataset {name!r} not found.")
    path, fmt = found
    if fmt == "folder":
        return _folder_info(stem, path, root.resolve())
    return _file_info(root, stem, path, fmt)


def list_infos(data_dir: str | os.PathLike[str]) -> list[DatasetInfo]:
    """Built-ins first, then the stored datasets by name."""
    infos = [_builtin_info(key) for key in BUILTIN_DATASETS]
    root = datasets_root(data_dir)
    if not root.is_dir():
        return infos
    stems: set[str] = set()
    for entry in os.scandir(root):
        if entry.name.startswith("."):
            continue
        stem = entry.name
        for suffix in DATASET_SUFFIXES:
            if stem.endswith(suffix):
                stem = stem[: -len(suffix)]
                break
        if is_valid_name(stem) and split_name(stem)[1] is None:
            stems.add(stem)
    for stem in sorted(stems):
        with contextlib.suppress(NotFound, DatasetError, OSError):
            infos.append(get_info(data_dir, stem))
    return infos


@contextlib.contextmanager
def _commit_lock(root: Path) -> Iterator[None]:
    """Serialise the short commit step (checks, renames) across threads and processes."""
    meta = _meta_dir(root)
    meta.mkdir(parents=True, exist_ok=True)
    fd = os.open(meta / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # releases the lock


@dataclass(frozen=True)
class UploadResult:
    info: DatasetInfo
    created: bool


def store_upload(
    data_dir: str | os.PathLike[str],
    stem: str,
    fmt: str,
    chunks: Iterable[bytes],
    *,
    max_bytes: int,
    in_use: Callable[[str], list[str]],
    max_count: int = 0,
    quota: StorageQuota | None = None,
) -> UploadResult:
    """Stream `chunks` into the dataset `stem` (format `fmt`), replacing any older version.

    `in_use(stem)` lists the jobs that still need the current version (Conflict if any).
    With `max_count`, a new dataset beyond that many is refused (TooMany); with `quota`,
    an upload that would take the owner over it (OverQuota). Both are checked before
    streaming (the quota also while streaming) and again under the commit lock, so
    concurrent uploads cannot overshoot. Nothing is left behind on failure: the temporary
    file is removed.

    The rename into place is the commit: a full disk before it is DiskFull with nothing
    stored; after it the dataset is stored whatever happens to its metadata, which is a
    cache recomputed from the file when missing or stale.
    """
    root = datasets_root(data_dir)
    tmp = root / f"{TMP_PREFIX}{uuid.uuid4().hex}.tmp"
    try:
        root.mkdir(parents=True, exist_ok=True)
        _stored_unless_in_use(root, stem, in_use)
        _refuse_if_too_many(data_dir, root, stem, max_count)
        room = _quota_room(data_dir, stem, quota)
        validator = JsonlValidator() if fmt == "jsonl" else TextValidator()
        digest, size, newlines, last = hashlib.sha256(), 0, 0, b""
        with open(tmp, "xb") as f:
            for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > max_bytes:
                    raise TooLarge(f"Dataset is larger than {max_bytes} bytes "
                                   "(LLM_TRAIN_API_MAX_DATASET_BYTES).")
                if size > room:  # measure again: OverQuota unless space was freed
                    room = _quota_room(data_dir, stem, quota, size)
                validator.feed(chunk)
                digest.update(chunk)
                newlines += chunk.count(b"\n")
                last = chunk[-1:]
                f.write(chunk)
            validator.feed(b"", final=True)
            if size == 0:
                raise InvalidContent("The dataset is empty.")
            f.flush()
            os.fsync(f.fileno())
        lines = newlines + (1 if last != b"\n" else 0)
        final = root / f"{stem}{FORMATS[fmt]}"
        with _commit_lock(root):
            _stored_unless_in_use(root, stem, in_use)
            _refuse_if_too_many(data_dir, root, stem, max_count)
            _quota_room(data_dir, stem, quota, size)
            created = _stored(root, stem) is None
            os.replace(tmp, final)
            kind = validator.kind if isinstance(validator, JsonlValidator) else TEXT
            return UploadResult(info=_after_commit(root, stem, fmt, final, digest.hexdigest(),
                                                   size, lines, kind), created=created)
    except OSError as exc:
        if exc.errno in DISK_FULL_ERRNOS:
            raise DiskFull(f"The disk holding the datasets is full ({exc.strerror}): "
                           f"dataset {stem!r} was not stored. Free some space (or ask an "
                           "operator to), then retry.") from exc
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()


def _after_commit(root: Path, stem: str, fmt: str, final: Path, sha256: str, size: int,
                  lines: int, kind: str | None) -> DatasetInfo:
    """What follows the rename, under the commit lock: the dataset is stored from here on."""
    # Another format of the same name would shadow or duplicate this one.
    for other in FORMATS.values():
        if other != FORMATS[fmt]:
            with contextlib.suppress(FileNotFoundError):
                (root / f"{stem}{other}").unlink()
    info = DatasetInfo(name=stem, format=fmt, sha256=sha256, size_bytes=size, lines=lines,
                       created_at=_now(), kind=kind)
    try:
        _write_json_atomic(_meta_path(root, stem),
                           {**info.to_json(), "signature": _signature(final.stat())})
    except OSError as exc:
        if exc.errno not in DISK_FULL_ERRNOS:
            raise
        # A cache: the next read finds it stale or missing and recomputes it.
        log.warning("dataset %s stored, but not its metadata (disk full): %s", final, exc)
    fsync_dir(root)
    fsync_dir(_meta_dir(root))
    return info


def _refuse_if_too_many(data_dir: str | os.PathLike[str], root: Path, stem: str,
                        max_count: int) -> None:
    if max_count and _stored(root, stem) is None and count_stored(data_dir) >= max_count:
        raise TooMany(f"Limit reached: at most {max_count} datasets per user "
                      f"(LLM_TRAIN_API_MAX_DATASETS_PER_USER={max_count}). Delete one first.")


def _stored_unless_in_use(root: Path, stem: str, in_use: Callable[[str], list[str]],
                             action: str = "replaced") -> tuple[Path, str] | None:
    """What is stored under `stem`, unless it may not be `action`ed through the API: a
    folder managed on disk, or a dataset that queued or running jobs still read."""
    found = _stored(root, stem)
    if found is None:
        return None
    if found[1] == "folder":
        raise Conflict(f"Dataset {stem!r} is a folder managed on disk; it cannot be {action} "
                       "through the API.")
    jobs = in_use(stem)
    if jobs:
        raise Conflict(f"Dataset {stem!r} is used by queued or running jobs: "
                       f"{', '.join(jobs)}. Wait for them to finish or cancel them.")
    return found


def delete_dataset(
    data_dir: str | os.PathLike[str], name: str, *, in_use: Callable[[str], list[str]]
) -> None:
    if name.startswith(BUILTIN_PREFIX):
        if name[len(BUILTIN_PREFIX):] in BUILTIN_DATASETS:
            raise ReadOnly(f"Dataset {name!r} is built in and read-only.")
        raise NotFound(f"Dataset {name!r} not found.")
    if not is_valid_name(name):
        raise NotFound(f"Dataset {name!r} not found.")
    stem, _fmt = split_name(name)
    root = datasets_root(data_dir)
    if not root.is_dir() or _stored(root, stem) is None:
        raise NotFound(f"Dataset {name!r} not found.")
    with _commit_lock(root):
        if _stored_unless_in_use(root, stem, in_use, "deleted") is None:
            raise NotFound(f"Dataset {name!r} not found.")
        for suffix in FORMATS.values():
            with contextlib.suppress(FileNotFoundError):
                (root / f"{stem}{suffix}").unlink()
        with contextlib.suppress(FileNotFoundError):
            _meta_path(root, stem).unlink()
        fsync_dir(root)


def read_chunks(stream: BinaryIO, size: int = CHUNK_BYTES) -> Iterator[bytes]:
    while chunk := stream.read(size):
        yield chunk

