"""The private folders in which a local worker writes its trainers' lease files.

Each worker makes one (mode 0700) in the temporary directory, named after its process id,
and removes it when it stops. A worker killed with SIGKILL cannot, so the next worker that
makes one first removes those of workers that are gone: same user, process no longer
alive. Their trainers, if any still run, find their lease file gone and stop, as a fenced
trainer whose lease is unknown must.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)

PREFIX = "llm-train-api-leases-"


def make_private_dir(root: str | None = None) -> Path:
    """A new lease folder for this process, after sweeping those of dead workers."""
    base = Path(root or tempfile.gettempdir())
    sweep_abandoned(base)
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=base))


def sweep_abandoned(base: Path) -> list[Path]:
    """Remove the lease folders in `base` that belong to this user's dead workers."""
    removed = []
    for path in base.glob(f"{PREFIX}*"):
        pid = _owner_pid(path)
        if pid is None or _alive(pid):
            continue
        try:
            if path.lstat().st_uid != os.getuid() or not path.is_dir() or path.is_symlink():
                continue
            shutil.rmtree(path)
        except OSError as exc:  # another worker swept it first, or it is not ours
            log.debug("lease folder %s left: %s", path, exc)
            continue
        removed.append(path)
    if removed:
        log.info("removed %d lease folder(s) of workers that are gone", len(removed))
    return removed


def remove(path: Path | None) -> None:
    """Remove this worker's own lease folder when it stops."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)


def _owner_pid(path: Path) -> int | None:
    """The process id in `llm-train-api-leases-<pid>-<random>`; None for other names."""
    head = path.name[len(PREFIX):].split("-", 1)[0]
    return int(head) if head.isdigit() else None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process: alive, and not our folder anyway
        return True
    return True
