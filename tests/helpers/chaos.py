"""What the chaos test needs around a live service: a census of trainer processes taken
from the process table, a supervisor that restarts SIGKILLed worker processes, HTTP calls
that ride out a dead gunicorn worker, and the timeline of what was killed.

The census reads /proc directly instead of asking the service: the point is to catch two
trainers of one job even when the database believes only one runs.
"""

from __future__ import annotations

import os
import random
import signal
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

from tests.helpers.servers import WorkerProcess

TRAINER_MODULE = "llm_train_api.training"


@dataclass(frozen=True)
class Trainer:
    pid: int
    ppid: int
    job_id: str


def _stat_fields(pid: int) -> list[str] | None:
    """/proc/<pid>/stat after the command name: [state, ppid, ...]; None once gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()
    except OSError:
        return None


def running(pid: int) -> bool:
    """The process exists and is not a zombie."""
    stat = _stat_fields(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def trainers_under(jobs_dir: Path) -> list[Trainer]:
    """Live trainer processes whose `--job-dir` lies in `jobs_dir` (zombies excluded: a
    SIGKILLed trainer whose parent has not reaped it yet runs nothing)."""
    prefix = str(jobs_dir) + os.sep
    found = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/cmdline", "rb") as f:
                argv = f.read().decode(errors="replace").split("\0")
        except OSError:
            continue
        if TRAINER_MODULE not in argv or "--job-dir" not in argv:
            continue
        folder = argv[argv.index("--job-dir") + 1] if argv[-1] != "--job-dir" else ""
        if not folder.startswith(prefix):
            continue
        stat = _stat_fields(int(entry.name))
        if stat is None or stat[0] in ("Z", "X"):
            continue
        # The folder is <job id>-<creation time in hex>: the id is what precedes the last dash.
        job_id = Path(folder).name.rsplit("-", 1)[0]
        found.append(Trainer(int(entry.name), int(stat[1]), job_id))
    return found


class TrainerCensus:
    """Counts, every `interval_s`, the live trainers of each job; keeps the maximum per job
    and every sample where a job had more than one."""

    def __init__(self, jobs_dir: Path, interval_s: float = 0.15) -> None:
        self.jobs_dir = jobs_dir
        self.interval_s = interval_s
        self.max_per_job: dict[str, int] = defaultdict(int)
        self.doubles: list[tuple[float, str, list[Trainer]]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="census")
        self._t0 = time.monotonic()

    def start(self) -> TrainerCensus:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.is_set():
            by_job: dict[str, list[Trainer]] = defaultdict(list)
            for trainer in trainers_under(self.jobs_dir):
                by_job[trainer.job_id].append(trainer)
            for job_id, trainers in by_job.items():
                self.max_per_job[job_id] = max(self.max_per_job[job_id], len(trainers))
                if len(trainers) > 1:
                    self.doubles.append((time.monotonic() - self._t0, job_id, trainers))
            self.samples += 1
            self._stop.wait(self.interval_s)


@dataclass
class Kill:
    at_s: float
    kind: str  # "worker" (llm-train-api worker) or "gunicorn" (a gunicorn worker)
    pid: int
    jobs: list[str] = field(default_factory=list)  # the jobs its trainers were running
    trainers: list[int] = field(default_factory=list)


class WorkerSupervisor:
    """Keeps `count` `llm-train-api worker` processes running, as a process supervisor
    would: a killed one is replaced at once by a fresh process."""

    def __init__(self, env: dict[str, str], log_dir: Path, count: int,
                 args: tuple[str, ...] = ()) -> None:
        self.env = env
        self.log_dir = log_dir
        self.args = args
        self.started = 0
        self.slots = [self._spawn() for _ in range(count)]
        self.retired: list[WorkerProcess] = []

    def _spawn(self) -> WorkerProcess:
        self.started += 1
        return WorkerProcess(self.env, self.log_dir / f"worker-{self.started}.log", self.args)

    def kill_and_replace(self, slot: int) -> int:
        """SIGKILL the worker in `slot`, wait until it is gone, start its successor;
        returns the killed pid."""
        victim = self.slots[slot]
        pid = victim.proc.pid
        victim.stop(signal.SIGKILL)
        self.retired.append(victim)
        self.slots[slot] = self._spawn()
        return pid

    def stop_all(self) -> None:
        for w in self.slots:
            w.stop(signal.SIGKILL)


def kill_one(rng: random.Random, server: Any, workers: WorkerSupervisor, jobs_dir: Path,
             t0: float) -> Kill | None:
    """SIGKILL one process chosen by `rng`: a worker (its trainers noted first) or one of
    gunicorn's workers (the master respawns it)."""
    if rng.random() < 0.5:
        slot = rng.randrange(len(workers.slots))
        pid = workers.slots[slot].proc.pid
        mine = [t for t in trainers_under(jobs_dir) if t.ppid == pid]
        workers.kill_and_replace(slot)
        return Kill(time.monotonic() - t0, "worker", pid, sorted({t.job_id for t in mine}),
                    [t.pid for t in mine])
    pids = server.worker_pids()
    if not pids:
        return None  # the master is between a death and a respawn
    pid = rng.choice(sorted(pids))
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return None
    return Kill(time.monotonic() - t0, "gunicorn", pid)


class OutageProof:
    """HTTP calls that retry connection errors and 5xx until `patience_s` has passed: a
    request that hit a killed gunicorn worker is simply sent again (with the same body:
    creates carry their `job_id`, which makes them idempotent)."""

    def __init__(self, server: Any, patience_s: float = 60.0) -> None:
        self.server = server
        self.session = server.session()
        self.patience_s = patience_s
        self.retries = 0

    def call(self, method: str, path: str, **kwargs: Any) -> requests.Response:
        deadline = time.monotonic() + self.patience_s
        while True:
            try:
                resp = self.session.request(method, self.server.url + path, timeout=10,
                                            **kwargs)
                if resp.status_code < 500:
                    return resp
            except (requests.ConnectionError, requests.exceptions.ChunkedEncodingError,
                    requests.Timeout):
                pass  # the worker died before, during or after the request: send it again
            if time.monotonic() > deadline:
                raise AssertionError(f"{method} {path}: no answer through the outage")
            self.retries += 1
            self.session.close()  # a fresh connection: the old one may be to a dead worker
            time.sleep(0.1)


def attempt_runs(events: list[dict[str, Any]]) -> list[tuple[dict[str, Any], dict[str, Any]]]:
    """Pair each `claimed` event with the event that ended that run (`lease_expired`,
    `requeued`, or a final `status`). Raises AssertionError when a run starts before the
    previous one ended: two runs of one job at once in the job's own record."""
    runs: list[tuple[dict[str, Any], dict[str, Any]]] = []
    open_claim: dict[str, Any] | None = None
    for event in events:
        if event["kind"] == "claimed":
            assert open_claim is None, f"claimed again while {open_claim} ran: {events}"
            open_claim = event
        elif event["kind"] in ("lease_expired", "requeued") or (
                event["kind"] == "status" and event["from_status"] == "running"):
            assert open_claim is not None, f"{event} ends no run: {events}"
            runs.append((open_claim, event))
            open_claim = None
    assert open_claim is None, f"a run never ended: {events}"
    return runs


def format_timeline(seed: int, kills: list[Kill], extra: str = "") -> str:
    lines = [f"chaos seed {seed} (rerun with LLM_TRAIN_API_CHAOS_SEED={seed}); "
             f"{len(kills)} kill(s):"]
    for k in kills:
        what = f" running {', '.join(k.jobs)} (trainers {k.trainers})" if k.jobs else ""
        lines.append(f"  {k.at_s:7.2f}s SIGKILL {k.kind} {k.pid}{what}")
    if extra:
        lines.append(extra)
    return "\n".join(lines)
