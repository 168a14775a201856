"""Downloading models and adapters: GET /models/{name}/archive (imports, root folders,
fine-tuned results; ownership as for GET), a job's `adapter.tar` artifact, a succeeded
fine-tuning job's `fine_tuned_model`; and the same through the Python client and the CLI,
over real HTTP against the app served from a thread of this process."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from click.testing import CliRunner

from llm_train_api import create_app
from llm_train_api.api.schemas import JobSchema
from llm_train_api.artifacts import finetuned
from llm_train_api.artifacts import jobs as jobfiles
from llm_train_api.artifacts.folder_archive import FolderArchive
from llm_train_api.artifacts.homes import owner_home
from llm_train_api.cli.main import main
from llm_train_api.client import Conflict, NotFound, UnexpectedResponse
from llm_train_api.client.downloads import _Body, _extract_into
from llm_train_api.domain import Job, JobStatus, NewJob
from tests.helpers.cli import one_error_line
from tests.helpers.clients import admin_client, client_as
from tests.helpers.hf_models import tar_archive, tiny_llama, write_folder

TAR = "application/x-tar"
ADAPTER = {"adapter_config.json": b'{"r": 8}', "adapter_model.safetensors": b"w" * 700,
           "tokenizer.json": b"{}"}


def runtime(app):
    return app.extensions["llm_train_api.runtime"]


def members(data: bytes) -> dict[str, bytes]:
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        out = {}
        for member in tar:
            assert member.isreg() and "/" not in member.name
            out[member.name] = tar.extractfile(member).read()
        return out


def archive(client, name: str, query: str = ""):
    resp = client.get(f"/models/{name}/archive{query}")
    if resp.status_code == 200:
        assert resp.is_streamed and resp.mimetype == TAR
        assert int(resp.headers["Content-Length"]) == len(resp.data)
        assert f'filename="{name}.tar"' in resp.headers["Content-Disposition"]
    return resp


def finetuned_job(app, job_id: str, *, owner: str | None, output: str | None,
                  succeed: bool = True, adapter: bool = True) -> Path:
    """A fine-tuning job as a worker leaves it: registered result, adapter in its folder."""
    jobs = runtime(app).jobs
    jobs.create_job(NewJob(job_id, "llama", "chat", {"method": "lora"}, owner=owner,
                           model_kind="hf", output_model=output))
    folder = jobfiles.job_dir(runtime(app).data_dir, jobs.get_job(job_id))
    if adapter:
        write_folder(folder / "output" / "adapter", {**ADAPTER, ".hidden": b"x"})
    if output is not None and succeed:
        finetuned.register(owner_home(runtime(app).data_dir, owner), output,
                           write_folder(folder / "output" / "model", tiny_llama()),
                           owner=owner, job_id=job_id, base_model="llama", method="lora")
    client = admin_client(app)
    for status in ("running", "succeeded") if succeed else ():
        resp = client.patch(f"/jobs/{job_id}/status", json={"status": status})
        assert resp.status_code == 200, resp.get_json()
    return folder


# ------------------------------------------------------------------------ the API


def test_an_import_downloads_as_a_tar_that_imports_again(client):
    files = tiny_llama(sharded=True)
    put = client.put("/models/tiny", data=tar_archive(files), content_type=TAR)
    assert put.status_code == 201
    resp = archive(client, "tiny")
    assert resp.status_code == 200
    assert members(resp.data) == files  # every file, bare names, not the description
    again = client.put("/models/copy", data=resp.data, content_type=TAR)
    assert again.status_code == 201 and again.get_json()["sha256"] == put.get_json()["sha256"]


def test_built_in_missing_and_impossible_names(client):
    resp = client.get("/models/gpt-nano/archive")
    assert resp.status_code == 409 and "built-in GPT" in resp.get_json()["message"]
    assert "no files to download" in resp.get_json()["message"]
    for name in ("nope", "..", "a%2Fb", "x" * 200):
        resp = client.get(f"/models/{name}/archive")
        assert resp.status_code == 404 and resp.mimetype == "application/json", name
    assert client.get("/models/nope/archive?owner=").status_code == 422


def test_ownership_is_as_for_get(app, client):
    alice, bob = client_as(app, "alice", "user"), client_as(app, "bob", "user")
    assert alice.put("/models/mine", data=tar_archive(tiny_llama()),
                     content_type=TAR).status_code == 201
    assert archive(alice, "mine").status_code == 200
    assert bob.get("/models/mine/archive").status_code == 404
    assert bob.get("/models/mine/archive?owner=alice").status_code == 404
    assert client.get("/models/mine/archive").status_code == 404  # not published
    assert archive(client, "mine", "?owner=alice").status_code == 200
    assert client_as(app, "w", "worker").get("/models/mine/archive").status_code == 404


def test_a_root_folder_and_a_hugging_face_cache_snapshot(tmp_path):
    shelf = tmp_path / "shelf"
    write_folder(shelf / "local", {**tiny_llama(), "notes.txt": b"not a model file"})
    blobs = write_folder(tmp_path / "blobs", tiny_llama())
    snapshot = shelf / "models--acme--tiny" / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for blob in blobs.iterdir():
        os.symlink(blob, snapshot / blob.name)
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "MODEL_ROOTS": str(shelf)})
    try:
        bob = client_as(app, "bob", "user")
        assert members(archive(bob, "local").data) == tiny_llama()
        assert members(archive(bob, "acme--tiny").data) == tiny_llama()  # links followed
    finally:
        runtime(app).close()


def test_a_fine_tuned_result_and_the_jobs_fine_tuned_model(app):
    alice = client_as(app, "alice", "user")
    finetuned_job(app, "ft", owner="alice", output="tuned")
    job = alice.get("/jobs/ft").get_json()
    assert (job["status"], job["output_model"], job["fine_tuned_model"]) == (
        "succeeded", "tuned", "tuned")
    assert members(archive(alice, job["fine_tuned_model"]).data) == tiny_llama()
    assert client_as(app, "bob", "user").get("/models/tuned/archive").status_code == 404
    finetuned_job(app, "pending", owner="alice", output="later", succeed=False)
    assert alice.get("/jobs/pending").get_json()["fine_tuned_model"] is None
    assert alice.get("/jobs").get_json()[0]["fine_tuned_model"] is None


def test_fine_tuned_model_is_only_a_succeeded_fine_tuning_jobs_result():
    now = datetime.now(timezone.utc)
    job = Job("j", "llama", "chat", {}, JobStatus.SUCCEEDED, now, now, None, now, now, 3,
              model_kind="hf", output_model="m")
    assert job.fine_tuned_model == "m"
    assert JobSchema().dump(job)["fine_tuned_model"] == "m"
    for other in (Job("j", "llama", "chat", {}, JobStatus.RUNNING, now, now, None, now,
                      None, 2, model_kind="hf", output_model="m"),
                  Job("j", "gpt-nano", "d", {}, JobStatus.SUCCEEDED, now, now, None, now,
                      now, 3, model_kind="builtin"),
                  Job("j", "llama", "chat", {}, JobStatus.SUCCEEDED, now, now, None, now,
                      now, 3, model_kind="hf", output_model=None)):
        assert other.fine_tuned_model is None
        assert JobSchema().dump(other)["fine_tuned_model"] is None


def test_the_adapter_is_an_artifact(app, client):
    folder = finetuned_job(app, "ft", owner=None, output="tuned")
    listed = client.get("/jobs/ft/artifacts").get_json()
    adapter = next(a for a in listed if a["name"] == "adapter.tar")
    resp = client.get("/jobs/ft/artifacts/adapter.tar")
    assert resp.status_code == 200 and resp.mimetype == TAR and resp.is_streamed
    assert adapter["kind"] == "adapter" and adapter["size_bytes"] == len(resp.data)
    assert int(resp.headers["Content-Length"]) == len(resp.data)
    assert members(resp.data) == ADAPTER  # hidden files left out
    shutil.rmtree(folder / "output" / "adapter")
    assert "adapter.tar" not in [a["name"] for a in
                                 client.get("/jobs/ft/artifacts").get_json()]
    assert client.get("/jobs/ft/artifacts/adapter.tar").status_code == 404


def test_the_archive_streams_whole_from_files_deleted_after_it_opened_them(tmp_path):
    folder = write_folder(tmp_path / "m", tiny_llama())
    names = sorted(tiny_llama())
    stream = FolderArchive(folder, names)
    shutil.rmtree(folder)  # as a DELETE of the model does, mid-download
    data = b"".join(stream)
    stream.close()
    assert len(data) == stream.size and members(data) == tiny_llama()


# ------------------------------------------------------------- the client and the CLI




def cli(server, *args: str):
    return CliRunner().invoke(main, [*args, "--url", server.url, "--token", server.token])


def test_the_client_downloads_a_model_as_a_file_or_a_folder(api, tmp_path):
    api.import_model("tiny", write_folder(tmp_path / "src", tiny_llama()))
    seen: list[tuple[int, int | None]] = []
    path = api.download_model("tiny", tmp_path, progress=lambda n, t: seen.append((n, t)))
    assert path == tmp_path / "tiny.tar" and members(path.read_bytes()) == tiny_llama()
    assert sum(n for n, _ in seen) == path.stat().st_size == seen[0][1]
    assert api.download_model("tiny", tmp_path / "x.tar") == tmp_path / "x.tar"
    folder = api.download_model("tiny", tmp_path / "out", extract=True)
    assert folder == tmp_path / "out"
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == tiny_llama()
    assert api.download_model("tiny", tmp_path / "out", extract=True) == tmp_path / "out/tiny"
    with pytest.raises(Conflict):
        api.download_model("gpt-nano", tmp_path / "gpt")
    with pytest.raises(NotFound):
        api.download_model("nope", tmp_path / "nope", extract=True)
    assert not (tmp_path / "nope").exists() and not list(tmp_path.glob(".*part"))


def test_the_client_downloads_the_adapter_and_sees_fine_tuned_model(app, api, tmp_path):
    finetuned_job(app, "ft", owner=None, output="tuned")
    assert api.get_job("ft").fine_tuned_model == "tuned"
    folder = api.download_adapter("ft", tmp_path / "adapter", extract=True)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == ADAPTER
    assert members(api.download_adapter("ft", tmp_path).read_bytes()) == ADAPTER
    assert (tmp_path / "ft-adapter.tar").is_file()
    with pytest.raises(NotFound):
        api.download_adapter("nope", tmp_path)


def test_extraction_refuses_anything_but_plain_files(tmp_path):
    for evil in (tar_archive({"../escape": b"x"}), tar_archive({"a": b"x"}, prefix="dir"),
                 tar_archive({".hidden": b"x"})):
        target = tmp_path / "out"
        target.mkdir()
        with pytest.raises(UnexpectedResponse):
            _extract_into(target)(_Body(iter([evil]), None, None))
        assert not (tmp_path / "escape").exists()
        shutil.rmtree(target)


def test_the_cli_downloads_and_shows_the_fine_tuned_model(app, server, api, tmp_path):
    finetuned_job(app, "ft", owner=None, output="tuned")
    shown = cli(server, "jobs", "get", "ft")
    assert shown.exit_code == 0 and "fine-tuned model  tuned" in shown.stdout, shown.output
    result = cli(server, "models", "download", "tuned", "-o", str(tmp_path / "m"),
                 "--extract")
    assert result.exit_code == 0, result.output
    assert f"tuned: {tmp_path / 'm'}" in result.stdout and "downloading tuned" in result.stderr
    assert {p.name for p in (tmp_path / "m").iterdir()} == set(tiny_llama())
    result = cli(server, "models", "download", "tuned", "-o", str(tmp_path), "--json")
    assert json.loads(result.stdout)["path"] == str(tmp_path / "tuned.tar")
    result = cli(server, "jobs", "download-adapter", "ft", "-o", str(tmp_path / "a"),
                 "--extract")
    assert result.exit_code == 0 and {p.name for p in (tmp_path / "a").iterdir()} == set(ADAPTER)
    assert "built-in GPT" in one_error_line(cli(server, "models", "download", "gpt-nano",
                                                "-o", str(tmp_path)))
    assert not list(tmp_path.glob("*gpt-nano*"))
    (tmp_path / "file").write_text("x")
    assert "not a folder" in one_error_line(cli(server, "models", "download", "tuned", "-o",
                                                str(tmp_path / "file"), "--extract"))
