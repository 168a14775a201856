"""Pause and resume for real: a real gunicorn, a real worker and real trainers (gpt-nano,
and the tiny random Llama fine-tuned with LoRA). A job paused mid-run leaves no trainer
behind, its worker runs another job meanwhile, and once resumed it finishes with the very
losses, step by step, of the same job run without a pause."""

from __future__ import annotations

import signal

import pytest

from tests.helpers.finetune import import_model_and_chat
from tests.helpers.live import (
    alive,
    events,
    frozen_at,
    get,
    signal_pending,
    submit,
    trainer_events,
    wait_for,
    wait_status,
)

# Float tolerance only: the resumed run computes the same steps on the same batches.
LOSS = {"rel": 1e-6, "abs": 1e-7}


def _curve(service, job_id: str) -> list[dict]:
    return service.http.get(f"{service.url}/jobs/{job_id}/metrics", timeout=10).json()


def _post(service, path: str, expected: int) -> dict:
    resp = service.http.post(f"{service.url}{path}", timeout=10)
    assert resp.status_code == expected, resp.text
    return resp.json()


def _pause_mid_run(service, job_id: str, *, at_step: int) -> dict:
    """Pause the running job once it has passed `at_step`; wait until it is paused, its
    trainer gone. Returns the paused job."""
    # Frozen so that the run cannot end before the worker passes the pause on.
    with frozen_at(service, job_id, "metrics", at_step) as trainer:
        requested = _post(service, f"/jobs/{job_id}/pause", 202)
        assert requested["status"] == "running" and requested["pause_requested_at"]
        wait_for(lambda: signal_pending(trainer, signal.SIGTERM), 30,
                 "the worker to ask the trainer to checkpoint and stop")
    paused = wait_status(service, job_id, {"paused", "succeeded", "failed"}, timeout=60)
    assert paused["status"] == "paused", paused
    wait_for(lambda: not alive(trainer), 10, "the paused job's trainer to exit")
    assert paused["attempts"] == 0 and paused["worker"] is None
    assert paused["pause_requested_at"] is None and paused["finished_at"] is None
    return paused


def _assert_same_curve(paused_curve: list[dict], straight_curve: list[dict],
                       steps: list[int]) -> None:
    assert [p["step"] for p in paused_curve] == steps  # no step twice, none missing
    assert [p["step"] for p in straight_curve] == steps
    for resumed, straight in zip(paused_curve, straight_curve, strict=True):
        assert resumed["train_loss"] == pytest.approx(straight["train_loss"], **LOSS), \
            (resumed, straight)


def _assert_timeline(service, job_id: str, paused_at: int) -> None:
    timeline = events(service, job_id)
    assert [(e["kind"], e["to_status"]) for e in timeline] == [
        ("created", "queued"), ("claimed", "running"), ("pause_requested", "running"),
        ("paused", "paused"), ("resumed", "queued"), ("claimed", "running"),
        ("status", "succeeded")]
    assert timeline[2]["actor"].startswith("admin:") and timeline[4]["actor"] \
        == timeline[2]["actor"]
    assert timeline[3]["message"] == f"paused at step {paused_at}"
    assert timeline[5]["attempt"] == 1  # the pause did not spend an attempt


def test_a_paused_gpt_nano_job_frees_its_worker_and_resumes_to_the_same_losses(service):
    service.start_worker()
    steps = 300
    # No periodic checkpoint: the one the resume starts from is the one the pause wrote.
    hp = {"max_steps": steps, "checkpoint_interval": 100_000, "seed": 7}
    submit(service, "paused", **hp)
    paused = _pause_mid_run(service, "paused", at_step=10)
    at = paused["progress"]["step"]
    assert 10 <= at < steps
    assert service.http.get(f"{service.url}/jobs?status=paused", timeout=10).json()[0]["id"] \
        == "paused"

    # The worker's slot is free: it runs another job (the same one, uninterrupted) to the
    # end while the first stays paused.
    submit(service, "straight", **hp)
    done = wait_status(service, "straight", {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded", done["error_message"]
    assert get(service, "paused")["status"] == "paused"

    resumed = _post(service, "/jobs/paused/resume", 200)
    assert resumed["status"] == "queued"
    done = wait_status(service, "paused", {"succeeded", "failed"}, timeout=120)
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 1 and done["progress"]["step"] == steps
    starts = trainer_events(service, "paused", "start")
    assert [s["resumed_from_step"] for s in starts] == [None, at]
    _assert_same_curve(_curve(service, "paused"), _curve(service, "straight"),
                       list(range(1, steps + 1)))
    _assert_timeline(service, "paused", at)


HF_HP = {"max_steps": 60, "batch_size": 4, "learning_rate": 0.01, "warmup_steps": 2,
         "log_interval": 1, "eval_interval": 0, "checkpoint_interval": 100_000,
         "lora": {"r": 8, "alpha": 16, "dropout": 0.0}}


@pytest.mark.slow
@pytest.mark.parametrize("service", ["sqlite"], indirect=True)
def test_a_paused_lora_job_on_the_tiny_llama_resumes_to_the_same_losses(service,
                                                                         tiny_hf_model):
    import_model_and_chat(service, tiny_hf_model)
    service.start_worker()

    def create(job_id: str) -> None:
        body = {"job_id": job_id, "model_name": "tiny", "dataset": "chat",
                "hyperparameters": HF_HP, "output_model": f"{job_id}-out"}
        resp = service.http.post(f"{service.url}/jobs", json=body, timeout=180)
        assert resp.status_code == 201, resp.text

    create("ft-paused")
    paused = _pause_mid_run(service, "ft-paused", at_step=6)
    at = paused["progress"]["step"]
    create("ft-straight")
    done = wait_status(service, "ft-straight", {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done["error_message"]
    assert get(service, "ft-paused")["status"] == "paused"

    _post(service, "/jobs/ft-paused/resume", 200)
    done = wait_status(service, "ft-paused", {"succeeded", "failed"}, timeout=180)
    assert done["status"] == "succeeded", done["error_message"]
    assert done["attempts"] == 1 and done["fine_tuned_model"] == "ft-paused-out"
    starts = trainer_events(service, "ft-paused", "start")
    assert [s["resumed_from_step"] for s in starts] == [None, at]
    _assert_same_curve(_curve(service, "ft-paused"), _curve(service, "ft-straight"),
                       list(range(1, HF_HP["max_steps"] + 1)))
    _assert_timeline(service, "ft-paused", at)
