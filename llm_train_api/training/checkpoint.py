"""Checkpoint format: what a run needs to continue bit-for-bit, saved atomically.

A checkpoint is one ``torch.save``-d dict (see :func:`build_checkpoint`) holding model and
optimizer state, the GradScaler, the model arguments, the step, the best validation loss,
the validated hyperparameters, the dataset hash and every RNG state the run consumes
(torch CPU, CUDA when present, Python's ``random``). numpy's RNG is never used. The batch
sampler needs no saved state: batches are a function of ``(seed, step)``.

Only plain containers and tensors go in, so checkpoints load with
``torch.load(weights_only=True)``: opening an untrusted checkpoint cannot run code.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from llm_train_api.training.model import GPT, GPTConfig
from llm_train_api.training.storage import JobStorage, fsync_dir

CHECKPOINT_FORMAT = "llm_train_api.checkpoint/1"
LATEST = "ckpt_latest.pt"
BEST = "ckpt_best.pt"


def capture_rng_state() -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch_cpu": torch.get_rng_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["torch_cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch_cpu"])
    if "python" in state:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
    cuda_states = state.get("torch_cuda")
    if cuda_states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


def build_checkpoint(**fields: Any) -> dict[str, Any]:
    """The dict that gets saved; fields are documented in the trainer where it is called."""
    required = {"model", "optimizer", "model_args", "step", "best_val_loss", "config"}
    missing = required - fields.keys()
    if missing:
        raise ValueError(f"checkpoint misses {sorted(missing)}")
    return {"format": CHECKPOINT_FORMAT, "torch_version": str(torch.__version__), **fields}


class CheckpointDiskFull(RuntimeError):
    """The disk (or a filesystem quota) ran out while a checkpoint was written."""


_DISK_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})


def _disk_full(exc: BaseException) -> bool:
    """Whether `exc`, or what it was raised from (torch may wrap the OSError), is an
    out-of-space error."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in _DISK_FULL_ERRNOS:
            return True
        current = current.__cause__ or current.__context__
    return False


def save_checkpoint(storage: JobStorage, name: str, checkpoint: dict[str, Any]) -> str:
    """Write atomically (temp file + rename); return the checkpoint's URI.

    A full disk is CheckpointDiskFull, naming where it was writing; the previous
    checkpoint of that name is left as it was (the temporary file is removed)."""
    try:
        with storage.open_atomic(name) as f:
            torch.save(checkpoint, f)
    except (OSError, RuntimeError) as exc:
        if _disk_full(exc):
            raise CheckpointDiskFull(
                f"disk full while writing checkpoint to {storage.uri(name)}: free space on "
                "that filesystem (or delete jobs you no longer need), then submit the job "
                "again") from exc
        raise
    return storage.uri(name)


def keep_step(job_dir: Path, step: int) -> str:
    """Keep the ``ckpt_latest.pt`` just written as ``checkpoints/step-NNNNNNNN.pt`` too (a
    hard link where the filesystem has them, else a copy), atomically; return its path
    relative to ``job_dir`` for the manifest. The next ``ckpt_latest.pt`` is a new file,
    so the step's own stays as it was."""
    folder = job_dir / "checkpoints"
    folder.mkdir(exist_ok=True)
    rel = f"checkpoints/step-{step:08d}.pt"
    tmp = folder / f".step-{step:08d}.pt.tmp-{os.getpid()}"
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    try:
        os.link(job_dir / LATEST, tmp)
    except OSError:
        shutil.copyfile(job_dir / LATEST, tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, job_dir / rel)
    fsync_dir(folder)
    return rel


def load_checkpoint(
    source: str | os.PathLike[str] | bytes | JobStorage,
    name: str | None = None,
    map_location: str | torch.device = "cpu",
) -> dict[str, Any]:
    """Load from a path, raw bytes, or ``(storage, name)``; refuses foreign files."""
    if isinstance(source, JobStorage):
        assert name is not None
        local = source.local_path(name)
        source = local if local is not None else source.read_bytes(name)
    handle: Any = io.BytesIO(source) if isinstance(source, bytes) else Path(source)
    checkpoint = torch.load(handle, map_location=map_location, weights_only=True)
    if not isinstance(checkpoint, dict) or checkpoint.get("format") != CHECKPOINT_FORMAT:
        raise ValueError("Not an llm_train_api checkpoint.")
    return checkpoint


def model_from_checkpoint(
    checkpoint: dict[str, Any], device: str | torch.device = "cpu"
) -> GPT:
    """Rebuild the model in eval mode (dropout off) with the saved weights."""
    args = dict(checkpoint["model_args"])
    args["dropout"] = 0.0
    model = GPT(GPTConfig(**args))
    model.load_state_dict(checkpoint["model"])
    return model.to(device).eval()
