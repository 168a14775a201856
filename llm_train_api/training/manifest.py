"""The checkpoints a job keeps, with their hashes and metrics: ``JOB_DIR/checkpoints.json``.

Both trainers write their step-named checkpoints (the built-in trainer's
``checkpoints/step-NNNNNNNN.pt``, the fine-tuning trainer's ``checkpoints/step-NNNNNNNN/``
folder) and then record each one here with its size, its sha256 and the metrics of its
step. The file is replaced atomically (temporary file, fsync, rename, fsync of the
folder), so a reader sees the list before or after a checkpoint landed, never half.

A checkpoint is loaded (resumed from, branched from) or downloaded only after its bytes
hash to what was recorded: a corrupt or truncated one is marked ``corrupt`` and the
caller falls back to the newest good one. Pruning keeps the newest ``keep`` checkpoints
plus the best (:func:`selection_score`).

Torch-free: the API reads this module to list and serve checkpoints.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import shutil
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

MANIFEST = "checkpoints.json"
FOLDER = "checkpoints"
FORMAT = "llm_train_api.checkpoints/1"
GOOD, CORRUPT = "good", "corrupt"
_CHUNK = 1 << 20


def step_name(step: int) -> str:
    return f"step-{step:08d}"


def selection_score(metrics: Mapping[str, Any] | None) -> float | None:
    """What "best" minimises: the validation loss (both trainers, SFT and DPO, report it
    as ``val_loss``); None when the step was not evaluated."""
    if not metrics:
        return None
    value = metrics.get("val_loss")
    return float(value) if isinstance(value, int | float) else None


def file_sha256(path: Path) -> tuple[str, int]:
    digest, size = hashlib.sha256(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def hash_checkpoint(job_dir: Path, rel: str) -> tuple[str, int, dict[str, str]]:
    """``(sha256, size, files)`` of the checkpoint at ``rel``: a file's own sha256, or for a
    folder the sha256 of its sorted ``"<name> <sha256>\\n"`` lines (each file's hash is in
    ``files``). Links are refused: a checkpoint is plain files."""
    path = job_dir / rel
    if path.is_symlink():
        raise ValueError(f"{rel} is a link")
    if path.is_file():
        sha, size = file_sha256(path)
        return sha, size, {path.name: sha}
    files: dict[str, str] = {}
    size = 0
    for child in sorted(path.iterdir()):
        if child.is_symlink() or not child.is_file():
            raise ValueError(f"{rel}/{child.name} is not a plain file")
        files[child.name], n = file_sha256(child)
        size += n
    listing = "".join(f"{name} {sha}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest(), size, files


def read(job_dir: Path) -> list[dict[str, Any]]:
    """The recorded checkpoints, oldest first ([] when none or unreadable)."""
    try:
        data = json.loads((job_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        return []
    entries = [e for e in data.get("checkpoints", []) if isinstance(e, dict)
               and isinstance(e.get("step"), int) and isinstance(e.get("path"), str)]
    return sorted(entries, key=lambda e: e["step"])


def write(job_dir: Path, entries: Iterable[Mapping[str, Any]]) -> None:
    """Replace the manifest atomically and durably."""
    body = json.dumps({"format": FORMAT, "checkpoints": sorted(
        entries, key=lambda e: e["step"])}, indent=1, allow_nan=False)
    tmp = job_dir / f".{MANIFEST}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(body)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, job_dir / MANIFEST)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    _fsync_dir(job_dir)


def _fsync_dir(path: Path) -> None:
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def clean_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    """The numbers of a metrics line worth keeping with a checkpoint (no NaN: JSON)."""
    kept: dict[str, Any] = {}
    for key, value in (metrics or {}).items():
        if isinstance(value, bool) or not isinstance(value, int | float):
            continue
        if isinstance(value, float) and not math.isfinite(value):
            continue
        kept[key] = value
    return kept


def record(job_dir: Path, step: int, rel: str, metrics: Mapping[str, Any] | None,
           keep: int) -> dict[str, Any]:
    """Hash the checkpoint just written at ``rel``, add it (replacing any entry of that
    step), prune to ``keep`` + the best, and return its entry."""
    sha, size, files = hash_checkpoint(job_dir, rel)
    entry = {"step": step, "path": rel, "sha256": sha, "size": size, "files": files,
             "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
             "metrics": clean_metrics(metrics), "status": GOOD}
    entries = [e for e in read(job_dir) if e["step"] != step] + [entry]
    doomed = to_prune(entries, keep)
    write(job_dir, [e for e in entries if e not in doomed])
    for old in doomed:  # after the manifest stopped naming them
        remove_files(job_dir, old)
    return entry


def best(entries: Iterable[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The good checkpoint with the lowest :func:`selection_score` (the latest of equals)."""
    scored = [(s, -e["step"], e) for e in entries
              if e.get("status") == GOOD and (s := selection_score(e.get("metrics"))) is not None]
    return min(scored, key=lambda t: (t[0], t[1]))[2] if scored else None


def to_prune(entries: list[Mapping[str, Any]], keep: int) -> list[Mapping[str, Any]]:
    """What goes: anything corrupt, and good checkpoints beyond the newest ``keep`` that
    are not the best. The newest is always kept (it is what a resume continues from)."""
    good = sorted((e for e in entries if e.get("status") == GOOD), key=lambda e: -e["step"])
    chosen = best(good)
    kept = {e["step"] for e in good[:max(keep, 1)]}
    if chosen is not None:
        kept.add(chosen["step"])
    return [e for e in entries if e["step"] not in kept or e.get("status") != GOOD]


def remove_files(job_dir: Path, entry: Mapping[str, Any]) -> None:
    path = resolve(job_dir, entry)
    if path is not None:
        remove_path(path)


def remove_path(path: Path) -> None:
    """Remove a checkpoint file or folder (a link itself, never what it points to);
    what is already gone is no error."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()


def resolve(job_dir: Path, entry: Mapping[str, Any]) -> Path | None:
    """The entry's path inside ``job_dir/checkpoints``, or None for anything else (``..``,
    absolute paths, links): a manifest is never trusted to point elsewhere."""
    rel = str(entry.get("path", ""))
    parts = Path(rel).parts
    if len(parts) != 2 or parts[0] != FOLDER or parts[1] in ("", ".", "..") \
            or not parts[1].startswith("step-") or os.path.isabs(rel):
        return None
    path = job_dir / rel
    return None if path.is_symlink() else path


def verify(job_dir: Path, entry: Mapping[str, Any]) -> str | None:
    """None when the checkpoint's bytes are what was recorded, else why not."""
    path = resolve(job_dir, entry)
    if path is None:
        return f"checkpoint path {entry.get('path')!r} is not a checkpoint of this job"
    if not path.exists():
        return f"{entry['path']} is missing"
    try:
        sha, size, _ = hash_checkpoint(job_dir, entry["path"])
    except (OSError, ValueError) as exc:
        return f"{entry['path']} cannot be read: {exc}"
    if size != entry.get("size"):
        return f"{entry['path']} has {size} bytes, {entry.get('size')} were written"
    if sha != entry.get("sha256"):
        return f"{entry['path']} does not match its sha256 (corrupt)"
    return None


def mark_corrupt(job_dir: Path, step: int, reason: str) -> None:
    entries = read(job_dir)
    for entry in entries:
        if entry["step"] == step:
            entry["status"], entry["problem"] = CORRUPT, reason
    write(job_dir, entries)


def newest_good(job_dir: Path, on_corrupt: Callable[[Mapping[str, Any], str], None]
                ) -> Mapping[str, Any] | None:
    """The newest checkpoint whose bytes verify; each newer one that does not is marked
    corrupt and reported to ``on_corrupt(entry, reason)``."""
    for entry in reversed(read(job_dir)):
        if entry.get("status") != GOOD:
            continue
        problem = verify(job_dir, entry)
        if problem is None:
            return entry
        mark_corrupt(job_dir, entry["step"], problem)
        on_corrupt(entry, problem)
    return None


def find(entries: Iterable[Mapping[str, Any]], step: int) -> Mapping[str, Any] | None:
    return next((e for e in entries if e["step"] == step), None)


def summary(entries: list[Mapping[str, Any]], final_metrics: Mapping[str, Any] | None
            ) -> dict[str, Any]:
    """A job's ``result``: the final metrics, the best checkpoint's and which it is."""
    chosen = best(entries)
    return {"final": clean_metrics(final_metrics),
            "best": None if chosen is None else dict(chosen.get("metrics") or {}),
            "best_checkpoint": None if chosen is None else chosen["step"],
            "selection_metric": "val_loss"}


BRANCH_FILE = "branch.json"


def branch_record(path: Path, entry: Mapping[str, Any],
                  origin: Mapping[str, Any]) -> dict[str, Any]:
    """What ``branch.json`` says: the starting weights at ``path`` (the source's
    checkpoint, or its pin), the hash and size they must have, and the origin."""
    return {"path": str(path), "sha256": entry["sha256"], "size": entry["size"],
            "step": entry["step"], "origin": dict(origin)}


def write_branch(job_dir: Path, body: Mapping[str, Any]) -> None:
    """Tell the trainer of a branched job where its starting weights are (the worker
    writes it before the first run; the trainer verifies the hash before loading)."""
    tmp = job_dir / f".{BRANCH_FILE}.tmp"
    tmp.write_text(json.dumps(body), encoding="utf-8")
    os.replace(tmp, job_dir / BRANCH_FILE)


def read_branch(job_dir: Path) -> dict[str, Any] | None:
    try:
        data = json.loads((job_dir / BRANCH_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def checked_branch(job_dir: Path) -> dict[str, Any] | None:
    """The checkpoint a branched job starts from (None for a job that is no branch),
    verified against the sha256 recorded at creation; ValueError saying why when it no
    longer matches: a branch never starts from weights other than those it named."""
    branch = read_branch(job_dir)
    if branch is None:
        return None
    problem = verify_branch(branch)
    if problem is not None:
        raise ValueError(f"cannot branch: {problem}")
    return branch


def verify_branch(branch: Mapping[str, Any]) -> str | None:
    """None when the branch's source checkpoint still hashes to what was recorded."""
    path = Path(str(branch.get("path", "")))
    if not path.exists() or path.is_symlink():
        return f"the source checkpoint {path} is gone"
    try:
        sha, size, _ = hash_checkpoint(path.parent, path.name)
    except (OSError, ValueError) as exc:
        return f"the source checkpoint cannot be read: {exc}"
    if sha != branch.get("sha256") or size != branch.get("size"):
        return "the source checkpoint does not match its sha256 (corrupt)"
    return None
