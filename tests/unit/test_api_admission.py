"""With the built-in executor (the default), POST /jobs admits only jobs that can run, and
statuses other than `cancelled` belong to the workers."""

from __future__ import annotations

import pytest

from tests.helpers.clients import admin_client


@pytest.fixture
def local(admitting_app):
    return admin_client(admitting_app)


GOOD = {"model_name": "gpt-nano", "dataset": "builtin:tinytext",
        "hyperparameters": {"learning_rate": 0.001, "epochs": 5}}


def count(client) -> int:
    return len(client.get("/jobs").get_json())


def test_a_valid_job_is_admitted_with_its_dataset_hash(local):
    resp = local.post("/jobs", json={**GOOD, "job_id": "ok", "priority": 3,
                                     "resources": {"cpus": 2}})
    assert resp.status_code == 201, resp.get_json()
    job = resp.get_json()
    assert len(job["dataset_sha256"]) == 64
    assert job["priority"] == 3 and job["max_attempts"] == 3 and job["attempts"] == 0
    assert job["resources"] == {"cpus": 2, "gpus": 0, "memory_gb": None}
    assert job["progress"] is None and job["worker"] is None


@pytest.mark.parametrize("field,value,where", [
    ("model_name", "gpt-9000", "model_name"),
    ("dataset", "missing", "dataset"),
    ("dataset", "../etc/passwd", "dataset"),
    ("hyperparameters", {"lerning_rate": 0.1}, "hyperparameters"),
    ("hyperparameters", {"learning_rate": 5}, "hyperparameters"),
    ("hyperparameters", {"batch_size": True}, "hyperparameters"),
])
def test_jobs_that_cannot_run_are_422_naming_the_field(admitting_app, local, field, value,
                                                        where):
    resp = local.post("/jobs", json={**GOOD, field: value})
    assert resp.status_code == 422
    errors = resp.get_json()["errors"]["json"]
    assert where in errors, errors
    data_dir = str(admitting_app.extensions["llm_train_api.runtime"].data_dir)
    assert data_dir not in str(errors), "server paths leak to clients"
    assert count(local) == 0


def test_the_unknown_hyperparameter_is_named(local):
    resp = local.post("/jobs", json={**GOOD, "hyperparameters": {"lerning_rate": 0.1}})
    assert resp.get_json()["errors"]["json"]["hyperparameters"] == {
        "lerning_rate": ["Unknown hyperparameter."]}


def test_a_job_too_big_for_the_workers_is_refused_with_the_estimate(local):
    resp = local.post("/jobs", json={**GOOD, "model_name": "gpt2-xl",
                                     "hyperparameters": {"batch_size": 8, "block_size": 1024}})
    assert resp.status_code == 422
    message = resp.get_json()["errors"]["json"]["hyperparameters"]["_memory"][0]
    assert "gpt2-xl" in message and "GiB" in message and "24.0 GiB" in message


def test_dry_run_validates_without_creating(local):
    ok = local.post("/jobs?dry_run=true", json={**GOOD, "job_id": "preview"})
    assert ok.status_code == 200 and ok.get_json()["id"] == "preview"
    bad = local.post("/jobs?dry_run=true", json={**GOOD, "model_name": "nope"})
    assert bad.status_code == 422
    assert local.get("/jobs/preview").status_code == 404 and count(local) == 0


@pytest.mark.parametrize("body,field", [
    ({"priority": 10_000}, "priority"), ({"max_attempts": 0}, "max_attempts"),
    ({"max_runtime_seconds": 0}, "max_runtime_seconds"), ({"resources": {"gpus": -1}},
                                                          "resources"),
    ({"resources": {"tpus": 1}}, "resources"), ({"priority": "high"}, "priority"),
])
def test_bad_execution_options_are_422(local, body, field):
    resp = local.post("/jobs", json={**GOOD, **body})
    assert resp.status_code == 422 and field in resp.get_json()["errors"]["json"]


def test_clients_may_only_cancel_when_workers_own_the_statuses(local):
    local.post("/jobs", json={**GOOD, "job_id": "mine"})
    for target in ("running", "succeeded", "failed"):
        resp = local.patch("/jobs/mine/status", json={"status": target})
        assert resp.status_code == 409
        assert "managed by the workers" in resp.get_json()["message"]
    assert local.patch("/jobs/mine/status", json={"status": "queued"}).status_code == 200
    cancelled = local.patch("/jobs/mine/status", json={"status": "cancelled"})
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"


def test_cancel_endpoint(local):
    local.post("/jobs", json={**GOOD, "job_id": "c"})
    first = local.post("/jobs/c/cancel")
    assert first.status_code == 200 and first.get_json()["status"] == "cancelled"
    again = local.post("/jobs/c/cancel")
    assert again.status_code == 200 and again.get_json() == first.get_json()
    assert local.post("/jobs/nope/cancel").status_code == 404


def test_events_are_paginated_over_http(local):
    local.post("/jobs", json={**GOOD, "job_id": "e"})
    local.post("/jobs/e/cancel")
    page = local.get("/jobs/e/events?limit=1")
    assert [e["kind"] for e in page.get_json()] == ["created"]
    link = page.headers["Link"]
    nxt = link[link.index("<") + 1: link.index(">")]
    rest = local.get(nxt)
    assert [e["to_status"] for e in rest.get_json()] == ["cancelled"]
    assert "Link" not in rest.headers
    assert local.get("/jobs/e/events?cursor=garbage").status_code == 400
    assert local.get("/jobs/e/events?limit=0").status_code == 422


def test_metrics_of_a_job_without_any(local):
    local.post("/jobs", json={**GOOD, "job_id": "m"})
    assert local.get("/jobs/m/metrics").get_json() == []
    assert local.get("/jobs/m/metrics?after_step=-5").status_code == 422
    assert local.get("/jobs/nope/metrics").status_code == 404
    for bad in ("limit=0", "limit=10001", "after_step=99999999999", "limit=x", "page=2"):
        resp = local.get(f"/jobs/m/metrics?{bad}")
        assert resp.status_code == 422 and resp.get_json()["code"] == 422, bad


def test_a_long_curve_pages_through_link_headers(local, admitting_app):
    local.post("/jobs", json={**GOOD, "job_id": "long"})
    queue = admitting_app.extensions["llm_train_api.runtime"].queue
    assert queue.claim("w1", 30).id == "long"
    curve = [{"step": s, "train_loss": 10 / s} for s in range(1, 26)]
    curve.insert(12, {"step": 12, "val_loss": 1.5})  # a second point at step 12
    queue.record_progress("long", "w1", {"step": 25}, curve)
    url, pages = "/jobs/long/metrics?limit=4", []
    while url:
        resp = local.get(url)
        assert resp.status_code == 200
        pages.append(resp.get_json())
        link = resp.headers.get("Link")
        assert (link is None) == (len(pages) == 7)
        # The next page keeps the other parameters and starts after the last step shown.
        url = link and link[link.index("<") + 1: link.index(">")].removeprefix("http://localhost")
        if url:
            assert "limit=4" in url and f"after_step={pages[-1][-1]['step']}" in url
    assert [p for page in pages for p in page] == curve
    assert all(len(page) <= 4 for page in pages)
    # Step 12's second point would have been the 5th of the third page: the page ends
    # before step 12 rather than between its two points.
    assert [[p["step"] for p in page] for page in pages[2:4]] == [[9, 10, 11], [12, 12, 13, 14]]


# ---------------------------------------------------------------- resources.processes (DDP)


@pytest.mark.parametrize("resources,stored", [
    ({"cpus": 2, "processes": 2}, {"cpus": 2, "gpus": 0, "memory_gb": None, "processes": 2}),
    ({"gpus": 2}, {"cpus": 1, "gpus": 2, "memory_gb": None, "processes": 2}),  # one per GPU
    ({"cpus": 4}, {"cpus": 4, "gpus": 0, "memory_gb": None}),  # single-process: unchanged
])
def test_processes_are_admitted_and_default_to_one_per_gpu(local, resources, stored):
    resp = local.post("/jobs?dry_run=true", json={**GOOD, "resources": resources})
    assert resp.status_code == 200, resp.get_json()
    assert resp.get_json()["resources"] == stored


@pytest.mark.parametrize("resources,needle", [
    ({"processes": 2}, "processes (2) must not exceed cpus (1)"),
    ({"cpus": 8, "processes": 9}, "processes (9) must not exceed cpus (8)"),
    ({"gpus": 2, "processes": 4}, "processes must equal gpus (2), not 4"),
    ({"gpus": 1, "processes": 2}, "processes must equal gpus (1), not 2"),
    ({"cpus": 128, "processes": 65}, "less than or equal to 64"),
    ({"processes": 0}, "greater than or equal to 1"),
    ({"processes": "two"}, "Not a valid integer."),
])
def test_processes_that_cannot_run_are_422_with_the_reason(local, resources, needle):
    resp = local.post("/jobs", json={**GOOD, "resources": resources})
    assert resp.status_code == 422
    messages = resp.get_json()["errors"]["json"]["resources"]["processes"]
    assert any(needle in m for m in messages), messages
    assert count(local) == 0


def test_admit_splits_the_global_batch_and_adds_up_cpu_ranks_memory(admitting_app):
    """admit()'s DDP rules (they need the job's resources as well as its hyperparameters)."""
    from llm_train_api.services.admission import AdmissionError, admit
    from llm_train_api.training.catalog import estimate_memory_for
    from llm_train_api.training.hyperparams import validate_hyperparameters

    data_dir = str(admitting_app.extensions["llm_train_api.runtime"].data_dir)
    hp = {"batch_size": 6, "block_size": 64}

    def refusal(resources, limit=2**40, **extra):
        with pytest.raises(AdmissionError) as info:
            admit("gpt-nano", "builtin:tinytext", {**hp, **extra}, data_dir=data_dir,
                  memory_limit_bytes=limit, resources=resources)
        return info.value.fields["hyperparameters"]

    assert admit("gpt-nano", "builtin:tinytext", hp, data_dir=data_dir,
                 memory_limit_bytes=2**40, resources={"cpus": 3, "processes": 3})
    assert refusal({"cpus": 4, "processes": 4})["batch_size"] == [
        "batch_size is the global batch, split evenly over the 4 processes: 6 is not a "
        "multiple of 4."]
    per_rank = estimate_memory_for("gpt-nano", validate_hyperparameters(
        {**hp, "batch_size": 3}, "gpt-nano"))
    limit = per_rank * 2 - 1  # one rank fits, two on one host do not
    message = refusal({"cpus": 2, "processes": 2}, limit=limit)["_memory"][0]
    assert "over 2 processes" in message and "or fewer processes" in message
    assert admit("gpt-nano", "builtin:tinytext", {**hp, "batch_size": 3}, data_dir=data_dir,
                 memory_limit_bytes=limit, resources=None)


def test_post_refuses_a_global_batch_that_does_not_split_over_the_processes(local):
    body = {**GOOD, "hyperparameters": {"batch_size": 5}, "resources": {"cpus": 2,
                                                                       "processes": 2}}
    resp = local.post("/jobs", json=body)
    assert resp.status_code == 422
    assert "not a multiple of 2" in str(resp.get_json()["errors"])
    assert count(local) == 0
