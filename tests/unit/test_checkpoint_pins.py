"""Pins of checkpoints for branches (artifacts.checkpoint_pins): a pinned folder
checkpoint outlives its pruning, a checkpoint already gone pins nothing, and a filesystem
without hard links gets a copy."""

from __future__ import annotations

import errno
import json
import os

import pytest

from llm_train_api.artifacts import checkpoint_pins
from llm_train_api.training import manifest


def lora_checkpoint(job_dir, step, loss):
    """A fine-tuning trainer's folder checkpoint, recorded in the manifest (keep 1)."""
    folder = job_dir / manifest.FOLDER / manifest.step_name(step)
    folder.mkdir(parents=True)
    (folder / "adapter_model.safetensors").write_bytes(b"A" * 100 + bytes([step]))
    (folder / "trainer_state.json").write_text(f'{{"step": {step}}}')
    return manifest.record(job_dir, step, f"{manifest.FOLDER}/{folder.name}",
                           {"step": step, "val_loss": loss}, keep=1)


def test_a_pinned_folder_checkpoint_outlives_its_pruning(tmp_path):
    entry = lora_checkpoint(tmp_path, 2, 1.0)
    pinned = checkpoint_pins.pin(tmp_path, entry)
    again = checkpoint_pins.pin(tmp_path, entry)  # each request pins on its own
    assert again != pinned
    original = tmp_path / entry["path"]
    assert os.path.samefile(pinned / "adapter_model.safetensors",
                            original / "adapter_model.safetensors")  # a link, no copy
    lora_checkpoint(tmp_path, 4, 0.5)
    lora_checkpoint(tmp_path, 6, 0.4)  # keep 1 + the best: step 2 goes
    assert not original.exists()
    assert manifest.verify_branch(manifest.branch_record(pinned, entry, {})) is None
    found = checkpoint_pins.find(tmp_path, {"step": 2, "sha256": entry["sha256"]})
    assert found is not None and found[0] in (pinned, again)
    assert found[1]["size"] == entry["size"]
    assert checkpoint_pins.find(tmp_path, {"step": 4, "sha256": entry["sha256"]}) is None
    assert checkpoint_pins.find(tmp_path, {"step": 2}) is None  # a branch made before pins
    checkpoint_pins.unpin(found[0])
    assert checkpoint_pins.find(tmp_path, {"step": 2, "sha256": entry["sha256"]}) is not None
    checkpoint_pins.unpin(pinned)
    checkpoint_pins.unpin(again)
    assert list((tmp_path / checkpoint_pins.PINS_FOLDER).iterdir()) == []


def test_a_record_naming_anything_but_a_pin_is_not_followed(tmp_path):
    job = tmp_path / "jobs" / "trunk-1"
    entry = lora_checkpoint(job, 2, 1.0)
    pinned = checkpoint_pins.pin(job, entry)
    record = pinned.with_name(pinned.name + ".json")
    for hostile in ("..", ".", "../../..", "checkpoints/../..", ""):
        record.write_text(json.dumps({**entry, "path": hostile}))
        os.utime(record, (0, 0))
        assert checkpoint_pins.find(job, {"step": 2, "sha256": entry["sha256"]}) is None
        assert checkpoint_pins.sweep(tmp_path, lambda: []) == []
        assert (job / entry["path"]).is_dir() and pinned.is_dir()


def test_a_checkpoint_already_pruned_pins_nothing(tmp_path):
    entry = lora_checkpoint(tmp_path, 2, 1.0)
    manifest.remove_files(tmp_path, entry)
    with pytest.raises(FileNotFoundError):
        checkpoint_pins.pin(tmp_path, entry)
    assert list((tmp_path / checkpoint_pins.PINS_FOLDER).iterdir()) == []


def test_a_path_outside_the_checkpoints_is_refused(tmp_path):
    (tmp_path / "secret").write_bytes(b"secret")
    with pytest.raises(ValueError, match="not a checkpoint"):
        checkpoint_pins.pin(tmp_path, {"path": "../secret", "sha256": "0" * 64})


def test_without_hard_links_the_pin_is_a_copy(tmp_path, monkeypatch):
    entry = lora_checkpoint(tmp_path, 2, 1.0)

    def no_links(src, dst):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(checkpoint_pins.os, "link", no_links)
    pinned = checkpoint_pins.pin(tmp_path, entry)
    assert not os.path.samefile(pinned / "trainer_state.json",
                                tmp_path / entry["path"] / "trainer_state.json")
    assert manifest.verify_branch(manifest.branch_record(pinned, entry, {})) is None
