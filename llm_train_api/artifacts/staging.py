"""Leftovers of uploads that never finished: staged dataset files and model folders.

An upload stages into a dot-named entry beside its final place (datasets:
`.upload-*.tmp`, models: `.upload-*/`) and removes it on every failure it sees. A gunicorn
worker killed mid-upload (SIGKILL, the OOM killer, a power cut) sees none, and its staging
stays: invisible to listings and quotas, but on the disk. Workers sweep them periodically.

An upload in progress writes at least every REQUEST_READ_TIMEOUT_S (the server cuts off a
client that stalls longer), so an entry nothing under which was touched for STALE_AFTER_S
belongs to no live upload.
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

from llm_train_api.artifacts.datasets import TMP_PREFIX as DATASET_STAGING_PREFIX
from llm_train_api.artifacts.homes import USERS_FOLDER
from llm_train_api.artifacts.models import STAGING_PREFIX as MODEL_STAGING_PREFIX

log = logging.getLogger(__name__)

STALE_AFTER_S = 3600.0


def sweep_stale_uploads(data_dir: str | os.PathLike[str], *,
                        stale_after_s: float = STALE_AFTER_S,
                        now: float | None = None) -> list[Path]:
    """Remove the staging entries under every home of `data_dir` untouched for
    `stale_after_s`; return what was removed."""
    cutoff = (time.time() if now is None else now) - stale_after_s
    removed = []
    for entry in _staging_entries(Path(data_dir)):
        try:
            if _last_touched(entry) >= cutoff:
                continue
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        except FileNotFoundError:  # the upload finished or failed meanwhile
            continue
        except OSError as exc:
            log.warning("could not remove the stale upload %s: %s", entry, exc)
            continue
        removed.append(entry)
    if removed:
        log.info("removed %d unfinished upload(s) older than %g s", len(removed), stale_after_s)
    return removed


def _homes(data_dir: Path) -> Iterator[Path]:
    yield data_dir
    users = data_dir / USERS_FOLDER
    if users.is_dir():
        for home in users.iterdir():
            if home.is_dir() and not home.is_symlink():
                yield home


def _staging_entries(data_dir: Path) -> Iterator[Path]:
    for home in _homes(data_dir):
        yield from (home / "datasets").glob(f"{DATASET_STAGING_PREFIX}*.tmp")
        yield from (home / "models").glob(f"{MODEL_STAGING_PREFIX}*")


def _last_touched(entry: Path) -> float:
    """The newest mtime of `entry` and, for a folder, of everything under it."""
    newest = entry.lstat().st_mtime
    if entry.is_dir() and not entry.is_symlink():
        for folder, dirs, files in os.walk(entry):
            for name in (*dirs, *files):
                try:
                    newest = max(newest, os.lstat(os.path.join(folder, name)).st_mtime)
                except FileNotFoundError:
                    continue
    return newest
