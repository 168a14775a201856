"""The live API against its own OpenAPI document: `st run --checks all` (schemathesis).

A real gunicorn per executor mode (`none`, the pure registry, and `local`, the built-in
executor with its admission checks), with auth required, fuzzed once as the bootstrap
admin and once as a `user`. Every schemathesis check runs: no 5xx, documented statuses,
content types, headers and bodies, invalid data refused and valid data accepted, no
unsupported method answered, no access after a delete, every created resource readable,
auth not ignored, plus the service's own (tests/helpers/st_hooks.py: errors are JSON in
the `{code, status, message, errors?}` shape). tests/system/schemathesis.toml lists the
few places where a check is told what JSON Schema cannot state, and why.

Each run has a fixed time budget (`--max-time`), so the file takes about a minute; the
output of a failing run, with a curl reproduction per failure, is the assertion message.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.helpers.servers import REPO_ROOT, GunicornServer

pytestmark = pytest.mark.slow

CONFIG = Path(__file__).with_name("schemathesis.toml")
# Seconds of fuzzing per run; the stateful phase and the fuzzing phase share them.
BUDGET_S = {"admin": 14, "user": 8}
MAX_EXAMPLES = 50  # per operation
# A follow stream ends after this long, so a `logs?follow=true` case cannot hang the run.
# Fuzzing creates hundreds of jobs and datasets: no per-user cap (0) may turn them into 429s.
FUZZ_ENV = {"LLM_TRAIN_API_LOG_FOLLOW_MAX_S": "1", "LLM_TRAIN_API_LOG_LEVEL": "WARNING",
            "LLM_TRAIN_API_ACCESS_LOG": "", "LLM_TRAIN_API_MAX_QUEUED_PER_USER": "0",
            "LLM_TRAIN_API_MAX_DATASETS_PER_USER": "0"}

_SUMMARIES: list[str] = []


@pytest.fixture(scope="module", params=["none", "local"])
def server(request, tmp_path_factory):
    tmp = tmp_path_factory.mktemp(f"fuzz-{request.param}")
    env = {**FUZZ_ENV, "LLM_TRAIN_API_INSTANCE_PATH": str(tmp / "instance"),
           "LLM_TRAIN_API_EXECUTOR": request.param}
    srv = GunicornServer(workers=2, env=env, log_path=tmp / "gunicorn.log")
    srv.start()
    assert srv.token, "auth is required by default: the server wrote an admin token"
    created = subprocess.run(
        [sys.executable, "-m", "llm_train_api.cli", "tokens", "create", "--name", "fuzzer",
         "--role", "user"], cwd=REPO_ROOT, env=srv.env, capture_output=True, text=True,
        timeout=60, check=True)
    srv.tokens = {"admin": srv.token, "user": created.stdout.strip().splitlines()[-1]}
    srv.executor = request.param
    yield srv
    srv.stop()


@pytest.mark.parametrize("role", ["admin", "user"])
def test_schemathesis_all_checks(server, role, capsys):
    token = server.tokens[role]
    cmd = [str(Path(sys.executable).with_name("st")), "--config-file", str(CONFIG), "run",
           f"{server.url}/openapi.json", "--checks", "all",
           "-H", f"Authorization: Bearer {token}",
           "--max-examples", str(MAX_EXAMPLES), "--max-time", str(BUDGET_S[role]),
           "--request-timeout", "10", "--generation-deterministic",
           # One worker: hypothesis's lambda descriptions are not thread-safe, and several
           # schemathesis workers intermittently stop with an internal error.
           "--workers", "1", "--no-color", "--output-truncate", "false"]
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT)}
    done = subprocess.run(cmd, cwd=REPO_ROOT, env=env, capture_output=True, text=True,
                          timeout=BUDGET_S[role] + 120)
    output = done.stdout + done.stderr
    label = f"executor={server.executor} role={role}"
    summary = [line.strip() for line in output.splitlines()
               if re.search(r"generated, |passed in|failures? in|errors? in", line)]
    _SUMMARIES.append(f"schemathesis [{label}]: {' | '.join(summary)}")
    with capsys.disabled():
        print(f"\n{_SUMMARIES[-1]}")
    # A token in the output is filtered by schemathesis itself; be sure anyway.
    output = output.replace(token, "<token>")
    assert done.returncode == 0, f"schemathesis failed ({label}):\n{output[-20000:]}"
    assert "Test cases:" in output, output[-5000:]
