#!/usr/bin/env python3
"""Where does a worker spend its time?  Samples the app's gunicorn workers with py-spy
while wrk drives one case, then prints the hottest functions (self and inclusive).

    python3 -m venv /tmp/prof && /tmp/prof/bin/pip install py-spy
    PYSPY=/tmp/prof/bin/py-spy .venv/bin/python bench/api/hotspots.py --db sqlite --case list

py-spy is found through $PYSPY, else on PATH; keep its virtual environment outside the
checkout.

Uses the same server set-up, seeding and Lua scripts as bench/api/run.py.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import run as R  # noqa: E402

PYSPY = os.environ.get("PYSPY") or shutil.which("py-spy") or "py-spy"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--db", choices=["sqlite", "postgres"], default="sqlite")
    p.add_argument("--case", choices=["get", "list", "list_deep", "patch", "create"], default="get")
    p.add_argument("--seconds", type=int, default=10)
    p.add_argument("--seed-jobs", type=int, default=20_000)
    p.add_argument("--durability", default="full")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--gil", action="store_true",
                   help="sample only threads holding the GIL: where the Python CPU goes, "
                   "without the time spent waiting on sockets, fsync and locks")
    opts = p.parse_args()
    args = R.parse_args(["--no-doc"])
    scratch = Path(tempfile.mkdtemp(prefix="bench_api_prof_"))
    (scratch / "instance").mkdir(parents=True)
    db = None
    server = None
    try:
        if opts.db == "sqlite":
            url = f"sqlite:///{scratch / 'jobs.db'}"
        else:
            db = f"bench_api_prof_{int(time.time())}"
            url = R.pg_create(db)
        names = [f"seed-{i:06d}" for i in range(opts.seed_jobs)]
        names += [f"pp0-{i}" for i in range(args.patch_pool_per_thread * args.threads)]
        R.seed_app(args, url, None, names)
        if db:
            R.pg_analyze(url)
        server = R.make_app_server(args, scratch, url, opts.durability, "app")
        server.start()
        server.wait_ready(60)
        body = json.dumps(R.CREATE_BODY, separators=(",", ":"))
        get_id = f"seed-{opts.seed_jobs // 2:06d}"
        if opts.case == "get":
            load = R.Load(server, "static", "/jobs", ["GET", f"/jobs/{get_id}"])
        elif opts.case == "list":
            load = R.Load(server, "static", "/jobs", ["GET", "/jobs?limit=100"])
        elif opts.case == "list_deep":
            cur = R.deep_cursor(server, opts.seed_jobs // 2)
            load = R.Load(server, "static", "/jobs", ["GET", f"/jobs?limit=100&cursor={cur}"])
        elif opts.case == "patch":
            load = R.Load(
                server,
                "patch",
                "/jobs",
                ["pp0", str(args.patch_pool_per_thread), str(args.threads)],
            )
        else:
            load = R.Load(server, "create", "/jobs", ["prof", body])
        R.run_wrk(
            args, scratch, R.Load(server, "static", "/jobs", ["GET", f"/jobs/{get_id}"]), 2, 0
        )  # warm-up
        tree = R._children_map()
        workers = tree.get(server.proc.pid, [])
        spies = []
        for pid in workers:
            out = scratch / f"spy-{pid}.txt"
            spies.append(
                (
                    out,
                    subprocess.Popen(
                        [
                            str(PYSPY),
                            "record",
                            "-p",
                            str(pid),
                            "-d",
                            str(opts.seconds),
                            "-r",
                            "200",
                            "-f",
                            "raw",
                            "-o",
                            str(out),
                            "--nonblocking",
                            *(["--gil"] if opts.gil else []),
                        ],
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.PIPE,
                    ),
                )
            )
        time.sleep(0.5)
        res = R.run_wrk(args, scratch, load, opts.seconds, 0)
        for _, sp in spies:
            sp.wait(timeout=opts.seconds + 30)
        print(f"{opts.case} on {opts.db}: {res['rps']:.0f} req/s (profiled, so slower)")
        selfc: collections.Counter[str] = collections.Counter()
        incl: collections.Counter[str] = collections.Counter()
        total = 0
        for out, _ in spies:
            if not out.exists():
                continue
            for line in out.read_text().splitlines():
                stack, _, n = line.rpartition(" ")
                n = int(n)
                frames = stack.split(";")
                total += n
                selfc[_short(frames[-1])] += n
                for f in {_short(f) for f in frames}:
                    incl[f] += n
        if not total:
            print("no samples (py-spy needs ptrace permission)")
            return 1
        print(f"\n{total} samples. Inclusive (% of worker samples):")
        for f, n in incl.most_common(opts.top * 2):
            print(f"  {100 * n / total:5.1f}%  {f}")
        print("\nSelf:")
        for f, n in selfc.most_common(opts.top):
            print(f"  {100 * n / total:5.1f}%  {f}")
    finally:
        if server:
            server.stop()
        if db:
            R.pg_drop(db)
        shutil.rmtree(scratch, ignore_errors=True)
    return 0


def _short(frame: str) -> str:
    # "func (path/to/module.py:123)" -> "func (module.py)"
    name, _, loc = frame.partition(" (")
    loc = loc.rstrip(")")
    path = loc.rsplit(":", 1)[0]
    parts = path.split("/")
    short = "/".join(parts[-2:]) if len(parts) > 1 else path
    return f"{name} ({short})"


if __name__ == "__main__":
    sys.exit(main())
