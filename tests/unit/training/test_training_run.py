"""The trainer in process: short runs of gpt-nano on tiny corpora (one CPU thread), resume,
bad specs, stops and the schedule. The runs that take seconds and the trainer's CLI
processes are in tests/system/training/test_training_cli.py."""

import json
import math
import threading

import pytest
import torch

from llm_train_api.training.checkpoint import BEST, LATEST, load_checkpoint
from llm_train_api.training.common_run import learning_rate_at
from llm_train_api.training.spec import RunSpec
from llm_train_api.training.trainer import total_steps_for
from tests.helpers.training import (
    make_spec,
    read_metrics,
    run_inprocess,
    tiny_hp,
)


def test_loss_decreases_on_a_repetitive_corpus(data_dir, tmp_path):
    spec = make_spec(data_dir, max_steps=60, eval_interval=30)
    code, events = run_inprocess(spec, tmp_path / "job")
    assert code == 0
    metrics = read_metrics(tmp_path / "job")
    assert [m["step"] for m in metrics] == list(range(1, 61))
    first = sum(m["train_loss"] for m in metrics[:5]) / 5
    last = sum(m["train_loss"] for m in metrics[-5:]) / 5
    assert first > 4.5  # ~ln(256) at initialisation
    assert last < 0.6 * first
    vals = [m["val_loss"] for m in metrics if "val_loss" in m]
    assert len(vals) == 2 and vals[1] < vals[0]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "prepare" and kinds[1] == "start" and kinds[-1] == "done"
    start = events[1]
    assert start["n_params"] == 146_352 and start["total_steps"] == 60
    assert start["tokens_per_step"] == 8 * 32 and start["device"] == "cpu"
    assert start["dtype"] == "float32" and start["resumed_from_step"] is None
    assert events[-1]["outcome"] == "succeeded"
    ckpts = [e for e in events if e["event"] == "checkpoint"]
    assert {(c["step"], c["is_best"]) for c in ckpts} >= {(60, False), (60, True)}
    for name in (LATEST, BEST):
        state = load_checkpoint(tmp_path / "job" / name)
        assert state["step"] == 60 and state["model_name"] == "gpt-nano"
        assert math.isclose(state["best_val_loss"], vals[1])
        assert {"torch_cpu", "python"} <= set(state["rng"])
        assert state["sampler"]["seed"] == 1337 and state["optimizer"]["state"]
    spec_saved = json.loads((tmp_path / "job" / "spec.json").read_text())
    assert spec_saved["model_name"] == "gpt-nano" and spec_saved["job_id"] == "job-1"


def test_resume_is_exact_in_process_with_dropout(data_dir, tmp_path):
    spec = make_spec(data_dir, max_steps=16, dropout=0.1, checkpoint_interval=5,
                     eval_interval=4, gradient_accumulation_steps=2)
    assert run_inprocess(spec, tmp_path / "one")[0] == 0
    code, events = run_inprocess(spec, tmp_path / "two", stop_at_step=8)
    assert code == 75 and events[-1]["outcome"] == "preempted"
    assert load_checkpoint(tmp_path / "two" / LATEST)["step"] == 8
    code, events = run_inprocess(spec, tmp_path / "two")
    assert code == 0
    assert next(e for e in events if e["event"] == "start")["resumed_from_step"] == 8
    one, two = read_metrics(tmp_path / "one"), read_metrics(tmp_path / "two")
    assert [m["step"] for m in two] == list(range(1, 17))
    for a, b in zip(one, two, strict=True):
        assert a["step"] == b["step"] and a["lr"] == b["lr"]
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5, abs=1e-6)
        assert ("val_loss" in a) == ("val_loss" in b) == (a["step"] % 4 == 0)
        if "val_loss" in a:
            assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-5, abs=1e-6)
    sa = load_checkpoint(tmp_path / "one" / LATEST)["model"]
    sb = load_checkpoint(tmp_path / "two" / LATEST)["model"]
    for key in sa:
        torch.testing.assert_close(sa[key], sb[key], rtol=1e-5, atol=1e-6)


def test_resume_truncates_metrics_written_after_the_checkpoint(data_dir, tmp_path):
    spec = make_spec(data_dir, max_steps=12, checkpoint_interval=4, eval_interval=0)
    job = tmp_path / "job"
    assert run_inprocess(spec, job, stop_at_step=10)[0] == 75  # checkpoint at step 10
    # simulate a crash after step 10's checkpoint: stale later lines + a torn line
    with open(job / "metrics.jsonl", "a") as f:
        f.write(json.dumps({"step": 11, "train_loss": 9.9}) + "\n{\"step\": 1")
    assert run_inprocess(spec, job)[0] == 0
    metrics = read_metrics(job)
    assert [m["step"] for m in metrics] == list(range(1, 13))
    assert metrics[10]["train_loss"] != 9.9


@pytest.mark.parametrize(
    ("spec_update", "needle"),
    [
        ({"hyperparameters": {"batch_size": True}}, "batch_size"),
        ({"hyperparameters": {"block_size": 4096}}, "block_size"),
        ({"dataset": "tiny"}, "too small"),
        ({"hyperparameters": {"dtype": "float16", "device": "cpu"}}, "float16"),
        ({"extra": 1}, "extra"),
        ({"hyperparameters": {"batch_size": 4096, "block_size": 1024}, "model_name": "gpt2-xl"},
         "GiB"),
    ],
)
def test_bad_specs_in_process(data_dir, tmp_path, spec_update, needle):
    (data_dir / "datasets" / "tiny.txt").write_text("too short")
    spec = {"model_name": "gpt-nano", "dataset": "repeat", "data_dir": str(data_dir),
            **spec_update}
    code, events = run_inprocess(spec, tmp_path / "job")
    assert code == 2
    assert needle in next(e for e in events if e["event"] == "error")["message"]


def test_stop_before_the_first_step_still_checkpoints(data_dir, tmp_path):
    code, events = run_inprocess(make_spec(data_dir), tmp_path / "job", stop_at_step=0)
    assert code == 75 and events[-1]["step"] == 0
    assert load_checkpoint(tmp_path / "job" / LATEST)["step"] == 0


def test_fsspec_job_folder(data_dir):
    fsspec = pytest.importorskip("fsspec")  # installed with torch
    url = "memory://jobs/job-fsspec"
    spec = make_spec(data_dir, max_steps=6, checkpoint_interval=3, eval_interval=3)
    code, _ = run_inprocess(spec, url, stop_at_step=3)
    assert code == 75
    code, events = run_inprocess(spec, url)
    assert code == 0 and events[1]["resumed_from_step"] == 3
    fs = fsspec.filesystem("memory")
    lines = fs.cat("/jobs/job-fsspec/metrics.jsonl").decode().splitlines()
    assert [json.loads(line)["step"] for line in lines] == [1, 2, 3, 4, 5, 6]
    assert fs.exists("/jobs/job-fsspec/ckpt_best.pt")


def test_max_steps_decides_the_run_length_beyond_one_epoch(data_dir, tmp_path):
    # One epoch of this corpus is a few steps; max_steps, not epochs, sets the length.
    spec = make_spec(data_dir, epochs=1, max_steps=6, batch_size=64, eval_interval=0,
                     checkpoint_interval=0)
    code, events = run_inprocess(spec, tmp_path / "job")
    start = next(e for e in events if e["event"] == "start")
    assert code == 0 and start["steps_per_epoch"] < 6 and start["total_steps"] == 6
    assert read_metrics(tmp_path / "job")[-1]["step"] == 6


def test_schedule_and_run_length():
    hp = {**tiny_hp(), "epochs": 3, "max_steps": None, "gradient_accumulation_steps": 2,
          "lr_schedule": "cosine", "learning_rate": 1.0, "warmup_steps": 10}
    # ceil(10_000 / (8 * 32 * 2)) = 20 steps per epoch
    assert total_steps_for(10_000, hp) == 60
    assert total_steps_for(10_000, {**hp, "max_steps": 7}) == 7
    assert total_steps_for(10_000, {**hp, "max_steps": 700}) == 700
    assert learning_rate_at(0, hp, 100) == pytest.approx(0.1)
    assert learning_rate_at(9, hp, 100) == pytest.approx(1.0)
    assert learning_rate_at(10, hp, 100) == pytest.approx(1.0)
    assert learning_rate_at(100, hp, 100) == pytest.approx(0.1)
    assert learning_rate_at(55, hp, 100) == pytest.approx(0.55)
    assert learning_rate_at(50, {**hp, "lr_schedule": "constant"}, 100) == 1.0


def test_runspec_validation():
    with pytest.raises(ValueError):
        RunSpec.from_dict({"model_name": "gpt-nano"})
    spec = RunSpec.from_dict({"model_name": "gpt-nano", "dataset": "x", "job_id": 7})
    assert spec.job_id == "7" and spec.hyperparameters == {}


def test_training_error_is_reported_with_exit_1(data_dir, tmp_path):
    job = tmp_path / "job"
    job.mkdir()
    (job / LATEST).write_bytes(b"not a checkpoint")
    code, events = run_inprocess(make_spec(data_dir), job)
    assert code == 1
    error = next(e for e in events if e["event"] == "error")
    assert error["exit_code"] == 1 and error["message"]
    assert events[-1]["event"] == "done" and events[-1]["outcome"] == "failed"


def test_sigterm_during_dataset_preparation_exits_75_without_cache(data_dir, tmp_path):
    stop = threading.Event()
    stop.set()
    code, events = run_inprocess(make_spec(data_dir), tmp_path / "job", stop=stop,
                                 chunk_size=64)
    assert code == 75 and events[-1]["outcome"] == "preempted"
    assert not (tmp_path / "job" / LATEST).exists()
    cache = data_dir / "cache" / "tokens"
    assert not cache.exists() or not any(cache.iterdir())
