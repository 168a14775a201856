"""A deleted job's folder goes: at once when nothing runs it, else by a worker's sweep."""

from __future__ import annotations

from pathlib import Path

import pytest

from llm_train_api.artifacts.jobs import (
    job_dir,
    job_dir_of,
    parse_folder_name,
    sweep_job_dirs,
)
from llm_train_api.domain import JobStatus, NewJob
from tests.unit.test_worker_loop import make_loop

S = JobStatus


def _fill(folder: Path) -> Path:
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "train.log").write_text("step 1\n")
    (folder / "ckpt_latest.pt").write_bytes(b"\0" * 1024)
    return folder


@pytest.fixture
def loop(tmp_path):
    made = make_loop(tmp_path)
    yield made
    made.queue.jobs.database.close()


def test_deleting_a_finished_job_removes_its_folder(app, client):
    runtime = app.extensions["llm_train_api.runtime"]
    assert client.post("/jobs", json={"job_id": "done", "model_name": "m",
                                      "dataset": "d"}).status_code == 201
    runtime.jobs.transition("done", S.RUNNING)
    job, _ = runtime.jobs.transition("done", S.SUCCEEDED)
    folder = _fill(job_dir(runtime.data_dir, job))
    resp = client.delete("/jobs/done")
    assert resp.status_code == 204
    assert not folder.exists()
    assert [p.name for p in (Path(runtime.data_dir) / "jobs").iterdir()] == []


def test_deleting_a_running_job_leaves_its_folder_to_the_sweeper(app, client):
    runtime = app.extensions["llm_train_api.runtime"]
    client.post("/jobs", json={"job_id": "busy", "model_name": "m", "dataset": "d"})
    job, _ = runtime.jobs.transition("busy", S.RUNNING)
    folder = _fill(job_dir(runtime.data_dir, job))
    assert client.delete("/jobs/busy").status_code == 204
    assert folder.exists()  # its trainer may still be writing
    assert sweep_job_dirs(runtime.data_dir, runtime.jobs.existing_incarnations) == [
        folder.name]
    assert not folder.exists()


def test_the_worker_sweeps_the_folder_of_a_job_deleted_while_running(tmp_path):
    loop = make_loop(tmp_path, sweep_s=0.001)  # every tick sweeps
    try:
        run = loop.start("gone")
        doomed = _fill(run.folder)
        loop.worker.config.concurrency = 2
        loop.submit("live")
        loop.worker.tick()
        kept = _fill(loop.run("live").folder)
        loop.queue.jobs.delete_job("gone", actor="alice")
        loop.worker.tick()  # notices the lost lease, kills the run, sweeps
        assert run.killed_with is not None
        assert not doomed.exists()
        assert kept.exists() and (kept / "ckpt_latest.pt").stat().st_size == 1024
        # A trainer dying slowly writes again after the sweep: the next sweep gets it.
        _fill(doomed)
        loop.worker.tick()
        assert not doomed.exists() and kept.exists()
        assert loop.job("live").status is S.RUNNING
    finally:
        loop.queue.jobs.database.close()


def test_a_recreated_job_keeps_its_folder_and_loses_its_namesakes(loop):
    jobs = loop.queue.jobs
    old, _ = jobs.create_job(NewJob("same", "gpt-nano", "d", {}))
    old_folder = _fill(job_dir(loop.data_dir, old))
    jobs.delete_job("same")
    new, _ = jobs.create_job(NewJob("same", "gpt-nano", "d", {}))
    new_folder = _fill(job_dir(loop.data_dir, new))
    assert old_folder != new_folder
    assert loop.worker.sweep_job_dirs() == [old_folder.name]
    assert new_folder.exists() and not old_folder.exists()


def test_the_sweep_leaves_what_is_not_a_job_folder_alone(loop):
    root = loop.data_dir / "jobs"
    root.mkdir(parents=True)
    for name in ("README", "notes-xyz", "notes-1F", "job-1-00ff", ".hidden-1"):
        (root / name).mkdir()
    (root / ".removing-abc").mkdir()  # an interrupted removal: finished now
    assert loop.worker.sweep_job_dirs() == []
    assert sorted(p.name for p in root.iterdir()) == [
        ".hidden-1", "README", "job-1-00ff", "notes-1F", "notes-xyz"]


def test_folder_names_round_trip():
    assert parse_folder_name(job_dir_of("/d", "job-1", 0x5f3e).name) == ("job-1", 0x5f3e)
    for name in ("job", "job-", "-ff", "job-zz", "job-00ff", "bad id-ff", "a/b-ff"):
        assert parse_folder_name(name) is None, name
