"""GET /jobs/{id}/checkpoints, the verified archive of one, and `from_checkpoint` at
creation: who may branch from what, and every refusal a clear 4xx that creates nothing."""

from __future__ import annotations

import hashlib
import io
import json
import os
import tarfile
import time

import pytest

from llm_train_api.artifacts import checkpoint_pins
from llm_train_api.artifacts import jobs as jobfiles
from llm_train_api.services.checkpoints import prepare_branch
from llm_train_api.training import manifest
from tests.helpers.clients import client_as

BODY = {"model_name": "gpt-nano", "dataset": "builtin:tinytext"}


def folder(app, job_id):
    runtime = app.extensions["llm_train_api.runtime"]
    path = jobfiles.job_dir(runtime.data_dir, runtime.jobs.get_job(job_id))
    path.mkdir(parents=True, exist_ok=True)
    return path


def checkpoint(app, job_id, step, val_loss, payload=None):
    path = folder(app, job_id)
    (path / "checkpoints").mkdir(exist_ok=True)
    data = payload or b"weights of step %d " % step * 50
    (path / f"checkpoints/step-{step:08d}.pt").write_bytes(data)
    manifest.record(path, step, f"checkpoints/step-{step:08d}.pt",
                    {"step": step, "train_loss": 4.0, "val_loss": val_loss}, keep=3)
    return path / f"checkpoints/step-{step:08d}.pt"


@pytest.fixture
def alice(app):
    return client_as(app, "alice", "user")


@pytest.fixture
def bob(app):
    return client_as(app, "bob", "user")


@pytest.fixture
def trunk(app, alice):
    assert alice.post("/jobs", json={"job_id": "trunk", **BODY}).status_code == 201
    files = {step: checkpoint(app, "trunk", step, loss)
             for step, loss in ((10, 3.0), (20, 2.0), (30, 2.5))}
    return files


def test_listing_has_metrics_size_sha256_and_the_best(alice, trunk):
    listed = alice.get("/jobs/trunk/checkpoints").get_json()
    assert [c["step"] for c in listed] == [10, 20, 30]
    for entry in listed:
        data = trunk[entry["step"]].read_bytes()
        assert entry["sha256"] == hashlib.sha256(data).hexdigest()
        assert entry["size"] == len(data) and entry["status"] == "good"
    assert [c["is_best"] for c in listed] == [False, True, False]
    assert listed[1]["metrics"] == {"step": 20, "train_loss": 4.0, "val_loss": 2.0}


def test_no_checkpoints_yet_is_an_empty_list(alice):
    assert alice.post("/jobs", json={"job_id": "fresh", **BODY}).status_code == 201
    assert alice.get("/jobs/fresh/checkpoints").get_json() == []


def test_another_users_checkpoints_are_404(bob, trunk):
    assert bob.get("/jobs/trunk/checkpoints").status_code == 404
    assert bob.get("/jobs/trunk/checkpoints/20/archive").status_code == 404


def test_the_archive_is_the_verified_file(alice, trunk):
    resp = alice.get("/jobs/trunk/checkpoints/20/archive")
    assert resp.status_code == 200 and resp.mimetype == "application/x-tar"
    assert resp.headers["X-Checkpoint-Sha256"] == hashlib.sha256(
        trunk[20].read_bytes()).hexdigest()
    with tarfile.open(fileobj=io.BytesIO(resp.data)) as tar:
        assert tar.getnames() == ["step-00000020.pt"]
        assert tar.extractfile("step-00000020.pt").read() == trunk[20].read_bytes()
    assert alice.get("/jobs/trunk/checkpoints/15/archive").status_code == 404


def test_a_corrupt_checkpoint_is_never_sent(alice, trunk):
    data = bytearray(trunk[30].read_bytes())
    data[5] ^= 0xFF
    trunk[30].write_bytes(bytes(data))
    resp = alice.get("/jobs/trunk/checkpoints/30/archive")
    assert resp.status_code == 409 and "corrupt" in resp.get_json()["message"]
    trunk[20].unlink()
    assert alice.get("/jobs/trunk/checkpoints/20/archive").status_code == 409


def test_a_hostile_manifest_path_is_not_followed(app, alice, trunk, tmp_path):
    secret = tmp_path / "secret"
    secret.write_bytes(b"secret")
    path = folder(app, "trunk")
    entries = manifest.read(path)
    entries[0]["path"] = "../../../../secret"
    manifest.write(path, entries)
    assert alice.get("/jobs/trunk/checkpoints/10/archive").status_code == 409


def test_branch_records_its_origin(app, alice, trunk):
    resp = alice.post("/jobs", json={"job_id": "twig", **BODY, "from_checkpoint": "trunk:30",
                                     "hyperparameters": {"learning_rate": 0.01}})
    assert resp.status_code == 201, resp.get_json()
    created_us = app.extensions["llm_train_api.runtime"].jobs.get_job(
        "trunk").revision.created_us
    assert resp.get_json()["origin"] == {
        "job_id": "trunk", "created_us": created_us, "step": 30,
        "sha256": hashlib.sha256(trunk[30].read_bytes()).hexdigest()}
    assert alice.get("/jobs/twig").get_json()["origin"]["step"] == 30
    # Without a step: the best checkpoint (the lowest validation loss).
    resp = alice.post("/jobs", json={"job_id": "twig2", **BODY, "from_checkpoint": "trunk"})
    assert resp.status_code == 201 and resp.get_json()["origin"]["step"] == 20


@pytest.mark.parametrize(("ref", "extra", "code", "words"), [
    ("nope:10", {}, 404, "not found"),
    ("trunk:15", {}, 422, "no checkpoint at step 15"),
    ("trunk:x", {}, 422, "<job_id>:<step>"),
    ("trunk:10:1", {}, 422, "<job_id>:<step>"),
    ("../trunk", {}, 422, "<job_id>:<step>"),
    ("trunk:10", {"model_name": "gpt-micro"}, 422, "same model"),
])
def test_bad_branches_are_refused_and_create_nothing(alice, trunk, ref, extra, code, words):
    resp = alice.post("/jobs", json={"job_id": "bad", **BODY, **extra, "from_checkpoint": ref})
    assert resp.status_code == code, resp.get_json()
    assert words in resp.get_json()["message"].lower() or words in str(resp.get_json())
    assert alice.get("/jobs/bad").status_code == 404


def test_a_corrupt_source_is_409(alice, trunk):
    trunk[10].write_bytes(b"zeroed")
    resp = alice.post("/jobs", json={"job_id": "bad", **BODY, "from_checkpoint": "trunk:10"})
    assert resp.status_code == 409 and "corrupt" in resp.get_json()["message"]
    assert alice.get("/jobs/bad").status_code == 404


def test_another_users_job_is_404_whatever_the_step(bob, trunk, client):
    for ref in ("trunk", "trunk:10", "trunk:15"):
        resp = bob.post("/jobs", json={"job_id": "steal", **BODY, "from_checkpoint": ref})
        assert resp.status_code == 404, resp.get_json()
    # The admin sees every job, so may branch from any.
    resp = client.post("/jobs", json={"job_id": "adm", **BODY, "from_checkpoint": "trunk:10"})
    assert resp.status_code == 201, resp.get_json()


def _prepare(app, job_id, tmp_path):
    """What a worker does before a branched job's first run; the branch.json it wrote."""
    runtime = app.extensions["llm_train_api.runtime"]
    run_dir = tmp_path / f"run-{job_id}"
    run_dir.mkdir()
    problem = prepare_branch(runtime.data_dir, runtime.jobs.get_job(job_id), run_dir)
    assert problem is None, problem
    return manifest.checked_branch(run_dir)


def test_a_branch_keeps_its_checkpoint_when_the_source_prunes_it(app, alice, trunk,
                                                                tmp_path):
    weights = trunk[10].read_bytes()
    resp = alice.post("/jobs", json={"job_id": "twig", **BODY, "from_checkpoint": "trunk:10"})
    assert resp.status_code == 201, resp.get_json()
    # The trunk goes on training and keeps 3 + the best (20): step 10 is pruned.
    for step in (40, 50, 60):
        checkpoint(app, "trunk", step, 2.9)
    assert not trunk[10].exists()
    assert [c["step"] for c in alice.get("/jobs/trunk/checkpoints").get_json()] == \
        [20, 40, 50, 60]
    branch = _prepare(app, "twig", tmp_path)
    pinned = folder(app, "trunk") / checkpoint_pins.PINS_FOLDER
    assert branch["path"].startswith(str(pinned)) and branch["step"] == 10
    with open(branch["path"], "rb") as f:
        assert f.read() == weights
    # Another branch of the same step shares the pin; one of a pruned step is refused.
    assert alice.post("/jobs", json={"job_id": "twig2", **BODY,
                                     "from_checkpoint": "trunk:40"}).status_code == 201
    assert alice.post("/jobs", json={"job_id": "twig3", **BODY,
                                     "from_checkpoint": "trunk:10"}).status_code == 422
    records = [json.loads(p.read_text()) for p in pinned.glob("*.json")]
    assert sorted(r["step"] for r in records) == [10, 40]
    assert all((pinned / r["path"]).is_file() for r in records)


def test_a_dry_run_pins_nothing(app, alice, trunk):
    resp = alice.post("/jobs?dry_run=true", json={"job_id": "twig", **BODY,
                                                  "from_checkpoint": "trunk:10"})
    assert resp.status_code == 200 and resp.get_json()["origin"]["step"] == 10
    assert not (folder(app, "trunk") / checkpoint_pins.PINS_FOLDER).exists()


def test_the_sweep_removes_a_pin_once_no_pending_branch_needs_it(app, alice, trunk):
    runtime = app.extensions["llm_train_api.runtime"]
    for job_id, step in (("twig", 10), ("twig2", 10), ("twig3", 30)):
        resp = alice.post("/jobs", json={"job_id": job_id, **BODY,
                                         "from_checkpoint": f"trunk:{step}"})
        assert resp.status_code == 201, resp.get_json()
    pins = folder(app, "trunk") / checkpoint_pins.PINS_FOLDER
    (pins / ".tmp-leftover").write_bytes(b"a pin a killed process left half-made")

    def sweep(after_s):
        return checkpoint_pins.sweep(runtime.data_dir, runtime.jobs.pending_branch_origins,
                                     now=time.time() + after_s)

    def pinned_steps():
        return sorted(json.loads(p.read_text())["step"] for p in pins.glob("[!.]*.json"))

    assert sweep(0) == [] and pinned_steps() == [10, 10, 30]  # fresh: kept whatever
    assert sweep(checkpoint_pins.FRESH_S + 1) == []  # every branch is queued
    assert not (pins / ".tmp-leftover").exists()
    for job_id in ("twig", "twig3"):
        assert alice.patch(f"/jobs/{job_id}/status",
                           json={"status": "cancelled"}).status_code == 200
    assert sweep(checkpoint_pins.FRESH_S + 1) != []
    assert pinned_steps() == [10, 10]  # twig2 still needs those bytes
    assert alice.delete("/jobs/twig2").status_code == 204
    sweep(checkpoint_pins.FRESH_S + 1)
    assert list(pins.iterdir()) == []
    assert trunk[10].read_bytes()  # the source's own checkpoints are untouched


def test_storage_counts_a_hard_linked_checkpoint_once(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "ckpt_latest.pt").write_bytes(b"x" * 1000)
    os.link(tmp_path / "ckpt_latest.pt", tmp_path / "checkpoints/step-00000001.pt")
    (tmp_path / "metrics.jsonl").write_bytes(b"y" * 10)
    assert jobfiles.tree_bytes(tmp_path) == 1010
