"""The fine-tuning trainer as a worker runs it: `python -m llm_train_api.training.hf`
processes, SIGTERMed for real, resumed with the bare command, and refusing bad specs."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from llm_train_api.training.hf.spec import run_command
from tests.helpers.training import REPO_ROOT, cli_env, events_of, sigterm_when_training

pytestmark = pytest.mark.slow

HP = {"num_threads": 1, "max_steps": 40, "log_interval": 1, "eval_interval": 10,
      "checkpoint_interval": 0, "lr_schedule": "cosine", "warmup_steps": 3,
      "learning_rate": 0.01, "lora": {"r": 8, "alpha": 16, "dropout": 0.1}}


def write_spec(job, model, data_dir, hp):
    job.mkdir(parents=True)
    (job / "spec.json").write_text(json.dumps({
        "job_id": job.name, "model_path": str(model), "dataset": "chat",
        "data_dir": str(data_dir), "hyperparameters": hp}))


def run_to_end(job):
    done = subprocess.run(run_command(job, python=sys.executable), capture_output=True,
                          text=True, env=cli_env(), cwd=REPO_ROOT, timeout=300)
    return done.returncode, events_of(done.stdout), done.stderr


def metrics(job):
    rows = [json.loads(line) for line in (job / "metrics.jsonl").read_text().splitlines()]
    return [(r["step"], r["train_loss"], r.get("val_loss")) for r in rows]


def test_sigterm_checkpoints_exits_75_and_the_rerun_resumes_exactly(
        tmp_path, tiny_hf_model, chat_data_dir):
    whole, split = tmp_path / "whole", tmp_path / "split"
    write_spec(whole, tiny_hf_model, chat_data_dir, HP)
    write_spec(split, tiny_hf_model, chat_data_dir, HP)
    code, out, stderr, _ = sigterm_when_training(run_command(split, python=sys.executable),
                                                 step=2, timeout=60)
    assert code == 75, stderr
    events = events_of(out)
    done = events[-1]
    assert done["event"] == "done" and done["outcome"] == "preempted"
    stopped = done["step"]
    assert 2 <= stopped < 40
    assert [e["step"] for e in events if e["event"] == "checkpoint"] == [stopped]
    pointer = json.loads((split / "checkpoints/latest.json").read_text())
    assert pointer["step"] == stopped

    code, resumed, stderr = run_to_end(split)  # the bare command: spec.json, checkpoint
    assert code == 0, stderr
    assert [e for e in resumed if e["event"] == "start"][0]["resumed_from_step"] == stopped
    code, _, stderr = run_to_end(whole)
    assert code == 0, stderr
    a, b = metrics(whole), metrics(split)
    assert [r[0] for r in a] == [r[0] for r in b] == list(range(1, 41))
    flat = [[v for _, *values in rows for v in values if v is not None] for rows in (a, b)]
    assert flat[1] == pytest.approx(flat[0], rel=1e-5)
    assert (split / "output/adapter/adapter_model.safetensors").is_file()


@pytest.mark.parametrize(("hp", "needle"), [
    ({"lerning_rate": 0.1}, "lerning_rate"),
    ({"lora": {"r": -1}}, "lora.r"),
    ({"method": "qlora", "device": "cpu"}, "qlora"),
])
def test_bad_specs_exit_2_with_a_named_error(tmp_path, tiny_hf_model, chat_data_dir, hp,
                                            needle):
    job = tmp_path / "job"
    write_spec(job, tiny_hf_model, chat_data_dir, {"num_threads": 1, **hp})
    code, events, _ = run_to_end(job)
    assert code == 2
    assert events[-2]["event"] == "error" and needle in events[-2]["message"]
    assert events[-1] == {**events[-1], "event": "done", "outcome": "failed", "exit_code": 2}
