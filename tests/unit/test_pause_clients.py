"""Pause and resume through the Python client and the CLI, against the app served over
real HTTP from a thread (EXECUTOR=none, so a running job pauses at once here; the
built-in executor's pause request is in test_api_pause.py)."""

from __future__ import annotations

import json

import pytest
from click.testing import CliRunner

from llm_train_api.cli.main import main
from llm_train_api.client import Conflict, NotFound
from tests.helpers.cli import one_error_line


def test_the_client_pauses_and_resumes(api):
    api.create_job("gpt-nano", "d", job_id="j")
    paused = api.pause_job("j")
    assert paused.status == "paused" and paused.etag and paused.pause_requested_at is None
    assert api.pause_job("j").etag == paused.etag  # a retry changes nothing
    assert [j.id for j in api.list_jobs(status=["paused"])] == ["j"]
    resumed = api.resume_job("j")
    assert resumed.status == "queued" and not resumed.is_terminal
    assert [(e.kind, e.to_status) for e in api.job_events("j")][1:] == [
        ("paused", "paused"), ("resumed", "queued")]
    api.cancel_job("j")
    with pytest.raises(Conflict) as final:
        api.pause_job("j")
    assert final.value.details["current_status"] == "cancelled"
    with pytest.raises(Conflict):
        api.resume_job("j")
    with pytest.raises(NotFound):
        api.pause_job("nope")


def test_the_cli_pauses_and_resumes(api, server):
    api.create_job("gpt-nano", "d", job_id="c")
    run = CliRunner().invoke
    base = ["--url", server.url, "--token", server.token]
    assert run(main, ["jobs", "pause", "c", *base]).stdout == "c: paused\n"
    listing = run(main, ["jobs", "list", "--status", "paused", *base]).stdout
    assert "c" in listing and "paused" in listing
    got = json.loads(run(main, ["jobs", "resume", "c", "--json", *base]).stdout)
    assert got["status"] == "queued"
    events = run(main, ["jobs", "events", "c", *base]).stdout
    assert "paused" in events and "resumed" in events
    api.cancel_job("c")
    line = one_error_line(run(main, ["jobs", "pause", "c", *base]))
    assert "409" in line and "final" in line
