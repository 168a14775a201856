"""The Ray executor: the worker becomes a dispatcher that runs each claimed job as a Ray job.

The database stays the source of truth: the dispatcher claims, leases and heartbeats exactly
like a local worker (service.py); only the run is elsewhere, submitted through Ray's Job
Submission API. Ray nodes share no disk with the API, so everything the service shows comes
from the job's output: the dispatcher streams the Ray job's logs, appends them to the job's
train.log in the artifact store and parses the trainer's `@@llm_train_api` lines into progress
and metrics, as for a local trainer.

Runs outlive dispatchers. The submission id is derived from the job (id, incarnation,
attempt), so a retried submit can never start a second run ("already exists" means attach),
a restarted dispatcher finds the run again, and a graceful stop only detaches.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import queue
import shlex
import signal
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from llm_train_api.config import ConfigError
from llm_train_api.domain import GIB, Job, JobNotFound, JobStatus
from llm_train_api.services import ray_auth
from llm_train_api.services.ray_capacity import capacity_problem, node_capacities
from llm_train_api.store.queue import JobQueue
from llm_train_api.training.events import parse_line
from llm_train_api.worker import trainer_spec
from llm_train_api.worker.executors import Execution, Executor, LaunchRefused, job_processes
from llm_train_api.worker.trainer_spec import TrainerSpec

log = logging.getLogger("llm_train_api.worker.ray")
# Filesystem types whose contents other machines see too (from /proc/mounts).
NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "lustre", "gpfs", "ceph", "cephfs", "beegfs",
    "glusterfs", "9p", "afs", "orangefs", "pvfs2", "ocfs2", "gfs2", "wekafs", "panfs",
})
_STATUS_EVERY_S = 0.5  # Ray status is polled at most this often per job
_SWEEP_EVERY_S = 30.0  # orphaned Ray jobs are looked for this often
_RESTOP_AFTER_S = 15.0  # a stop Ray has not confirmed by then is sent again
_LIVE = ("PENDING", "RUNNING")
# A paused job's run is over too: one left behind (its dispatcher was lost mid-pause, and the
# reaper paused the job) is stopped; a resume starts a new run from the checkpoint.
_ENDED_IN_DB = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.PAUSED)
# Ray failures that another attempt cannot fix: the command or its environment is wrong.
_CONFIG_FAILURES = ("RUNTIME_ENV_SETUP_FAILURE", "JOB_ENTRYPOINT_COMMAND_START_ERROR")


def submission_id(job: Job, attempt: int | None = None) -> str:
    """Deterministic: the same job incarnation, attempt and pause count always name the same
    Ray job. A pause takes its attempt back, so the run after a resume has the attempt
    number of the paused one; the pause count tells the two apart."""
    n = job.attempts if attempt is None else attempt
    paused = f"-p{job.pauses}" if job.pauses else ""
    return f"llmtrain-{job.id}-{job.revision.created_us:x}-a{n}{paused}"


# ---------------------------------------------------------------------- shared storage
def check_shared_data_dir(data_dir: str, ray_address: str, mode: str = "auto") -> str:
    """Why the artifact store is reachable from the Ray nodes, or ConfigError.

    A trainer on a Ray node reads the dataset and writes checkpoints and metrics under
    DATA_DIR, and the API serves them from there: a private local folder would silently
    split the job's files between machines."""
    if mode == "yes":
        return "LLM_TRAIN_API_RAY_DATA_DIR_SHARED=yes (the operator vouches for it)"
    host = urlsplit(ray_address if "://" in ray_address else f"http://{ray_address}").hostname
    if _is_loopback(host or ""):
        return f"the Ray cluster is on this machine ({host}): its local disk is shared"
    fstype, mount = filesystem_of(Path(data_dir))
    if fstype in NETWORK_FILESYSTEMS or fstype.startswith("fuse."):
        return f"DATA_DIR is on a network filesystem ({fstype} at {mount})"
    raise ConfigError(
        f"the Ray executor needs an artifact store the Ray nodes can reach, but "
        f"LLM_TRAIN_API_DATA_DIR={data_dir!r} is a local folder ({fstype or 'unknown'} "
        f"filesystem at {mount}) and the Ray cluster at {ray_address} is another machine. "
        "Put DATA_DIR on a shared filesystem (NFS, Lustre, CephFS...) mounted at the same "
        "path on every Ray node (object storage through a FUSE mount such as s3fs), or set "
        "LLM_TRAIN_API_RAY_DATA_DIR_SHARED=yes if it is shared in a way we cannot detect."
    )


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def filesystem_of(path: Path) -> tuple[str, str]:
    """(fstype, mount point) of the mount that holds `path` (or its nearest parent)."""
    real = os.path.realpath(path)
    best = ("", "/")
    try:
        with open("/proc/mounts", encoding="utf-8") as f:
            for line in f:
                parts = line.split()
                if len(parts) < 3:
                    continue
                mount = parts[1].replace("\\040", " ")
                inside = real == mount or real.startswith(mount.rstrip("/") + "/")
                if inside and len(mount) >= len(best[1]):
                    best = (parts[2], mount)
    except OSError:
        pass
    return best


# ---------------------------------------------------------------------- one Ray job
class RayExecution(Execution):
    """One Ray job: its status polled, its log streamed into train.log and parsed."""

    def __init__(self, client: Any, sid: str, log_file: Path, *, fresh: bool) -> None:
        self.client = client
        self.sid = sid
        self.log_file = log_file
        self.events: queue.SimpleQueue[dict[str, Any]] = queue.SimpleQueue()
        self.stopped_outside = False
        self.last_error: str | None = None
        self._last_line = ""
        self._ray_message = ""
        self._status = "PENDING"
        self._next_status = 0.0
        self._stop_sent: float | None = None
        self._lock = threading.Lock()
        self._partial = ""
        self._released = threading.Event()
        self.copied = self._start_log(fresh)
        self._tail = threading.Thread(target=self._tail_loop, daemon=True,
                                      name=f"ray-logs-{sid}")
        self._tail.start()

    # -- log
    def _start_log(self, fresh: bool) -> int:
        """Write this run's marker line, or find it: the log text after it is what an
        earlier dispatcher already copied from Ray, which we must not copy twice."""
        marker = f"--- Ray job {self.sid}"
        if not fresh and self.log_file.exists():
            text = self.log_file.read_text("utf-8", "replace")
            at = text.rfind(marker)
            if at >= 0:
                end = text.find("\n", at)
                return 0 if end < 0 else len(text) - end - 1
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        with open(self.log_file, "a", encoding="utf-8") as f:
            how = "submitted" if fresh else "attached"
            f.write(f"--- attempt started {stamp}\n{marker} ({how})\n")
        return 0

    def _tail_loop(self) -> None:
        while not self._released.is_set():
            try:
                asyncio.run(self._stream())
                return  # the stream ends when the job does
            except Exception as exc:  # noqa: BLE001 - a dropped connection: reconnect
                log.debug("ray job %s: log stream broke (%s); reconnecting", self.sid, exc)
            self._released.wait(1.0)

    async def _stream(self) -> None:
        seen = 0
        async for chunk in self.client.tail_job_logs(self.sid):
            if self._released.is_set():
                return
            seen = self._take(chunk, seen)

    def _take(self, text: str, seen: int) -> int:
        """`text` starts at offset `seen` of the Ray log: keep what we have not copied."""
        with self._lock:
            new = text[max(0, self.copied - seen):]
            if new:
                with open(self.log_file, "a", encoding="utf-8") as f:
                    f.write(new)
                self.copied += len(new)
                self._parse(new)
        return seen + len(text)

    def _parse(self, text: str) -> None:
        lines = (self._partial + text).split("\n")
        self._partial = lines.pop()
        for line in lines:
            self._line(line.rstrip("\r"))

    def _line(self, line: str) -> None:
        event = parse_line(line)
        if event is None:
            if line.strip():
                self._last_line = line.strip()
            return
        if event.get("event") == "error" and event.get("message"):
            self.last_error = str(event["message"])
        self.events.put(event)

    def wait_output(self) -> None:
        """The run ended: stop streaming and copy whatever the stream had not delivered."""
        self._tail.join(1.0)  # the stream ends with the job; get_job_logs fills any gap
        self._released.set()
        try:
            full = self.client.get_job_logs(self.sid)
        except Exception:  # noqa: BLE001 - the log is best effort; the outcome is not
            full = ""
        self._take(full, 0)
        with self._lock:
            if self._partial:
                self._line(self._partial)
                self._partial = ""

    # -- status
    def ident(self) -> dict[str, Any]:
        return {"ray_submission_id": self.sid}

    def status_note(self) -> dict[str, Any]:
        return {"ray_status": self._status}

    def poll(self) -> int | None:
        now = time.monotonic()
        if now < self._next_status:
            return None
        self._next_status = now + _STATUS_EVERY_S
        try:
            info = self.client.get_job_info(self.sid)
        except Exception as exc:  # noqa: BLE001 - the Ray client raises RuntimeError for all
            if "does not exist" in str(exc):
                self._status = "LOST"
                self._ray_message = "Ray has no record of the job (its head restarted?)"
                return -signal.SIGKILL
            log.warning("ray job %s: status unavailable (%s)", self.sid, exc)
            return None
        self._status = str(getattr(info.status, "value", info.status))
        self._ray_message = (info.message or "").strip()
        if self._status in _LIVE:
            if self._stop_sent is not None and now - self._stop_sent > _RESTOP_AFTER_S:
                self._send_stop()
            return None
        if self._status == "SUCCEEDED":
            return 0
        if self._status == "STOPPED":
            self.stopped_outside = self._stop_sent is None
            return -signal.SIGTERM
        error_type = str(getattr(info.error_type, "value", info.error_type) or "")
        code = info.driver_exit_code
        if error_type == "JOB_ENTRYPOINT_COMMAND_ERROR" and code is not None and code > 0:
            return -(code - 128) if code > 128 else code  # the shell's 128+N: signal N
        if error_type in _CONFIG_FAILURES:
            self.last_error = self.last_error or (self._ray_message.splitlines() or [
                f"Ray could not start the job ({error_type})"])[0]
            return 1
        return -signal.SIGKILL  # the supervisor or its node died: worth another attempt

    def failure_reason(self) -> str:
        first = self._ray_message.splitlines()[0] if self._ray_message else ""
        return self.last_error or self._last_line or first or "the Ray job failed"

    def lost_cause(self, rc: int) -> str:
        if self._status == "LOST":
            return f"lost: {self._ray_message}"
        if rc > 0:
            return "preempted (SIGTERM from outside the dispatcher)"
        first = self._ray_message.splitlines()[0] if self._ray_message else ""
        return f"lost by Ray ({first or f'signal {-rc}'})"

    def kill(self, grace_s: float) -> None:
        """Ask Ray to stop the job; the worker keeps watching until Ray confirms it."""
        if self._stop_sent is None:
            self._send_stop()

    def _send_stop(self) -> None:
        self._stop_sent = time.monotonic()
        self._next_status = 0.0
        try:
            self.client.stop_job(self.sid)
        except Exception as exc:  # noqa: BLE001 - gone already, or Ray unreachable: re-sent
            log.warning("ray job %s: stop failed (%s)", self.sid, exc)

    def release(self) -> None:
        self._released.set()

    def checkpoint_and_stop(self) -> None:
        """Ray's stop sends the trainer SIGTERM, on which it checkpoints and exits (and
        SIGKILL only after Ray's own grace); the status then reads STOPPED."""
        self.kill(0)


# ---------------------------------------------------------------------- the executor
class RayExecutor(Executor):
    name = "ray"
    runs_outlive_worker = True

    def __init__(self, address: str, *, data_dir: str, python: str = "python",
                 threads: int = 0, shared: str = "auto", token: str = "") -> None:
        if not address:
            raise ConfigError("the Ray executor needs LLM_TRAIN_API_RAY_ADDRESS "
                              "(or --ray-address), e.g. http://ray-head:8265")
        self.address = address
        self.data_dir = data_dir
        self.python = python
        self.threads = threads
        self.shared = shared
        self.token = token  # LLM_TRAIN_API_RAY_TOKEN; empty: Ray's own, as ray_auth reads it
        self._client: Any = None
        self._attaching: dict[str, str] = {}  # job id -> Ray job to attach to
        self._next_sweep = 0.0

    @property
    def client(self) -> Any:
        if self._client is None:
            from ray.job_submission import JobSubmissionClient

            # Our own Authorization header, when we have a token, is one Ray's client keeps
            # (it adds its own only to requests without one); it goes on every request.
            self._client = JobSubmissionClient(
                self.address, headers=ray_auth.resolve(self.token).headers())
        return self._client

    def check(self) -> None:
        why = check_shared_data_dir(self.data_dir, self.address, self.shared)
        log.info("Ray at %s; artifact store shared because %s", self.address, why)
        token = ray_auth.resolve(self.token)  # ConfigError: an unreadable RAY_AUTH_TOKEN_PATH
        try:
            # Connects and checks the version: /api/version is behind token authentication,
            # so a missing or wrong token is refused here, before any job is claimed.
            self.client  # noqa: B018
        except Exception as exc:  # noqa: BLE001 - unreachable, wrong URL, too old a Ray
            if type(exc).__name__ == "AuthenticationError":  # ray.exceptions: a 401 or 403
                status = 401 if str(exc).startswith("Authentication required") else 403
                raise ConfigError(ray_auth.refusal(self.address, status, token)) from None
            raise ConfigError(f"cannot reach the Ray cluster at {self.address}: {exc}") from None
        log.info("Ray token: %s", f"from {token.source}" if token.value else "none")

    # -- claims
    def claim(self, job_queue: JobQueue, worker_id: str, lease_s: float) -> Job | None:
        """Detached jobs first: their runs are going on without anyone watching them.

        Then a queued job. If it was requeued by the reaper after its dispatcher was lost,
        the previous attempt's run may still be going in Ray, or may have ended unwatched:
        then we adopt that run (its outcome is the job's) and take back the attempt our
        claim counted, rather than run the job twice."""
        job = job_queue.claim_detached(worker_id, lease_s)
        if job is not None:
            self._attaching[job.id] = submission_id(job)
            return job
        job = job_queue.claim(worker_id, lease_s)
        if job is None or job.attempts < 2:
            return job
        previous = submission_id(job, job.attempts - 1)
        try:
            info = self._info(previous)
        except Exception as exc:  # noqa: BLE001 - Ray unreachable: launch() will requeue
            log.warning("job %s: cannot look up %s (%s)", job.id, previous, exc)
            return job
        if info is None:
            return job
        if str(getattr(info.status, "value", info.status)) not in _LIVE \
                and not _orphaned(job_queue, job.id):
            return job  # it ended and a dispatcher recorded that: this is a real retry
        adopted = job_queue.refund_attempt(job.id, worker_id,
                                       f"re-attached to the live Ray job {previous}")
        if adopted is None:
            return job
        log.info("job %s: adopting the previous attempt's live Ray job %s", job.id, previous)
        self._attaching[job.id] = previous
        return adopted

    def launch(self, job: Job, spec: TrainerSpec, folder: Path, log_file: Path,
               busy: list[Execution]) -> Execution:
        sid = self._attaching.pop(job.id, None)
        if sid is not None:
            return self._attach(job, sid, log_file)
        problem = self._capacity_problem(job.resources or {})
        if problem:
            raise LaunchRefused(JobStatus.FAILED, problem)
        return self._submit(job, spec, folder, log_file)

    def _attach(self, job: Job, sid: str, log_file: Path) -> Execution:
        try:
            info = self._info(sid)
        except Exception as exc:  # noqa: BLE001 - Ray unreachable: detach again, retry later
            raise LaunchRefused(JobStatus.QUEUED, f"Ray unreachable: {exc}",
                                refund_attempt=True) from None
        if info is None:  # Ray forgot it (its head restarted): the retry policy decides
            message = f"Ray lost the job's run {sid} while no dispatcher watched it"
            if job.attempts < job.max_attempts:
                raise LaunchRefused(JobStatus.QUEUED, message + "; requeued")
            raise LaunchRefused(JobStatus.FAILED, message + (
                f"; gave up after {job.attempts} attempt(s)"))
        log.info("job %s: attached to Ray job %s", job.id, sid)
        return RayExecution(self.client, sid, log_file, fresh=False)

    def _submit(self, job: Job, spec: TrainerSpec, folder: Path, log_file: Path) -> Execution:
        sid = submission_id(job)
        resources = job.resources or {}
        try:
            argv = trainer_spec.command(spec, folder, python=self.python,
                                        processes=job_processes(job))
        except ValueError as exc:
            raise LaunchRefused(JobStatus.FAILED, str(exc)) from None
        trainer_spec.write(folder, spec)
        env = {"PYTHONUNBUFFERED": "1"}
        if self.threads:
            for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
                env[name] = str(self.threads)
        memory_gb = resources.get("memory_gb")
        try:
            self.client.submit_job(
                entrypoint=shlex.join(argv),
                submission_id=sid,
                runtime_env={"env_vars": env},
                entrypoint_num_cpus=float(resources.get("cpus", 1)),
                entrypoint_num_gpus=float(resources.get("gpus", 0)),
                entrypoint_memory=int(float(memory_gb) * GIB) if memory_gb else None,
                metadata={"llm_train_api_job": job.id,
                          "created_us": str(job.revision.created_us),
                          "attempt": str(job.attempts)},
            )
        except Exception as exc:  # noqa: BLE001 - the Ray client raises RuntimeError for all
            if "already exists" not in str(exc):
                # Ray unreachable: hand the job back unspent. If the submit did go through,
                # the next claim of this attempt finds it under the same id and attaches.
                raise LaunchRefused(JobStatus.QUEUED, f"Ray submit failed: {exc}",
                                    refund_attempt=True) from None
            log.info("job %s: Ray job %s already exists; attaching", job.id, sid)
            return RayExecution(self.client, sid, log_file, fresh=False)
        return RayExecution(self.client, sid, log_file, fresh=True)

    def _info(self, sid: str) -> Any:
        try:
            return self.client.get_job_info(sid)
        except Exception as exc:  # noqa: BLE001
            if "does not exist" in str(exc):
                return None
            raise

    # -- admission at dispatch
    def _capacity_problem(self, resources: dict[str, Any]) -> str | None:
        """Ray leaves a request no node can satisfy PENDING forever: refuse it instead."""
        return capacity_problem(resources, node_capacities(self.address, self.token))

    # -- orphans
    def housekeeping(self, job_queue: JobQueue) -> None:
        """Stop Ray jobs whose job ended or vanished in our database while no dispatcher
        held them (cancelled or deleted between a dispatcher's stop and the next one's
        attach; failed by the reaper after a lost dispatcher's last attempt)."""
        now = time.monotonic()
        if now < self._next_sweep:
            return
        self._next_sweep = now + _SWEEP_EVERY_S
        try:
            ray_jobs = self.client.list_jobs()
        except Exception as exc:  # noqa: BLE001
            log.warning("Ray job list unavailable (%s)", exc)
            return
        for info in ray_jobs:
            meta = info.metadata or {}
            status = str(getattr(info.status, "value", info.status))
            if "llm_train_api_job" not in meta or status not in _LIVE:
                continue
            try:
                job = job_queue.jobs.get_job(meta["llm_train_api_job"])
                ended = (job.status in _ENDED_IN_DB
                         or str(job.revision.created_us) != meta.get("created_us"))
            except JobNotFound:
                ended = True
            if ended:
                log.warning("stopping orphaned Ray job %s (its job ended or was deleted)",
                            info.submission_id)
                try:
                    self.client.stop_job(info.submission_id)
                except Exception as exc:  # noqa: BLE001
                    log.warning("could not stop %s: %s", info.submission_id, exc)


def _orphaned(job_queue: JobQueue, job_id: str) -> bool:
    """Whether the job came back to the queue because its dispatcher's lease expired (the
    event before our claim is `lease_expired`), not because a dispatcher saw its run end."""
    events, after = [], 0
    while True:
        page, more = job_queue.jobs.job_events(job_id, after_seq=after)
        events += page
        if not more or not page:
            break
        after = page[-1].seq
    claims = [i for i, e in enumerate(events) if e.kind == "claimed"]
    return len(claims) > 0 and claims[-1] > 0 and events[claims[-1] - 1].kind == "lease_expired"
