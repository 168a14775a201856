"""The client commands of `llm-train-api` (jobs, datasets, models, sample) through click's
CliRunner against real gunicorn servers, configured as a user would: LLM_TRAIN_API_URL
and LLM_TRAIN_API_TOKEN in the environment."""

from __future__ import annotations

import io
import json
import re

import pytest
from click.testing import CliRunner, Result

from llm_train_api.cli.main import main
from llm_train_api.cli.progress import wait
from llm_train_api.client import Client
from tests.helpers.cli import one_error_line
from tests.helpers.servers import TINY, free_port


def cli(server, *args: str, env: dict[str, str] | None = None) -> Result:
    runner = CliRunner()
    base = {"LLM_TRAIN_API_URL": server.url, "LLM_TRAIN_API_TOKEN": server.token or ""}
    return runner.invoke(main, list(args), env={**base, **(env or {})},
                         catch_exceptions=False)


def ok(result: Result) -> str:
    assert result.exit_code == 0, (result.exit_code, result.output, result.stderr)
    return result.stdout


def test_registry_commands_tables_json_and_errors(gunicorn_factory, tmp_path):
    server = gunicorn_factory(workers=2)
    out = ok(cli(server, "models"))
    assert out.splitlines()[0].split() == ["NAME", "KIND", "ARCHITECTURE", "CONTEXT",
                                           "PARAMETERS", "SIZE", "ORIGIN"]
    assert "gpt-nano" in out and "146,352" in out
    assert json.loads(ok(cli(server, "models", "gpt-nano", "--json")))["n_layer"] == 3
    assert "learning_rate" in ok(cli(server, "models", "gpt-nano"))

    poems = tmp_path / "poems.txt"
    poems.write_text("roses are red\nviolets are blue\n")
    assert ok(cli(server, "datasets", "upload", str(poems))).startswith("poems: uploaded (txt")
    listed = json.loads(ok(cli(server, "datasets", "list", "--json")))
    assert {"builtin:tinytext", "poems"} <= {d["name"] for d in listed}
    assert "poems" in ok(cli(server, "datasets", "list"))
    assert ok(cli(server, "datasets", "rm", "poems")) == "poems: deleted\n"
    line = one_error_line(cli(server, "datasets", "rm", "poems"))
    assert line.startswith("error: 404 not_found: ")
    ok(cli(server, "datasets", "rm", "--missing-ok", "poems"))
    assert "403 forbidden" in one_error_line(cli(server, "datasets", "rm", "builtin:tinytext"))

    hp_file = tmp_path / "hp.json"
    hp_file.write_text(json.dumps({"epochs": 5, "lr": 1}))
    job = json.loads(ok(cli(
        server, "jobs", "submit", "--model", "gpt-mini", "--dataset", "d1", "--job-id", "a",
        "--hp", "lr=0.001", "--hp", "name=plain text", "--hp", "layers=[1, 2]",
        "--hp-file", str(hp_file), "--priority", "3", "--cpus", "2", "--json")))
    assert job["id"] == "a" and job["priority"] == 3 and job["status"] == "queued"
    assert job["resources"]["cpus"] == 2 and job["resources"]["gpus"] == 0
    assert job["hyperparameters"] == {"epochs": 5, "lr": 0.001, "name": "plain text",
                                      "layers": [1, 2]}
    assert "409 conflict" in one_error_line(cli(
        server, "jobs", "submit", "--model", "other", "--dataset", "d1", "--job-id", "a"))
    assert "422 validation_error" in one_error_line(cli(
        server, "jobs", "submit", "--model", "m", "--dataset", "d", "--job-id", "-bad"))
    out = ok(cli(server, "jobs", "submit", "--model", "m", "--dataset", "d2", "--job-id", "b"))
    assert out == "b: submitted (queued, m on d2)\n"
    ok(cli(server, "jobs", "submit", "--model", "m", "--dataset", "d2", "--job-id", "c"))
    assert "dry run" in ok(cli(server, "jobs", "submit", "--model", "m", "--dataset", "d",
                               "--dry-run"))
    bad_hp = cli(server, "jobs", "submit", "--model", "m", "--dataset", "d", "--hp", "novalue")
    assert bad_hp.exit_code == 2 and "key=value" in bad_hp.stderr

    assert [j["id"] for j in json.loads(ok(cli(server, "jobs", "list", "--json")))] == [
        "c", "b", "a"]
    assert [j["id"] for j in json.loads(ok(cli(server, "jobs", "list", "--limit", "2",
                                               "--json")))] == ["c", "b"]
    table = ok(cli(server, "jobs", "list", "--limit", "0", "--dataset", "d2"))
    assert table.splitlines()[0].split()[:3] == ["ID", "STATUS", "MODEL"]
    assert [row.split()[0] for row in table.splitlines()[1:]] == ["c", "b"]
    shown = ok(cli(server, "jobs", "get", "a"))
    assert "status           queued" in shown and '"name": "plain text"' in shown
    assert json.loads(ok(cli(server, "jobs", "get", "a", "--json")))["dataset"] == "d1"
    line = one_error_line(cli(server, "jobs", "get", "nope"))
    assert line == "error: 404 not_found: Job 'nope' not found."

    assert ok(cli(server, "jobs", "cancel", "a")) == "a: cancelled\n"
    events = json.loads(ok(cli(server, "jobs", "events", "a", "--json")))
    assert [(e["kind"], e["to_status"]) for e in events] == [("created", "queued"),
                                                            ("status", "cancelled")]
    assert "cancelled" in ok(cli(server, "jobs", "events", "a"))
    assert json.loads(ok(cli(server, "jobs", "metrics", "a", "--json"))) == []
    assert ok(cli(server, "jobs", "metrics", "a")).split() == [
        "STEP", "EPOCH", "TRAIN_LOSS", "VAL_LOSS", "LR", "TOKENS/S", "ELAPSED_S"]
    assert ok(cli(server, "jobs", "logs", "a")) == ""

    cancelled = cli(server, "jobs", "wait", "a")
    assert cancelled.exit_code == 4 and "a: cancelled" in cancelled.stdout
    timed_out = cli(server, "jobs", "wait", "b", "--timeout", "0.3", "--interval", "0.1")
    assert "timed out" in one_error_line(timed_out, code=124)
    assert timed_out.stdout == "b: queued\n"  # plain lines when not a terminal
    assert "no checkpoint" in one_error_line(cli(server, "sample", "b"))
    screen = io.StringIO()  # a terminal: one line redrawn in place, then a newline
    with Client(server.url, token=server.token) as api:
        job, final = wait(api, "b", out=screen, tty=True, timeout=0.25, interval=0.1)
    assert not final and job.status == "queued"
    assert screen.getvalue().startswith("\rb: queued\x1b[K\rb: queued\x1b[K")
    assert screen.getvalue().endswith("\n") and screen.getvalue().count("\n") == 1
    if server.token:
        wrong = cli(server, "jobs", "list", env={"LLM_TRAIN_API_TOKEN": "wrong"})
        assert one_error_line(wrong).startswith("error: 401 unauthorized: ")

    assert ok(cli(server, "jobs", "delete", "b")) == "b: deleted\n"
    assert "404 not_found" in one_error_line(cli(server, "jobs", "delete", "b"))
    refused = cli(server, "jobs", "list", env={
        "LLM_TRAIN_API_URL": f"http://127.0.0.1:{free_port()}"})
    assert "connection_error" in one_error_line(refused) and "refused" in refused.stderr
    flag = cli(server, "jobs", "get", "c", "--url", server.url, "--json")
    assert json.loads(ok(flag))["id"] == "c"


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
def test_submit_wait_logs_follow_sample_and_a_failing_job(service, tmp_path):
    service.start_worker()
    hp_file = tmp_path / "tiny.json"
    hp_file.write_text(json.dumps(TINY))
    submit = ["jobs", "submit", "--model", "gpt-nano", "--dataset", "builtin:tinytext",
              "--hp-file", str(hp_file), "--hp", "max_steps=20", "--job-id", "good"]
    assert ok(cli(service, *submit)) == "good: submitted (queued, gpt-nano on builtin:tinytext)\n"
    # `logs -f` on a job that has yet to run: it prints lines as they come, to the end.
    followed = ok(cli(service, "jobs", "logs", "good", "-f"))
    assert '"event":"start"' in followed and followed.rstrip().endswith(
        ok(cli(service, "jobs", "logs", "good", "--tail", "1")).rstrip())
    # The same submission again is the same job (idempotent); --wait: it has succeeded.
    out = ok(cli(service, *submit, "--wait", "--interval", "0.2"))
    assert out.splitlines() == ["good: submitted (gpt-nano on builtin:tinytext)",
                                "good: succeeded"]
    shown = ok(cli(service, "jobs", "get", "good"))
    assert re.search(r"^progress +step 20/20  100%  loss \d\.\d{4}  .* tok/s  ETA 0:00$",
                     shown, re.MULTILINE), shown
    steps = json.loads(ok(cli(service, "jobs", "metrics", "good", "--after-step", "18",
                              "--json")))
    assert [p["step"] for p in steps] == [19, 20]
    assert ok(cli(service, "jobs", "wait", "good")) == "good: succeeded\n"

    sampled = json.loads(ok(cli(service, "sample", "good", "--prompt", "The ", "--seed", "1",
                                "--max-new-tokens", "20", "--json")))
    assert sampled["checkpoint"] == "ckpt_best.pt" and sampled["prompt"] == "The "
    assert 0 < len(sampled["text"].encode()) <= 20 * 3  # 20 bytes, U+FFFD where cut

    # A trainer that fails (the dataset is too small for the block size), followed live.
    small = tmp_path / "small.txt"
    small.write_text("too short\n")
    ok(cli(service, "datasets", "upload", str(small)))
    bad = cli(service, "jobs", "submit", "--model", "gpt-nano", "--dataset", "small",
              "--hp-file", str(hp_file), "--hp", "max_steps=5", "--job-id", "bad", "--wait",
              "--interval", "0.2")
    assert bad.exit_code == 3, (bad.stdout, bad.stderr)
    states = bad.stdout.splitlines()[1:]  # plain lines (no terminal), one per new state
    assert states[0].startswith(("bad: queued", "bad: running")) and len(states) >= 2
    assert len(set(states)) == len(states) and all(s.startswith("bad: ") for s in states)
    assert states[-1].startswith("bad: failed: ") and "too small" in states[-1]
    assert cli(service, "jobs", "wait", "bad", "--json").exit_code == 3
