"""What authentication costs: the same gunicorn app with LLM_TRAIN_API_AUTH=required (every
request looks its token up in the database, no cache, so that a revocation is immediate)
against AUTH=disabled, side by side in alternating rounds, on SQLite and PostgreSQL.

Both servers share one database and the same flags; only the setting differs. The ratio
(required / disabled requests per second) is what to read: these machines are noisy.
Results go to docs/benchmarks.md between the bench-auth markers (--no-doc: print only).
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "api"))
import run as api  # noqa: E402 - the API harness: servers, wrk, alternating rounds

DOC = api.REPO / "docs" / "benchmarks.md"
DOC_START = "<!-- bench-auth:results:start -->"
DOC_END = "<!-- bench-auth:results:end -->"


def start_pair(args, scratch: Path, db_url: str) -> tuple[api.Server, api.Server, str]:
    open_ = api.make_app_server(args, scratch / "open", db_url, "full", "auth-off")
    locked = api.make_app_server(args, scratch / "locked", db_url, "full", "auth-on")
    locked.env["LLM_TRAIN_API_AUTH"] = "required"
    open_.label, locked.label = "auth disabled", "auth required"
    for server in (open_, locked):
        (server.scratch).mkdir(parents=True, exist_ok=True)
        server.start()
        server.wait_ready(60)
    token = (scratch / "locked" / "instance" / "admin-token").read_text().strip()
    return open_, locked, token


def bench(args, kind: str, root: Path) -> dict:
    scratch = root / kind
    scratch.mkdir(parents=True)
    db_name = "bench_auth"
    db_url = (f"sqlite:///{scratch / 'jobs.sqlite3'}" if kind == "sqlite"
              else api.pg_create(db_name))
    servers: list[api.Server] = []
    try:
        open_, locked, token = start_pair(args, scratch, db_url)
        servers = [open_, locked]
        bearer = f"Bearer {token}"
        for i in range(200):
            body = {"job_id": f"auth-{i:04d}", "model_name": "gpt-nano", "dataset": "d"}
            status, _, _ = api.http("POST", open_.base + "/jobs", body)
            assert status == 201, status
        inv = api.Invocations()
        cases = {
            "GET one job": ("GET", "/jobs/auth-0100"),
            "GET first page (100)": ("GET", "/jobs?limit=100"),
        }
        out = {}
        for case, (method, path) in cases.items():
            loads = {
                "disabled": api.Load(open_, "static", path, [method, path]),
                "required": api.Load(locked, "static", path, [method, path, "", bearer]),
            }
            agg, foreign, stolen = api.measure_case(args, scratch, f"{kind} {case}", loads,
                                                    inv)
            if agg["required"]["non2xx"] or agg["disabled"]["non2xx"]:
                raise RuntimeError(f"non-2xx answers in {case}: {agg}")
            out[case] = {**agg, "foreign_cores": foreign, "stolen_cores": stolen}
        return out
    finally:
        for server in servers:
            server.stop()
        if kind == "postgres":
            api.pg_drop(db_name)


def render(results: dict, args, info: dict) -> str:
    lines = [
        f"Run {info['date']} on {info['cpu']} ({info['nproc']} cores), `bench/run auth`: "
        f"{args.workers} gunicorn workers × {args.gunicorn_threads} threads per server, wrk "
        f"{args.threads} threads / {args.connections} connections, {args.duration:.0f} s per "
        f"case and side in {args.rounds} alternating rounds.",
        "",
        "| database | case | auth disabled (req/s) | auth required (req/s) | ratio | p50 ms "
        "(off / on) |",
        "| --- | --- | ---: | ---: | ---: | --- |",
    ]
    for kind, cases in results.items():
        for case, agg in cases.items():
            off, on = agg["disabled"], agg["required"]
            lines.append(
                f"| {kind} | {case} | {off['rps']:.0f} | {on['rps']:.0f} | "
                f"{on['rps'] / off['rps']:.2f} | {off['p50_ms']:.2f} / {on['p50_ms']:.2f} |")
    return "\n".join(lines) + "\n"


def write_doc(text: str) -> None:
    block = f"{DOC_START}\n{text}{DOC_END}"
    doc = DOC.read_text()
    if DOC_START in doc:
        head, rest = doc.split(DOC_START, 1)
        doc = head + block + rest.split(DOC_END, 1)[1]
    else:
        doc = doc.rstrip("\n") + "\n\n## Authentication overhead\n\n" + block + "\n"
    DOC.write_text(doc)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--db", choices=["sqlite", "postgres", "both"], default="both")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--no-doc", action="store_true")
    own, rest = p.parse_known_args(argv)
    args = api.parse_args(["--duration", str(own.duration), "--rounds", str(own.rounds),
                           *rest])
    api.ensure_tools(args)
    kinds = ["sqlite", "postgres"] if own.db == "both" else [own.db]
    with tempfile.TemporaryDirectory(prefix="bench-auth-") as tmp:
        results = {kind: bench(args, kind, Path(tmp)) for kind in kinds}
    info = api.machine_info()
    text = render(results, args, info)
    print(text)
    out = api.REPO / "bench" / "results"
    out.mkdir(exist_ok=True)
    stamp = dt.datetime.now(dt.timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    (out / f"auth-{stamp}.json").write_text(json.dumps(results, indent=1))
    if not own.no_doc:
        write_doc(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
