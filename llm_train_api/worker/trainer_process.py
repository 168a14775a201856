"""One trainer subprocess, supervised: its own process group, its output teed to the job's
log, its protocol events parsed as they are printed, and a death tied to the worker's.
"""

from __future__ import annotations

import ctypes
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from llm_train_api.training.events import parse_line
from llm_train_api.training.lease import LEASE_FILE_ENV
from llm_train_api.worker import trainer_spec
from llm_train_api.worker.trainer_spec import TrainerSpec

_PR_SET_PDEATHSIG = 1
try:  # loaded in the parent: the child must not import or allocate between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None


def die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Linux: the kernel SIGKILLs the trainer when the worker dies, however it dies, so a
    requeued job can never run beside an orphan of its previous attempt. (The lease
    watchdog covers the rest: a worker that lost its lease kills its trainers.)"""
    if _prctl is not None:
        _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class TrainerProcess:
    def __init__(
        self,
        job_dir: Path,
        spec: TrainerSpec,
        log_path: Path,
        *,
        threads: int = 0,
        gpus: list[int] | None = None,
        extra_env: dict[str, str] | None = None,
        processes: int = 1,
        lease_file: Path | None = None,
    ) -> None:
        argv = trainer_spec.command(spec, job_dir, python=sys.executable,  # may refuse:
                                    processes=processes)  # before any IO
        trainer_spec.write(job_dir, spec)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", **(extra_env or {})}
        if threads:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[name] = str(threads)
        env["CUDA_VISIBLE_DEVICES"] = ",".join(map(str, gpus or []))
        env.pop(LEASE_FILE_ENV, None)
        if lease_file is not None:  # the trainer dies before this lease lapses
            env[LEASE_FILE_ENV] = str(lease_file)
        self.events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.last_error: str | None = None
        self._last_line = ""
        self._log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed by the reader
        self._log.write(f"--- attempt started {time.strftime('%Y-%m-%dT%H:%M:%S%z')}\n".encode())
        self.proc = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            env=env, preexec_fn=die_with_parent, start_new_session=True, close_fds=True,
        )
        self.pid = self.proc.pid
        self.started = time.monotonic()
        self._reader = threading.Thread(target=self._read, daemon=True,
                                        name=f"trainer-{self.pid}")
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        try:
            for raw in self.proc.stdout:
                self._log.write(raw)
                line = raw.decode("utf-8", "replace").rstrip("\n")
                event = parse_line(line)
                if event is None:
                    if line.strip():
                        self._last_line = line.strip()
                    continue
                if event.get("event") == "error" and event.get("message"):
                    self.last_error = str(event["message"])
                self.events.put(event)
        finally:
            self._log.close()

    def poll(self) -> int | None:
        return self.proc.poll()

    def wait_output(self, timeout: float = 5.0) -> None:
        """After exit: let the reader drain what the trainer printed last."""
        self._reader.join(timeout)

    def failure_reason(self) -> str:
        return self.last_error or self._last_line or "the trainer exited with an error"

    def signal(self, sig: int) -> None:
        try:
            os.killpg(self.pid, sig)
        except ProcessLookupError:
            pass

    def kill(self, grace_s: float) -> None:
        """SIGTERM the group, then SIGKILL it after `grace_s`: gone either way."""
        if self.poll() is None:
            self.signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=grace_s)
            except subprocess.TimeoutExpired:
                pass
        self.signal(signal.SIGKILL)  # also reaps anything left in the group
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:  # pragma: no cover - unkillable (D state)
            pass
