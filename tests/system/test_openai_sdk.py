"""The real `openai` Python SDK, with only `base_url` and `api_key` changed, against a real
gunicorn and a real `llm-train-api worker`: upload a chat file, fine-tune the tiny Llama
to `succeeded`, read its events, checkpoints, result file and model, list jobs page by
page and by metadata, cancel another job, and the errors a workflow meets (a bad file, an
unknown model, another user's job, the queued-jobs quota) as the SDK's own exceptions.
The job and its model are the native API's too: GET /jobs/{id}, GET /models/{name}/archive.
Then pause a running job and resume it to `succeeded`, and run DPO from its result on an
OpenAI-shape preference file."""

from __future__ import annotations

import io
import json
import signal
import subprocess
import sys
import tarfile
import time

import openai
import pytest
import requests

from tests.helpers.hf_models import tar_archive
from tests.helpers.live import alive, wait_for
from tests.helpers.servers import FAST, REPO_ROOT, WorkerProcess
from tests.helpers.tiny_hf import chat_records, preference_records

pytestmark = pytest.mark.slow

MAX_QUEUED = 2


@pytest.fixture
def service(tmp_path, gunicorn_factory):
    """gunicorn with the built-in executor and a queued-jobs cap of MAX_QUEUED per user,
    and a factory of worker processes."""
    env = {"LLM_TRAIN_API_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
           "LLM_TRAIN_API_EXECUTOR": "local",
           "LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path / "instance"),
           "LLM_TRAIN_API_MAX_QUEUED_PER_USER": str(MAX_QUEUED), **FAST}
    server = gunicorn_factory(workers=2, env=env)
    workers: list[WorkerProcess] = []

    def start_worker() -> WorkerProcess:
        worker = WorkerProcess(env, tmp_path / f"worker-{len(workers)}.log")
        workers.append(worker)
        return worker

    server.start_worker = start_worker
    yield server
    for worker in workers:
        worker.stop(signal.SIGKILL)


def user_token(server, name: str) -> str:
    out = subprocess.run([sys.executable, "-m", "llm_train_api.cli", "tokens", "create",
                          "--name", name, "--role", "user"], cwd=REPO_ROOT, env=server.env,
                         capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


def sdk(server, token: str) -> openai.OpenAI:
    # No retries: a 429 must reach the test as the SDK's RateLimitError at once.
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0,
                         timeout=120)


def wait_job(client: openai.OpenAI, job_id: str, timeout: float = 240,
             statuses: tuple[str, ...] = ("succeeded", "failed", "cancelled")):
    deadline = time.monotonic() + timeout
    while True:
        job = client.fine_tuning.jobs.retrieve(job_id)
        if job.status in statuses:
            return job
        assert time.monotonic() < deadline, f"{job_id} still {job.status}"
        time.sleep(0.5)


def jsonl(records: list[dict]) -> bytes:
    return "".join(json.dumps(r) + "\n" for r in records).encode()


def start(service, tiny_hf_model, token: str) -> requests.Session:
    """The caller's native session, with the tiny Llama imported as `tiny`."""
    native = requests.Session()
    native.headers["Authorization"] = f"Bearer {token}"
    files = {p.name: p.read_bytes() for p in tiny_hf_model.iterdir() if p.is_file()}
    resp = native.put(f"{service.url}/models/tiny", data=tar_archive(files),
                      headers={"Content-Type": "application/x-tar"}, timeout=60)
    assert resp.status_code == 201, resp.text
    return native


def test_the_openai_sdk_fine_tunes_against_this_service(service, tiny_hf_model):
    alice_token, bob_token = user_token(service, "alice"), user_token(service, "bob")
    native = start(service, tiny_hf_model, alice_token)
    alice, bob = sdk(service, alice_token), sdk(service, bob_token)

    # files: a chat JSONL file is stored; a bad one is a BadRequestError
    chat = "".join(json.dumps(r) + "\n" for r in chat_records(32)).encode()
    uploaded = alice.files.create(file=("chat.jsonl", chat), purpose="fine-tune")
    assert uploaded.id.startswith("file-") and uploaded.bytes == len(chat)
    assert alice.files.retrieve(uploaded.id).filename == "chat.jsonl"
    assert uploaded.id in [f.id for f in alice.files.list()]
    assert alice.files.content(uploaded.id).content == chat
    with pytest.raises(openai.BadRequestError):
        alice.files.create(file=("bad.jsonl", b"this is not json\n"), purpose="fine-tune")

    # errors on create: an unknown model is a BadRequestError naming `model`
    with pytest.raises(openai.BadRequestError) as unknown:
        alice.fine_tuning.jobs.create(model="no-such-model", training_file=uploaded.id)
    assert unknown.value.param == "model"

    job = alice.fine_tuning.jobs.create(
        model="tiny", training_file=uploaded.id, suffix="demo", seed=3,
        metadata={"team": "nlp"},
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 1, "batch_size": 4, "learning_rate_multiplier": 10}}})
    assert job.status == "queued" and job.id.startswith("ftjob-")
    other = alice.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    # the queued-jobs quota (MAX_QUEUED) is the SDK's RateLimitError
    with pytest.raises(openai.RateLimitError):
        alice.fine_tuning.jobs.create(model="tiny", training_file=uploaded.id)
    # another user's job does not exist for them
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.retrieve(job.id)
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.cancel(job.id)
    assert bob.fine_tuning.jobs.list().data == []

    # pages of one job, followed by the SDK's own cursor (`after` = the last id)
    first = alice.fine_tuning.jobs.list(limit=1)
    assert first.has_more is True and [j.id for j in first.data] == [other.id]
    assert [j.id for j in alice.fine_tuning.jobs.list(limit=1)] == [other.id, job.id]
    assert [j.id for j in alice.fine_tuning.jobs.list(metadata={"team": "nlp"})] == [job.id]

    assert alice.fine_tuning.jobs.cancel(other.id).status == "cancelled"

    service.start_worker()
    done = wait_job(alice, job.id)
    assert done.status == "succeeded", done.error
    assert done.fine_tuned_model == f"ft:tiny:alice:demo:{job.id}"
    assert done.trained_tokens and done.trained_tokens > 0
    assert done.hyperparameters.n_epochs == 1 and done.hyperparameters.batch_size == 4
    assert done.finished_at >= done.created_at and done.metadata == {"team": "nlp"}

    events = alice.fine_tuning.jobs.list_events(job.id, limit=100)
    messages = [e.message for e in events.data]
    assert messages[0] == "The job has successfully completed"
    assert messages[-1] == f"Created fine-tuning job: {job.id}"
    metrics = [e for e in events.data if e.type == "metrics"]
    assert metrics and metrics[0].message.startswith("Step ") and \
        "training loss=" in metrics[0].message
    assert [e.id for e in alice.fine_tuning.jobs.list_events(job.id, limit=2)] == \
        [e.id for e in events.data]

    # checkpoints: at least the final one, with OpenAI's metric names
    checkpoints = alice.fine_tuning.jobs.checkpoints.list(job.id)
    assert checkpoints.data, "a succeeded job keeps its final checkpoint"
    final = checkpoints.data[0]
    steps = native.get(f"{service.url}/jobs/{job.id}", timeout=10).json()["progress"]
    assert final.step_number == steps["total_steps"] and final.fine_tuning_job_id == job.id
    assert final.metrics.train_loss is not None and final.metrics.valid_loss is not None
    assert final.fine_tuned_model_checkpoint == \
        f"{done.fine_tuned_model}:ckpt-step-{final.step_number}"
    with pytest.raises(openai.NotFoundError):
        bob.fine_tuning.jobs.checkpoints.list(job.id)

    (result,) = done.result_files
    assert alice.files.content(result).text.startswith("step,train_loss")

    # the model: in /v1/models under its OpenAI name, and the native API's model
    assert done.fine_tuned_model in [m.id for m in alice.models.list()]
    assert alice.models.retrieve(done.fine_tuned_model).owned_by == "alice"
    with pytest.raises(openai.NotFoundError):
        bob.models.retrieve(done.fine_tuned_model)
    seen = native.get(f"{service.url}/jobs/{job.id}", timeout=10).json()
    assert seen["api"] == "openai" and seen["metadata"] == {"team": "nlp"}
    archive = native.get(f"{service.url}/models/{seen['fine_tuned_model']}/archive",
                         timeout=60)
    assert archive.status_code == 200, archive.text
    with tarfile.open(fileobj=io.BytesIO(archive.content)) as tar:
        names = {member.name.rsplit("/", 1)[-1] for member in tar.getmembers()}
    assert "config.json" in names and any(n.endswith(".safetensors") for n in names)
    # a job made through the native API is a /v1 job too
    made = native.post(f"{service.url}/jobs", json={"model_name": "tiny",
                                                     "dataset": uploaded.id}, timeout=60)
    assert made.status_code == 201, made.text
    assert alice.fine_tuning.jobs.retrieve(made.json()["id"]).training_file == uploaded.id


def test_the_openai_sdk_pauses_resumes_and_runs_dpo(service, tiny_hf_model):
    token = user_token(service, "alice")
    native = start(service, tiny_hf_model, token)
    alice = sdk(service, token)
    chat = alice.files.create(file=("chat.jsonl", jsonl(chat_records(64))),
                              purpose="fine-tune")
    prefs = alice.files.create(file=("prefs.jsonl", jsonl(preference_records(32, "openai"))),
                               purpose="fine-tune")

    # 750 steps (15 an epoch): the tiny Llama runs about 100 a second on a CPU, so
    # several seconds, well past the worker's 1 s heartbeat that carries the pause
    job = alice.fine_tuning.jobs.create(
        model="tiny", training_file=chat.id, suffix="sft",
        method={"type": "supervised", "supervised": {"hyperparameters": {
            "n_epochs": 50, "batch_size": 4, "learning_rate_multiplier": 10}}})
    service.start_worker()
    running = wait_for(lambda: (j := native.get(f"{service.url}/jobs/{job.id}",
                                                timeout=10).json())["status"] == "running"
                       and (j["progress"] or {}).get("step") and j, 120,
                       f"{job.id} to run a step")
    trainer = running["progress"]["pid"]
    asked = alice.fine_tuning.jobs.pause(job.id)
    assert asked.id == job.id and asked.status in ("running", "paused")
    paused = wait_job(alice, job.id, 60, ("paused", "succeeded", "failed"))
    assert paused.status == "paused", paused.error
    wait_for(lambda: not alive(trainer), 10, "the paused job's trainer to exit")
    progress = native.get(f"{service.url}/jobs/{job.id}", timeout=10).json()["progress"]
    at = progress["step"]
    assert 0 < at < progress["total_steps"], progress
    messages = [e.message for e in alice.fine_tuning.jobs.list_events(job.id, limit=100)]
    assert messages[0].startswith("The job was paused")
    assert alice.fine_tuning.jobs.resume(job.id).status == "queued"
    done = wait_job(alice, job.id)
    assert done.status == "succeeded", done.error
    timeline = native.get(f"{service.url}/jobs/{job.id}/events", timeout=10).json()
    assert [e["kind"] for e in timeline].count("claimed") == 2
    assert any(e["message"] == f"paused at step {at}" for e in timeline)
    with pytest.raises(openai.ConflictError):
        alice.fine_tuning.jobs.pause(job.id)

    # DPO from the supervised result, named as /v1 names it
    dpo = alice.fine_tuning.jobs.create(
        model=done.fine_tuned_model, training_file=prefs.id, suffix="dpo",
        method={"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.1, "n_epochs": 1,
                                                           "batch_size": 4}}})
    assert dpo.method.type == "dpo" and dpo.method.dpo.hyperparameters.beta == 0.1
    finished = wait_job(alice, dpo.id)
    assert finished.status == "succeeded", finished.error
    assert finished.method.type == "dpo"
    assert finished.fine_tuned_model.endswith(f":alice:dpo:{dpo.id}")
    assert finished.fine_tuned_model in [m.id for m in alice.models.list()]
    seen = native.get(f"{service.url}/jobs/{dpo.id}", timeout=10).json()
    assert seen["hyperparameters"]["method"] == "dpo"
    assert seen["model_name"] == native.get(f"{service.url}/jobs/{job.id}",
                                            timeout=10).json()["fine_tuned_model"]
    curve = native.get(f"{service.url}/jobs/{dpo.id}/metrics", timeout=10).json()
    assert curve and "rewards/margins" in curve[-1]
    assert alice.fine_tuning.jobs.checkpoints.list(dpo.id).data
    archive = native.get(f"{service.url}/models/{seen['fine_tuned_model']}/archive",
                         timeout=60)
    assert archive.status_code == 200, archive.text
