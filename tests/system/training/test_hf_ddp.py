"""Fine-tuning under DDP: real torchrun, two gloo ranks on CPU, one thread each, on the
tiny random Llama of tests/helpers/tiny_hf.py, launched as a worker launches it
(``run_command(job, processes=2)``: the launcher, torchrun, the ranks).

The reference is the one-process run at the same global ``batch_size`` and seed: each rank
trains on its slice of the very batch one process draws and the loss is averaged over the
target tokens of all ranks, so the curves differ only by float reduction order. LoRA
dropout draws other masks on a rank's half batch than on the whole one, so the 1-vs-2
comparisons run without it; the resume test keeps it on, against an uninterrupted
two-process run, so that every rank's RNG state must come back.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import load_file

from llm_train_api.training.common_run import FAULT_ENV
from llm_train_api.training.events import EventWriter, parse_line
from llm_train_api.training.hf.spec import run_command
from llm_train_api.training.hf.trainer import execute
from tests.helpers import ddp
from tests.helpers.ddp import job_processes
from tests.helpers.training import events_of, read_metrics

pytestmark = pytest.mark.slow

REL_TOL = 1e-4  # per-step relative difference allowed between 1 and 2 processes
HP = {"num_threads": 1, "max_steps": 6, "batch_size": 4, "gradient_accumulation_steps": 2,
      "learning_rate": 0.01, "log_interval": 1, "eval_interval": 3, "eval_steps": 2,
      "checkpoint_interval": 0, "lora": {"r": 4, "alpha": 8, "dropout": 0.0}}


def spec_of(model: Path, data_dir: Path, processes: int, **hp: Any) -> dict[str, Any]:
    hp = {**HP, **hp}
    if hp.get("method") == "full":
        del hp["lora"]
    return {"job_id": "ddp", "model_path": str(model), "dataset": "chat",
            "data_dir": str(data_dir), "processes": processes, "hyperparameters": hp}


def start(spec: dict[str, Any], job: Path, *extra: str,
          env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """What the worker does: write spec.json and run ``run_command`` in a session of its
    own, so that a killpg reaches what the worker's would."""
    job.mkdir(parents=True, exist_ok=True)
    (job / "spec.json").write_text(json.dumps(spec))
    argv = run_command(job, python=sys.executable, processes=spec["processes"]) + list(extra)
    return ddp.start_in_session(argv, env)


def finish(proc: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str, str]:
    return ddp.finish(proc, timeout)


def run_single(spec: dict[str, Any], job: Path) -> None:
    """The reference: the same spec in this process, without torchrun."""
    assert execute({**spec, "processes": 1}, job, EventWriter(enabled=False)) == 0


def assert_same_curve(one: list[dict[str, Any]], two: list[dict[str, Any]],
                      rel: float = REL_TOL) -> float:
    return ddp.assert_same_curve(one, two, rel)


def assert_same_tensors(a: Path, b: Path) -> None:
    x, y = load_file(a), load_file(b)
    assert x.keys() == y.keys()
    for name in x:
        torch.testing.assert_close(x[name], y[name], rtol=1e-4, atol=1e-6, msg=name)


def all_threads_stopped(pid: int) -> bool:
    """Whether every thread of ``pid`` is stopped (by SIGSTOP)."""
    try:
        return all("State:\tT" in (task / "status").read_text()
                   for task in Path(f"/proc/{pid}/task").iterdir())
    except OSError:  # a thread ended while we looked
        return False


def signal_pending(pid: int, signum: int) -> bool:
    """Whether ``signum`` waits to be delivered to ``pid`` (a stopped process keeps it)."""
    status = Path(f"/proc/{pid}/status").read_text()
    masks = [int(line.split()[1], 16) for line in status.splitlines()
             if line.startswith(("SigPnd:", "ShdPnd:"))]
    return any(mask >> (signum - 1) & 1 for mask in masks)


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("method", ["lora", "full"])
def test_two_ranks_reproduce_the_single_process_run(tmp_path, tiny_hf_model, chat_data_dir,
                                                    method):
    hp = {"method": method, "learning_rate": 0.003} if method == "full" else {}
    spec = spec_of(tiny_hf_model, chat_data_dir, 2, **hp)
    run_single(spec, tmp_path / "one")
    code, out, err = finish(start(spec, tmp_path / "two"))
    assert code == 0, out + err
    worst = assert_same_curve(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two"))
    print(f"{method}: max relative loss difference, 1 vs 2 processes: {worst:.3g}")

    kinds = [e["event"] for e in events_of(out)]
    assert kinds.count("start") == 1 and kinds.count("metrics") == 6
    assert "error" not in kinds and kinds[-1] == "done" and kinds.count("done") == 1
    assert "[rank 1]" not in out + err
    # One writer: each step once in metrics.jsonl (two appenders would double them).
    assert [m["step"] for m in read_metrics(tmp_path / "two")] == list(range(1, 7))
    # The same weights: in the last checkpoint and in the output (merged, for LoRA).
    files = ["checkpoints/step-00000006/trainable.safetensors",
             "output/model/model.safetensors"]
    if method == "lora":
        files.append("output/adapter/adapter_model.safetensors")
    for name in files:
        assert_same_tensors(tmp_path / "one" / name, tmp_path / "two" / name)


def test_sigterm_checkpoints_exits_75_and_the_rerun_resumes_exactly(
        tmp_path, tiny_hf_model, chat_data_dir):
    # Dropout on: the resumed ranks must continue their own RNG streams.
    spec = spec_of(tiny_hf_model, chat_data_dir, 2, max_steps=30, eval_interval=10,
                   lora={"r": 4, "alpha": 8, "dropout": 0.1})
    job = tmp_path / "job"
    proc = start(spec, job)
    lines: list[str] = []
    ranks: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.append(line)
            event = parse_line(line)
            if event and event["event"] == "start":
                processes = job_processes(job)
                ranks = [pid for pid, role in processes.items() if role == "rank"]
                assert sorted(processes.values()) == ["launcher", "rank", "rank", "torchrun"]
            if event and event["event"] == "metrics" and event["step"] >= 2:
                break
        # Hold the ranks mid-run while the SIGTERM travels launcher -> torchrun -> ranks,
        # so that they get it before the run ends whatever that journey costs. Every
        # thread must be stopped first: one still running would take SIGTERM (signal 15)
        # before its pending SIGSTOP (19) and never show it pending.
        for pid in ranks:
            os.kill(pid, signal.SIGSTOP)
        wait_for(lambda: all(map(all_threads_stopped, ranks)), "the ranks did not stop")
        os.killpg(proc.pid, signal.SIGTERM)  # what the worker does to stop a job
        wait_for(lambda: all(signal_pending(pid, signal.SIGTERM) for pid in ranks),
                 "torchrun did not forward SIGTERM to the ranks")
        for pid in ranks:
            os.kill(pid, signal.SIGCONT)
        rest, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 75, "".join(lines) + rest + err
    events = events_of("".join(lines) + rest)
    done = events[-1]
    assert done["event"] == "done" and done["outcome"] == "preempted"
    stopped = done["step"]
    assert 2 <= stopped < 30 and "error" not in [e["event"] for e in events]
    assert json.loads((job / "checkpoints/latest.json").read_text())["step"] == stopped
    rng = load_file(job / f"checkpoints/step-{stopped:08d}/optimizer.safetensors")
    assert not torch.equal(rng["rng.0.torch_cpu"], rng["rng.1.torch_cpu"])  # per rank
    assert job_processes(job) == {}

    code, out, err = finish(start(spec, job))  # the worker's rerun of the same command
    assert code == 0, out + err
    assert next(e for e in events_of(out) if e["event"] == "start")[
        "resumed_from_step"] == stopped
    code, out, err = finish(start(spec, tmp_path / "whole"))
    assert code == 0, out + err
    assert_same_curve(read_metrics(tmp_path / "whole"), read_metrics(job), rel=1e-5)
    assert_same_tensors(tmp_path / "whole/output/adapter/adapter_model.safetensors",
                        job / "output/adapter/adapter_model.safetensors")


@pytest.mark.parametrize(("hp", "env", "code", "message"), [
    ({}, {FAULT_ENV: "1:2"}, 1, "rank 1: RuntimeError: injected failure on rank 1 at step 2"),
    ({"batch_size": 5}, {}, 2, "batch_size 5 is the global batch and must be divisible by "
                               "the 2 processes"),
], ids=["training-error", "bad-spec"])
def test_a_failure_on_a_rank_is_one_error_with_its_cause(tmp_path, tiny_hf_model,
                                                         chat_data_dir, hp, env, code,
                                                         message):
    spec = spec_of(tiny_hf_model, chat_data_dir, 2, max_steps=50, **hp)
    rc, out, err = finish(start(spec, tmp_path / "job", env=env))
    assert rc == code, out + err
    events = events_of(out)
    errors = [e for e in events if e["event"] == "error"]
    # One error: the failing rank's cause, not the others' consequential "connection
    # closed" (or, for a spec every rank refuses, their copies of it).
    assert len(errors) == 1, errors
    assert message in errors[0]["message"] and errors[0]["exit_code"] == code
    assert events[-1]["event"] == "done" and events[-1]["outcome"] == "failed"
    assert events[-1]["exit_code"] == code
    assert [e["event"] for e in events].count("done") == 1
    assert job_processes(tmp_path / "job") == {}
