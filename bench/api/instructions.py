#!/usr/bin/env python3
"""Instructions per request, counted by callgrind: the service and the bare Flask app
(bench/api/bare_app.py), each called through WSGI in one process, side by side.

    .venv/bin/python bench/api/instructions.py [--db sqlite|postgres|both] [--cases ...]

Requests per second on a shared 2-core virtual machine move by a third between runs of
one tree (docs/benchmarks.md, Findings); two instruction counts of one tree agree to 0.1%. So a
change to the request path is judged here first, and by `bench/run api` after. What
this leaves out is what req/s includes: gunicorn, the socket, the database server's own
CPU (PostgreSQL runs in its processes, not under valgrind) and the cache misses of a
loaded machine.

Each side runs twice under `valgrind --tool=callgrind`, with a small and a large number
of requests; the difference over the difference in requests is the cost of one request,
with start-up and warm-up cancelled out. Both runs of a side go in parallel. Needs
valgrind (`apt-get install valgrind`).
"""

from __future__ import annotations

import argparse
import concurrent.futures
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402

# PATCH is left out: the two runs of a side go in parallel on one database, and would
# flip the same jobs.
CASES = {
    "get": "GET /jobs/{id}",
    "list": "GET /jobs?limit=100 (first page)",
    "create": "POST /jobs",
}
WARMUP = 50
SEED_JOBS = 1_000


def environ(method: str, path: str, body: bytes = b"") -> dict:
    """A WSGI environ as gunicorn builds it for a request from 127.0.0.1."""
    path, _, query = path.partition("?")
    env = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "SCRIPT_NAME": "", "QUERY_STRING": query,
        "SERVER_NAME": "127.0.0.1", "SERVER_PORT": "8000", "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1", "HTTP_HOST": "127.0.0.1:8000", "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body), "wsgi.errors": sys.stderr, "wsgi.multithread": True,
        "wsgi.multiprocess": True, "wsgi.run_once": False, "wsgi.version": (1, 0),
    }
    if body:
        env["CONTENT_TYPE"] = "application/json"
        env["CONTENT_LENGTH"] = str(len(body))
    return env


def requests(case: str, tag: str, count: int):
    """`count` requests of `case`, as (method, path, body); every create a new job."""
    create = json.dumps(R.CREATE_BODY, separators=(",", ":"))
    for i in range(count):
        if case == "get":
            yield "GET", f"/jobs/seed-{i % SEED_JOBS:06d}", b""
        elif case == "list":
            yield "GET", "/jobs?limit=100", b""
        else:
            yield "POST", "/jobs", create.replace("__JOB_ID__", f"{tag}-{i}").encode()


def drive(side: str, case: str, count: int, tag: str) -> None:
    """In the process valgrind runs: build the app, warm it up, send `count` requests."""
    if side == "bare":
        from bare_app import app  # noqa: PLC0415
    else:
        sys.path.insert(0, str(R.REPO))
        from llm_train_api import create_app  # noqa: PLC0415

        app = create_app()
    expected = "201" if case == "create" else "200"

    def start_response(status, headers, exc_info=None):
        if not status.startswith(expected):
            raise SystemExit(f"{side} {case}: {status}")

    for phase, n in (("w", WARMUP), ("m", count)):
        for method, path, body in requests(case, f"{tag}{phase}", n):
            for _ in app(environ(method, path, body), start_response):
                pass


def total_instructions(out_file: Path) -> int:
    """The `summary:`/`totals:` line of a callgrind output file."""
    text = out_file.read_text()
    m = re.search(r"^(?:summary|totals): (\d+)", text, re.M)
    if not m:
        raise RuntimeError(f"no totals in {out_file}")
    return int(m.group(1))


def count_once(side: str, case: str, count: int, env: dict, scratch: Path) -> int:
    tag = f"{side}-{case}-{count}-{time.monotonic_ns()}"
    out = scratch / f"{tag}.callgrind"
    url = env.get("LLM_TRAIN_API_DATABASE_URL", "")
    if url.startswith("sqlite:///"):  # a copy per run: no waiting on the other's writes
        own = scratch / f"{tag}.db"
        shutil.copyfile(url.removeprefix("sqlite:///"), own)
        env = {**env, "LLM_TRAIN_API_DATABASE_URL": f"sqlite:///{own}"}
    cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}",
           R.python_of(R.REPO / ".venv"), __file__, "--drive", side, case, str(count), tag]
    proc = subprocess.run(cmd, env=env, cwd=str(R.HERE), capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{side} {case} under callgrind: {proc.stderr[-2000:]}")
    return total_instructions(out)


def per_request(side: str, case: str, small: int, large: int, env: dict,
                scratch: Path) -> float:
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        a, b = pool.map(lambda n: count_once(side, case, n, env, scratch), (small, large))
    return (b - a) / (large - small)


def service_env(url: str, scratch: Path) -> dict:
    env = R.base_env()
    env.update({
        "LLM_TRAIN_API_DATABASE_URL": url,
        "LLM_TRAIN_API_INSTANCE_PATH": str(scratch / "instance"),
        "LLM_TRAIN_API_DURABILITY": "full",
        "LLM_TRAIN_API_AUTH": "disabled",
        "LLM_TRAIN_API_EXECUTOR": "none",
        "LLM_TRAIN_API_LOG_LEVEL": "warning",
    })
    return env


def main() -> int:
    if len(sys.argv) == 6 and sys.argv[1] == "--drive":
        drive(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5])
        return 0
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--cases", nargs="+", choices=list(CASES), default=["get", "create"])
    p.add_argument("--small", type=int, default=100, help="requests in the short run")
    p.add_argument("--large", type=int, default=600, help="requests in the long run")
    opts = p.parse_args()
    if shutil.which("valgrind") is None:
        print("bench/api/instructions.py: valgrind not found (apt-get install valgrind)",
              file=sys.stderr)
        return 2
    scratch = Path(tempfile.mkdtemp(prefix="bench_api_instr_"))
    (scratch / "instance").mkdir()
    kinds = ["sqlite", "postgres"] if opts.db == "both" else [opts.db]
    args = R.parse_args(["--no-doc"])
    names = [f"seed-{i:06d}" for i in range(SEED_JOBS)]
    rows: list[tuple[str, str, float, float]] = []
    bare_env = R.base_env()
    bare = {case: per_request("bare", case, opts.small, opts.large, bare_env, scratch)
            for case in opts.cases}
    for kind in kinds:
        db = None
        if kind == "sqlite":
            url = f"sqlite:///{scratch / 'jobs.db'}"
        else:
            db = f"bench_api_instr_{int(time.time())}"
            url = R.pg_create(db)
        try:
            R.seed_app(args, url, None, names)
            if db:
                R.pg_analyze(url)
            env = service_env(url, scratch)
            for case in opts.cases:
                ours = per_request("service", case, opts.small, opts.large, env, scratch)
                rows.append((kind, case, ours, bare[case]))
                R.log(f"{kind} {case}: {ours / 1000:,.0f}k instructions per request, "
                      f"bare Flask {bare[case] / 1000:,.0f}k")
        finally:
            if db:
                R.pg_drop(db)
    shutil.rmtree(scratch, ignore_errors=True)
    info = R.machine_info()
    print(f"\nRun {info['date']} on {info['cpu']} (`nproc` = {info['nproc']}), git "
          f"`{info['git']}`, Python {info['python']}: instructions per request (callgrind, "
          f"the run of {opts.large} requests minus the run of {opts.small}, in one "
          "process).\n")
    print("| database | request | llm_train_api | bare Flask | bare / service |")
    print("| --- | --- | ---: | ---: | ---: |")
    for kind, case, ours, theirs in rows:
        print(f"| {kind} | {CASES[case]} | {ours / 1000:,.0f}k | {theirs / 1000:,.0f}k | "
              f"{theirs / ours:.3f} |")
    return 0


if __name__ == "__main__":
    # One hash seed for every counted process, so that the two runs of a side build the
    # same dictionaries and sets.
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
