"""The checkpoint manifest: hashes that match the bytes, pruning to keep + the best, the
best by validation loss, corrupt checkpoints skipped, and paths that stay in the folder."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from llm_train_api.training import manifest


def _write(job, step: int, payload: bytes, val_loss: float | None) -> dict:
    (job / "checkpoints").mkdir(exist_ok=True)
    (job / f"checkpoints/step-{step:08d}.pt").write_bytes(payload)
    metrics = {"step": step, "train_loss": 2.0} | ({} if val_loss is None
                                                   else {"val_loss": val_loss})
    return manifest.record(job, step, f"checkpoints/step-{step:08d}.pt", metrics, keep=2)


def test_record_hashes_the_file_and_keeps_the_newest_and_the_best(tmp_path):
    losses = {10: 3.0, 20: 1.0, 30: 2.0, 40: 2.5, 50: None}
    for step, loss in losses.items():
        entry = _write(tmp_path, step, b"weights %d" % step, loss)
        assert entry["sha256"] == hashlib.sha256(b"weights %d" % step).hexdigest()
        assert entry["size"] == len(b"weights %d" % step)
    kept = manifest.read(tmp_path)
    assert [e["step"] for e in kept] == [20, 40, 50]  # newest 2 + the best (20)
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == [
        "step-00000020.pt", "step-00000040.pt", "step-00000050.pt"]
    assert manifest.best(kept)["step"] == 20
    assert json.loads((tmp_path / "checkpoints.json").read_text())["format"] == manifest.FORMAT
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temp files


def test_the_selection_metric_is_validation_loss():
    assert manifest.selection_score({"val_loss": 1.5, "train_loss": 0.1}) == 1.5
    assert manifest.selection_score({"train_loss": 0.1}) is None
    assert manifest.selection_score(None) is None


def test_a_folder_checkpoint_hashes_its_sorted_file_hashes(tmp_path):
    folder = tmp_path / "checkpoints/step-00000004"
    folder.mkdir(parents=True)
    (folder / "b.safetensors").write_bytes(b"bbb")
    (folder / "a.json").write_bytes(b"{}")
    entry = manifest.record(tmp_path, 4, "checkpoints/step-00000004", {"val_loss": 1.0}, 3)
    files = {"a.json": hashlib.sha256(b"{}").hexdigest(),
             "b.safetensors": hashlib.sha256(b"bbb").hexdigest()}
    assert entry["files"] == files and entry["size"] == 5
    lines = "".join(f"{n} {h}\n" for n, h in sorted(files.items()))
    assert entry["sha256"] == hashlib.sha256(lines.encode()).hexdigest()
    assert manifest.verify(tmp_path, entry) is None
    (folder / "b.safetensors").write_bytes(b"bbc")
    assert "sha256" in manifest.verify(tmp_path, entry)


def test_resume_takes_the_newest_good_one_and_marks_the_corrupt(tmp_path):
    for step in (10, 20, 30):
        _write(tmp_path, step, b"w%d" % step * 100, 5.0 - step / 10)
    newest = tmp_path / "checkpoints/step-00000030.pt"
    newest.write_bytes(newest.read_bytes()[:-7])  # truncated
    seen = []
    chosen = manifest.newest_good(tmp_path, lambda entry, why: seen.append((entry["step"], why)))
    assert chosen["step"] == 20
    assert seen[0][0] == 30 and "bytes" in seen[0][1]
    statuses = {e["step"]: e["status"] for e in manifest.read(tmp_path)}
    assert statuses == {20: "good", 30: "corrupt"}  # 10 was pruned (keep 2)
    # The corrupt one is never chosen again, and goes at the next prune.
    assert manifest.newest_good(tmp_path, lambda *_: pytest.fail("reported twice"))["step"] == 20
    _write(tmp_path, 30, b"again", 1.0)
    assert [(e["step"], e["status"]) for e in manifest.read(tmp_path)] == [
        (20, "good"), (30, "good")]


def test_nothing_good_left_is_none(tmp_path):
    _write(tmp_path, 10, b"x", 1.0)
    (tmp_path / "checkpoints/step-00000010.pt").unlink()
    assert manifest.newest_good(tmp_path, lambda *_: None) is None


@pytest.mark.parametrize("path", ["../secret.pt", "/etc/passwd", "checkpoints/../x.pt",
                                  "checkpoints/other.pt", "checkpoints/step-1/../../x",
                                  "spec.json"])
def test_a_manifest_cannot_point_outside_its_checkpoints(tmp_path, path):
    assert manifest.resolve(tmp_path, {"path": path}) is None
    assert "not a checkpoint" in manifest.verify(tmp_path, {"path": path, "step": 1})


def test_links_are_refused(tmp_path):
    secret = tmp_path / "secret.pt"
    secret.write_bytes(b"secret")
    (tmp_path / "checkpoints").mkdir()
    os.symlink(secret, tmp_path / "checkpoints/step-00000001.pt")
    entry = {"path": "checkpoints/step-00000001.pt", "step": 1}
    assert manifest.resolve(tmp_path, entry) is None
    with pytest.raises(ValueError):
        manifest.hash_checkpoint(tmp_path, entry["path"])


def test_summary_names_the_best_and_the_final(tmp_path):
    _write(tmp_path, 10, b"a", 2.0)
    _write(tmp_path, 20, b"b", 3.0)
    result = manifest.summary(manifest.read(tmp_path), {"step": 20, "val_loss": 3.0,
                                                        "val_perplexity": float("nan")})
    assert result == {"final": {"step": 20, "val_loss": 3.0},
                      "best": {"step": 10, "train_loss": 2.0, "val_loss": 2.0},
                      "best_checkpoint": 10, "selection_metric": "val_loss"}


def test_a_branch_is_verified_against_its_recorded_hash(tmp_path):
    source, job = tmp_path / "source", tmp_path / "job"
    source.mkdir()
    job.mkdir()
    entry = _write(source, 10, b"weights", 1.0)
    manifest.write_branch(job, manifest.branch_record(
        manifest.resolve(source, entry), entry, {"job_id": "src", "step": 10}))
    branch = manifest.read_branch(job)
    assert branch["path"] == str(source / "checkpoints/step-00000010.pt")
    assert manifest.verify_branch(branch) is None
    assert manifest.checked_branch(job) == branch
    assert manifest.checked_branch(source) is None  # no branch: nothing to check
    (source / "checkpoints/step-00000010.pt").write_bytes(b"weighty")
    assert "corrupt" in manifest.verify_branch(branch)
    with pytest.raises(ValueError, match="cannot branch: .*corrupt"):
        manifest.checked_branch(job)
