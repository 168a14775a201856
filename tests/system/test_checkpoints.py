"""Checkpoints as resources, for real: a gunicorn API, `llm-train-api worker` processes and
the trainers (the built-in GPT on gpt-nano, LoRA on the tiny random Llama).

* A worker is SIGKILLed mid-run, the newest checkpoint on disk is corrupted, and the next
  worker's run resumes from the one before, with a `checkpoint_corrupt` event on the job.
* The listing's sha256 is the file's; the download is the file; a corrupt one is a 409.
* A job branches from another job's checkpoint; another user's job is a 404.
"""

from __future__ import annotations

import hashlib
import io
import json
import signal
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
import requests

from tests.helpers.finetune import import_model_and_chat
from tests.helpers.live import alive, events, frozen_at, job_dir, wait_for, wait_status
from tests.helpers.servers import REPO_ROOT, TINY

pytestmark = pytest.mark.slow

GPT_STEPS = 200
GPT_HP = {**TINY, "max_steps": GPT_STEPS, "checkpoint_interval": 10, "eval_interval": 10,
          "keep_checkpoints": 2}
HF_HP = {"max_steps": 120, "batch_size": 4, "learning_rate": 0.01, "warmup_steps": 2,
         "log_interval": 2, "eval_interval": 2, "checkpoint_interval": 2,
         "keep_checkpoints": 2, "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}


def _manifest(service, job_id: str) -> list[dict]:
    path = job_dir(service, job_id) / "checkpoints.json"
    return json.loads(path.read_text())["checkpoints"]


def _corrupt(path: Path) -> None:
    """Flip bytes in the middle of a file: same size, other content."""
    data = bytearray(path.read_bytes())
    middle = len(data) // 2
    data[middle:middle + 64] = bytes(b ^ 0xFF for b in data[middle:middle + 64])
    path.write_bytes(bytes(data))


def _kill_worker_and_corrupt_newest(service, worker, job_id: str, newest_file: str
                                    ) -> tuple[int, int]:
    """SIGKILL the worker (its trainer dies with it), corrupt the newest checkpoint;
    return (corrupted step, the step before it)."""
    # Frozen so that the run cannot end before its worker dies.
    with frozen_at(service, job_id, "checkpoint", 4) as trainer:
        worker.stop(signal.SIGKILL)
        wait_for(lambda: not alive(trainer), 10, "the orphaned trainer to die with its worker")
    kept = _manifest(service, job_id)
    assert len(kept) >= 2, kept
    newest, before = kept[-1], kept[-2]
    target = job_dir(service, job_id) / newest["path"]
    _corrupt(target / newest_file if target.is_dir() else target)
    return newest["step"], before["step"]


def _assert_fell_back(service, job_id: str, bad: int, good: int) -> None:
    timeline = events(service, job_id)
    notes = [e for e in timeline if e["kind"] == "checkpoint_corrupt"]
    assert len(notes) == 1, timeline
    assert f"step {bad} is corrupt" in notes[0]["message"], notes
    assert f"resumed from step {good}" in notes[0]["message"], notes
    log = (job_dir(service, job_id) / "train.log").read_text()
    starts = [json.loads(line.split(" ", 1)[1]) for line in log.splitlines()
              if line.startswith('@@llm_train_api {"event":"start"')]
    assert starts[-1]["resumed_from_step"] == good, starts


def _assert_listing_matches_files(service, job_id: str) -> list[dict]:
    listing = service.http.get(f"{service.url}/jobs/{job_id}/checkpoints", timeout=10).json()
    folder = job_dir(service, job_id)
    for entry, recorded in zip(listing, _manifest(service, job_id), strict=True):
        path = folder / recorded["path"]
        assert entry["status"] == "good"
        if path.is_file():
            assert entry["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest()
            assert entry["size"] == path.stat().st_size
        else:
            files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest()
                     for p in path.iterdir()}
            assert entry["files"] == files
    return listing


def test_gpt_resumes_from_the_checkpoint_before_a_corrupt_one(service):
    first = service.start_worker()
    resp = service.http.post(f"{service.url}/jobs", timeout=10, json={
        "job_id": "gpt", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
        "hyperparameters": {**GPT_HP, "checkpoint_interval": 2, "eval_interval": 2}})
    assert resp.status_code == 201, resp.text
    bad, good = _kill_worker_and_corrupt_newest(service, first, "gpt", "")
    # Downloading the corrupt checkpoint is refused: its bytes no longer match.
    resp = service.http.get(f"{service.url}/jobs/gpt/checkpoints/{bad}/archive", timeout=30)
    assert resp.status_code == 409, resp.text
    service.start_worker()
    job = wait_status(service, "gpt", {"succeeded", "failed"}, timeout=240)
    assert job["status"] == "succeeded", job["error_message"]
    _assert_fell_back(service, "gpt", bad, good)

    listing = _assert_listing_matches_files(service, "gpt")
    steps = [c["step"] for c in listing]
    assert steps[-2:] == [GPT_STEPS - 2, GPT_STEPS] and len(steps) <= 3, steps  # keep 2 + the best
    best = [c for c in listing if c["is_best"]]
    assert len(best) == 1 and job["result"]["best_checkpoint"] == best[0]["step"]
    assert job["result"]["best"]["val_loss"] == min(c["metrics"]["val_loss"] for c in listing)
    final = job["result"]["final"]
    assert final["step"] == GPT_STEPS and 0 <= final["val_token_accuracy"] <= 1
    assert final["val_perplexity"] == pytest.approx(2.718281828 ** final["val_loss"], rel=1e-6)

    resp = service.http.get(f"{service.url}/jobs/gpt/checkpoints/{GPT_STEPS}/archive", timeout=30)
    assert resp.status_code == 200 and int(resp.headers["Content-Length"]) == len(resp.content)
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        member = tar.extractfile(f"step-{GPT_STEPS:08d}.pt")
        assert member is not None
        assert hashlib.sha256(member.read()).hexdigest() == listing[-1]["sha256"]
    assert service.http.get(f"{service.url}/jobs/gpt/checkpoints/7/archive",
                            timeout=10).status_code == 404


def _user_token(service, name: str) -> requests.Session:
    out = subprocess.run(
        [sys.executable, "-m", "llm_train_api.cli", "tokens", "create", "--name", name,
         "--role", "user"], cwd=REPO_ROOT, env=service.env, capture_output=True, text=True,
        check=True)
    session = requests.Session()
    session.headers["Authorization"] = f"Bearer {out.stdout.strip().splitlines()[-1]}"
    return session


def test_branch_from_a_checkpoint_and_not_from_another_users_job(service):
    alice, bob = _user_token(service, "alice"), _user_token(service, "bob")
    service.start_worker()
    source = {"model_name": "gpt-nano", "dataset": "builtin:tinytext",
              "hyperparameters": {**TINY, "max_steps": 20, "checkpoint_interval": 10,
                                  "eval_interval": 10}}
    assert alice.post(f"{service.url}/jobs", json={"job_id": "trunk", **source},
                      timeout=10).status_code == 201
    job = wait_status(service, "trunk", {"succeeded", "failed"}, timeout=120)
    assert job["status"] == "succeeded", job["error_message"]

    branch = {**source, "hyperparameters": {**TINY, "max_steps": 6, "learning_rate": 0.001}}

    def post(session, **extra):
        return session.post(f"{service.url}/jobs", json={**branch, **extra}, timeout=10)

    # Another user's job is not there for bob, whatever the step.
    for ref in ("trunk", "trunk:10", "trunk:7"):
        resp = post(bob, job_id=f"bob-{ref.replace(':', '-')}", from_checkpoint=ref)
        assert resp.status_code == 404, resp.text
    assert post(alice, job_id="b0", from_checkpoint="nope:10").status_code == 404
    resp = post(alice, job_id="b1", from_checkpoint="trunk:7")
    assert resp.status_code == 422 and "no checkpoint at step 7" in resp.text, resp.text
    resp = post(alice, job_id="b2", from_checkpoint="trunk:10", model_name="gpt-micro")
    assert resp.status_code == 422 and "same model" in resp.text, resp.text
    resp = post(alice, job_id="b3", from_checkpoint="trunk:1:2")
    assert resp.status_code == 422, resp.text
    jobs = service.http.get(f"{service.url}/jobs", timeout=10).json()
    assert {j["id"] for j in jobs} == {"trunk"}  # nothing was created by the refusals

    resp = post(alice, job_id="twig", from_checkpoint="trunk:10")
    assert resp.status_code == 201, resp.text
    assert resp.json()["origin"]["job_id"] == "trunk" and resp.json()["origin"]["step"] == 10
    job = wait_status(service, "twig", {"succeeded", "failed"}, timeout=120)
    assert job["status"] == "succeeded", job["error_message"]
    assert job["origin"]["step"] == 10
    log = (job_dir(service, "twig") / "train.log").read_text()
    assert "branched from job trunk at step 10" in log
    # A fresh start (no resume) with the trunk's weights: its first loss is the trunk's
    # level after 10 steps, well below the untrained ~ln(256).
    trunk_curve = service.http.get(f"{service.url}/jobs/trunk/metrics", timeout=10).json()
    twig_curve = service.http.get(f"{service.url}/jobs/twig/metrics", timeout=10).json()
    untrained = trunk_curve[0]["train_loss"]
    assert twig_curve[0]["train_loss"] < untrained - 0.1, (twig_curve[0], trunk_curve[0])


@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
def test_a_branch_starts_from_its_checkpoint_after_the_running_source_pruned_it(service):
    trunk_steps = 400
    service.start_worker()
    resp = service.http.post(f"{service.url}/jobs", timeout=10, json={
        "job_id": "trunk", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
        "hyperparameters": {**TINY, "max_steps": trunk_steps, "checkpoint_interval": 10,
                            "eval_interval": 10, "keep_checkpoints": 1}})
    assert resp.status_code == 201, resp.text
    with frozen_at(service, "trunk", "checkpoint", 10):  # mid-run while we branch
        step = _manifest(service, "trunk")[-1]["step"]
        # The last checkpoint is never pruned: the branch's step must not be the last.
        assert step < trunk_steps, f"the trunk ran to step {step} before it was frozen"
        resp = service.http.post(f"{service.url}/jobs", timeout=10, json={
            "job_id": "twig", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "from_checkpoint": f"trunk:{step}",
            "hyperparameters": {**TINY, "max_steps": 4}})
        assert resp.status_code == 201, resp.text
    # One worker, one slot: the twig starts once the trunk is done, and by then the trunk
    # has pruned the step (it keeps the newest and the best, and its loss kept falling).
    trunk = wait_status(service, "trunk", {"succeeded", "failed"}, timeout=120)
    assert trunk["status"] == "succeeded", trunk["error_message"]
    assert step not in [c["step"] for c in _manifest(service, "trunk")]
    twig = wait_status(service, "twig", {"succeeded", "failed"}, timeout=120)
    assert twig["status"] == "succeeded", twig["error_message"]
    log = (job_dir(service, "twig") / "train.log").read_text()
    assert f"branched from job trunk at step {step}" in log


def _import_tiny(service, tiny_hf_model) -> None:
    import_model_and_chat(service, tiny_hf_model)


def test_lora_resumes_from_the_checkpoint_before_a_corrupt_one_and_branches(
        service, tiny_hf_model):
    _import_tiny(service, tiny_hf_model)
    first = service.start_worker()
    resp = service.http.post(f"{service.url}/jobs", timeout=180, json={
        "job_id": "lora", "model_name": "tiny", "dataset": "chat", "hyperparameters": HF_HP})
    assert resp.status_code == 201, resp.text
    bad, good = _kill_worker_and_corrupt_newest(service, first, "lora",
                                                "trainable.safetensors")
    service.start_worker()
    job = wait_status(service, "lora", {"succeeded", "failed"}, timeout=240)
    assert job["status"] == "succeeded", job["error_message"]
    _assert_fell_back(service, "lora", bad, good)
    listing = _assert_listing_matches_files(service, "lora")
    assert listing[-1]["step"] == 120 and len(listing) <= 3
    assert {"val_loss", "val_perplexity", "val_token_accuracy"} <= set(listing[-1]["metrics"])
    assert job["result"]["best_checkpoint"] in {c["step"] for c in listing}

    resp = service.http.get(f"{service.url}/jobs/lora/checkpoints/120/archive", timeout=30)
    assert resp.status_code == 200
    with tarfile.open(fileobj=io.BytesIO(resp.content)) as tar:
        assert sorted(tar.getnames()) == ["optimizer.safetensors", "state.json",
                                          "trainable.safetensors"]

    resp = service.http.post(f"{service.url}/jobs", timeout=180, json={
        "job_id": "lora-full", "model_name": "tiny", "dataset": "chat",
        "from_checkpoint": "lora", "hyperparameters": {**HF_HP, "method": "full"}})
    assert resp.status_code == 422 and "method" in resp.text, resp.text
    resp = service.http.post(f"{service.url}/jobs", timeout=180, json={
        "job_id": "lora-twig", "model_name": "tiny", "dataset": "chat",
        "from_checkpoint": "lora",
        "hyperparameters": {**HF_HP, "max_steps": 4, "learning_rate": 0.001}})
    assert resp.status_code == 201, resp.text
    assert resp.json()["origin"]["step"] == job["result"]["best_checkpoint"]
    twig = wait_status(service, "lora-twig", {"succeeded", "failed"}, timeout=180)
    assert twig["status"] == "succeeded", twig["error_message"]
    log = (job_dir(service, "lora-twig") / "train.log").read_text()
    assert "branched from job lora at step" in log
