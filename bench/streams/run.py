#!/usr/bin/env python3
"""Open log streams and slow clients against health checks and job reads.

The service runs as `make run` serves it (gunicorn with the package's configuration: its
worker class, two processes per core plus one, four threads each) on SQLite, with 20 jobs
whose logs gain a line every second. Then, for each contender:

1. idle: a prober (a separate process) times `GET /healthz` and `GET /jobs/{id}`, one
   request at a time each, for --probe-s seconds;
2. loaded: the bench opens --streams `logs?follow=true` streams (spread over the jobs) and
   --slow sockets that send their request head one byte per second (and reconnect when
   the server closes them), then the prober runs again.

A probe that gets no answer within 5 s counts as missed. The contenders are the service's
own worker class and gunicorn's plain `gthread` worker (what the service ran before), same
settings otherwise. Afterwards `wrk` measures `GET /jobs/{id}` throughput on both with no
streams open (alternating rounds), so one run shows what the serving change costs.

    bench/run streams                 # the full run; rewrites the results in docs/benchmarks.md
    bench/run streams --quick         # smaller and shorter, prints only
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
DOC = REPO / "docs" / "benchmarks.md"
DOC_START = "<!-- bench-streams:results:start -->"
DOC_END = "<!-- bench-streams:results:end -->"
SERVICE_WORKER = "llm_train_api.api.gunicorn_worker.ServiceWorker"
PROBE_DEADLINE_S = 5.0
JOBS = 20


def log(msg: str) -> None:
    print(f"[bench-streams {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# --------------------------------------------------------------------------- the server


class Server:
    """The service under gunicorn with the package's configuration, on a scratch SQLite."""

    def __init__(self, worker_class: str, root: Path, streams_per_process: int) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.root = root
        env = dict(os.environ,
                   LLM_TRAIN_API_INSTANCE_PATH=str(root / "instance"),
                   LLM_TRAIN_API_DATA_DIR=str(root / "data"),
                   LLM_TRAIN_API_AUTH="disabled", LLM_TRAIN_API_EXECUTOR="none",
                   LLM_TRAIN_API_BIND=f"127.0.0.1:{self.port}", LLM_TRAIN_API_ACCESS_LOG="",
                   LLM_TRAIN_API_LOG_STREAMS_PER_USER="0",
                   LLM_TRAIN_API_LOG_STREAMS_PER_PROCESS=str(streams_per_process))
        self.proc = subprocess.Popen(
            [str(REPO / ".venv" / "bin" / "gunicorn"), "-c",
             "python:llm_train_api.api.gunicorn_conf", "-k", worker_class, "wsgi:app"],
            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
            stderr=open(root / "gunicorn.log", "wb"), start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(self.base + "/readyz", timeout=2).read()
                return
            except OSError:
                time.sleep(0.3)
        self.stop()
        raise RuntimeError(f"the server did not start; see {root / 'gunicorn.log'}")

    def stop(self) -> None:
        try:
            os.killpg(self.proc.pid, signal.SIGTERM)
            self.proc.wait(timeout=30)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)


def create_jobs(base: str, data_dir: Path) -> list[tuple[str, Path]]:
    """JOBS queued jobs, and the log file of each (written by LogWriter)."""
    from llm_train_api.artifacts.jobs import job_dir_of

    jobs = []
    for i in range(JOBS):
        body = json.dumps({"job_id": f"bench-{i}", "model_name": "gpt-nano",
                           "dataset": "tinytext", "hyperparameters": {}}).encode()
        req = urllib.request.Request(base + "/jobs", data=body, method="POST",
                                     headers={"Content-Type": "application/json"})
        job = json.loads(urllib.request.urlopen(req, timeout=30).read())
        created = dt.datetime.fromisoformat(job["created_at"])
        created_us = (created - dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)) \
            // dt.timedelta(microseconds=1)
        folder = job_dir_of(data_dir, job["id"], created_us)
        folder.mkdir(parents=True, exist_ok=True)
        jobs.append((job["id"], folder / "train.log"))
    return jobs


class LogWriter(threading.Thread):
    """Appends a line to every job's log each second, as running trainers would."""

    def __init__(self, paths: list[Path]) -> None:
        super().__init__(daemon=True)
        self.paths = paths
        self.stopped = threading.Event()

    def run(self) -> None:
        step = 0
        while not self.stopped.wait(1.0):
            step += 1
            for path in self.paths:
                with open(path, "a") as f:
                    f.write(f"step {step} loss {1 / step:.4f}\n")


# --------------------------------------------------------------------------- the load


class Load:
    """Follow streams and slow sockets, held by an asyncio loop in a thread of its own."""

    def __init__(self, port: int, job_ids: list[str], streams: int, slow: int) -> None:
        self.port, self.job_ids, self.streams, self.slow = port, job_ids, streams, slow
        self.loop = asyncio.new_event_loop()
        self.opened = 0
        self.refused = 0  # 429s and connection errors while opening
        self.events = 0
        self.slow_cut = 0  # slow sockets the server closed
        self.ready = threading.Event()
        self._tasks: list[asyncio.Task] = []
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        self.ready.wait(timeout=300)

    def stop(self) -> None:
        async def cancel_all() -> None:
            for task in self._tasks:
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            self.loop.stop()

        asyncio.run_coroutine_threadsafe(cancel_all(), self.loop)
        self.thread.join(timeout=30)

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_until_complete(self._open_all())
        self.ready.set()
        self.loop.run_forever()

    async def _open_all(self) -> None:
        opened = []
        for i in range(self.streams):
            job_id = self.job_ids[i % len(self.job_ids)]
            opened.append(asyncio.ensure_future(self._stream(job_id)))
            if i % 50 == 49:
                await asyncio.sleep(0.05)
        self._tasks += opened
        for _ in range(self.slow):
            self._tasks.append(asyncio.ensure_future(self._slow()))
        deadline = time.monotonic() + 60
        while self.opened + self.refused < self.streams and time.monotonic() < deadline:
            await asyncio.sleep(0.2)

    async def _stream(self, job_id: str) -> None:
        """One follower that reconnects with Last-Event-ID, as EventSource does."""
        last_id = None
        first = True
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                head = f"GET /jobs/{job_id}/logs?follow=true HTTP/1.1\r\nHost: x\r\n"
                if last_id:
                    head += f"Last-Event-ID: {last_id}\r\n"
                writer.write((head + "\r\n").encode())
                status = await reader.readline()
                if first:
                    first = False
                    if b" 200 " in status:
                        self.opened += 1
                    else:
                        self.refused += 1
                async for line in reader:
                    if line.startswith(b"id: "):
                        last_id = line[4:].strip().decode()
                        self.events += 1
                writer.close()
            except asyncio.CancelledError:
                raise
            except OSError:
                if first:
                    first = False
                    self.refused += 1
            await asyncio.sleep(1.0)

    async def _slow(self) -> None:
        """A client that sends its request head one byte per second (slowloris)."""
        request = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Padding: " + b"a" * 200 + b"\r\n\r\n"
        while True:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                for byte in request:
                    writer.write(bytes([byte]))
                    await writer.drain()
                    await asyncio.sleep(1.0)
                    if reader.at_eof():
                        break
                writer.close()
            except asyncio.CancelledError:
                raise
            except OSError:
                pass
            self.slow_cut += 1
            await asyncio.sleep(0.5)


# --------------------------------------------------------------------------- the prober


def probe_main(base: str, path: str, seconds: float, out: str) -> None:
    """Runs in its own process: one request at a time for `seconds`, each timed."""
    import http.client

    host, port = base.removeprefix("http://").split(":")
    latencies, missed = [], 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(host, int(port), timeout=PROBE_DEADLINE_S)
            conn.request("GET", path)
            resp = conn.getresponse()
            resp.read()
            conn.close()
            if resp.status != 200:
                missed += 1
            else:
                latencies.append((time.perf_counter() - started) * 1000)
        except OSError:
            missed += 1
        time.sleep(0.02)
    Path(out).write_text(json.dumps({"latencies": latencies, "missed": missed}))


def probe(base: str, paths: list[str], seconds: float, root: Path) -> dict[str, dict]:
    procs = {}
    for path in paths:
        out = root / f"probe-{abs(hash(path))}.json"
        procs[path] = (out, subprocess.Popen(
            [sys.executable, __file__, "--probe", base, path, str(seconds), str(out)]))
    results = {}
    for path, (out, proc) in procs.items():
        proc.wait()
        data = json.loads(out.read_text())
        lat = sorted(data["latencies"])
        n = len(lat)
        results[path] = {
            "answered": n, "missed": data["missed"],
            "p50": statistics.median(lat) if lat else None,
            "p99": lat[min(n - 1, int(n * 0.99))] if lat else None,
        }
    return results


def wrk_rate(base: str, path: str, seconds: int) -> float:
    out = subprocess.run(["wrk", "-t2", "-c16", f"-d{seconds}s", base + path],
                         capture_output=True, text=True, check=True).stdout
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


# --------------------------------------------------------------------------- the run


def run_contender(name: str, worker_class: str, args: argparse.Namespace, root: Path,
                  ) -> dict:
    folder = root / name.replace(" ", "-")
    folder.mkdir()
    server = Server(worker_class, folder, streams_per_process=args.streams)
    writer = None
    try:
        jobs = create_jobs(server.base, folder / "data")
        writer = LogWriter([path for _, path in jobs])
        writer.start()
        paths = ["/healthz", f"/jobs/{jobs[0][0]}"]
        log(f"{name}: idle probes")
        idle = probe(server.base, paths, args.probe_s, folder)
        log(f"{name}: opening {args.streams} streams and {args.slow} slow sockets")
        load = Load(server.port, [job_id for job_id, _ in jobs], args.streams, args.slow)
        started = time.monotonic()
        load.start()
        open_s = time.monotonic() - started
        log(f"{name}: {load.opened} streams open, {load.refused} refused; loaded probes")
        events_before = load.events
        loaded = probe(server.base, paths, args.probe_s, folder)
        events = load.events - events_before
        still_open = load.opened
        load.stop()
        return {"idle": idle, "loaded": loaded, "opened": still_open, "refused": load.refused,
                "open_s": open_s, "events_per_s": events / args.probe_s,
                "slow_cut": load.slow_cut, "port": server.port}
    finally:
        if writer is not None:
            writer.stopped.set()
        server.stop()


def throughput(args: argparse.Namespace, root: Path) -> dict[str, float]:
    """GET /jobs/{id} req/s under each worker class, no streams, alternating rounds."""
    servers = {}
    totals = {}
    try:
        for name, worker in (("service worker", SERVICE_WORKER), ("plain gthread", "gthread")):
            folder = root / f"wrk-{name.replace(' ', '-')}"
            folder.mkdir()
            servers[name] = Server(worker, folder, streams_per_process=args.streams)
            servers[name].job = create_jobs(servers[name].base, folder / "data")[0][0]
            wrk_rate(servers[name].base, f"/jobs/{servers[name].job}", 2)  # warm-up
            totals[name] = 0.0
        order = list(servers)
        for round_no in range(args.rounds):
            for name in order if round_no % 2 == 0 else reversed(order):
                totals[name] += wrk_rate(servers[name].base, f"/jobs/{servers[name].job}",
                                         args.round_s)
    finally:
        for server in servers.values():
            server.stop()
    return {name: total / args.rounds for name, total in totals.items()}


def machine() -> str:
    cpu = "?"
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{cpu}, `nproc` = {os.cpu_count()}, {mem:.0f} GiB RAM, Python "
            f"{platform.python_version()}")


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def report(results: dict, rates: dict[str, float], args: argparse.Namespace) -> str:
    git = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                         capture_output=True, text=True).stdout.strip()
    when = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"Generated by `bench/run streams` on {when}, git `{git}`.", "",
             f"- Machine: {machine()}",
             f"- Load: {args.streams} follow streams over {JOBS} jobs whose logs gain a line "
             f"a second, plus {args.slow} sockets sending their request head one byte a "
             f"second; probes: one request at a time per path for {args.probe_s:g} s, "
             f"missed = no 200 within {PROBE_DEADLINE_S:g} s.", "",
             "| Worker | Load | Path | answered | missed | p50 ms | p99 ms |",
             "|---|---|---|---:|---:|---:|---:|"]
    for name, res in results.items():
        for phase in ("idle", "loaded"):
            for path, r in res[phase].items():
                shown = "/jobs/{id}" if path.startswith("/jobs/") else path
                lines.append(f"| {name} | {phase} | `GET {shown}` | {r['answered']} | "
                             f"{r['missed']} | {fmt(r['p50'])} | {fmt(r['p99'])} |")
    lines += ["", "| Worker | streams open | refused | log events delivered / s | "
              "slow sockets cut off |", "|---|---:|---:|---:|---:|"]
    for name, res in results.items():
        lines.append(f"| {name} | {res['opened']} | {res['refused']} | "
                     f"{res['events_per_s']:.0f} | {res['slow_cut']} |")
    if len(rates) == 2:
        service, plain = rates["service worker"], rates["plain gthread"]
        lines += ["", f"`GET /jobs/{{id}}` throughput with no streams (wrk -t2 -c16, "
                  f"{args.rounds} alternating rounds of {args.round_s} s): service worker "
                  f"{service:.0f} req/s, plain gthread {plain:.0f} req/s "
                  f"(**{service / plain:.2f}x**)."]
    return "\n".join(lines) + "\n"


def write_doc(text: str) -> None:
    doc = DOC.read_text()
    start, end = doc.index(DOC_START) + len(DOC_START), doc.index(DOC_END)
    DOC.write_text(doc[:start] + "\n" + text + doc[end:])


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "--probe":
        probe_main(sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5])
        return 0
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--slow", type=int, default=200)
    parser.add_argument("--probe-s", type=float, default=30.0)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--round-s", type=int, default=5)
    parser.add_argument("--quick", action="store_true",
                        help="200 streams, 40 slow sockets, 10 s probes; prints only")
    parser.add_argument("--only-service", action="store_true",
                        help="skip the plain gthread contender")
    parser.add_argument("--throughput-only", action="store_true",
                        help="only the wrk comparison of the two worker classes; prints only")
    args = parser.parse_args()
    if args.quick:
        args.streams, args.slow, args.probe_s, args.rounds, args.round_s = 200, 40, 10, 2, 3
    if shutil.which("wrk") is None:
        print("bench/run streams needs wrk (apt-get install wrk)", file=sys.stderr)
        return 2
    contenders = [("service worker", SERVICE_WORKER)]
    if not args.only_service:
        contenders.append(("plain gthread", "gthread"))
    root = Path(tempfile.mkdtemp(prefix="bench-streams-"))
    if args.throughput_only:
        try:
            rates = throughput(args, root)
        finally:
            shutil.rmtree(root, ignore_errors=True)
        print(report({}, rates, args))
        return 0
    try:
        results = {name: run_contender(name, worker, args, root)
                   for name, worker in contenders}
        rates = throughput(args, root) if not args.only_service else {}
    finally:
        shutil.rmtree(root, ignore_errors=True)
    text = report(results, rates, args)
    print(text)
    if not args.quick:
        write_doc(text)
        log(f"results written to {DOC.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
