"""Helpers for the trainers' DDP tests: start a run as a worker does, wait for it, find its
processes, and compare a loss curve with the one-process run's."""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path
from typing import Any

from tests.helpers.training import REPO_ROOT, cli_env


def start_in_session(argv: list[str], env: dict[str, str] | None = None
                     ) -> subprocess.Popen[str]:
    """Run ``argv`` as a worker runs a trainer: in a session of its own, so that a killpg
    reaches what the worker's would."""
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**cli_env(), **(env or {})}, cwd=REPO_ROOT,
                            start_new_session=True)


def finish(proc: subprocess.Popen[str], timeout: float) -> tuple[int, str, str]:
    """``(exit code, stdout, stderr)``; past ``timeout`` the whole session is killed."""
    try:
        out, err = proc.communicate(timeout=timeout)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    return proc.returncode, out, err


def assert_same_curve(one: list[dict[str, Any]], two: list[dict[str, Any]],
                      rel: float) -> float:
    """Same steps, same train and validation losses within ``rel`` (relative to ``one``);
    the worst difference."""
    assert [m["step"] for m in one] == [m["step"] for m in two]
    worst = 0.0
    for a, b in zip(one, two, strict=True):
        for key in ("train_loss", "val_loss"):
            assert (key in a) == (key in b), (a, b)
            if key in a:
                diff = abs(a[key] - b[key]) / abs(a[key])
                worst = max(worst, diff)
                assert diff < rel, (key, a, b)
    return worst


def _live_processes() -> list[tuple[int, list[bytes]]]:
    """``(pid, argv)`` of every live process."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            argv = (entry / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        found.append((int(entry.name), argv))
    return found


def job_processes(job: Path) -> dict[int, str]:
    """Live processes whose command line names ``job``, by role: ``launcher``, ``torchrun``
    or ``rank``."""
    return {pid: ("launcher" if b"llm_train_api.training.launch" in argv
                  else "torchrun" if b"torch.distributed.run" in argv
                  else "rank")
            for pid, argv in _live_processes() if str(job).encode() in argv}


def torchrun_rank(pid: int) -> int | None:
    """The ``RANK`` of process ``pid`` if it is a torchrun rank (None if not, or gone)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    env = dict(v.split(b"=", 1) for v in environ if b"=" in v)
    return int(env[b"RANK"]) if b"TORCHELASTIC_RUN_ID" in env else None


def rank_processes(job: Path) -> dict[int, int]:
    """``{pid: RANK}`` of the live torchrun ranks training ``job``."""
    found: dict[int, int] = {}
    for pid, argv in _live_processes():
        if str(job).encode() not in argv or b"torch.distributed.run" in argv:
            continue
        rank = torchrun_rank(pid)
        if rank is not None:
            found[pid] = rank
    return found
