"""Helpers for the trainer tests: tiny corpora, spec builders and a CLI runner.

Every run uses ``num_threads=1`` (and ``OMP_NUM_THREADS=1`` for subprocesses) so several
test suites can share the CI machine's two cores.
"""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]

# A paragraph the overfitting test must be able to reproduce verbatim.
PARAGRAPH = (
    "It was a bright cold day in April, and the clocks were striking thirteen. "
    "The small dog ran along the wall, barked twice at the moon and went home to sleep.\n"
)


def tiny_hp(**overrides: Any) -> dict[str, Any]:
    hp = {
        "batch_size": 8,
        "block_size": 32,
        "epochs": 10000,
        "max_steps": 20,
        "learning_rate": 3e-3,
        "warmup_steps": 5,
        "eval_interval": 10,
        "eval_steps": 2,
        "checkpoint_interval": 10,
        "log_interval": 1,
        "num_threads": 1,
        "device": "cpu",
    }
    hp.update(overrides)
    return hp


def make_spec(data_dir: Path, dataset: str = "repeat", model: str = "gpt-nano",
              **hp: Any) -> dict[str, Any]:
    return {"job_id": "job-1", "model_name": model, "dataset": dataset,
            "hyperparameters": tiny_hp(**hp), "data_dir": str(data_dir)}


def cli_env() -> dict[str, str]:
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(REPO_ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("LLM_TRAIN_API_DATA_DIR", None)
    return env


def run_cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "llm_train_api.training", *args],
        capture_output=True, text=True, timeout=timeout, env=cli_env(), cwd=REPO_ROOT,
    )


def sigterm_when_training(argv: list[str], step: int, timeout: float
                          ) -> tuple[int, str, str, float]:
    """Run the trainer command ``argv``, send it SIGTERM once it reports the metrics of
    ``step`` (the training loop is running) and wait up to ``timeout`` s for its end:
    ``(exit code, stdout, stderr, seconds from the signal to the exit)``."""
    from llm_train_api.training.events import parse_line

    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(), cwd=REPO_ROOT)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            event = parse_line(line)
            if event and event["event"] == "metrics" and event["step"] >= step:
                break
        sent = time.monotonic()
        proc.send_signal(signal.SIGTERM)
        rest, stderr = proc.communicate(timeout=timeout)
        stopped_in = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    return proc.returncode, "".join(lines) + rest, stderr, stopped_in


def events_of(stdout: str) -> list[dict[str, Any]]:
    from llm_train_api.training.events import parse_line

    return [e for e in map(parse_line, stdout.splitlines()) if e is not None]


def read_metrics(job_dir: Path) -> list[dict[str, Any]]:
    lines = (job_dir / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line) for line in lines]


def run_inprocess(spec: dict[str, Any], job_dir: Any, **kwargs: Any
                  ) -> tuple[int, list[dict[str, Any]]]:
    """Run the trainer in this process; its exit code and the events it printed."""
    from llm_train_api.training.events import EventWriter
    from llm_train_api.training.trainer import execute

    out = io.StringIO()
    code = execute(spec, job_dir, EventWriter(out), **kwargs)
    return code, events_of(out.getvalue())
