"""Multi-process (DDP) training: real torchrun, real gloo ranks on CPU, one thread each.

The reference for every comparison is the single-process trainer at the same global
``batch_size``: each rank trains on its slice of the very batch one process would draw, so
the two loss curves differ only by float reduction order (gloo's all-reduce sums the
ranks' gradients in another order than one process's backward does). Measured on this
machine: < 1e-6 relative over 16 steps; the tests allow 1e-3, far below anything a
sharding or averaging bug produces (a wrong shard or a missing all-reduce moves the curve
by percents within a few steps).
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

from llm_train_api.training.checkpoint import LATEST, load_checkpoint
from llm_train_api.training.common_run import FAULT_ENV
from llm_train_api.training.data import BatchSampler
from llm_train_api.training.events import EventWriter, parse_line
from llm_train_api.training.spec import RunSpec, SpecError, run_command, write_spec
from llm_train_api.training.trainer import execute
from tests.helpers.ddp import assert_same_curve as _assert_same_curve
from tests.helpers.ddp import finish, rank_processes, start_in_session
from tests.helpers.training import REPO_ROOT, cli_env, events_of, make_spec, read_metrics

REL_TOL = 1e-3  # per-step relative difference allowed between 1 and 2 processes


def ddp_spec(data_dir: Path, processes: int = 2, **hp: Any) -> dict[str, Any]:
    return {**make_spec(data_dir, **hp), "processes": processes}


def start_ddp(spec: dict[str, Any], job: Path, *extra: str,
              env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """What the worker does: write spec.json, run run_command(job, processes=...) in a
    session of its own (so that killpg reaches what the worker's would)."""
    write_spec(job, spec)
    argv = run_command(job, python=sys.executable, processes=spec["processes"]) + list(extra)
    return start_in_session(argv, env)


def run_ddp(spec: dict[str, Any], job: Path, *extra: str, env: dict[str, str] | None = None,
            timeout: float = 180) -> tuple[int, str, str]:
    return finish(start_ddp(spec, job, *extra, env=env), timeout)


def run_single(spec: dict[str, Any], job: Path) -> list[dict[str, Any]]:
    """The reference: the same spec in one process (in-process, no torchrun)."""
    out = io.StringIO()
    assert execute({**spec, "processes": 1}, job, EventWriter(out)) == 0
    return events_of(out.getvalue())


def assert_same_curve(one: list[dict[str, Any]], two: list[dict[str, Any]]) -> float:
    return _assert_same_curve(one, two, REL_TOL)


# ---------------------------------------------------------------- fast, no torchrun


def test_run_command_is_unchanged_for_one_process_and_torchrun_above(tmp_path):
    one = run_command(tmp_path, python="py")
    assert one == ["py", "-m", "llm_train_api.training", "run", "--job-dir", str(tmp_path)]
    assert run_command(tmp_path, python="py", processes=1) == one
    two = run_command(tmp_path, python="py", processes=2)
    assert two[:4] == ["py", "-m", "llm_train_api.training.launch", "--"]
    assert two[4:] == ["py", "-m", "torch.distributed.run", "--standalone",
                       "--nproc-per-node", "2", "-m", "llm_train_api.training", "run",
                       "--job-dir", str(tmp_path)]
    for bad in (0, 65, True, "2"):
        with pytest.raises(SpecError, match="processes"):
            run_command(tmp_path, processes=bad)  # type: ignore[arg-type]


def test_spec_files_without_processes_still_load(data_dir, tmp_path):
    old = {k: v for k, v in make_spec(data_dir).items()}
    assert RunSpec.from_dict(old).processes == 1
    spec = RunSpec.from_dict({**old, "processes": 4})
    assert spec.to_dict()["processes"] == 4
    saved = json.loads(write_spec(tmp_path, spec).read_text())
    assert RunSpec.from_dict(saved) == spec
    with pytest.raises(SpecError, match="between 1 and 64"):
        RunSpec.from_dict({**old, "processes": 0})


def test_the_launcher_and_the_admission_rules_import_without_torch():
    code = ('import sys; sys.modules["torch"] = None; sys.modules["numpy"] = None\n'
            "import llm_train_api.training.launch, llm_train_api.services.admission\n"
            "from llm_train_api.training.spec import default_processes as d\n"
            "assert (d(None), d({'gpus': 4}), d({'gpus': 4, 'processes': 2})) == (1, 4, 2)\n"
            "print('ok')")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=cli_env(), cwd=REPO_ROOT, timeout=60)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr


def test_rank_shards_are_disjoint_slices_of_the_single_process_batch():
    tokens = torch.randint(0, 256, (5000,), dtype=torch.uint8).numpy()
    args = (tokens, 16, 8, 7, 0.2)
    one = BatchSampler(*args, accumulation_steps=3)
    ranks = [BatchSampler(*args, accumulation_steps=3, rank=r, world_size=4) for r in range(4)]
    for step in (0, 5):
        x, y = one.train_batch(step)
        parts = [r.train_batch(step) for r in ranks]
        assert parts[0][0].shape == (3, 2, 16)
        assert torch.equal(torch.cat([p[0] for p in parts], dim=1), x)
        assert torch.equal(torch.cat([p[1] for p in parts], dim=1), y)
    xv, _ = one.val_batch(1)
    assert torch.equal(torch.cat([r.val_batch(1)[0] for r in ranks]), xv)
    with pytest.raises(ValueError, match="cannot split"):
        BatchSampler(*args, rank=0, world_size=3)


# ---------------------------------------------------------------- real torchrun


@pytest.mark.slow
def test_two_ranks_reproduce_the_single_process_curve_and_only_rank_0_reports(
        data_dir, tmp_path):
    # Accumulation 2 exercises no_sync on the first micro-step of each optimizer step.
    hp = {"max_steps": 16, "gradient_accumulation_steps": 2, "eval_interval": 8,
          "checkpoint_interval": 8, "dropout": 0.0}
    spec = ddp_spec(data_dir, **hp)
    single = run_single(spec, tmp_path / "one")
    code, out, err = run_ddp(spec, tmp_path / "two")
    assert code == 0, out + err
    worst = assert_same_curve(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two"))
    print(f"max relative loss difference, 1 vs 2 processes: {worst:.3g}")

    events = events_of(out)
    kinds = [e["event"] for e in events]
    # Exactly the single-process protocol: one prepare/start/done, a metrics line per step.
    assert kinds.count("prepare") == 1 and kinds.count("start") == 1
    assert kinds.count("metrics") == 16 and kinds[-1] == "done" and kinds.count("done") == 1
    assert "error" not in kinds
    assert kinds.count("checkpoint") == [e["event"] for e in single].count("checkpoint")
    start = events[kinds.index("start")]
    assert start["processes"] == 2 and start["batch_size_per_process"] == 4
    assert start["tokens_per_step"] == 8 * 32 * 2  # global, as with one process
    assert "[rank 1]" not in out + err
    # One writer: each step once in metrics.jsonl (two appenders would double them).
    assert [m["step"] for m in read_metrics(tmp_path / "two")] == list(range(1, 17))
    state = load_checkpoint(tmp_path / "two" / LATEST)
    assert state["step"] == 16 and len(state["rng_ranks"]) == 2
    assert not any(k.startswith("module.") for k in state["model"])  # loads without DDP
    assert not torch.equal(state["rng_ranks"][0]["torch_cpu"], state["rng_ranks"][1]["torch_cpu"])


@pytest.mark.slow
def test_resume_under_ddp_continues_the_step_count(data_dir, tmp_path):
    spec = ddp_spec(data_dir, max_steps=12, eval_interval=6, checkpoint_interval=100)
    job = tmp_path / "job"
    code, out, err = run_ddp(spec, job, "--stop-at-step", "5")
    assert code == 75, out + err
    done = events_of(out)[-1]
    assert done["event"] == "done" and done["outcome"] == "preempted" and done["step"] == 5
    assert load_checkpoint(job / LATEST)["step"] == 5
    shutil.copytree(job, tmp_path / "as-one")  # the same checkpoint, resumed by 1 process

    code, out, err = run_ddp(spec, job)  # the worker's rerun of the same command
    assert code == 0, out + err
    events = events_of(out)
    start = next(e for e in events if e["event"] == "start")
    assert start["resumed_from_step"] == 5
    assert [e["step"] for e in events if e["event"] == "metrics"] == list(range(6, 13))
    assert [m["step"] for m in read_metrics(job)] == list(range(1, 13))
    run_single(spec, tmp_path / "one")  # uninterrupted, one process
    assert_same_curve(read_metrics(tmp_path / "one"), read_metrics(job))
    resumed = run_single(spec, tmp_path / "as-one")
    assert next(e for e in resumed if e["event"] == "start")["resumed_from_step"] == 5
    assert_same_curve(read_metrics(tmp_path / "one"), read_metrics(tmp_path / "as-one"))


@pytest.mark.slow
def test_a_failure_on_one_rank_exits_1_with_that_ranks_error(data_dir, tmp_path):
    spec = ddp_spec(data_dir, max_steps=50)
    code, out, err = run_ddp(spec, tmp_path / "job", env={FAULT_ENV: "1:3"})
    assert code == 1, out + err
    events = events_of(out)
    errors = [e for e in events if e["event"] == "error"]
    # One error: rank 1's cause, not rank 0's consequential "connection closed".
    assert len(errors) == 1, errors
    assert errors[0]["message"].startswith("rank 1: RuntimeError: injected failure on rank 1")
    assert errors[0]["exit_code"] == 1
    assert events[-1]["event"] == "done" and events[-1]["outcome"] == "failed"
    assert [e["event"] for e in events].count("done") == 1


@pytest.mark.slow
def test_a_batch_that_does_not_split_over_the_ranks_exits_2(data_dir, tmp_path):
    code, out, err = run_ddp(ddp_spec(data_dir, batch_size=5), tmp_path / "job")
    assert code == 2, out + err
    errors = [e for e in events_of(out) if e["event"] == "error"]
    assert len(errors) == 1
    assert "batch_size 5 is the global batch and must be divisible by the 2 processes" in \
        errors[0]["message"]


@pytest.mark.slow
def test_sigterm_under_torchrun_checkpoints_and_exits_75(data_dir, tmp_path):
    spec = ddp_spec(data_dir, max_steps=1_000_000, checkpoint_interval=0, eval_interval=0,
                    log_interval=5)
    job = tmp_path / "job"
    proc = start_ddp(spec, job)
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # wait until the training loop is running
            lines.append(line)
            event = parse_line(line)
            if event and event["event"] == "metrics" and event["step"] >= 10:
                break
        assert sorted(rank_processes(job).values()) == [0, 1]
        sent = time.monotonic()
        os.killpg(proc.pid, signal.SIGTERM)  # what the worker does to stop a job
        rest, stderr = proc.communicate(timeout=60)
        stopped_in = time.monotonic() - sent
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 75, "".join(lines) + rest + stderr
    assert stopped_in < 20
    events = events_of("".join(lines) + rest)
    done = events[-1]
    assert done["event"] == "done" and done["outcome"] == "preempted" and done["step"] >= 10
    assert "error" not in [e["event"] for e in events]
    state = load_checkpoint(job / LATEST)
    assert state["step"] == done["step"] and len(state["rng_ranks"]) == 2
    assert rank_processes(job) == {}


@pytest.mark.slow
def test_sigkill_of_the_launcher_leaves_no_rank_behind(data_dir, tmp_path):
    spec = ddp_spec(data_dir, max_steps=1_000_000, checkpoint_interval=0, eval_interval=0,
                    log_interval=5)
    job = tmp_path / "job"
    proc = start_ddp(spec, job)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            event = parse_line(line)
            if event and event["event"] == "metrics":
                break
        ranks = rank_processes(job)
        assert sorted(ranks.values()) == [0, 1]
        os.killpg(proc.pid, signal.SIGKILL)  # a cancel past its grace period
        proc.wait(timeout=10)
        deadline = time.monotonic() + 15
        while rank_processes(job) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert rank_processes(job) == {}, "ranks outlived their launcher"
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        for pid in rank_processes(job):
            os.kill(pid, signal.SIGKILL)


@pytest.mark.slow
def test_a_rank_killed_by_a_signal_kills_the_launcher_with_it(data_dir, tmp_path):
    """The OOM killer takes one rank: the executor must see a death by signal (retry the
    job), not exit 1 with the survivors' "connection closed" (fail it for good)."""
    spec = ddp_spec(data_dir, max_steps=1_000_000, checkpoint_interval=0, eval_interval=0,
                    log_interval=5)
    job = tmp_path / "job"
    proc = start_ddp(spec, job)
    try:
        assert proc.stdout is not None
        lines = []
        for line in proc.stdout:
            lines.append(line)
            event = parse_line(line)
            if event and event["event"] == "metrics":
                break
        victim = next(pid for pid, rank in rank_processes(job).items() if rank == 1)
        os.kill(victim, signal.SIGKILL)
        rest, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL, "".join(lines) + rest + stderr
    assert "a rank was killed by SIGKILL" in rest
    assert not [e for e in events_of(rest) if e["event"] in ("error", "done")]
