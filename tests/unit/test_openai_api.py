"""The OpenAI-compatible `/v1` API through Flask's test client: files over datasets,
fine-tuning jobs over native jobs (both ways visible), models, OpenAI's list envelope and
error shape, ownership (another user's file or job is a 404) and the per-user quota."""

from __future__ import annotations

import io
import json

import pytest

from llm_train_api import create_app
from llm_train_api.domain import JobStatus
from tests.helpers.clients import client_as
from tests.helpers.hf_models import tar_archive, tiny_llama
from tests.helpers.tiny_hf import chat_records

TAR = "application/x-tar"
CHAT = "".join(json.dumps(r) + "\n" for r in chat_records(16)).encode()


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


@pytest.mark.parametrize(("fields", "param"), [
    ({"model": "no-such-model"}, "model"),
    ({"training_file": "file-000000000000000000000000"}, "training_file"),
    ({"hyperparameters": {"n_epochs": 0}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"n_epochs": 1.5}}, "hyperparameters.n_epochs"),
    ({"hyperparameters": {"learning_rate_multiplier": "high"}},
     "hyperparameters.learning_rate_multiplier"),
    ({"hyperparameters": {"warmup": 3}}, "hyperparameters.warmup"),
    ({"method": {"type": "dpo", "dpo": {"hyperparameters": {"beta": 0.2}}}}, "method.type"),
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


def test_dpo_is_refused_clearly_until_the_trainer_has_it(alice):
    file_id = upload(alice).get_json()["id"]
    err = assert_openai_error(create_job(alice, file_id, method={"type": "dpo"}), 400,
                              "method.type")
    assert "dpo" in err["message"] and err["code"] == "unsupported_method"


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


def test_the_openapi_document_has_v1_with_openai_errors(app):
    spec = app.test_client().get("/openapi.json").get_json()
    paths = {p for p in spec["paths"] if p.startswith("/v1/")}
    assert {"/v1/files", "/v1/files/{file_id}", "/v1/files/{file_id}/content",
            "/v1/fine_tuning/jobs", "/v1/fine_tuning/jobs/{job_id}",
            "/v1/fine_tuning/jobs/{job_id}/cancel", "/v1/fine_tuning/jobs/{job_id}/events",
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
