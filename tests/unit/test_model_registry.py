"""The model registry: who sees and deletes which model, the storage quota, models in use,
and read-only folders under LLM_TRAIN_API_MODEL_ROOTS (a Hugging Face cache too)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from llm_train_api import create_app
from llm_train_api.domain import GIB
from tests.helpers.clients import admin_client, client_as
from tests.helpers.hf_models import PARAMS, config, tar_archive, tiny_llama, write_folder

TAR = "application/x-tar"


def put(client, name, files=None):
    return client.put(f"/models/{name}", data=tar_archive(files or tiny_llama()),
                      content_type=TAR)


def names(client) -> list[str]:
    resp = client.get("/models")
    assert resp.status_code == 200
    return [m["name"] for m in resp.get_json() if m["kind"] == "hf"]


def runtime(app):
    return app.extensions["llm_train_api.runtime"]


def test_a_users_import_is_theirs_and_an_admins_is_published(app, client):
    alice, bob = client_as(app, "alice", "user"), client_as(app, "bob", "user")
    resp = put(alice, "mine")
    assert resp.status_code == 201 and resp.get_json()["owner"] == "alice"
    assert alice.get("/models/mine").get_json()["owner"] == "alice"
    assert bob.get("/models/mine").status_code == 404
    assert bob.get("/models/mine?owner=alice").status_code == 404
    assert bob.delete("/models/mine").status_code == 404
    assert names(bob) == [] and names(alice) == ["mine"]
    # Admins see every user's imports, and address one with ?owner=.
    listed = {(m["name"], m["owner"]) for m in client.get("/models").get_json()
              if m["kind"] == "hf"}
    assert listed == {("mine", "alice")}
    assert client.get("/models/mine").status_code == 404
    assert client.get("/models/mine?owner=alice").get_json()["owner"] == "alice"

    assert put(client, "shared").get_json()["owner"] is None
    assert bob.get("/models/shared").get_json()["owner"] is None
    assert names(bob) == ["shared"]
    resp = bob.delete("/models/shared")
    assert resp.status_code == 403 and "admin" in resp.get_json()["message"]
    # A user's own import of a published name is theirs, and shadows it for them.
    assert put(bob, "shared").get_json()["owner"] == "bob"
    assert bob.get("/models/shared").get_json()["owner"] == "bob"
    assert bob.delete("/models/shared").status_code == 204
    assert bob.get("/models/shared").get_json()["owner"] is None

    assert client.delete("/models/mine?owner=alice").status_code == 204
    assert alice.get("/models/mine").status_code == 404
    assert client.delete("/models/shared").status_code == 204
    assert names(bob) == []
    worker = client_as(app, "w1", "worker")
    assert put(worker, "x").status_code == 403
    assert worker.delete("/models/shared").status_code == 403


def test_a_model_named_by_queued_or_running_jobs_cannot_change(app, client):
    assert put(client, "busy").status_code == 201
    for job_id in ("j1", "j2"):
        resp = client.post("/jobs", json={"job_id": job_id, "model_name": "busy",
                                          "dataset": "d"})
        assert resp.status_code == 201, resp.get_json()
    client.patch("/jobs/j2/status", json={"status": "running"})
    for resp in (put(client, "busy"), client.delete("/models/busy")):
        assert resp.status_code == 409, resp.get_json()
        assert "j1" in resp.get_json()["message"] and "j2" in resp.get_json()["message"]
    assert client.get("/models/busy").status_code == 200
    for job_id in ("j1", "j2"):
        client.patch(f"/jobs/{job_id}/status", json={"status": "cancelled"})
    assert put(client, "busy").status_code == 200
    assert client.delete("/models/busy").status_code == 204


def test_a_users_job_blocks_only_their_own_model(app):
    alice, bob = client_as(app, "alice", "user"), client_as(app, "bob", "user")
    assert put(alice, "m").status_code == 201 and put(bob, "m").status_code == 201
    assert bob.post("/jobs", json={"job_id": "b1", "model_name": "m",
                                   "dataset": "d"}).status_code == 201
    assert bob.delete("/models/m").status_code == 409
    assert alice.delete("/models/m").status_code == 204


LIMIT = 20_000  # bytes: one tiny Llama (about 7 KiB) fits, three do not


@pytest.fixture
def capped(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "MAX_STORAGE_GB_PER_USER": LIMIT / GIB})
    yield app
    runtime(app).close()


def test_imports_count_against_the_storage_quota(capped):
    alice = client_as(capped, "alice", "user")
    assert put(alice, "a").status_code == 201
    assert put(alice, "b").status_code == 201
    resp = put(alice, "c")
    assert resp.status_code == 413, resp.get_json()
    body = resp.get_json()
    assert body["reason"] == "storage_quota_exceeded" and body["limit_bytes"] == LIMIT
    assert "LLM_TRAIN_API_MAX_STORAGE_GB_PER_USER" in body["message"]
    home = Path(runtime(capped).data_dir) / "users" / "alice" / "models"
    assert sorted(p.name for p in home.iterdir() if not p.name.startswith(".")) == ["a", "b"]
    assert alice.get("/models/c").status_code == 404
    # Replacing frees the old version; models count against dataset uploads too.
    assert put(alice, "a").status_code == 200
    resp = alice.put("/datasets/corpus", data=b"x" * 6000, content_type="text/plain")
    assert resp.status_code == 413 and resp.get_json()["reason"] == "storage_quota_exceeded"
    assert alice.delete("/models/b").status_code == 204
    assert alice.put("/datasets/corpus", data=b"x" * 6000,
                     content_type="text/plain").status_code == 201
    # Admins publish without a cap.
    assert all(put(admin_client(capped), n).status_code == 201 for n in "xyz")


def _hf_cache_entry(root: Path, repo: str, revision: str, files: dict[str, bytes]) -> Path:
    """A Hugging Face cache entry: blobs, a snapshot of symlinks to them, refs/main."""
    entry = root / ("models--" + repo.replace("/", "--"))
    snapshot = entry / "snapshots" / revision
    snapshot.mkdir(parents=True)
    (entry / "blobs").mkdir()
    for i, (name, data) in enumerate(files.items()):
        blob = entry / "blobs" / f"blob{i}"
        blob.write_bytes(data)
        os.symlink(os.path.relpath(blob, snapshot), snapshot / name)
    (entry / "refs").mkdir()
    (entry / "refs" / "main").write_text(revision)
    return snapshot


@pytest.fixture
def roots(tmp_path):
    shelf, cache = tmp_path / "shelf", tmp_path / "hub"
    write_folder(shelf / "local-llama", tiny_llama())
    write_folder(shelf / "not-a-model", {"notes.txt": b"hello"})
    write_folder(shelf / "an-encoder", {**tiny_llama(),
                                        "config.json": config(architectures=["BertModel"])})
    _hf_cache_entry(cache, "acme/tiny-chat", "0123abcd", tiny_llama(sharded=True))
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "MODEL_ROOTS": f"{shelf}{os.pathsep}{cache}"})
    app.shelf = shelf
    yield app
    runtime(app).close()


def test_model_roots_are_listed_read_only_for_everyone(roots):
    bob = client_as(roots, "bob", "user")
    listed = {m["name"]: m for m in bob.get("/models").get_json() if m["kind"] == "hf"}
    assert set(listed) == {"local-llama", "acme--tiny-chat"}
    for model in listed.values():
        assert model["source"] == "root" and model["owner"] is None
        assert model["param_count"] == PARAMS and model["architecture"] == "LlamaForCausalLM"
    one = bob.get("/models/acme--tiny-chat").get_json()
    assert one.pop("hyperparameters")[0]["name"] == "method"  # GET one adds the schema
    assert one == listed["acme--tiny-chat"]
    admin = admin_client(roots)
    for client in (bob, admin):
        resp = client.delete("/models/local-llama")
        assert resp.status_code == 409 and "MODEL_ROOTS" in resp.get_json()["message"]
    resp = put(admin, "local-llama")
    assert resp.status_code == 409 and "MODEL_ROOTS" in resp.get_json()["message"]
    assert (roots.shelf / "local-llama" / "config.json").exists()
    assert bob.get("/models/not-a-model").status_code == 404
    assert bob.get("/models/an-encoder").status_code == 404


def test_root_descriptions_are_cached_until_the_files_change(roots):
    client = admin_client(roots)
    assert client.get("/models").status_code == 200
    first = client.get("/models/local-llama").get_json()
    cache = Path(runtime(roots).data_dir) / "models" / ".roots"
    assert len(list(cache.glob("*.json"))) == 2  # both root models, from the listing
    assert client.get("/models/local-llama").get_json() == first
    (roots.shelf / "local-llama" / "config.json").write_bytes(
        config(max_position_embeddings=4096))
    changed = client.get("/models/local-llama").get_json()
    assert changed["context_length"] == 4096 and changed["sha256"] != first["sha256"]


def test_model_roots_must_be_absolute_paths(tmp_path):
    from llm_train_api.config import ConfigError

    with pytest.raises(ConfigError, match="MODEL_ROOTS"):
        create_app({"INSTANCE_PATH": str(tmp_path / "i"), "MODEL_ROOTS": "relative/path"})


def test_the_dashboard_has_a_models_page(client):
    page = client.get("/ui/models")
    assert page.status_code == 200 and b"models.js" in page.data
    assert b'href="/ui/models"' in client.get("/ui/datasets").data
    script = client.get("/ui/static/models.js")
    assert script.status_code == 200 and b'"/models/"' in script.data
