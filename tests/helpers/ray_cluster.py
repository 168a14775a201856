"""A real, private Ray head on loopback for the Ray executor's tests (and its benchmark).

Private means: its own free ports (never 6379, where Redis runs), its own temp dir, a
modest object store, and a teardown that kills only the processes this head started (found
by the temp dir in their command lines and by process group), never a blanket `ray stop`
that would take down another engineer's cluster on the same machine.

With `token`, the head requires it (Ray token authentication, RAY_AUTH_MODE=token): its
dashboard and Job Submission API answer 401 without it and 403 with another. Without, the
head is started with RAY_AUTH_MODE=disabled, so that a token lying in ~/.ray/auth_token (which
`ray start` would otherwise take as a wish for authentication) changes nothing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import requests

from tests.helpers.servers import free_port

RAY = Path(sys.executable).with_name("ray")
_PORT_OPTIONS = ("dashboard-agent-listen-port", "dashboard-agent-grpc-port",
                 "runtime-env-agent-port", "ray-client-server-port", "node-manager-port",
                 "object-manager-port", "metrics-export-port")


class RayHead:
    """`ray start --head` with everything private; `address` is the dashboard URL."""

    def __init__(self, num_cpus: int = 2, token: str | None = None) -> None:
        self.num_cpus = num_cpus
        self.token = token
        # Short path: Ray's socket paths must stay under the 107-byte AF_UNIX limit.
        self.temp_dir = Path(tempfile.mkdtemp(prefix="rayt_", dir="/tmp"))
        self.port = self._port()
        self.dashboard_port = self._port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"
        self.log_path = self.temp_dir.parent / f"{self.temp_dir.name}.log"

    @staticmethod
    def _port() -> int:
        while True:
            port = free_port()
            if port != 6379:
                return port

    def start(self, timeout: float = 120.0) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH_")}
        env["RAY_USAGE_STATS_ENABLED"] = "0"
        if self.token:
            env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=self.token)
        else:
            env["RAY_AUTH_MODE"] = "disabled"
        with open(self.log_path, "ab") as out:
            rc = subprocess.run(
                [str(RAY), "start", "--head", f"--port={self.port}",
                 "--node-ip-address=127.0.0.1", "--dashboard-host=127.0.0.1",
                 f"--dashboard-port={self.dashboard_port}", f"--num-cpus={self.num_cpus}",
                 # Every port Ray would otherwise take by default (the job agent's 52365,
                 # the client server's 10001...): a second head on this machine, another
                 # engineer's or a parallel run's, must not collide with ours.
                 *(f"--{name}={self._port()}" for name in _PORT_OPTIONS),
                 "--num-gpus=0", "--object-store-memory=100000000",
                 "--disable-usage-stats", "--include-dashboard=true",
                 f"--temp-dir={self.temp_dir}"],
                env=env, stdout=out, stderr=subprocess.STDOUT, timeout=timeout,
            ).returncode
        if rc != 0:
            self.stop()
            raise RuntimeError(f"ray start failed ({rc}):\n{self.log_path.read_text()[-4000:]}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._can_run_a_job():
                return
            time.sleep(0.5)
        self.stop()
        raise RuntimeError(f"the Ray head did not become ready:\n{self.log_path.read_text()}")

    def _can_run_a_job(self) -> bool:
        """Ready means a job really runs: the dashboard answers a while before its job
        agent takes submissions ("No available agent to submit job")."""
        try:
            if requests.get(f"{self.address}/api/version", headers=self.headers(),
                            timeout=2).status_code != 200:
                return False
            client = self.client()
            sid = client.submit_job(entrypoint="true", entrypoint_num_cpus=1)
        except (requests.RequestException, RuntimeError, ConnectionError):
            return False
        end = time.monotonic() + 60
        while time.monotonic() < end:
            status = str(client.get_job_status(sid).value)
            if status in ("SUCCEEDED", "FAILED", "STOPPED"):
                client.delete_job(sid)
                return status == "SUCCEEDED"
            time.sleep(0.2)
        return False

    def headers(self) -> dict[str, str]:
        """What a client of this head sends: its token, if it has one."""
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self):  # noqa: ANN201 - a ray.job_submission.JobSubmissionClient
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.address, headers=self.headers())

    def pids(self) -> list[int]:
        """Every process whose command line names our temp dir (raylet, GCS, dashboard,
        workers, log monitor...), plus the members of their process groups."""
        return processes_naming(str(self.temp_dir))

    def stop(self) -> None:
        # A few seconds for a clean exit; some of Ray's processes sit out SIGTERM, and
        # nothing of a test head needs to outlive it.
        for sig, grace_s in ((signal.SIGTERM, 3), (signal.SIGKILL, 10)):
            pids = self.pids()
            groups = {os.getpgid(p) for p in pids if _exists(p)}
            groups.discard(os.getpgid(0))
            for pid in pids:
                _kill(pid, sig)
            for group in groups:
                try:
                    os.killpg(group, sig)
                except (ProcessLookupError, PermissionError):
                    pass
            deadline = time.monotonic() + grace_s
            while self.pids() and time.monotonic() < deadline:
                time.sleep(0.2)
            if not self.pids():
                break
        shutil.rmtree(self.temp_dir, ignore_errors=True)
        self.log_path.unlink(missing_ok=True)


def processes_naming(marker: str) -> list[int]:
    """Every process but this one whose command line contains `marker` (a temp folder that
    only the processes a test started name), or that holds a file under it open: Ray's
    agents rename themselves (`ray::DashboardAgent`) but keep their logs in the folder."""
    found: set[int] = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline or _holds_open_under(entry, marker):
            found.add(int(entry.name))
    return sorted(found - {os.getpid()})


def _holds_open_under(proc: Path, marker: str) -> bool:
    try:
        return any(os.readlink(fd).startswith(marker) for fd in (proc / "fd").iterdir())
    except OSError:
        return False


def kill_processes_naming(marker: str) -> list[int]:
    """SIGKILL what `processes_naming` finds; returns the pids it killed."""
    pids = processes_naming(marker)
    for pid in pids:
        _kill(pid, signal.SIGKILL)
    return pids


def _exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except (ProcessLookupError, PermissionError):
        return False


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
