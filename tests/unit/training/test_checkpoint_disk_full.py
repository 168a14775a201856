"""A full disk while a checkpoint is written fails the run with a message that says so."""

from __future__ import annotations

import errno
import os

import pytest
import torch

from llm_train_api.training import checkpoint as ckpt
from llm_train_api.training.storage import LocalStorage
from tests.helpers.training import make_spec, run_inprocess


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _full_disk_save(obj, f, *args, **kwargs):
    f.write(b"the first bytes fit")
    raise _enospc()


def test_a_full_disk_during_a_checkpoint_fails_the_run_clearly(data_dir, tmp_path,
                                                               monkeypatch):
    monkeypatch.setattr(torch, "save", _full_disk_save)
    job = tmp_path / "job"
    code, events = run_inprocess(make_spec(data_dir), job)
    assert code == 1
    error = next(e for e in events if e["event"] == "error")
    assert error["message"].startswith("disk full while writing checkpoint to ")
    assert str(job / ckpt.LATEST) in error["message"]
    assert events[-1]["event"] == "done" and events[-1]["outcome"] == "failed"
    assert not [p.name for p in job.iterdir() if ".tmp-" in p.name]


def test_a_disk_full_error_wrapped_by_torch_is_recognised(tmp_path, monkeypatch):
    def wrapped(obj, f, *args, **kwargs):
        try:
            raise _enospc()
        except OSError as exc:
            raise RuntimeError("PytorchStreamWriter failed writing file data/0: file write "
                               "failed") from exc

    storage = LocalStorage(tmp_path)
    ckpt.save_checkpoint(storage, ckpt.LATEST, {"step": 1})
    monkeypatch.setattr(torch, "save", wrapped)
    with pytest.raises(ckpt.CheckpointDiskFull, match="disk full while writing checkpoint"):
        ckpt.save_checkpoint(storage, ckpt.LATEST, {"step": 2})
    monkeypatch.undo()
    # The previous checkpoint is intact.
    assert torch.load(tmp_path / ckpt.LATEST, weights_only=True) == {"step": 1}


def test_other_write_errors_are_not_called_a_full_disk(tmp_path, monkeypatch):
    def denied(obj, f, *args, **kwargs):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    with pytest.raises(PermissionError):
        ckpt.save_checkpoint(LocalStorage(tmp_path), ckpt.LATEST, {"step": 1})
