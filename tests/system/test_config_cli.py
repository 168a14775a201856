"""A bad LLM_TRAIN_API_* value stops the CLI with one line naming it (no traceback, nothing
written): each server command run as a fresh `python -m llm_train_api.cli` process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest


@pytest.mark.parametrize("command", [["serve"], ["worker"], ["up"], ["tokens", "list"]])
def test_the_cli_stops_with_one_line_and_writes_nothing(tmp_path, command):
    instance = tmp_path / "instance"
    env = {**os.environ, "LLM_TRAIN_API_INSTANCE_PATH": str(instance),
           "LLM_TRAIN_API_DATA_DIR": "s3://bucket/llm", "LLM_TRAIN_API_BIND": "127.0.0.1:9"}
    out = subprocess.run([sys.executable, "-m", "llm_train_api.cli", *command], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 1, out.stdout + out.stderr
    assert out.stderr.startswith("Error: bad configuration: LLM_TRAIN_API_DATA_DIR must be")
    assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1
    assert not instance.exists() and not (tmp_path / "s3:").exists()
