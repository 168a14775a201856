"""Pause and resume through the API: who may, what each status becomes, what is refused,
and what a paused job counts for. The worker's side is in test_worker_pause.py."""

from __future__ import annotations

import pytest

from llm_train_api import create_app
from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.store.pausing import pause_job, resume_job
from tests.helpers.clients import admin_client, client_as

JOB = {"model_name": "gpt-nano", "dataset": "builtin:tinytext"}


def runtime(app):
    return app.extensions["llm_train_api.runtime"]


@pytest.fixture
def builtin_app(tmp_path):
    """The built-in executor: running jobs pause through their worker."""
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"),
                      "MAX_QUEUED_PER_USER": 2})
    yield app
    runtime(app).close()


@pytest.fixture
def none_app(tmp_path):
    """EXECUTOR=none: statuses are driven from outside, a running job pauses at once."""
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "MAX_QUEUED_PER_USER": 2})
    yield app
    runtime(app).close()


def seed(app, job_id: str, owner: str | None = None, *, running: bool = False) -> None:
    """A queued job straight into the store (no admission), claimed when `running`."""
    runtime(app).jobs.create_job(NewJob(job_id, "gpt-nano", "builtin:tinytext", {},
                                        owner=owner))
    if running:
        claimed = runtime(app).queue.claim("w1", 30)
        assert claimed is not None and claimed.id == job_id


def events(app, job_id: str) -> list[tuple[str, str | None, str | None, str | None]]:
    return [(e.kind, e.from_status and e.from_status.value,
             e.to_status and e.to_status.value, e.actor)
            for e in runtime(app).jobs.job_events(job_id)[0]]


def test_a_queued_job_pauses_at_once_is_not_claimed_and_resumes(builtin_app):
    alice = client_as(builtin_app, "alice", "user")
    seed(builtin_app, "q", owner="alice")
    resp = alice.post("/jobs/q/pause")
    assert resp.status_code == 200 and resp.headers["ETag"]
    job = resp.get_json()
    assert job["status"] == "paused" and job["pause_requested_at"] is None
    assert job["finished_at"] is None
    assert runtime(builtin_app).queue.claim("w1", 30) is None  # not claimable
    again = alice.post("/jobs/q/pause")  # already paused: the same job, unchanged
    assert again.status_code == 200 and again.headers["ETag"] == resp.headers["ETag"]
    resumed = alice.post("/jobs/q/resume")
    assert resumed.status_code == 200 and resumed.get_json()["status"] == "queued"
    assert alice.post("/jobs/q/resume").headers["ETag"] == resumed.headers["ETag"]
    assert runtime(builtin_app).queue.claim("w1", 30).id == "q"
    assert events(builtin_app, "q")[1:3] == [
        ("paused", "queued", "paused", "user:alice"),
        ("resumed", "paused", "queued", "user:alice")]


def test_a_running_job_gets_a_pause_request_and_resume_withdraws_it(builtin_app):
    admin = admin_client(builtin_app)
    seed(builtin_app, "r", running=True)
    resp = admin.post("/jobs/r/pause")
    assert resp.status_code == 202
    job = resp.get_json()
    assert job["status"] == "running" and job["pause_requested_at"] is not None
    assert job["worker"] == "w1"  # the worker keeps its lease until it has stopped the run
    held = runtime(builtin_app).queue.renew_leases("w1", 30)
    assert held == {"r"} and held.pausing == {"r"}
    # Asking again changes nothing.
    again = admin.post("/jobs/r/pause")
    assert again.status_code == 202 and again.headers["ETag"] == resp.headers["ETag"]
    withdrawn = admin.post("/jobs/r/resume")
    assert withdrawn.status_code == 200
    assert withdrawn.get_json()["status"] == "running"
    assert withdrawn.get_json()["pause_requested_at"] is None
    assert runtime(builtin_app).queue.renew_leases("w1", 30).pausing == frozenset()
    assert [e[0] for e in events(builtin_app, "r")] == [
        "created", "claimed", "pause_requested", "pause_withdrawn"]


def test_without_builtin_workers_a_running_job_pauses_at_once(none_app):
    admin = admin_client(none_app)
    seed(none_app, "r", running=True)
    resp = admin.post("/jobs/r/pause")
    assert resp.status_code == 200
    job = resp.get_json()
    assert job["status"] == "paused" and job["worker"] is None
    assert runtime(none_app).queue.renew_leases("w1", 30) == set()  # the lease is over


@pytest.mark.parametrize("final", ["succeeded", "failed", "cancelled"])
def test_a_final_job_can_be_neither_paused_nor_resumed(none_app, final):
    admin = admin_client(none_app)
    seed(none_app, "f", running=final == "succeeded")
    assert admin.patch("/jobs/f/status", json={"status": final}).status_code == 200
    before = admin.get("/jobs/f").headers["ETag"]
    for verb, target in (("pause", "paused"), ("resume", "queued")):
        resp = admin.post(f"/jobs/f/{verb}")
        assert resp.status_code == 409, resp.get_json()
        body = resp.get_json()
        assert body["current_status"] == final and body["allowed_targets"] == []
        assert f"to {target!r}" in body["message"] and "final" in body["message"]
    assert admin.get("/jobs/f").headers["ETag"] == before


def test_a_users_pause_and_resume_reach_only_their_own_jobs(builtin_app):
    alice = client_as(builtin_app, "alice", "user")
    bob = client_as(builtin_app, "bob", "user")
    seed(builtin_app, "mine", owner="alice")
    for verb in ("pause", "resume"):
        assert bob.post(f"/jobs/mine/{verb}").status_code == 404
        assert alice.post(f"/jobs/nope/{verb}").status_code == 404
        assert alice.post(f"/jobs/bad%20id/{verb}").status_code == 404
    assert runtime(builtin_app).jobs.get_job("mine").status is JobStatus.QUEUED


def test_a_paused_job_is_cancelled_or_deleted_like_any_other(builtin_app):
    alice = client_as(builtin_app, "alice", "user")
    seed(builtin_app, "c", owner="alice")
    seed(builtin_app, "d", owner="alice")
    for job_id in ("c", "d"):
        assert alice.post(f"/jobs/{job_id}/pause").get_json()["status"] == "paused"
    cancelled = alice.post("/jobs/c/cancel")
    assert cancelled.status_code == 200 and cancelled.get_json()["status"] == "cancelled"
    assert alice.delete("/jobs/d").status_code == 204
    assert alice.get("/jobs/d").status_code == 404


def test_patch_status_paused_follows_the_patch_rules(builtin_app, none_app):
    seed(builtin_app, "b")
    user = client_as(builtin_app, "alice", "user")
    seed(builtin_app, "u", owner="alice")
    refused = user.patch("/jobs/u/status", json={"status": "paused"})
    assert refused.status_code == 403 and "/jobs/u/pause" in refused.get_json()["message"]
    managed = admin_client(builtin_app).patch("/jobs/b/status", json={"status": "paused"})
    assert managed.status_code == 409 and "/jobs/b/pause" in managed.get_json()["message"]
    # With an external executor, the admin drives statuses: paused -> queued is a resume.
    seed(none_app, "x")
    admin = admin_client(none_app)
    assert admin.patch("/jobs/x/status", json={"status": "paused"}).get_json()["status"] \
        == "paused"
    illegal = admin.patch("/jobs/x/status", json={"status": "running"})
    assert illegal.status_code == 409
    assert illegal.get_json()["allowed_targets"] == ["cancelled", "queued"]
    assert admin.patch("/jobs/x/status", json={"status": "queued"}).get_json()["status"] \
        == "queued"


def test_paused_jobs_count_against_the_queued_quota(builtin_app):
    alice = client_as(builtin_app, "alice", "user")
    seed(builtin_app, "p1", owner="alice")
    seed(builtin_app, "p2", owner="alice")
    assert alice.post("/jobs/p1/pause").status_code == 200
    over = alice.post("/jobs", json={**JOB, "job_id": "p3"})
    assert over.status_code == 429, over.get_json()
    assert "queued or paused" in over.get_json()["message"]
    assert alice.post("/jobs/p1/cancel").status_code == 200  # a cancelled one frees a place
    assert alice.post("/jobs", json={**JOB, "job_id": "p3"}).status_code == 201


def test_a_paused_job_keeps_its_dataset_in_use(builtin_app):
    seed(builtin_app, "uses", owner="alice")
    jobs = runtime(builtin_app).jobs
    pause_job(jobs, "uses", actor="t")
    assert jobs.dataset_in_use("builtin:tinytext") == ["uses"]


def test_pause_and_resume_are_compare_and_set_in_the_store(jobs, queue):
    jobs.create_job(NewJob("j", "m", "d", {}))
    assert queue.claim("w1", 30).id == "j"
    first = pause_job(jobs, "j", actor="a")
    assert first.changed and first.job.pause_requested_at is not None
    assert not pause_job(jobs, "j", actor="a").changed
    # The worker's finish consumes the request: paused, the attempt taken back.
    paused = queue.finish_paused("j", "w1", "paused at step 3")
    assert paused.status is JobStatus.PAUSED and paused.attempts == 0 and paused.pauses == 1
    assert paused.worker is None and paused.pause_requested_at is None
    assert queue.finish_paused("j", "w1") is None  # no lease any more
    assert resume_job(jobs, "j", actor="a").job.status is JobStatus.QUEUED
    # A withdrawn request leaves nothing for finish_paused: the worker requeues instead.
    assert queue.claim("w1", 30).attempts == 1
    pause_job(jobs, "j", actor="a")
    resume_job(jobs, "j", actor="a")
    assert queue.finish_paused("j", "w1") is None
    assert jobs.get_job("j").status is JobStatus.RUNNING


def test_the_reaper_pauses_a_job_whose_worker_died_while_pausing(jobs, queue):
    jobs.create_job(NewJob("j", "m", "d", {}))
    queue.claim("w1", 30)
    pause_job(jobs, "j", actor="a")
    queue.renew_leases("w1", -1)  # the worker is gone: its lease lapses
    [reaped] = queue.requeue_expired()
    assert reaped.status is JobStatus.PAUSED and reaped.pause_requested_at is None
    assert reaped.attempts == 1  # the run did not stop as asked: its attempt counts
    assert queue.requeue_expired() == []  # and the reaper never touches it again
    assert jobs.get_job("j").status is JobStatus.PAUSED
    kinds = [(e.kind, e.to_status) for e in jobs.job_events("j")[0]]
    assert kinds[-1] == ("lease_expired", JobStatus.PAUSED)
