"""Lease folders of dead workers are swept; live ones, other names and our own stay."""

from __future__ import annotations

import os
import subprocess
import sys

from llm_train_api.worker import lease_dirs
from llm_train_api.worker.executors import LocalExecutor


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_workers_folder_is_removed_and_the_others_stay(tmp_path):
    dead = tmp_path / f"{lease_dirs.PREFIX}{_dead_pid()}-abc"
    (dead / "job-1234").mkdir(parents=True)
    live = tmp_path / f"{lease_dirs.PREFIX}{os.getppid()}-def"
    live.mkdir()
    unnamed = tmp_path / f"{lease_dirs.PREFIX}x7f3k2"  # no process id in the name: unknown
    unnamed.mkdir()
    mine = lease_dirs.make_private_dir(str(tmp_path))
    assert not dead.exists()
    assert live.is_dir() and unnamed.is_dir() and mine.is_dir()
    assert mine.name.startswith(f"{lease_dirs.PREFIX}{os.getpid()}-")
    assert oct(mine.stat().st_mode & 0o777) == "0o700"


def test_the_executor_removes_its_own_folder_when_closed(tmp_path, monkeypatch):
    monkeypatch.setenv("TMPDIR", str(tmp_path))
    monkeypatch.setattr("tempfile.tempdir", None)
    executor = LocalExecutor(gpus=[], lease_s=30)
    executor._lease_dir = lease_dirs.make_private_dir()
    assert executor._lease_dir.parent == tmp_path
    folder = executor._lease_dir
    executor.close()
    assert not folder.exists() and executor._lease_dir is None
    executor.close()  # twice is harmless
