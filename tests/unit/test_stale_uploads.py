"""Staged uploads that a killed process left behind are swept once stale; live ones stay."""

from __future__ import annotations

import os
import time

from llm_train_api.artifacts.staging import STALE_AFTER_S, sweep_stale_uploads


def _age(path, seconds: float) -> None:
    past = time.time() - seconds
    os.utime(path, (past, past), follow_symlinks=False)


def test_stale_staging_is_removed_in_every_home_and_live_uploads_stay(tmp_path):
    published, alice = tmp_path / "datasets", tmp_path / "users" / "alice"
    published.mkdir(parents=True)
    (alice / "models").mkdir(parents=True)
    (alice / "datasets").mkdir()
    stale_file = published / ".upload-aa.tmp"
    stale_file.write_bytes(b"half a dataset")
    live_file = alice / "datasets" / ".upload-bb.tmp"
    live_file.write_bytes(b"still arriving")
    stale_model = alice / "models" / ".upload-cc"
    (stale_model / "sub").mkdir(parents=True)
    (stale_model / "sub" / "weights.safetensors").write_bytes(b"x")
    live_model = alice / "models" / ".upload-dd"
    live_model.mkdir()
    (live_model / "config.json").write_text("{}")
    finished = alice / "datasets" / "chat.jsonl"  # a dataset, not staging: never touched
    finished.write_text("{}\n")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    link = alice / "models" / ".upload-ee"
    link.symlink_to(outside)
    for path in (stale_file, stale_model / "sub" / "weights.safetensors",
                 stale_model / "sub", stale_model, live_model, finished, link):
        _age(path, STALE_AFTER_S + 60)
    # live_model is an old folder with a file written a moment ago: an upload in progress.
    removed = sweep_stale_uploads(tmp_path)
    assert sorted(p.name for p in removed) == [".upload-aa.tmp", ".upload-cc", ".upload-ee"]
    assert not stale_file.exists() and not stale_model.exists() and not link.is_symlink()
    assert outside.is_dir()  # the link went, not what it pointed at
    assert live_file.exists() and live_model.is_dir() and finished.exists()
    assert sweep_stale_uploads(tmp_path) == []


def test_nothing_to_sweep_in_a_fresh_data_dir(tmp_path):
    assert sweep_stale_uploads(tmp_path / "missing") == []
