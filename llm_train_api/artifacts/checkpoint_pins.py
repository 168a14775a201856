"""Checkpoints held for the branches that will start from them.

A branched job (``from_checkpoint``) starts when a worker claims it, which can be long
after it was created, while its source job may still be training and pruning its
checkpoints (``keep_checkpoints``). So creating a branch pins the checkpoint: hard links to
its files under the source job's folder, ``branch-pins/<sha256 prefix>-<random>-<step
name>``, with the manifest entry beside them (``.json``).

- A link is made from a name that exists, so a checkpoint pruned meanwhile fails the pin
  (and the branch request); it never pins half a checkpoint unnoticed: the caller hashes
  the pin against the entry before it counts.
- Pruning unlinks names under ``checkpoints/`` only, so the pinned bytes live on for as
  long as a branch that may still start needs them. While the source also keeps the
  checkpoint, the links take no space. A filesystem without hard links gets a copy.
- Each branch request makes its own pin, and any pin of the same bytes serves a branch
  (:func:`find` matches on the hash), so the sweep never races a request reusing an old pin.

The worker's sweep (:func:`sweep`) removes the pins of bytes that no queued, running or
paused branch names any more, sparing fresh ones: a pin is made just before its branch's
row is inserted, so a pin the database does not know yet may be one about to be used.

Torch-free: the API pins, the worker sweeps.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from llm_train_api.artifacts.jobs import jobs_root, parse_folder_name
from llm_train_api.training import manifest

PINS_FOLDER = "branch-pins"
RECORD_SUFFIX = ".json"
# A pin younger than this is kept whatever the database says (see the module docstring).
FRESH_S = 3600.0
# Where a hard link cannot be made for a reason other than a missing source: copy instead.
_NO_LINK_ERRNOS = frozenset({errno.EXDEV, errno.EPERM, errno.EMLINK, errno.ENOTSUP,
                             errno.EOPNOTSUPP, errno.EACCES})

# (source job id, source created_us, sha256): what a pending branch needs kept.
PinKey = tuple[str, int, str]


_HEX = frozenset("0123456789abcdef")


def _sha256_of(record: Mapping[str, Any]) -> str:
    """The record's sha256, refused unless it is 64 lowercase hex digits: it is part of a
    file name and of a glob pattern."""
    sha = record.get("sha256")
    if not isinstance(sha, str) or len(sha) != 64 or not _HEX.issuperset(sha):
        raise ValueError("the checkpoint has no valid sha256")
    return sha


def pin(source_dir: Path, entry: Mapping[str, Any]) -> Path:
    """Pin the checkpoint of ``entry`` (an entry of the manifest in ``source_dir``) and
    return the pinned path, which the caller verifies against the entry's sha256.

    FileNotFoundError when the checkpoint is gone (pruned meanwhile); ValueError when the
    entry names no checkpoint of this job; other OSErrors as they come (a full disk)."""
    source = manifest.resolve(source_dir, entry)
    if source is None:
        raise ValueError(f"{entry.get('path')!r} is not a checkpoint of this job")
    sha = _sha256_of(entry)
    pins = source_dir / PINS_FOLDER
    pins.mkdir(exist_ok=True)
    target = pins / f"{sha[:16]}-{uuid.uuid4().hex[:12]}-{source.name}"
    staging = pins / f".tmp-{uuid.uuid4().hex}"
    try:
        _link_tree(source, staging)
        # The record before the pin itself: the sweep finds every pin by its record (whose
        # time is the pin's age), and leaves a record of a pin not there yet to find() as
        # nothing; staging leftovers of a killed process go by their name.
        tmp = pins / f".tmp-{uuid.uuid4().hex}{RECORD_SUFFIX}"
        tmp.write_text(json.dumps(dict(entry, path=target.name)), encoding="utf-8")
        os.replace(tmp, _record_path(target))
        os.rename(staging, target)
    except BaseException:
        manifest.remove_path(staging)
        unpin(target)
        raise
    return target


def find(source_dir: Path, origin: Mapping[str, Any]) -> tuple[Path, dict[str, Any]] | None:
    """The pinned checkpoint a branch's ``origin`` names, with its entry; None when the
    origin names no pin (a branch created before pins) or the pin is gone."""
    try:
        sha = _sha256_of(origin)
    except ValueError:
        return None
    pins = source_dir / PINS_FOLDER
    for record_path in pins.glob(f"{sha[:16]}-*{RECORD_SUFFIX}"):
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if not isinstance(record, dict) or record.get("sha256") != sha \
                or record.get("step") != origin.get("step"):
            continue
        path = _pinned_path(pins, record)
        if path is not None and path.exists() and not path.is_symlink():
            return path, record
    return None


def unpin(path: Path) -> None:
    """Remove a pin (its files and its record)."""
    manifest.remove_path(path)
    with contextlib.suppress(OSError):
        _record_path(path).unlink()


def sweep(data_dir: str | os.PathLike[str],
          pending: Callable[[], Iterable[Mapping[str, Any]]],
          now: float | None = None) -> list[str]:
    """Remove the pins that no pending branch needs; return their paths (relative to
    DATA_DIR/jobs). ``pending()`` gives the origins of the branches that may still start;
    it is asked only when some pin is old enough to go."""
    now = time.time() if now is None else now
    candidates: list[tuple[PinKey, Path]] = []
    root = jobs_root(data_dir)
    try:
        folders = list(os.scandir(root))
    except FileNotFoundError:
        return []
    for folder in folders:
        key = parse_folder_name(folder.name)
        pins = Path(folder.path) / PINS_FOLDER
        if key is None or not pins.is_dir():
            continue
        for record_path in pins.glob(f"*{RECORD_SUFFIX}"):
            if record_path.name.startswith(".tmp-"):
                continue  # a record being written; old leftovers go below
            try:
                age = now - record_path.stat().st_mtime
                record = json.loads(record_path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            pinned = _pinned_path(pins, record) if isinstance(record, dict) else None
            if age >= FRESH_S and pinned is not None:
                candidates.append(((key[0], key[1], str(record.get("sha256"))), pinned))
        for leftover in pins.glob(".tmp-*"):
            _remove_if_old(leftover, now)
    if not candidates:
        return []
    needed = {(str(o.get("job_id")), int(o.get("created_us") or 0), str(o.get("sha256")))
              for o in pending()}
    removed = []
    for key, pinned in candidates:
        if key not in needed:
            unpin(pinned)
            removed.append(str(pinned.relative_to(root)))
    return removed


def _pinned_path(pins: Path, record: Mapping[str, Any]) -> Path | None:
    """The pin a record names, inside ``pins``; None for any other name (a record is
    never trusted to point elsewhere)."""
    name = record.get("path")
    if not isinstance(name, str) or not name or name.startswith(".") or "/" in name \
            or "\0" in name:
        return None
    return pins / name


def _record_path(pinned: Path) -> Path:
    return pinned.with_name(pinned.name + RECORD_SUFFIX)


def _link_tree(source: Path, target: Path) -> None:
    """Link (or copy) a file checkpoint, or each file of a folder checkpoint."""
    if source.is_symlink():
        raise ValueError(f"{source.name} is a link")
    if not source.is_dir():
        _link(source, target)
        return
    target.mkdir()
    for child in sorted(source.iterdir()):
        if child.is_symlink() or not child.is_file():
            raise ValueError(f"{source.name}/{child.name} is not a plain file")
        _link(child, target / child.name)


def _link(source: Path, target: Path) -> None:
    try:
        os.link(source, target)
    except OSError as exc:
        if exc.errno not in _NO_LINK_ERRNOS:
            raise
        shutil.copyfile(source, target)


def _remove_if_old(path: Path, now: float) -> None:
    """Leftovers of a pin interrupted mid-way (a killed API process)."""
    with contextlib.suppress(OSError):
        if now - path.lstat().st_mtime >= FRESH_S:
            manifest.remove_path(path)
