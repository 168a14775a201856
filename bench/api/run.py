#!/usr/bin/env python3
"""HTTP benchmark of the llm_train_api service against a bare-Flask ceiling and MLflow.

Every server runs under gunicorn with identical settings (bench/api/gunicorn_bench.conf.py
plus the same -w/-k/-b flags) on a free 127.0.0.1 port; wrk drives it over loopback.
For each case the contenders are measured alternately (A B, B A, ...) so that noise on
this shared machine hits both sides alike; ratios are always taken within one run.

    .venv/bin/python bench/api/run.py                 # full run, both databases, writes docs
    .venv/bin/python bench/api/run.py --quick         # smoke run (a few seconds per case)
    .venv/bin/python bench/api/run.py --db sqlite --servers bare   # harness self-test

See docs/benchmarks.md for the results and the method.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import datetime as dt
import importlib.metadata
import json
import math
import os
import platform
import re
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LUA = HERE / "lua"
GUNICORN_CONF = HERE / "gunicorn_bench.conf.py"
DOC = REPO / "docs" / "benchmarks.md"
RESULTS_DIR = REPO / "bench" / "results"
MLFLOW_VENV = REPO / "bench" / ".venv-mlflow"
MLFLOW_VERSION = "3.17.2"  # newest 3.x whose mlflow-skinny is on the package index here
PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_SA_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/{db}"
DOC_START = "<!-- bench-api:results:start -->"
DOC_END = "<!-- bench-api:results:end -->"

CREATE_BODY = {
    "job_id": "__JOB_ID__",
    "model_name": "gpt2",
    "dataset": "wikitext-2",
    "hyperparameters": {"learning_rate": 0.0003, "epochs": 3, "batch_size": 16},
}


def log(msg: str) -> None:
    print(f"[bench-api {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def python_of(venv: Path) -> str:
    return str(venv / "bin" / "python")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def http(method: str, url: str, body=None, timeout: float = 30.0):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as e:
        return e.code, dict(e.headers), e.read()


# --------------------------------------------------------------------------- servers


@dataclass
class Server:
    name: str  # short key, e.g. "app", "bare", "mlflow", "app-relaxed"
    label: str  # human label for tables
    argv: list[str]
    env: dict[str, str]
    ready_path: str
    scratch: Path
    port: int = 0
    proc: subprocess.Popen | None = None
    log_path: Path | None = None

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        self.log_path = self.scratch / f"{self.name}.log"
        logf = open(self.log_path, "wb")
        log(f"starting {self.label} on 127.0.0.1:{self.port}")
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            cwd=str(REPO),
            stdout=logf,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # own process group: stop() kills the whole tree
        )
        logf.close()

    def wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.label} exited with {self.proc.returncode}; log:\n{self.tail()}"
                )
            try:
                status, _, _ = http("GET", self.base + self.ready_path, timeout=5)
                if status < 500:
                    log(f"{self.label} ready")
                    return
            except (OSError, urllib.error.URLError):
                pass
            time.sleep(0.25)
        raise RuntimeError(f"{self.label} not ready after {timeout}s; log:\n{self.tail()}")

    def tail(self, n: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-n:])
        except OSError:
            return "(no log)"

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None and not _group_alive(self.proc.pid):
            return
        pgid = self.proc.pid
        for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            try:
                os.killpg(pgid, sig)
            except ProcessLookupError:
                break
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                if self.proc.poll() is not None and not _group_alive(pgid):
                    break
                time.sleep(0.1)
            else:
                continue
            break
        try:
            self.proc.wait(timeout=1)
        except subprocess.TimeoutExpired:
            pass

    def worker_pids(self) -> list[int]:
        """The gunicorn workers: the leaf processes under the started process."""
        tree = _children_map()
        leaves, stack = [], [self.proc.pid]
        while stack:
            pid = stack.pop()
            kids = tree.get(pid, [])
            if kids:
                stack.extend(kids)
            elif pid != self.proc.pid:
                leaves.append(pid)
        return sorted(leaves)

    def connection_split(self) -> list[int]:
        """How many established connections to this server each worker process holds."""
        inodes: set[str] = set()
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            try:
                lines = Path(table).read_text().splitlines()[1:]
            except OSError:
                continue
            for line in lines:
                fields = line.split()
                # local address, state (01: ESTABLISHED), inode
                if fields[1].endswith(f":{self.port:04X}") and fields[3] == "01":
                    inodes.add(fields[9])
        split = []
        for pid in self.worker_pids():
            held = 0
            try:
                for fd in os.listdir(f"/proc/{pid}/fd"):
                    try:
                        target = os.readlink(f"/proc/{pid}/fd/{fd}")
                    except OSError:
                        continue
                    if target.startswith("socket:[") and target[8:-1] in inodes:
                        held += 1
            except OSError:
                continue
            split.append(held)
        return split

    def worker_rss_kib(self) -> list[int]:
        """VmRSS of the gunicorn workers."""
        out = []
        for pid in self.worker_pids():
            try:
                for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                    if line.startswith("VmRSS:"):
                        out.append(int(line.split()[1]))
            except OSError:
                pass
        return out


def _children_map() -> dict[int, list[int]]:
    tree: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            stat = Path(f"/proc/{d}/stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        tree.setdefault(ppid, []).append(int(d))
    return tree


def _proc_times(pid: int | str) -> tuple[str, int, int, int]:
    """(comm, ppid, utime+stime, cutime+cstime) in clock ticks."""
    stat = Path(f"/proc/{pid}/stat").read_text()
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    f = stat.rsplit(")", 1)[1].split()
    return comm, int(f[1]), int(f[11]) + int(f[12]), int(f[13]) + int(f[14])


def cpu_snapshot() -> tuple[float, int, int, int]:
    """(monotonic time, busy ticks of the whole machine, ticks spent by this benchmark,
    ticks stolen by the hypervisor).

    "This benchmark" is this process with everything it started (including children it
    already reaped: wrk runs) plus the PostgreSQL server processes (the postmaster's
    cutime holds its exited backends).  The rest of the busy ticks are other people's load
    on the machine, and steal: time the hypervisor gave this virtual machine's CPUs to
    other guests, which no process here sees.
    """
    with open("/proc/stat") as f:
        cpu = f.readline().split()[1:]
    busy = sum(int(x) for i, x in enumerate(cpu[:7]) if i not in (3, 4))  # minus idle, iowait
    stolen = int(cpu[7]) if len(cpu) > 7 else 0
    me = os.getpid()
    table = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                table[int(d)] = _proc_times(d)
            except (OSError, ValueError, IndexError):
                pass
    kids: dict[int, list[int]] = {}
    for pid, (_, ppid, _, _) in table.items():
        kids.setdefault(ppid, []).append(pid)
    ours = 0
    stack = [me]
    while stack:
        pid = stack.pop()
        if pid in table:
            _, _, own, reaped = table[pid]
            ours += own + reaped
        stack.extend(kids.get(pid, []))
    for comm, _, own, reaped in table.values():
        if comm == "postgres":
            ours += own + reaped
    return time.monotonic(), busy, ours, stolen


Snapshot = tuple[float, int, int, int]


def foreign_cores(a: Snapshot, b: Snapshot) -> float:
    """Average CPU cores used by processes outside the benchmark between two snapshots."""
    hz = os.sysconf("SC_CLK_TCK")
    return max(0.0, ((b[1] - a[1]) - (b[2] - a[2])) / hz / (b[0] - a[0]))


def stolen_cores(a: Snapshot, b: Snapshot) -> float:
    """Average CPU cores the hypervisor took away between two snapshots (steal)."""
    hz = os.sysconf("SC_CLK_TCK")
    return max(0.0, (b[3] - a[3]) / hz / (b[0] - a[0]))


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def shipped_worker_class() -> str:
    """The worker class the service's gunicorn configuration names (`worker_class` in
    llm_train_api/api/gunicorn_conf.py), read in a clean environment as a server sees it."""
    env = base_env()
    env["PYTHONPATH"] = str(REPO)
    out = subprocess.run(
        [
            python_of(REPO / ".venv"),
            "-c",
            "from llm_train_api.api.gunicorn_conf import worker_class; print(worker_class)",
        ],
        env=env,
        cwd=str(REPO),
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.strip()


def worker_flags(args, worker_class: str | None = None) -> list[str]:
    """Worker class and threads: `worker_class` (the service's own) or --worker-class (the
    baselines). Threads go to every class but sync: they are the thread pool of gthread and
    of the service's class built on it."""
    worker_class = worker_class or args.worker_class
    flags = ["-k", worker_class]
    if worker_class != "sync":
        flags += ["--threads", str(args.gunicorn_threads)]
    return flags


def gunicorn_flags(args, port: int, worker_class: str | None = None) -> list[str]:
    return [
        "-c",
        str(GUNICORN_CONF),
        "-w",
        str(args.workers),
        *worker_flags(args, worker_class),
        "-b",
        f"127.0.0.1:{port}",
    ]


def base_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LLM_TRAIN_API_")}
    env.pop("PYTHONPATH", None)
    return env


def make_app_server(
    args, scratch: Path, db_url: str, durability: str, name: str, worker_class: str | None = None
) -> Server:
    """The service under the worker class it ships (args.app_worker_class), or under
    `worker_class` for a contrast run."""
    worker_class = worker_class or args.app_worker_class
    port = free_port()
    env = base_env()
    env.update(
        {
            "LLM_TRAIN_API_DATABASE_URL": db_url,
            "LLM_TRAIN_API_INSTANCE_PATH": str(scratch / "instance"),
            "LLM_TRAIN_API_DURABILITY": durability,
            "LLM_TRAIN_API_AUTH": "disabled",
            "LLM_TRAIN_API_EXECUTOR": "none",
            "PYTHONPATH": str(REPO),
        }
    )
    argv = [
        python_of(REPO / ".venv"),
        "-m",
        "gunicorn",
        *gunicorn_flags(args, port, worker_class),
        "wsgi:app",
    ]
    label = "llm_train_api" + ("" if durability == "full" else f" ({durability})")
    if worker_class != args.app_worker_class:
        label += f", plain {worker_class}"
    return Server(name, label, argv, env, "/jobs?limit=1", scratch, port)


def make_bare_server(args, scratch: Path) -> Server:
    port = free_port()
    env = base_env()
    env["PYTHONPATH"] = str(HERE)
    argv = [
        python_of(REPO / ".venv"),
        "-m",
        "gunicorn",
        *gunicorn_flags(args, port),
        "bare_app:app",
    ]
    return Server("bare", "bare Flask", argv, env, "/jobs/x", scratch, port)


def make_mlflow_server(args, scratch: Path, store_uri: str) -> Server:
    port = free_port()
    env = base_env()
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    opts = " ".join(["-c", str(GUNICORN_CONF), *worker_flags(args)])
    argv = [
        str(MLFLOW_VENV / "bin" / "mlflow"),
        "server",
        "--backend-store-uri",
        store_uri,
        "--default-artifact-root",
        str(scratch / "mlflow-artifacts"),
        "--no-serve-artifacts",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(args.workers),
        "--gunicorn-opts",
        opts,
    ]
    return Server("mlflow", f"MLflow {MLFLOW_VERSION}", argv, env, "/health", scratch, port)


# --------------------------------------------------------------------------- databases


def pg_admin(sql: str) -> None:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(sql)


def pg_create(db: str) -> str:
    pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    pg_admin(f'CREATE DATABASE "{db}"')
    return PG_SA_URL.format(db=db)


def pg_drop(db: str) -> None:
    try:
        pg_admin(f'DROP DATABASE IF EXISTS "{db}" WITH (FORCE)')
    except Exception as e:  # noqa: BLE001 - cleanup must not mask the real error
        log(f"could not drop {db}: {e}")


def pg_analyze(sa_url: str) -> None:
    import psycopg

    with psycopg.connect(sa_url.replace("+psycopg", ""), autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")


def pg_version() -> str:
    import psycopg

    with psycopg.connect(PG_ADMIN_URL) as conn:
        return conn.execute("SHOW server_version").fetchone()[0]


# --------------------------------------------------------------------------- seeding


def seed_app(args, db_url: str, server: Server | None, names: list[str]) -> str:
    """Insert jobs with the given ids.  Returns how it was done (for the report)."""
    hp = CREATE_BODY["hyperparameters"]
    try:
        from llm_train_api.domain import NewJob  # noqa: PLC0415
        from llm_train_api.store.database import Database  # noqa: PLC0415
        from llm_train_api.store.jobs import JobRepository  # noqa: PLC0415
    except ImportError as e:
        if server is None:
            raise
        log(f"store API not importable ({e}); seeding over HTTP")
        _seed_http(server, names)
        return "HTTP POST /jobs (8 threads)"
    database = Database.from_url(db_url)
    jobs = JobRepository(database)
    batch = 10_000
    for i in range(0, len(names), batch):
        jobs.insert_many(
            NewJob(job_id=n, model_name="gpt2", dataset="wikitext-2", hyperparameters=dict(hp))
            for n in names[i : i + batch]
        )
    database.close()
    return "JobRepository.insert_many"


def _seed_http(server: Server, names: list[str]) -> None:
    def one(n: str) -> None:
        body = dict(CREATE_BODY, job_id=n)
        status, _, data = http("POST", server.base + "/jobs", body)
        if status not in (200, 201):
            raise RuntimeError(f"seed POST /jobs -> {status}: {data[:200]!r}")

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        list(ex.map(one, names))


def seed_mlflow(server: Server, n_runs: int) -> tuple[str, str]:
    status, _, data = http(
        "POST", server.base + "/api/2.0/mlflow/experiments/create", {"name": "bench"}
    )
    if status != 200:
        raise RuntimeError(f"MLflow experiments/create -> {status}: {data[:300]!r}")
    exp_id = json.loads(data)["experiment_id"]

    def one(i: int) -> str:
        body = {
            "experiment_id": exp_id,
            "run_name": f"seed-{i}",
            "start_time": int(time.time() * 1000),
            "tags": [
                {"key": "model_name", "value": "gpt2"},
                {"key": "dataset", "value": "wikitext-2"},
            ],
        }
        st, _, d = http("POST", server.base + "/api/2.0/mlflow/runs/create", body)
        if st != 200:
            raise RuntimeError(f"MLflow runs/create -> {st}: {d[:300]!r}")
        return json.loads(d)["run"]["info"]["run_id"]

    with concurrent.futures.ThreadPoolExecutor(8) as ex:
        ids = list(ex.map(one, range(n_runs)))
    return exp_id, ids[len(ids) // 2]


def deep_cursor(server: Server, depth: int) -> str:
    """Walk the Link chain with limit=1000 until `depth` jobs were seen; return the cursor."""
    url = server.base + "/jobs?limit=1000"
    seen = 0
    while True:
        status, headers, data = http("GET", url, timeout=120)
        if status != 200:
            raise RuntimeError(f"GET {url} -> {status}: {data[:200]!r}")
        seen += len(json.loads(data))
        link = next((v for k, v in headers.items() if k.lower() == "link"), "")
        m = re.search(r'<([^>]*)>\s*;\s*rel="?next"?', link)
        if not m:
            raise RuntimeError(f"no rel=next Link after {seen} jobs (Link: {link!r})")
        if seen >= depth:
            query = urllib.parse.urlsplit(m.group(1)).query
            for part in query.split("&"):
                if part.startswith("cursor="):
                    return part[len("cursor=") :]  # keep the server's own encoding
            raise RuntimeError(f"next link has no cursor param: {m.group(1)!r}")
        url = urllib.parse.urljoin(server.base + "/jobs", m.group(1))


# --------------------------------------------------------------------------- wrk


@dataclass
class Load:
    """One side of a case: a server plus how to load it."""

    server: Server
    script: str  # lua/<script>.lua
    path: str  # URL path for wrk
    script_args: list[str] = field(default_factory=list)
    prepare: object = None  # callable(invocation_index) -> script_args, for per-run state


def compose_script(scratch: Path, name: str) -> Path:
    out = scratch / f"{name}.lua"
    if not out.exists():
        out.write_text((LUA / f"{name}.lua").read_text() + "\n" + (LUA / "common.lua").read_text())
    return out


def run_wrk(args, scratch: Path, load: Load, seconds: float, invocation: int) -> dict:
    script_args = load.prepare(invocation) if load.prepare else load.script_args
    cmd = [
        "wrk",
        "-t",
        str(args.threads),
        "-c",
        str(args.connections),
        "-d",
        f"{max(1, round(seconds))}s",
        "--latency",
        "--timeout",
        "10s",
        "-s",
        str(compose_script(scratch, load.script)),
        load.server.base + load.path,
    ]
    if script_args:
        cmd += ["--", *script_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    # wrk opens its connections at once when it starts and keeps them: once they are open,
    # which worker process holds how many stays so for the whole invocation.
    time.sleep(min(0.5, seconds / 3))
    split = load.server.connection_split()
    try:
        stdout, stderr = proc.communicate(timeout=seconds + 60)
    except subprocess.TimeoutExpired:
        proc.kill()
        stdout, stderr = proc.communicate()
    m = re.search(r"^BENCH_JSON (\{.*\})$", stdout, re.M)
    if proc.returncode != 0 or not m:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {stdout[-2000:]}\n{stderr[-2000:]}")
    res = json.loads(m.group(1))
    res["rps"] = res["requests"] / (res["duration_us"] / 1e6)
    res["split"] = split
    return res


def uneven(args, split: list[int]) -> bool:
    """Whether wrk's connections landed unevenly on the worker processes: more than a
    quarter of them away from an even share (with 16 over 2 processes, worse than 10/6)."""
    if len(split) < 2 or not sum(split):
        return False
    return max(split) - min(split) > args.connections // 4


def aggregate(rounds: list[dict]) -> dict:
    reqs = sum(r["requests"] for r in rounds)
    secs = sum(r["duration_us"] for r in rounds) / 1e6
    n = len(rounds)
    return {
        "rps": reqs / secs,
        "requests": reqs,
        "p50_ms": sum(r["lat_p50_us"] for r in rounds) / n / 1000,
        "p99_ms": sum(r["lat_p99_us"] for r in rounds) / n / 1000,
        "mean_ms": sum(r["lat_mean_us"] for r in rounds) / n / 1000,
        "non2xx": sum(r["err_status"] for r in rounds),
        "sock_err": sum(
            r["err_connect"] + r["err_read"] + r["err_write"] + r["err_timeout"] for r in rounds
        ),
        "rounds_rps": [round(r["rps"], 1) for r in rounds],
    }


class Invocations:
    """Per-load wrk invocation counter (used by loads that need fresh state per run)."""

    def __init__(self):
        self.n: dict[int, int] = {}

    def next(self, load: Load) -> int:
        k = self.n.get(id(load), 0)
        self.n[id(load)] = k + 1
        return k


def wait_for_quiet(args) -> None:
    """Wait (up to --quiet-wait s) until other processes use < --quiet-cores for 2 s."""
    if args.quiet_wait <= 0:
        return
    deadline = time.monotonic() + args.quiet_wait
    while True:
        a = cpu_snapshot()
        time.sleep(2)
        b = cpu_snapshot()
        load = foreign_cores(a, b) + stolen_cores(a, b)
        if load < args.quiet_cores:
            return
        if time.monotonic() > deadline:
            log(f"machine still busy ({load:.2f} cores used by other processes or stolen); "
                "going on")
            return
        log(f"waiting for the machine to calm down ({load:.2f} cores used by other processes "
            "or stolen)")


def measure_case(args, scratch: Path, case: str, loads: dict[str, Load], inv: Invocations) -> dict:
    """Warm every side up, then alternate them for args.rounds rounds."""
    keys = list(loads)
    wait_for_quiet(args)
    snap = cpu_snapshot()
    for k in keys:
        run_wrk(args, scratch, loads[k], args.warmup, inv.next(loads[k]))
    per_round = args.duration / args.rounds
    results: dict[str, list[dict]] = {k: [] for k in keys}
    repeated: dict[str, list[list[int]]] = {k: [] for k in keys}
    for r in range(args.rounds):
        order = keys if r % 2 == 0 else list(reversed(keys))
        for k in order:
            # A round whose connections the kernel handed mostly to one worker process
            # measures that lottery, not the server: it is run again, for every server
            # alike, up to --split-retries times (the last try counts whatever its split).
            for attempt in range(args.split_retries + 1):
                res = run_wrk(args, scratch, loads[k], per_round, inv.next(loads[k]))
                if not uneven(args, res["split"]):
                    break
                if attempt < args.split_retries:
                    repeated[k].append(res["split"])
            results[k].append(res)
    agg = {k: aggregate(v) for k, v in results.items()}
    for k in keys:
        agg[k]["repeated_splits"] = repeated[k]
        agg[k]["splits"] = [r["split"] for r in results[k]]
        # Rounds still uneven after every retry: they count, and the report says so.
        agg[k]["uneven_kept"] = sum(uneven(args, r["split"]) for r in results[k])
    end = cpu_snapshot()
    foreign, stolen = foreign_cores(snap, end), stolen_cores(snap, end)
    line = "  ".join(
        f"{k}={a['rps']:.0f}/s p50={a['p50_ms']:.2f}ms p99={a['p99_ms']:.2f}ms"
        + (f" non2xx={a['non2xx']}" if a["non2xx"] else "")
        for k, a in agg.items()
    )
    log(f"{case}: {line}  [other load: {foreign:.2f} cores, stolen: {stolen:.2f} cores]")
    redone = {k: len(v) for k, v in repeated.items() if v}
    if redone:
        log(f"{case}: rounds run again for an uneven connection split: {redone}")
    kept = {k: a["uneven_kept"] for k, a in agg.items() if a["uneven_kept"]}
    if kept:
        log(f"{case}: rounds still uneven after {args.split_retries} retries, counted: {kept}")
    return agg, foreign, stolen


# --------------------------------------------------------------------------- one database


def bench_db(args, kind: str, scratch_root: Path) -> dict:
    scratch = scratch_root / kind
    scratch.mkdir(parents=True)
    (scratch / "instance").mkdir()
    want = set(args.servers)
    servers: list[Server] = []
    pg_dbs: list[str] = []
    out: dict = {"db": kind, "cases": {}, "foreign_cores": {}, "stolen_cores": {},
                 "rss_kib": {}, "notes": []}
    inv = Invocations()
    tag = uuid.uuid4().hex[:6]
    try:
        if kind == "sqlite":
            app_url = f"sqlite:///{scratch / 'jobs.db'}"
            mlflow_url = f"sqlite:///{scratch / 'mlflow.db'}"
        else:
            db = f"bench_api_{os.getpid()}"
            pg_dbs += [db, db + "_mlflow"]
            app_url = pg_create(db)
            mlflow_url = pg_create(db + "_mlflow")

        app = relaxed = plain = bare = mlf = None
        # One fresh PATCH pool per wrk invocation: the warm-up, and each round with every
        # retry it may take for an uneven split (a reused pool would answer 404 or 409).
        n_pools = 1 + args.rounds * (1 + args.split_retries)
        pool_size = args.patch_pool_per_thread * args.threads

        def pool_names(prefix: str, k: int) -> list[str]:
            return [f"{prefix}{k}-{i}" for i in range(pool_size)]

        if "app" in want:
            app = make_app_server(args, scratch, app_url, "full", "app")
            seed_names = [f"seed-{i:06d}" for i in range(args.seed_jobs)]
            patch_prefix = f"pp{tag}-"
            relaxed_prefix = f"pr{tag}-"
            pool_all = [n for k in range(n_pools) for n in pool_names(patch_prefix, k)]
            if args.relaxed:
                pool_all += [n for k in range(n_pools) for n in pool_names(relaxed_prefix, k)]
            t0 = time.monotonic()
            try:
                how = seed_app(args, app_url, None, seed_names + pool_all)
            except ImportError:
                app.start()
                servers.append(app)
                app.wait_ready(60)
                how = seed_app(args, app_url, app, seed_names + pool_all)
            if kind == "postgres":
                # What autovacuum would soon do anyway; doing it now keeps it out of the runs.
                pg_analyze(app_url)
                how += " + VACUUM ANALYZE"
            out["notes"].append(
                f"seeded {len(seed_names) + len(pool_all)} jobs via {how} "
                f"in {time.monotonic() - t0:.1f}s"
            )
            log(out["notes"][-1])
            if app.proc is None:
                app.start()
                servers.append(app)
            if args.relaxed:
                relaxed = make_app_server(args, scratch, app_url, "relaxed", "app-relaxed")
                relaxed.start()
                servers.append(relaxed)
            if "plain" in want and args.worker_class != args.app_worker_class:
                plain = make_app_server(
                    args, scratch, app_url, "full", "app-plain", worker_class=args.worker_class
                )
                plain.start()
                servers.append(plain)
        if "bare" in want:
            bare = make_bare_server(args, scratch)
            bare.start()
            servers.append(bare)
        if "mlflow" in want:
            mlf = make_mlflow_server(args, scratch, mlflow_url)
            mlf.start()
            servers.append(mlf)
        for s in servers:
            s.wait_ready(180 if s.name == "mlflow" else 60)

        get_id = None
        cursor = None
        if app:
            get_id = f"seed-{args.seed_jobs // 2:06d}"
            st, _, body = http("GET", f"{app.base}/jobs/{get_id}")
            if st != 200:
                raise RuntimeError(f"GET /jobs/{get_id} -> {st}: {body[:300]!r}")
            t0 = time.monotonic()
            cursor = deep_cursor(app, args.deep)
            out["notes"].append(
                f"deep cursor: walked {args.deep} jobs with limit=1000 in "
                f"{time.monotonic() - t0:.1f}s"
            )
            log(out["notes"][-1])
        exp_id = run_id = None
        if mlf:
            t0 = time.monotonic()
            exp_id, run_id = seed_mlflow(mlf, args.mlflow_seed)
            out["notes"].append(
                f"MLflow seeded with {args.mlflow_seed} runs over HTTP in "
                f"{time.monotonic() - t0:.1f}s"
            )
            log(out["notes"][-1])

        def patch_prepare(prefix):
            return lambda k: [f"{prefix}{k}", str(args.patch_pool_per_thread), str(args.threads)]

        create_body = json.dumps(CREATE_BODY, separators=(",", ":"))
        create_pfx = f"c{tag}"
        mlflow_create = json.dumps(
            {
                "experiment_id": exp_id,
                "start_time": 1767225600000,
                "tags": [
                    {"key": "model_name", "value": "gpt2"},
                    {"key": "dataset", "value": "wikitext-2"},
                ],
            }
        )
        mlflow_search = json.dumps({"experiment_ids": [exp_id], "max_results": 100})

        cases: list[tuple[str, dict[str, Load]]] = []

        def add(case: str, **loads):
            loads = {k: v for k, v in loads.items() if v is not None}
            if loads:
                cases.append((case, loads))

        app_create = Load(app, "create", "/jobs") if app else None
        if app_create:
            app_create.prepare = lambda k: [f"{create_pfx}{k}", create_body]
        plain_create = Load(plain, "create", "/jobs") if plain else None
        if plain_create:
            plain_create.prepare = lambda k: [f"p{create_pfx}{k}", create_body]
        add(
            "get",
            app=Load(app, "static", f"/jobs/{get_id}", ["GET", f"/jobs/{get_id}"]) if app else None,
            app_plain=Load(plain, "static", f"/jobs/{get_id}", ["GET", f"/jobs/{get_id}"])
            if plain
            else None,
            bare=Load(bare, "static", "/jobs/bare-job-000000", ["GET", "/jobs/bare-job-000000"])
            if bare
            else None,
            mlflow=Load(
                mlf,
                "static",
                "/api/2.0/mlflow/runs/get",
                ["GET", f"/api/2.0/mlflow/runs/get?run_id={run_id}"],
            )
            if mlf
            else None,
        )
        add(
            "list",
            app=Load(app, "static", "/jobs", ["GET", "/jobs?limit=100"]) if app else None,
            bare=Load(bare, "static", "/jobs", ["GET", "/jobs?limit=100"]) if bare else None,
            mlflow=Load(
                mlf,
                "static",
                "/api/2.0/mlflow/runs/search",
                ["POST", "/api/2.0/mlflow/runs/search", mlflow_search],
            )
            if mlf
            else None,
        )
        if app:
            deep_path = f"/jobs?limit=100&cursor={cursor}"
            add(
                "list_deep",
                app_first=Load(app, "static", "/jobs", ["GET", "/jobs?limit=100"]),
                app_deep=Load(app, "static", "/jobs", ["GET", deep_path]),
            )
        add(
            "patch",
            app=Load(app, "patch", "/jobs", prepare=patch_prepare(patch_prefix)) if app else None,
            bare=Load(bare, "patch", "/jobs", prepare=patch_prepare("bare")) if bare else None,
        )
        add(
            "create",
            app=app_create,
            app_plain=plain_create,
            bare=Load(bare, "create", "/jobs", [create_pfx, create_body]) if bare else None,
            mlflow=Load(
                mlf,
                "static",
                "/api/2.0/mlflow/runs/create",
                ["POST", "/api/2.0/mlflow/runs/create", mlflow_create],
            )
            if mlf
            else None,
        )
        if relaxed:
            relaxed_create = Load(relaxed, "create", "/jobs")
            relaxed_create.prepare = lambda k: [f"r{create_pfx}{k}", create_body]
            add(
                "patch_relaxed",
                app=Load(relaxed, "patch", "/jobs", prepare=patch_prepare(relaxed_prefix)),
                bare=Load(bare, "patch", "/jobs", prepare=patch_prepare("bare")) if bare else None,
            )
            add(
                "create_relaxed",
                app=relaxed_create,
                bare=Load(bare, "create", "/jobs", [create_pfx, create_body]) if bare else None,
            )

        for case, loads in cases:
            (out["cases"][case], out["foreign_cores"][case],
             out["stolen_cores"][case]) = measure_case(args, scratch, case, loads, inv)

        for s in servers:
            out["rss_kib"][s.label] = s.worker_rss_kib()
        if app:
            out["app_log_tail"] = app.tail(15)
    except Exception:
        for s in servers:
            log(f"--- {s.label} log tail ---\n{s.tail()}")
        raise
    finally:
        for s in servers:
            s.stop()
        for db in pg_dbs:
            pg_drop(db)
    return out


# --------------------------------------------------------------------------- report


def machine_info() -> dict:
    info = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        info["cpu"] = next(
            (
                ln.split(":", 1)[1].strip()
                for ln in lscpu.splitlines()
                if ln.startswith("Model name")
            ),
            "?",
        )
    except OSError:
        info["cpu"] = "?"
    info["nproc"] = subprocess.run(["nproc"], capture_output=True, text=True).stdout.strip()
    info["mem"] = f"{os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES') / 2**30:.0f} GiB"
    info["kernel"] = platform.release()
    info["python"] = platform.python_version()
    vers = []
    for pkg in (
        "flask",
        "flask-smorest",
        "marshmallow",
        "werkzeug",
        "sqlalchemy",
        "psycopg",
        "gunicorn",
    ):
        try:
            vers.append(f"{pkg} {importlib.metadata.version(pkg)}")
        except importlib.metadata.PackageNotFoundError:
            pass
    info["packages"] = ", ".join(vers)
    info["sqlite"] = sqlite3.sqlite_version
    try:
        info["postgres"] = pg_version()
    except Exception:  # noqa: BLE001
        info["postgres"] = "?"
    info["wrk"] = (
        subprocess.run(["wrk", "-v"], capture_output=True, text=True)
        .stdout.split("\n")[0]
        .split(" [")[0]
    )
    try:
        info["mlflow"] = (
            subprocess.run(
                [
                    python_of(MLFLOW_VENV),
                    "-c",
                    "import importlib.metadata as m; print(m.version('mlflow'))",
                ],
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout.strip()
            or "?"
        )
    except OSError:
        info["mlflow"] = "not installed"
    try:
        git = ["git", "-C", str(REPO)]
        info["git"] = subprocess.run(
            [*git, "rev-parse", "--short", "HEAD"], capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            [*git, "status", "--porcelain", "--", "llm_train_api", "wsgi.py"],
            capture_output=True,
            text=True,
        ).stdout.strip()
        if dirty:
            info["git"] += " + uncommitted app changes"
    except OSError:
        info["git"] = "?"
    return info


CASE_TITLES = {
    "get": "GET /jobs/{id}",
    "list": "GET /jobs?limit=100 (first page)",
    "list_deep": "first page vs page 50k deep",
    "patch": "PATCH /jobs/{id}/status",
    "create": "POST /jobs",
    "patch_relaxed": "PATCH status, durability=relaxed",
    "create_relaxed": "POST /jobs, durability=relaxed",
}
SIDE_TITLES = {
    "app": "llm_train_api",
    "bare": "bare Flask",
    "mlflow": "MLflow",
    "app_first": "llm_train_api, first page",
    "app_deep": "llm_train_api, page {deep} deep",
    "app_plain": "llm_train_api, plain {plain}",
}
MLFLOW_ENDPOINT = {
    "get": "GET runs/get",
    "list": "POST runs/search max_results=100",
    "create": "POST runs/create",
}
BARE_TARGET = {"get": 0.6, "list": 0.3, "patch": 0.3, "create": 0.3}
# A durable create on SQLite waits for the one writer lock and an fsync that PostgreSQL
# spreads over its own processes: its target is 0.25x there. The GET target is SQLite's
# (a point read in-process, where PostgreSQL's is a round trip): on PostgreSQL the ratio is
# reported without one.
BARE_TARGET_BY_DB: dict[str, dict[str, float | None]] = {
    "sqlite": {"create": 0.25}, "postgres": {"get": None}}


def at_most(ratio: float, digits: int) -> str:
    """`ratio` cut (not rounded) to `digits`: a ratio that misses a ">=" target never reads
    as the target itself (0.2996 shows as 0.299, not 0.300)."""
    scale = 10**digits
    return f"{math.floor(ratio * scale + 1e-9) / scale:.{digits}f}"


def at_least(ratio: float, digits: int) -> str:
    """`ratio` rounded up to `digits`, for "<=" targets (1.2004 shows as 1.21)."""
    scale = 10**digits
    return f"{math.ceil(ratio * scale - 1e-9) / scale:.{digits}f}"


def targets(res: dict, deep: int) -> list[tuple[str, str, str, bool | None]]:
    rows = []
    c = res["cases"]
    for case, need in {**BARE_TARGET, **BARE_TARGET_BY_DB.get(res.get("db"), {})}.items():
        if case in c and "app" in c[case] and "bare" in c[case]:
            r = c[case]["app"]["rps"] / c[case]["bare"]["rps"]
            # Error answers are cheap: a run where the service gave any cannot pass.
            failed = c[case]["app"]["non2xx"]
            rows.append(
                (
                    f"{CASE_TITLES[case]} vs bare Flask (req/s)",
                    f"{at_most(r, 3)}x" + (f" ({failed} non-2xx answers)" if failed else ""),
                    "(target on SQLite only)" if need is None else f">= {need}x",
                    None if need is None else r >= need and not failed,
                )
            )
    for case in ("create", "get", "list"):
        if case in c and "app" in c[case] and "mlflow" in c[case]:
            r = c[case]["app"]["rps"] / c[case]["mlflow"]["rps"]
            rows.append(
                (
                    f"{CASE_TITLES[case]} vs MLflow {MLFLOW_ENDPOINT[case]} (req/s)",
                    f"{r:.2f}x",
                    ">= 10x",
                    r >= 10,
                )
            )
    if "list_deep" in c:
        d = c["list_deep"]
        r50 = d["app_deep"]["p50_ms"] / d["app_first"]["p50_ms"]
        rmean = d["app_deep"]["mean_ms"] / d["app_first"]["mean_ms"]
        rows.append(
            (f"page {deep} deep vs first page, p50 latency", f"{at_least(r50, 2)}x", "<= 1.2x",
             r50 <= 1.2)
        )
        rows.append(
            (
                f"page {deep} deep vs first page, mean latency",
                f"{at_least(rmean, 2)}x",
                "<= 1.2x",
                rmean <= 1.2,
            )
        )
    for case in ("get", "create"):
        if case in c and "app" in c[case] and "app_plain" in c[case]:
            r = c[case]["app"]["rps"] / c[case]["app_plain"]["rps"]
            rows.append(
                (
                    f"{CASE_TITLES[case]}: shipped worker class vs plain gthread (req/s)",
                    f"{r:.2f}x",
                    "(contrast only)",
                    None,
                )
            )
    for case in ("patch_relaxed", "create_relaxed"):
        if case in c and "app" in c[case] and "bare" in c[case]:
            r = c[case]["app"]["rps"] / c[case]["bare"]["rps"]
            rows.append(
                (f"{CASE_TITLES[case]} vs bare Flask (req/s)", f"{r:.2f}x", "(contrast only)", None)
            )
    return rows


def cores_line(per_case: dict[str, float], what: str, warn_above: float,
               warning: str) -> list[str]:
    """The report's line of cores per case, with `warning` in bold if any is above
    `warn_above`; no line for a run that did not measure them."""
    if not per_case:
        return []
    cases = ", ".join(f"{CASE_TITLES.get(c, c)} {v:.2f}" for c, v in per_case.items())
    flag = f" -- **{warning}**" if max(per_case.values()) > warn_above else ""
    return [f"<br>{what}: {cases}{flag}."]


def case_side(args, case: str, side: str) -> str:
    """`case, server` as the report names them."""
    server = SIDE_TITLES.get(side, side).format(deep=args.deep, plain=args.worker_class)
    return f"{CASE_TITLES.get(case, case)}, {server}"


def sides_where(res: dict, key: str):
    """(case, side, aggregate) of every side whose aggregate has a true `key`."""
    for case, sides in res["cases"].items():
        for side, a in sides.items():
            if a.get(key):
                yield case, side, a


def render(all_res: list[dict], args, info: dict) -> str:
    L = []
    L.append(
        f"Generated by `bench/run api` (`bench/api/run.py`) on {info['date']}, git `{info['git']}`."
    )
    L.append("")
    L.append(
        f"- Machine: {info['cpu']}, `nproc` = {info['nproc']}, {info['mem']} RAM, "
        f"Linux {info['kernel']}"
    )
    L.append(
        f"- Python {info['python']}; {info['packages']}; SQLite {info['sqlite']}; "
        f"PostgreSQL {info['postgres']}; {info['wrk']}; MLflow {info['mlflow']} (own venv)"
    )
    app_class = getattr(args, "app_worker_class", args.worker_class)
    L.append(
        f"- gunicorn for every server: `-w {args.workers} {' '.join(worker_flags(args))} "
        f"-b 127.0.0.1:<free port> -c bench/api/gunicorn_bench.conf.py` (access log off, "
        f"log level warning), except that llm_train_api runs under the worker class it "
        f"ships, `-k {app_class}` (and, as a contrast, plain `-k {args.worker_class}`); "
        f"MLflow via `mlflow server --workers {args.workers} --gunicorn-opts ...` (same "
        f"flags; its Flask app under gunicorn instead of MLflow's default uvicorn)"
    )
    L.append(
        f"- wrk: `-t{args.threads} -c{args.connections} --latency`, {args.warmup:g} s warm-up "
        f"per side, then {args.duration:g} s per side split into {args.rounds} alternating "
        f"rounds; req/s = total requests / total time, p50/p99 = mean of the per-round wrk "
        f"percentiles"
        + (
            f". A round in which the kernel gave one worker process more than "
            f"{args.connections // 4} connections beyond another's is run again (at most "
            f"{args.split_retries} times, every server alike): such a round measures how "
            f"the connections landed, not the server"
            if getattr(args, "split_retries", 0)
            else ""
        )
    )
    L.append(
        f"- Data: {args.seed_jobs} jobs seeded before the run; deep page = cursor after "
        f"walking {args.deep} jobs; MLflow seeded with {args.mlflow_seed} runs; durability "
        f"`full` unless marked relaxed"
    )
    if args.quick:
        L.append("- **QUICK smoke run: numbers are not meaningful.**")
    for res in all_res:
        L.append("")
        L.append(f"### {'SQLite' if res['db'] == 'sqlite' else 'PostgreSQL'}")
        L.append("")
        L.append("| Case | Server | req/s | p50 ms | p99 ms | non-2xx | socket errors |")
        L.append("|---|---|---:|---:|---:|---:|---:|")
        for case, sides in res["cases"].items():
            for side, a in sides.items():
                srv = SIDE_TITLES.get(side, side).format(deep=args.deep, plain=args.worker_class)
                if side == "mlflow":
                    srv += f" ({MLFLOW_ENDPOINT[case]})"
                L.append(
                    f"| {CASE_TITLES.get(case, case)} | {srv} | {a['rps']:.0f} | "
                    f"{a['p50_ms']:.2f} | {a['p99_ms']:.2f} | {a['non2xx']} | {a['sock_err']} |"
                )
        L.append("")
        L.append("| Target | Measured | Required | Result |")
        L.append("|---|---:|---:|---|")
        for name, measured, need, ok in targets(res, args.deep):
            verdict = "-" if ok is None else ("PASS" if ok else "**FAIL**")
            L.append(f"| {name} | {measured} | {need} | {verdict} |")
        L.append("")
        rss = "; ".join(
            f"{k}: " + ", ".join(f"{v / 1024:.0f}" for v in vals) + " MiB"
            for k, vals in res["rss_kib"].items()
        )
        L.append(f"RSS per gunicorn worker after the load: {rss}.")
        L += cores_line(
            res.get("foreign_cores", {}),
            f"CPU used by other processes on the machine during each case (cores, of "
            f"{info['nproc']})",
            0.2,
            "the machine was shared: ratios are within-run but noisier",
        )
        L += cores_line(
            res.get("stolen_cores", {}),
            f"CPU taken by the hypervisor (steal) during each case (cores, of {info['nproc']})",
            0.1,
            "the virtual machine's CPUs were shared: ratios are noisier",
        )
        redone = [
            f"{case_side(args, case, side)}: " + ", ".join(map(str, a["repeated_splits"]))
            for case, side, a in sides_where(res, "repeated_splits")
        ]
        if redone:
            L.append(
                "<br>Rounds run again because wrk's connections landed unevenly on the worker "
                "processes (connections per process): " + "; ".join(redone) + "."
            )
        kept = [
            f"{case_side(args, case, side)}: {a['uneven_kept']} of {len(a['splits'])}"
            for case, side, a in sides_where(res, "uneven_kept")
        ]
        if kept:
            L.append(
                "<br>**Rounds still uneven after every retry, and counted:** "
                + "; ".join(kept)
                + "."
            )
        for note in res["notes"]:
            L.append(f"<br>{note}.")
    return "\n".join(L) + "\n"


DOC_HEADER = """# API benchmark

How fast the `llm_train_api` HTTP service is, measured against a bare-Flask ceiling and
against the MLflow tracking server.  Run it with:

    bench/run api            # full run, ~10-15 min on 2 cores; rewrites the results below
    bench/run api --quick    # smoke run, prints only
    bench/run api --help     # --db sqlite|postgres|both, --duration, --connections, --workers ...

"""


def write_doc(text: str) -> None:
    DOC.parent.mkdir(parents=True, exist_ok=True)
    block = f"{DOC_START}\n{text}{DOC_END}\n"
    if DOC.exists():
        cur = DOC.read_text()
        if DOC_START in cur and DOC_END in cur:
            head, rest = cur.split(DOC_START, 1)
            tail = rest.split(DOC_END, 1)[1].lstrip("\n")
            DOC.write_text(head + block + ("\n" + tail if tail else ""))
            return
    DOC.write_text(DOC_HEADER + "## Results\n\n" + block)


# --------------------------------------------------------------------------- main


def ensure_tools(args) -> None:
    if shutil.which("wrk") is None:
        log("wrk missing; installing with apt-get")
        subprocess.run(["apt-get", "install", "-y", "wrk"], check=True)
    if "mlflow" in args.servers and not (MLFLOW_VENV / "bin" / "mlflow").exists():
        log(f"installing MLflow {MLFLOW_VERSION} into {MLFLOW_VENV}")
        subprocess.run(
            [
                sys.executable if not shutil.which("python3") else "python3",
                "-m",
                "venv",
                str(MLFLOW_VENV),
            ],
            check=True,
        )
        subprocess.run(
            [
                python_of(MLFLOW_VENV),
                "-m",
                "pip",
                "install",
                "-q",
                f"mlflow=={MLFLOW_VERSION}",
                "psycopg[binary]",
            ],
            check=True,
        )


def parse_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument(
        "--duration", type=float, default=10.0, help="seconds per case and side (default 10)"
    )
    p.add_argument(
        "--rounds", type=int, default=5, help="alternating rounds the duration is split into"
    )
    p.add_argument("--warmup", type=float, default=2.0, help="warm-up seconds per case and side")
    p.add_argument("--connections", type=int, default=16)
    p.add_argument("--threads", type=int, default=2, help="wrk threads")
    p.add_argument("--workers", type=int, default=2, help="gunicorn workers for every server")
    p.add_argument(
        "--worker-class",
        default="gthread",
        help="gunicorn worker class of the baselines and of the 'plain' contrast run of "
        "llm_train_api (default gthread); llm_train_api itself runs under the class "
        "llm_train_api/api/gunicorn_conf.py ships",
    )
    p.add_argument(
        "--gunicorn-threads", type=int, default=4, help="threads per gthread worker (default 4)"
    )
    p.add_argument("--seed-jobs", type=int, default=100_000)
    p.add_argument(
        "--deep", type=int, default=50_000, help="jobs to walk before the deep-page cursor"
    )
    p.add_argument("--mlflow-seed", type=int, default=2000, help="runs to create in MLflow first")
    p.add_argument("--patch-pool-per-thread", type=int, default=500)
    p.add_argument(
        "--quiet-wait",
        type=float,
        default=20,
        help="max seconds to wait before each case for other load to drop (0: never wait)",
    )
    p.add_argument("--quiet-cores", type=float, default=0.25, help="what counts as quiet")
    p.add_argument(
        "--split-retries",
        type=int,
        default=8,
        help="times a round is run again when wrk's connections land unevenly on the "
        "worker processes (0: never)",
    )
    p.add_argument(
        "--servers",
        default="app,plain,bare,mlflow",
        help="comma list of app,plain,bare,mlflow (plain: llm_train_api under --worker-class, "
        "for GET and POST)",
    )
    p.add_argument(
        "--no-relaxed",
        dest="relaxed",
        action="store_false",
        help="skip the relaxed-durability contrast",
    )
    p.add_argument(
        "--quick", action="store_true", help="smoke run: short cases, small data, no doc update"
    )
    p.add_argument("--no-doc", action="store_true", help="do not rewrite docs/benchmarks.md")
    # (also: run.py --render bench/results/api-*.json re-renders the doc from a saved run)
    args = p.parse_args(argv)
    if args.quick:
        args.duration, args.warmup, args.rounds = 2.0, 1.0, 1
        args.seed_jobs, args.deep, args.mlflow_seed = 5000, 2500, 100
        args.no_doc = True
        args.quiet_wait = 0
    if args.duration / args.rounds < 1 or args.duration % args.rounds:
        p.error("--duration must be a multiple of --rounds (wrk takes whole seconds)")
    args.servers = [s.strip() for s in args.servers.split(",") if s.strip()]
    args.app_worker_class = shipped_worker_class()
    return args


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def render_saved(path: str) -> int:
    """Re-render docs/benchmarks.md from a saved bench/results/api-*.json."""
    saved = json.loads(Path(path).read_text())
    args = argparse.Namespace(**saved["args"])
    text = render(saved["results"], args, saved["machine"])
    print(text)
    if not args.no_doc:
        write_doc(text)
        log(f"wrote {DOC.relative_to(REPO)}")
    return 0


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) == 2 and argv[0] == "--render":
        return render_saved(argv[1])
    args = parse_args(argv)
    ensure_tools(args)
    # SIGTERM/SIGHUP -> exception, so the finally blocks stop every server.
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _interrupt)
    dbs = ["sqlite", "postgres"] if args.db == "both" else [args.db]
    scratch_root = Path(tempfile.mkdtemp(prefix="bench_api_"))
    scratch_root.mkdir(parents=True, exist_ok=True)
    info = machine_info()  # before the run: the git state the servers start from
    t0 = time.monotonic()
    all_res = []
    try:
        for kind in dbs:
            log(f"=== {kind} ===")
            all_res.append(bench_db(args, kind, scratch_root))
    finally:
        shutil.rmtree(scratch_root, ignore_errors=True)
    text = render(all_res, args, info)
    print(text)
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    (RESULTS_DIR / f"api-{stamp}.json").write_text(
        json.dumps({"args": vars(args), "machine": info, "results": all_res}, indent=2, default=str)
    )
    if not args.no_doc:
        write_doc(text)
        log(f"wrote {DOC.relative_to(REPO)}")
    log(f"total {time.monotonic() - t0:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
