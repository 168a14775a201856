"""Where a job's files live in the artifact store (a folder, LLM_TRAIN_API_DATA_DIR).

    DATA_DIR/datasets/<name>[.txt|.jsonl]     uploaded datasets (see training.datasets)
    DATA_DIR/jobs/<job id>-<created_us hex>/  one folder per job incarnation:
        spec.json, metrics.jsonl, ckpt_latest.pt, ckpt_best.pt,   (written by the trainer)
        checkpoints/ and checkpoints.json (the kept step checkpoints and their sha256)
        train.log                                                 (the trainer's stdout+stderr)

The creation time is in the folder name because an id can be reused after a DELETE: a new
job must never resume from its deleted namesake's checkpoint. It also means a folder names
exactly one job: when no job with that id and creation time exists any more, nothing will
ever use the folder again, and `sweep_job_dirs` removes it.

A folder is removed by first renaming it to `jobs/.removing-<random>` (atomic: of several
removers, one wins, and the job's name is free at once), then deleting that tree.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import uuid
from collections.abc import Callable, Iterable
from pathlib import Path

from llm_train_api.domain import Job, is_valid_job_id

LOG_NAME = "train.log"
JOBS_FOLDER = "jobs"
REMOVING_PREFIX = ".removing-"

log = logging.getLogger("llm_train_api.artifacts")

JobKey = tuple[str, int]  # (job id, created_us): one incarnation of a job


def jobs_root(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / JOBS_FOLDER


def folder_name(job_id: str, created_us: int) -> str:
    return f"{job_id}-{created_us:x}"


def job_dir_of(data_dir: str | os.PathLike[str], job_id: str, created_us: int) -> Path:
    return jobs_root(data_dir) / folder_name(job_id, created_us)


def job_dir(data_dir: str | os.PathLike[str], job: Job) -> Path:
    return job_dir_of(data_dir, job.id, job.revision.created_us)


def log_path(data_dir: str | os.PathLike[str], job: Job) -> Path:
    return job_dir(data_dir, job) / LOG_NAME


def parse_folder_name(name: str) -> JobKey | None:
    """`<id>-<created_us hex>` back into its key; None for anything else."""
    job_id, sep, created = name.rpartition("-")
    if not sep or not is_valid_job_id(job_id) or not created:
        return None
    try:
        created_us = int(created, 16)
    except ValueError:
        return None
    if folder_name(job_id, created_us) != name:
        return None  # not the canonical spelling (upper case, leading zeros): not ours
    return job_id, created_us


def remove_job_dir(data_dir: str | os.PathLike[str], job_id: str, created_us: int) -> bool:
    """Remove one job's folder; False when there was none (or another remover won)."""
    return _remove(jobs_root(data_dir), folder_name(job_id, created_us))


def _remove(root: Path, name: str) -> bool:
    doomed = root / f"{REMOVING_PREFIX}{uuid.uuid4().hex}"
    try:
        os.rename(root / name, doomed)
    except FileNotFoundError:
        return False
    except OSError as exc:  # permissions, a read-only mount: left for the next sweep
        log.warning("could not remove the job folder %s: %s", root / name, exc)
        return False
    shutil.rmtree(doomed, ignore_errors=True)
    return True


def sweep_job_dirs(
    data_dir: str | os.PathLike[str],
    existing: Callable[[Iterable[JobKey]], set[JobKey]],
) -> list[str]:
    """Remove the folders under DATA_DIR/jobs whose job no longer exists; return their names.

    `existing(keys)` answers which of the keys are jobs in the database. The folders are
    listed before the database is asked: a folder is created only for a job that exists
    (by the worker that claimed it), so a folder listed whose key the database then lacks
    belongs to a deleted job. A trainer that was still writing into it when it was
    removed (a job deleted while running: its worker is killing it) may leave a few files
    behind; the next sweep removes them. Leftovers of removals that were interrupted go too.
    """
    root = jobs_root(data_dir)
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    keys: dict[JobKey, str] = {}
    for entry in entries:
        if entry.name.startswith(REMOVING_PREFIX):
            with contextlib.suppress(OSError):
                shutil.rmtree(entry.path, ignore_errors=True)
            continue
        key = parse_folder_name(entry.name)
        if key is not None and entry.is_dir(follow_symlinks=False):
            keys[key] = entry.name
    if not keys:
        return []
    alive = existing(keys.keys())
    removed = []
    for key, name in keys.items():
        if key not in alive and _remove(root, name):
            removed.append(name)
    if removed:
        log.info("removed %d folder(s) of deleted jobs: %s", len(removed),
                 ", ".join(sorted(removed)[:20]))
    return removed


def tree_bytes(path: str | os.PathLike[str]) -> int:
    """The sizes of the files under `path` added up (0 when it does not exist); symlinks
    are not followed, and a file with several hard links (a trainer's ``ckpt_latest.pt``
    and the step checkpoint it is) counts once."""
    total = 0
    linked: set[tuple[int, int]] = set()
    stack = [os.fspath(path)]
    while stack:
        try:
            with os.scandir(stack.pop()) as it:
                for entry in it:
                    try:
                        if entry.is_dir(follow_symlinks=False):
                            stack.append(entry.path)
                        elif entry.is_file(follow_symlinks=False):
                            st = entry.stat(follow_symlinks=False)
                            if st.st_nlink > 1:
                                if (st.st_dev, st.st_ino) in linked:
                                    continue
                                linked.add((st.st_dev, st.st_ino))
                            total += st.st_size
                    except OSError:
                        continue  # removed while we looked
        except (FileNotFoundError, NotADirectoryError):
            continue
    return total


def job_dirs_bytes(data_dir: str | os.PathLike[str], keys: Iterable[JobKey]) -> int:
    """Bytes in the folders of these jobs (those that have one)."""
    return sum(tree_bytes(job_dir_of(data_dir, job_id, created)) for job_id, created in keys)
