"""Servers for tests: real gunicorn and worker processes for the system tier, and the app
served from a thread for unit tests of HTTP clients."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import requests

REPO_ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class GunicornServer:
    def __init__(self, *, workers: int, env: dict[str, str], log_path: Path) -> None:
        self.workers = workers
        self.env = {**os.environ, **env}
        self.log_path = log_path
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        # The API token tests use for this server (None while auth is off), and a session
        # that sends it: live tests make their requests through `http`.
        self.token: str | None = None
        self.http = requests.Session()
        self._sessions = [self.http]

    def start(self, timeout: float = 30.0) -> None:
        gunicorn = Path(sys.executable).with_name("gunicorn")
        self._log = open(self.log_path, "ab")  # noqa: SIM115 - closed in stop()
        self.proc = subprocess.Popen(
            [str(gunicorn), "-c", "gunicorn.conf.py", "--workers", str(self.workers),
             "--bind", f"127.0.0.1:{self.port}", "wsgi:app"],
            cwd=REPO_ROOT, env=self.env, stdout=self._log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"gunicorn exited early:\n{self.log_path.read_text()}")
            try:
                if requests.get(self.url + "/readyz", timeout=2).status_code == 200:
                    self._pick_up_admin_token()
                    return
            except requests.RequestException:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn did not become ready:\n{self.log_path.read_text()}")

    def _pick_up_admin_token(self) -> None:
        """Tests act as the admin whose token the server wrote on its first start."""
        instance = self.env.get("LLM_TRAIN_API_INSTANCE_PATH")
        path = Path(instance) / "admin-token" if instance else None
        if path is not None and path.is_file():
            self.token = path.read_text().strip()
            self.http.headers["Authorization"] = f"Bearer {self.token}"

    def session(self) -> requests.Session:
        """A new session (a new connection) that carries the token."""
        s = requests.Session()
        s.headers.update(self.http.headers)
        self._sessions.append(s)
        return s

    def worker_pids(self) -> list[int]:
        out = subprocess.run(["pgrep", "-P", str(self.proc.pid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def kill_hard(self) -> None:
        """SIGKILL the whole process group: no shutdown hooks, no flushing."""
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        # Idle keep-alive connections would hold a gunicorn worker's graceful exit for
        # seconds; the tests' own sessions are done with them.
        for session in self._sessions:
            session.close()
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        if getattr(self, "_log", None):
            self._log.close()


# Short enough for the kill -9 test to wait out, long enough that a busy 2-core CI machine
# never lets a live worker's lease lapse.
FAST = {"LLM_TRAIN_API_LEASE_S": "8", "LLM_TRAIN_API_HEARTBEAT_S": "1",
        "LLM_TRAIN_API_POLL_S": "0.2", "LLM_TRAIN_API_TRAINER_THREADS": "1",
        "LLM_TRAIN_API_CANCEL_GRACE_S": "0.5"}
TINY = {"batch_size": 4, "block_size": 32, "epochs": 1000, "log_interval": 1,
        "eval_interval": 0, "eval_steps": 2, "learning_rate": 0.003}


class WorkerProcess:
    """`llm-train-api worker [args]`: a local worker, or a Ray dispatcher with
    `--executor ray --ray-address ...`."""

    def __init__(self, env: dict[str, str], log: Path, args: tuple[str, ...] = ()) -> None:
        self.log = log
        self._out = open(log, "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "llm_train_api.cli", "worker", *args], cwd=REPO_ROOT,
            env={**os.environ, **env}, stdout=self._out, stderr=subprocess.STDOUT)

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._out.close()
        return self.proc.returncode


class ThreadedServer:
    """The Flask app served by werkzeug from a thread of this process: a real socket for
    clients that speak HTTP (the Python client, the CLI's client commands) without
    starting gunicorn. Unit tests use it; behaviour that depends on gunicorn stays with
    GunicornServer."""

    def __init__(self, app: Any) -> None:
        from werkzeug.serving import make_server

        self._server = make_server("127.0.0.1", 0, app, threaded=True)
        self.url = f"http://127.0.0.1:{self._server.server_port}"
        # A short poll interval: shutdown() waits for the loop to notice, once per test.
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.02,),
                                        daemon=True, name="threaded-server")

    def __enter__(self) -> ThreadedServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._server.shutdown()
        self._thread.join(timeout=10)
        self._server.server_close()
