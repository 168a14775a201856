"""The per-user storage quota (datasets plus job folders) and a full disk during an
upload, on the in-process app."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_train_api import create_app
from llm_train_api.artifacts import datasets as dataset_files
from llm_train_api.artifacts.jobs import job_dir
from llm_train_api.domain import GIB, JobStatus
from tests.helpers.clients import admin_client, client_as
from tests.helpers.disk import full_disk_for

LIMIT = 1000  # bytes
SETTING = "LLM_TRAIN_API_MAX_STORAGE_GB_PER_USER"


@pytest.fixture
def capped(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "MAX_STORAGE_GB_PER_USER": LIMIT / GIB})
    yield app
    app.extensions["llm_train_api.runtime"].close()


def runtime(app):
    return app.extensions["llm_train_api.runtime"]


def put(client, name, data):
    return client.put(f"/datasets/{name}", data=data, content_type="text/plain")


def quota_error(resp, status):
    assert resp.status_code == status, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["code"] == status and body["reason"] == "storage_quota_exceeded"
    assert SETTING in body["message"] and body["limit_bytes"] == LIMIT
    return body


def user_files(app, name="alice"):
    root = Path(runtime(app).data_dir) / "users" / name / "datasets"
    return sorted(p.name for p in root.iterdir() if p.name != ".meta")


def test_an_upload_over_the_quota_is_413_and_stores_nothing(capped):
    alice = client_as(capped, "alice", "user")
    assert put(alice, "a", b"x" * 600).status_code == 201
    body = quota_error(put(alice, "b", b"y" * 500), 413)
    assert body["usage_bytes"] == 600
    assert "Nothing was stored" in body["message"]
    assert user_files(capped) == ["a.txt"]  # no b, no temporary file
    assert alice.get("/datasets/b").status_code == 404
    # Replacing a dataset frees its old version: 900 bytes in place of 600 fits.
    assert put(alice, "a", b"z" * 900).status_code == 200
    assert put(alice, "c", b"w" * 101).status_code == 413
    assert put(alice, "c", b"w" * 100).status_code == 201


def test_job_folders_count_and_block_new_jobs_with_429(capped):
    alice = client_as(capped, "alice", "user")
    job = {"job_id": "j1", "model_name": "m", "dataset": "d"}
    assert alice.post("/jobs", json=job).status_code == 201
    jobs = runtime(capped).jobs
    jobs.transition("j1", JobStatus.RUNNING)
    done, _ = jobs.transition("j1", JobStatus.SUCCEEDED)
    folder = job_dir(runtime(capped).data_dir, done)
    folder.mkdir(parents=True)
    (folder / "ckpt_latest.pt").write_bytes(b"\0" * LIMIT)

    body = quota_error(alice.post("/jobs", json={**job, "job_id": "j2"}), 429)
    assert body["usage_bytes"] == LIMIT
    quota_error(alice.post("/jobs?dry_run=true", json={**job, "job_id": "j3"}), 429)
    assert alice.post("/jobs", json=job).status_code == 200  # a retry adds nothing
    quota_error(put(alice, "a", b"x"), 413)
    # Others are not affected: another user, and admins (who act for the service).
    assert client_as(capped, "bob", "user").post(
        "/jobs", json={**job, "job_id": "b1"}).status_code == 201
    assert admin_client(capped).post("/jobs", json={**job, "job_id": "a1"}).status_code == 201

    assert alice.delete("/jobs/j1").status_code == 204  # frees the folder
    assert alice.post("/jobs", json={**job, "job_id": "j2"}).status_code == 201
    assert put(alice, "a", b"x").status_code == 201


def test_no_quota_with_zero(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "MAX_STORAGE_GB_PER_USER": 0})
    try:
        alice = client_as(app, "alice", "user")
        assert put(alice, "a", b"x" * 5000).status_code == 201
    finally:
        runtime(app).close()


def _full_disk_for(monkeypatch, predicate):
    """Writes to files whose name passes `predicate` fail as on a full disk."""
    full_disk_for(monkeypatch, dataset_files, lambda path, mode: "b" in mode and predicate(path))


def test_a_full_disk_during_an_upload_is_507_and_stores_nothing(client, app, monkeypatch):
    _full_disk_for(monkeypatch, lambda path: dataset_files.TMP_PREFIX in path)
    resp = put(client, "corpus", b"hello\n" * 100)
    assert resp.status_code == 507, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["code"] == 507 and "disk" in body["message"] and "not stored" in body["message"]
    root = Path(runtime(app).data_dir) / "datasets"
    assert [p.name for p in root.iterdir() if p.name != ".meta"] == []
    assert client.get("/datasets/corpus").status_code == 404


def test_a_full_disk_after_the_dataset_is_stored_still_answers_201(client, app,
                                                                   monkeypatch):
    """The metadata is a cache: the dataset is stored, and says so."""
    _full_disk_for(monkeypatch, lambda path: f"{os.sep}.meta{os.sep}" in path)
    data = b"hello\n" * 100
    resp = put(client, "corpus", data)
    assert resp.status_code == 201, resp.get_data(as_text=True)
    monkeypatch.undo()
    got = client.get("/datasets/corpus")
    assert got.status_code == 200 and got.get_json()["size_bytes"] == len(data)
    assert got.get_json()["sha256"] == resp.get_json()["sha256"]


def test_concurrent_uploads_cannot_overshoot_the_quota(tmp_path):
    """Each upload fits alone; the one that commits second is refused under the lock."""
    quota = dataset_files.StorageQuota(LIMIT, f"{SETTING}=x", lambda: 0)

    def upload(stem, chunks):
        return dataset_files.store_upload(tmp_path, stem, "txt", chunks, max_bytes=10**6,
                                          in_use=lambda _stem: [], quota=quota)

    def first_chunks():
        yield b"a" * 300
        upload("second", [b"b" * 600])  # streams and commits while the first streams
        yield b"a" * 300

    with pytest.raises(dataset_files.OverQuota):
        upload("first", first_chunks())
    assert sorted(p.name for p in (tmp_path / "datasets").iterdir()
                  if not p.name.startswith(".")) == ["second.txt"]
