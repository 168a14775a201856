"""The trainer as the worker runs it, and its longer runs: `python -m llm_train_api.training`
processes (run, resume, sample, models, SIGTERM, bad specs) and an overfitting run that
takes seconds (one CPU thread)."""

import json
import sys

import pytest

from llm_train_api.training.checkpoint import BEST, LATEST, load_checkpoint
from llm_train_api.training.sample import sample
from llm_train_api.training.spec import run_command, write_spec
from tests.helpers.training import (
    events_of,
    make_spec,
    read_metrics,
    run_cli,
    run_inprocess,
    sigterm_when_training,
)


def test_overfit_tiny_corpus_then_greedy_sampling_reproduces_it(data_dir, tmp_path):
    line = "It was a bright cold day in April, and the clocks were striking thirteen.\n"
    (data_dir / "datasets" / "line.txt").write_text(line * 60)
    spec = make_spec(data_dir, dataset="line", max_steps=300, block_size=48, batch_size=8,
                     learning_rate=1e-2, warmup_steps=10, eval_interval=0,
                     checkpoint_interval=0, log_interval=50)
    code, _ = run_inprocess(spec, tmp_path / "job")
    assert code == 0
    assert read_metrics(tmp_path / "job")[-1]["train_loss"] < 0.3
    prompt, expected = line[:20], (line * 3)[20:120]
    got = sample(tmp_path / "job" / LATEST, prompt, max_new_tokens=len(expected), top_k=1)
    assert got == expected
    # temperature sampling is seeded and reproducible
    a = sample(tmp_path / "job" / LATEST, prompt, 30, temperature=1.0, top_k=5, seed=7)
    assert a == sample(tmp_path / "job" / LATEST, prompt, 30, temperature=1.0, top_k=5, seed=7)


def test_resume_equivalence_through_the_cli(data_dir, tmp_path):
    spec = make_spec(data_dir, max_steps=10, checkpoint_interval=0, eval_interval=5)
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    one, two = tmp_path / "one", tmp_path / "two"
    p1 = run_cli("run", "--job-dir", str(one), "--spec", str(spec_file))
    assert p1.returncode == 0, p1.stdout + p1.stderr
    p2 = run_cli("run", "--job-dir", str(two), "--spec", str(spec_file), "--stop-at-step", "5")
    assert p2.returncode == 75, p2.stdout + p2.stderr
    p3 = run_cli("run", "--job-dir", str(two))  # spec.json from the job folder
    assert p3.returncode == 0, p3.stdout + p3.stderr
    assert events_of(p3.stdout)[1]["resumed_from_step"] == 5
    losses_one = [m["train_loss"] for m in read_metrics(one)]
    losses_two = [m["train_loss"] for m in read_metrics(two)]
    assert len(losses_one) == 10
    assert losses_two == pytest.approx(losses_one, rel=1e-5, abs=1e-6)
    p4 = run_cli("sample", "--checkpoint", str(two / BEST), "--prompt", "It was",
                 "--max-new-tokens", "20", "--top-k", "1")
    assert p4.returncode == 0, p4.stderr
    assert len(p4.stdout) >= 10


def test_sigterm_checkpoints_and_exits_75(data_dir, tmp_path):
    spec = make_spec(data_dir, max_steps=1_000_000, checkpoint_interval=0, eval_interval=0,
                     log_interval=5)
    job = tmp_path / "job"
    write_spec(job, spec)  # what the worker does, then runs run_command(job)
    code, out, stderr, stopped_in = sigterm_when_training(
        run_command(job, python=sys.executable), step=10, timeout=30)
    assert code == 75, stderr
    assert stopped_in < 10
    events = events_of(out)
    done = events[-1]
    assert done["event"] == "done" and done["outcome"] == "preempted" and done["step"] >= 10
    state = load_checkpoint(job / LATEST)
    assert state["step"] == done["step"]
    assert any(e["event"] == "checkpoint" and e["step"] == done["step"] for e in events)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--model", "gpt-nano", "--dataset", "repeat", "--hp", '{"lerning_rate": 0.1}'],
         "lerning_rate"),
        (["--model", "gpt-9000", "--dataset", "repeat"], "gpt-9000"),
        (["--model", "gpt-nano", "--dataset", "missing"], "missing"),
        (["--model", "gpt-nano", "--dataset", "../etc/passwd"], "Invalid dataset name"),
    ],
)
def test_bad_specs_exit_2_with_a_named_error(data_dir, tmp_path, args, needle):
    proc = run_cli("run", "--job-dir", str(tmp_path / "job"), "--data-dir", str(data_dir),
                   *args)
    assert proc.returncode == 2, proc.stdout + proc.stderr
    events = events_of(proc.stdout)
    error = next(e for e in events if e["event"] == "error")
    assert needle in error["message"] and error["exit_code"] == 2
    assert events[-1] == {**events[-1], "event": "done", "outcome": "failed", "exit_code": 2}
    assert not (tmp_path / "job" / LATEST).exists()


def test_cli_help_and_models_need_no_training():
    help_proc = run_cli("--help")
    assert help_proc.returncode == 0 and "run" in help_proc.stdout
    assert "75" in run_cli("run", "--help").stdout + help_proc.stdout
    usage = run_cli("run", "--model", "gpt-nano")  # no --job-dir
    assert usage.returncode == 2
    assert "--job-dir" in next(e for e in events_of(usage.stdout) if e["event"] == "error")[
        "message"]
    models = run_cli("models")
    assert models.returncode == 0
    catalog = json.loads(models.stdout)
    assert [m["name"] for m in catalog][:3] == ["gpt-nano", "gpt-micro", "gpt-mini"]
    assert all(m["hyperparameters"] for m in catalog)
