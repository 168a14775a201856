"""The OpenAI-compatible `/v1` API through Flask's test client: files over datasets,
fine-tuning jobs over native jobs (both ways visible), models, OpenAI's list envelope and
error shape, ownership (another user's file or job is a 404) and the per-user quota."""

from __future__ import annotations

import io
import json

import pytest

from llm_train_api import create_app
from llm_train_api.artifacts import jobs as jobfiles
from llm_train_api.domain import JobStatus
from llm_train_api.training import manifest
from tests.helpers.clients import client_as
from tests.helpers.hf_models import tar_archive, tiny_llama
from tests.helpers.tiny_hf import chat_records, preference_records

TAR = "application/x-tar"
CHAT = "".join(json.dumps(r) + "\n" for r in chat_records(16)).encode()
PREFERENCES = "".join(json.dumps(r) + "\n"
                      for r in preference_records(16, shape="openai")).encode()


@pytest.fixture
def app(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "WORKER_MEMORY_GB": 24,
                      "MAX_QUEUED_PER_USER": 3})
    yield app
    app.extensions["llm_train_api.runtime"].close()


@pytest.fixture
def alice(app):
    client = client_as(app, "alice", "user")
    assert client.put("/models/llama", data=tar_archive(tiny_llama()), content_type=TAR
                      ).status_code == 201
    return client


@pytest.fixture
def bob(app):
    client = client_as(app, "bob", "user")
    assert client.put("/models/llama", data=tar_archive(tiny_llama()), content_type=TAR
                      ).status_code == 201
    return client


def upload(client, data: bytes = CHAT, filename: str = "train.jsonl",
           purpose: str = "fine-tune"):
    return client.post("/v1/files", data={"file": (io.BytesIO(data), filename),
                                          "purpose": purpose},
                       content_type="multipart/form-data")


def assert_openai_error(resp, status: int, param=None, error_type="invalid_request_error"):
    body = resp.get_json()
    assert resp.status_code == status, body
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"message", "type", "param", "code"}
    assert body["error"]["type"] == error_type and body["error"]["message"]
    assert body["error"]["param"] == param
    return body["error"]


def create_job(client, file_id: str, **fields):
    return client.post("/v1/fine_tuning/jobs",
                       json={"model": "llama", "training_file": file_id, **fields})


# ---------------------------------------------------------------- files


def test_a_file_is_a_dataset_of_its_owner(alice, bob):
    resp = upload(alice)
    assert resp.status_code == 200, resp.get_json()
    file = resp.get_json()
    assert file["id"].startswith("file-") and file["object"] == "file"
    assert file["filename"] == "train.jsonl" and file["purpose"] == "fine-tune"
    assert file["bytes"] == len(CHAT) and isinstance(file["created_at"], int)
    # the same bytes back, and the dataset under the file's id in the native API
    assert alice.get(f"/v1/files/{file['id']}/content").data == CHAT
    assert alice.get(f"/datasets/{file['id']}").get_json()["kind"] == "chat"
    assert alice.get(f"/v1/files/{file['id']}").get_json() == file
    listing = alice.get("/v1/files").get_json()
    assert listing["object"] == "list" and [f["id"] for f in listing["data"]] == [file["id"]]
    assert listing["has_more"] is False
    # another user sees nothing of it
    assert_openai_error(bob.get(f"/v1/files/{file['id']}"), 404)
    assert_openai_error(bob.get(f"/v1/files/{file['id']}/content"), 404)
    assert_openai_error(bob.delete(f"/v1/files/{file['id']}"), 404)
    assert bob.get("/v1/files").get_json()["data"] == []
    # deleting the file deletes its dataset
    assert alice.delete(f"/v1/files/{file['id']}").get_json() == {
        "id": file["id"], "object": "file", "deleted": True}
    assert alice.get(f"/datasets/{file['id']}").status_code == 404
    assert_openai_error(alice.get(f"/v1/files/{file['id']}"), 404)


def test_file_pages_follow_after_and_limit(alice):
    ids = [upload(alice).get_json()["id"] for _ in range(3)]
    first = alice.get("/v1/files?limit=2").get_json()
    assert first["has_more"] is True and len(first["data"]) == 2
    rest = alice.get(f"/v1/files?limit=2&after={first['data'][-1]['id']}").get_json()
    assert rest["has_more"] is False
    assert sorted(f["id"] for f in first["data"] + rest["data"]) == sorted(ids)
    assert_openai_error(alice.get("/v1/files?after=file-nope"), 400, "after")


def test_bad_uploads_are_400s_that_store_nothing(alice):
    err = assert_openai_error(upload(alice, b"not json\n"), 400)
    assert "line 1" in err["message"] or "JSON" in err["message"]
    assert_openai_error(upload(alice, purpose="batch"), 400, "purpose")
    no_file = alice.post("/v1/files", data={"purpose": "fine-tune"},
                         content_type="multipart/form-data")
    assert_openai_error(no_file, 400, "file")
    assert_openai_error(alice.post("/v1/files", data=CHAT,
                                   content_type="application/jsonl"), 415)
    assert alice.get("/v1/files").get_json()["data"] == []


# ---------------------------------------------------------------- jobs


def test_a_job_created_through_v1_is_a_native_job_and_back(alice):
    file_id = upload(alice).get_json()["id"]
    resp = create_job(alice, file_id, suffix="mine", seed=7, metadata={"team": "nlp"},
                      method={"type": "supervised", "supervised": {"hyperparameters": {
                          "n_epochs": 2, "batch_size": "auto",
                          "learning_rate_multiplier": 2}}})
    assert resp.status_code == 200, resp.get_json()
    job = resp.get_json()
    assert job["id"].startswith("ftjob-") and job["object"] == "fine_tuning.job"
    assert job["status"] == "queued" and job["model"] == "llama"
    assert job["training_file"] == file_id and job["fine_tuned_model"] is None
    assert job["hyperparameters"] == {"n_epochs": 2, "batch_size": 4,
                                      "learning_rate_multiplier": 2.0}
    assert job["method"]["type"] == "supervised" and job["seed"] == 7
    assert job["metadata"] == {"team": "nlp"} and job["user_provided_suffix"] == "mine"
    assert job["organization_id"] == "alice" and job["result_files"] == []
    native = alice.get(f"/jobs/{job['id']}").get_json()
    assert native["api"] == "openai" and native["metadata"] == {"team": "nlp"}
    assert native["hyperparameters"]["learning_rate"] == pytest.approx(4e-4)
    assert native["hyperparameters"]["epochs"] == 2 and native["hyperparameters"]["seed"] == 7
    assert native["output_model"] == f"ft-mine-{job['id']}"
    # a native job is listed by /v1 too, with its own id
    made = alice.post("/jobs", json={"model_name": "llama", "dataset": file_id}).get_json()
    listed = alice.get("/v1/fine_tuning/jobs").get_json()
    assert [j["id"] for j in listed["data"]] == [made["id"], job["id"]]
    assert alice.get(f"/v1/fine_tuning/jobs/{made['id']}").get_json()["metadata"] is None


def test_job_pages_and_metadata_filters(alice):
    file_id = upload(alice).get_json()["id"]
    ids = [create_job(alice, file_id, metadata={"n": str(i)}).get_json()["id"]
           for i in range(3)]
    seen, after = [], None
    while True:
        query = "?limit=1" + (f"&after={after}" if after else "")
        page = alice.get(f"/v1/fine_tuning/jobs{query}").get_json()
        assert page["object"] == "list" and len(page["data"]) == 1
        seen.append(page["data"][0]["id"])
        if not page["has_more"]:
            break
        after = seen[-1]
    assert seen == ids[::-1]
    only = alice.get("/v1/fine_tuning/jobs?metadata[n]=1").get_json()
    assert [j["id"] for j in only["data"]] == [ids[1]]
    assert alice.get("/v1/fine_tuning/jobs?metadata[n]=9").get_json()["data"] == []
    assert_openai_error(alice.get("/v1/fine_tuning/jobs?limit=0"), 400, "limit")
    assert_openai_error(alice.get("/v1/fine_tuning/jobs?stauts=x"), 400, "stauts")


def test_another_users_job_is_not_found(alice, bob):
    file_id = upload(alice).get_json()["id"]
    job_id = create_job(alice, file_id).get_json()["id"]
    assert_openai_error(bob.get(f"/v1/fine_tuning/jobs/{job_id}"), 404)
    assert_openai_error(bob.post(f"/v1/fine_tuning/jobs/{job_id}/cancel"), 404)
    assert_openai_error(bob.get(f"/v1/fine_tuning/jobs/{job_id}/events"), 404)
    assert_openai_error(bob.post(f"/v1/fine_tuning/jobs/{job_id}/pause"), 404)
    assert_openai_error(bob.post(f"/v1/fine_tuning/jobs/{job_id}/resume"), 404)
    assert_openai_error(bob.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints"), 404)
    assert bob.get("/v1/fine_tuning/jobs").get_json()["data"] == []
    # nor may another user train on alice's file
    err = assert_openai_error(create_job(bob, file_id), 400, "training_file")
    assert file_id in err["message"]
    assert alice.get(f"/jobs/{job_id}").get_json()["status"] == "queued"


def test_cancel(alice):
    file_id = upload(alice).get_json()["id"]
    job_id = create_job(alice, file_id).get_json()["id"]
    resp = alice.post(f"/v1/fine_tuning/jobs/{job_id}/cancel")
    assert resp.status_code == 200 and resp.get_json()["status"] == "cancelled"
    assert alice.get(f"/jobs/{job_id}").get_json()["status"] == "cancelled"
    # cancelling again changes nothing
    assert alice.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").get_json()["status"] == \
        "cancelled"
    assert_openai_error(alice.post("/v1/fine_tuning/jobs/ftjob-nope/cancel"), 404)


def test_pause_and_resume_a_queued_job(app, alice):
    file_id = upload(alice).get_json()["id"]
    job_id = create_job(alice, file_id).get_json()["id"]
    paused = alice.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
    assert paused.status_code == 200 and paused.get_json()["status"] == "paused"
    assert paused.get_json()["object"] == "fine_tuning.job"
    assert alice.get(f"/jobs/{job_id}").get_json()["status"] == "paused"
    # a paused job is not claimed; pausing it again changes nothing
    runtime = app.extensions["llm_train_api.runtime"]
    assert runtime.queue.claim("w1", 60) is None
    assert alice.post(f"/v1/fine_tuning/jobs/{job_id}/pause").get_json()["status"] == \
        "paused"
    events = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events").get_json()["data"]
    assert events[0]["message"].startswith("The job was paused")
    resumed = alice.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    assert resumed.status_code == 200 and resumed.get_json()["status"] == "queued"
    events = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events").get_json()["data"]
    assert events[0]["message"] == "The job was resumed" and events[0]["level"] == "info"
    assert runtime.queue.claim("w1", 60).id == job_id
    events = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events").get_json()["data"]
    assert events[0]["message"] == "Fine-tuning job started"


def test_pausing_a_running_job_asks_its_worker(app, alice):
    file_id = upload(alice).get_json()["id"]
    job_id = create_job(alice, file_id).get_json()["id"]
    runtime = app.extensions["llm_train_api.runtime"]
    assert runtime.queue.claim("w1", 60).id == job_id
    asked = alice.post(f"/v1/fine_tuning/jobs/{job_id}/pause")
    # OpenAI's answer is the job object; it reads running until the worker stops the run
    assert asked.status_code == 200 and asked.get_json()["status"] == "running"
    assert alice.get(f"/jobs/{job_id}").get_json()["pause_requested_at"] is not None
    events = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events").get_json()["data"]
    assert events[0]["message"].startswith("Pause requested")
    withdrawn = alice.post(f"/v1/fine_tuning/jobs/{job_id}/resume")
    assert withdrawn.status_code == 200 and withdrawn.get_json()["status"] == "running"
    assert alice.get(f"/jobs/{job_id}").get_json()["pause_requested_at"] is None


def test_a_finished_job_cannot_pause_or_resume(alice):
    file_id = upload(alice).get_json()["id"]
    job_id = create_job(alice, file_id).get_json()["id"]
    assert alice.post(f"/v1/fine_tuning/jobs/{job_id}/cancel").status_code == 200
    for verb in ("pause", "resume"):
        err = assert_openai_error(alice.post(f"/v1/fine_tuning/jobs/{job_id}/{verb}"), 409)
        assert err["code"] == "conflict" and "cancelled" in err["message"]
    assert alice.get(f"/jobs/{job_id}").get_json()["status"] == "cancelled"
    assert_openai_error(alice.post("/v1/fine_tuning/jobs/ftjob-nope/pause"), 404)
    assert_openai_error(alice.post("/v1/fine_tuning/jobs/bad id!/resume"), 404)


def _checkpoint(app, job_id: str, step: int, metrics: dict) -> None:
    runtime = app.extensions["llm_train_api.runtime"]
    folder = jobfiles.job_dir(runtime.data_dir, runtime.jobs.get_job(job_id))
    (folder / "checkpoints" / manifest.step_name(step)).mkdir(parents=True)
    (folder / "checkpoints" / manifest.step_name(step) / "state.json").write_text(
        json.dumps({"step": step}))
    manifest.record(folder, step, f"checkpoints/{manifest.step_name(step)}",
                    {"step": step, **metrics}, keep=10)


def test_checkpoints_newest_first_in_pages(app, alice):
    file_id = upload(alice).get_json()["id"]
    job_id = create_job(alice, file_id, suffix="s").get_json()["id"]
    empty = alice.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").get_json()
    assert empty == {"object": "list", "data": [], "has_more": False, "first_id": None,
                     "last_id": None}
    for step in (2, 4, 6):
        _checkpoint(app, job_id, step, {"train_loss": 3.0 - step / 4,
                                        "train_token_accuracy": 0.5,
                                        "val_loss": 2.0 if step == 4 else None})
    listed = alice.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").get_json()
    assert [c["step_number"] for c in listed["data"]] == [6, 4, 2]
    assert listed["has_more"] is False and listed["first_id"] == f"ftckpt-{job_id}-6"
    four = listed["data"][1]
    assert four["object"] == "fine_tuning.job.checkpoint"
    assert four["fine_tuning_job_id"] == job_id and four["created_at"] > 0
    assert four["fine_tuned_model_checkpoint"] == f"ft:llama:alice:s:{job_id}:ckpt-step-4"
    assert four["metrics"] == {"step": 4, "train_loss": 2.0, "train_mean_token_accuracy": 0.5,
                               "valid_loss": 2.0, "valid_mean_token_accuracy": None,
                               "full_valid_loss": None,
                               "full_valid_mean_token_accuracy": None}
    assert listed["data"][0]["metrics"]["valid_loss"] is None
    first = alice.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints?limit=2").get_json()
    assert [c["step_number"] for c in first["data"]] == [6, 4] and first["has_more"] is True
    rest = alice.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints?limit=2"
                     f"&after={first['last_id']}").get_json()
    assert [c["step_number"] for c in rest["data"]] == [2] and rest["has_more"] is False
    # a corrupt checkpoint cannot be used, so it is not listed
    runtime = app.extensions["llm_train_api.runtime"]
    manifest.mark_corrupt(jobfiles.job_dir(runtime.data_dir, runtime.jobs.get_job(job_id)),
                          4, "test")
    after = alice.get(f"/v1/fine_tuning/jobs/{job_id}/checkpoints").get_json()
    assert [c["step_number"] for c in after["data"]] == [6, 2]


def test_bad_checkpoint_queries_are_400s(alice):
    file_id = upload(alice).get_json()["id"]
    job_id = create_job(alice, file_id).get_json()["id"]
    url = f"/v1/fine_tuning/jobs/{job_id}/checkpoints"
    assert_openai_error(alice.get(f"{url}?after=ftckpt-nope"), 400, "after")
    assert_openai_error(alice.get(f"{url}?limit=0"), 400, "limit")
    assert_openai_error(alice.get(f"{url}?limit=101"), 400, "limit")
    assert_openai_error(alice.get(f"{url}?order=asc"), 400, "order")
    assert_openai_error(alice.get("/v1/fine_tuning/jobs/ftjob-nope/checkpoints"), 404)


@pytest.mark.parametrize(("fields", "param"), [
    ({"model": "no-such-model"}, "model"),
    ({"training_file": "file-000000000000000000000000"}, "training_file"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": 1.5}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"learning_rate_multiplier": "high"}},
     "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0}}}},
     "method.dpo.hyperparameters.beta"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": "high"}}}},
     "method.dpo.hyperparameters.beta"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"loss": 1}}}},
     "method.dpo.hyperparameters.loss"),
    ({"method": {"type": "reinforcement"}}, "method.type"),
    ({"method": {"type": "supervised"}, "hyperparameters": {}}, "hyperparameters"),
    ({"suffix": "has:colon"}, "suffix"),
    ({"metadata": {f"k{i}": "v" for i in range(17)}}, "metadata"),
    ({"integrations": [{"type": "wandb"}]}, "integrations"),
    ({"seed": -1}, "seed"),
    ({"unknown": 1}, "unknown"),
])
def test_bad_creates_are_400s_naming_the_param(alice, fields, param):
    file_id = upload(alice).get_json()["id"]
    err = assert_openai_error(create_job(alice, file_id, **fields), 400, param)
    assert err["message"]
    assert alice.get("/jobs").get_json() == []


def test_a_dpo_job_trains_on_an_openai_preference_file(alice):
    uploaded = upload(alice, PREFERENCES, "prefs.jsonl")
    assert uploaded.status_code == 200, uploaded.get_json()
    file_id = uploaded.get_json()["id"]
    assert alice.get(f"/datasets/{file_id}").get_json()["kind"] == "preference"
    resp = create_job(alice, file_id, method={"type": "dpo", "dpo": {"hyperparameters": {
        "beta": 0.25, "n_epochs": 2}}})
    assert resp.status_code == 200, resp.get_json()
    job = resp.get_json()
    assert job["method"] == {"type": "dpo", "dpo": {"hyperparameters": {
        "n_epochs": 2, "batch_size": 4, "learning_rate_multiplier": 1.0, "beta": 0.25}}}
    assert job["hyperparameters"]["beta"] == 0.25
    native = alice.get(f"/jobs/{job['id']}").get_json()["hyperparameters"]
    assert native["method"] == "dpo" and native["dpo"] == {"beta": 0.25}
    # "auto" is the trainer's default beta
    auto = create_job(alice, file_id, method={"type": "dpo", "dpo": {"hyperparameters": {
        "beta": "auto"}}}).get_json()
    assert auto["method"]["dpo"]["hyperparameters"]["beta"] == 0.1


def test_dpo_and_the_training_files_kind_must_agree(alice):
    chat = upload(alice).get_json()["id"]
    prefs = upload(alice, PREFERENCES, "prefs.jsonl").get_json()["id"]
    err = assert_openai_error(create_job(alice, chat, method={"type": "dpo"}), 400,
                              "training_file")
    assert "preference" in err["message"]
    err = assert_openai_error(create_job(alice, prefs), 400, "training_file")
    assert "dpo" in err["message"]
    assert alice.get("/jobs").get_json() == []


def test_the_queued_jobs_quota_is_a_rate_limit_error(alice):
    file_id = upload(alice).get_json()["id"]
    for _ in range(3):
        assert create_job(alice, file_id).status_code == 200
    err = assert_openai_error(create_job(alice, file_id), 429,
                              error_type="rate_limit_error")
    assert err["code"] == "rate_limit_exceeded" and "MAX_QUEUED_PER_USER" in err["message"]
    assert len(alice.get("/jobs").get_json()) == 3


def test_events_newest_first_with_metrics_and_a_result_file(app, alice):
    file_id = upload(alice).get_json()["id"]
    job_id = create_job(alice, file_id, suffix="s").get_json()["id"]
    runtime = app.extensions["llm_train_api.runtime"]
    assert runtime.queue.claim("w1", 60).id == job_id
    progress = {"phase": "training", "step": 4, "total_steps": 4, "train_tokens": 100,
                "steps_per_epoch": 2, "eta_s": 30}
    assert runtime.queue.record_progress(job_id, "w1", progress, [
        {"step": 2, "train_loss": 2.5, "lr": 1e-4}, {"step": 4, "train_loss": 1.25}])
    running = alice.get(f"/v1/fine_tuning/jobs/{job_id}").get_json()
    assert running["status"] == "running" and running["estimated_finish"] > 0
    runtime.queue.finish(job_id, "w1", JobStatus.SUCCEEDED)
    job = alice.get(f"/v1/fine_tuning/jobs/{job_id}").get_json()
    assert job["status"] == "succeeded" and job["trained_tokens"] == 200
    assert job["fine_tuned_model"] == f"ft:llama:alice:s:{job_id}"
    assert job["estimated_finish"] is None and isinstance(job["finished_at"], int)
    events = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events").get_json()
    assert events["object"] == "list" and events["has_more"] is False
    messages = [e["message"] for e in events["data"]]
    assert messages[0] == "The job has successfully completed"
    assert messages[-1] == f"Created fine-tuning job: {job_id}"
    metrics = [e for e in events["data"] if e["type"] == "metrics"]
    assert [m["message"] for m in metrics] == ["Step 4/4: training loss=1.2500",
                                               "Step 2/4: training loss=2.5000"]
    assert metrics[0]["data"]["step"] == 4 and metrics[0]["data"]["train_loss"] == 1.25
    page = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events?limit=2").get_json()
    assert page["has_more"] is True and [e["id"] for e in page["data"]] == \
        [e["id"] for e in events["data"][:2]]
    rest = alice.get(f"/v1/fine_tuning/jobs/{job_id}/events?after="
                     f"{page['data'][-1]['id']}").get_json()
    assert [e["id"] for e in rest["data"]] == [e["id"] for e in events["data"][2:]]
    # the result file: step_metrics.csv, generated from the metrics
    (result,) = job["result_files"]
    described = alice.get(f"/v1/files/{result}").get_json()
    assert described["filename"] == "step_metrics.csv"
    csv = alice.get(f"/v1/files/{result}/content").data.decode().splitlines()
    assert csv[0].startswith("step,train_loss") and csv[1].startswith("2,2.5")
    assert_openai_error(alice.delete(f"/v1/files/{result}"), 400, "file_id")


# ---------------------------------------------------------------- models


def test_models_list_base_and_find_fine_tuned_by_openai_name(app, alice):
    listed = alice.get("/v1/models").get_json()
    assert listed["object"] == "list"
    ids = [m["id"] for m in listed["data"]]
    assert "llama" in ids and "gpt-nano" in ids
    llama = alice.get("/v1/models/llama").get_json()
    assert llama["object"] == "model" and llama["owned_by"] == "alice"
    assert_openai_error(alice.get("/v1/models/nope"), 404)
    assert_openai_error(alice.get("/v1/models/ft:llama:alice:ftjob-nope"), 404)


# ---------------------------------------------------------------- errors and the document


def test_every_v1_error_is_in_openais_shape_and_native_ones_keep_theirs(app, alice):
    anonymous = app.test_client()
    err = assert_openai_error(anonymous.get("/v1/fine_tuning/jobs"), 401)
    assert err["code"] == "invalid_api_key"
    assert_openai_error(alice.get("/v1/no/such/route"), 404)
    assert_openai_error(alice.delete("/v1/fine_tuning/jobs"), 405)
    assert_openai_error(alice.post("/v1/fine_tuning/jobs", data="{}",
                                   content_type="text/plain"), 415)
    assert_openai_error(alice.post("/v1/fine_tuning/jobs", data="{",
                                   content_type="application/json"), 400)
    native = anonymous.get("/jobs").get_json()
    assert native["code"] == 401 and "error" not in native


def test_the_v1_actions_without_a_body_are_exempt_from_the_json_rule():
    from llm_train_api.api import errors as native_errors
    from llm_train_api.api import openai as v1

    assert v1.NO_BODY_ENDPOINTS <= native_errors.NO_BODY_ENDPOINTS
    assert v1.RAW_BODY_ENDPOINTS <= native_errors.RAW_BODY_ENDPOINTS
    assert {"openai_fine_tuning.JobPause", "openai_fine_tuning.JobResume"} <= \
        v1.NO_BODY_ENDPOINTS


def test_the_openapi_document_has_v1_with_openai_errors(app):
    spec = app.test_client().get("/openapi.json").get_json()
    paths = {p for p in spec["paths"] if p.startswith("/v1/")}
    assert {"/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content",
            "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/{job_id}",
            "/v1/fine_tuning/jobs/{job_id}/cancel", "/v1/fine_tuning/jobs/{job_id}/events",
            "/v1/fine_tuning/jobs/{job_id}/pause", "/v1/fine_tuning/jobs/{job_id}/resume",
            "/v1/fine_tuning/jobs/{job_id}/checkpoints",
            "/v1/models", "/v1/models/{model_id}"} == paths
    ref = "#/components/schemas/OpenAIError"
    for path in paths:
        for operation in spec["paths"][path].values():
            if not isinstance(operation, dict):
                continue
            for status, response in operation["responses"].items():
                if status == "default" or int(status) >= 400:
                    assert response["content"]["application/json"]["schema"]["$ref"] == ref
            assert "422" not in operation["responses"]


def test_the_python_client_and_the_cli_show_a_v1_jobs_origin(server, api, tmp_path):
    import requests
    from click.testing import CliRunner

    from llm_train_api.cli.main import main
    from tests.helpers.hf_models import write_folder

    api.import_model("llama", write_folder(tmp_path / "src", tiny_llama()))
    auth = {"Authorization": f"Bearer {server.token}"}
    file_id = requests.post(f"{server.url}/v1/files", headers=auth, timeout=30,
                            files={"file": ("t.jsonl", CHAT)},
                            data={"purpose": "fine-tune"}).json()["id"]
    created = requests.post(f"{server.url}/v1/fine_tuning/jobs", headers=auth, timeout=30,
                            json={"model": "llama", "training_file": file_id,
                                  "suffix": "s1", "metadata": {"team": "nlp"}})
    assert created.status_code == 200, created.text
    job = api.get_job(created.json()["id"])
    assert (job.api, job.metadata, job.suffix) == ("openai", {"team": "nlp"}, "s1")
    shown = CliRunner().invoke(main, ["jobs", "get", job.id, "--url", server.url,
                                      "--token", server.token])
    assert shown.exit_code == 0, shown.output
    assert "openai (suffix s1)" in shown.output and '{"team": "nlp"}' in shown.output


def test_the_dashboard_shows_a_v1_jobs_origin_and_metadata(app):
    page = app.test_client().get("/ui/jobs/ftjob-1")
    assert page.status_code == 200
    assert b'id="job-openai"' in page.data and b'id="job-metadata"' in page.data
    script = app.test_client().get("/ui/static/job.js").data
    assert b'job.api === "openai"' in script and b"job.metadata" in script
    listing = app.test_client().get("/ui/static/jobs.js").data
    assert b"badge-openai" in listing
