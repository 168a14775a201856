"""Fine-tuning checkpoints: everything a run needs to continue exactly, without pickles.

A checkpoint is a folder ``checkpoints/step-NNNNNNNN/`` in the job folder:

* ``trainable.safetensors``: the trained weights (the LoRA adapters, or every weight of a
  full fine-tune) by parameter name;
* ``optimizer.safetensors``: AdamW's per-parameter state tensors, and every rank's torch
  RNG states;
* ``state.json``: the step, the best validation loss, the optimizer's parameter groups,
  the GradScaler, Python's RNG, the data position, and the settings that must not change
  across a resume.

``checkpoints/latest.json`` names the current one, and ``checkpoints.json`` (see
:mod:`llm_train_api.training.manifest`) lists every one kept with its sha256 and metrics.
A checkpoint folder is complete before the pointer and the manifest are replaced
(atomically), and folders beyond ``keep_checkpoints`` (besides the best) are removed only
after, so a kill at any moment leaves a loadable checkpoint; a resume takes the newest one
whose files still hash to what was recorded. The learning rate is a pure function of the
step and batches of ``(seed, step)``, so no scheduler or sampler object needs saving.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from llm_train_api.training import manifest
from llm_train_api.training.spec import SpecError
from llm_train_api.training.storage import fsync_dir

FOLDER = "checkpoints"
POINTER = "latest.json"
FORMAT = "llm_train_api.hf-checkpoint/1"


def capture_rng() -> dict[str, Any]:
    tensors = {"torch_cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"cuda_{i}"] = state
    version, internal, gauss = random.getstate()
    return {"tensors": tensors, "python": [version, list(internal), gauss]}


def restore_rng(rng: dict[str, Any]) -> None:
    tensors = rng["tensors"]
    torch.set_rng_state(tensors["torch_cpu"])
    cuda = [tensors[k] for k in sorted(k for k in tensors if k.startswith("cuda_"))]
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(cuda[: torch.cuda.device_count()])
    version, internal, gauss = rng["python"]
    random.setstate((version, tuple(internal), gauss))


def _optimizer_split(state_dict: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict[str, Any]] = {}
    for index, values in state_dict["state"].items():
        for key, value in values.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{index}.{key}"] = value.detach().contiguous().cpu()
            else:
                plain.setdefault(str(index), {})[key] = value
    return tensors, {"param_groups": state_dict["param_groups"], "plain": plain}


def _optimizer_join(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> dict[str, Any]:
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        if name.startswith("state."):
            _, index, key = name.split(".", 2)
            state.setdefault(int(index), {})[key] = value
    for index, values in meta["plain"].items():
        state.setdefault(int(index), {}).update(values)
    return {"state": state, "param_groups": meta["param_groups"]}


def save(job_dir: Path, step: int, trainable: dict[str, torch.nn.Parameter],
         optimizer: torch.optim.Optimizer, rng_ranks: list[dict[str, Any]],
         state: dict[str, Any], metrics: dict[str, Any] | None = None,
         keep: int = 1) -> Path:
    """Write the checkpoint of ``step``, point ``latest.json`` at it and record it in the
    manifest (which prunes to ``keep`` + the best); return its folder."""
    root = job_dir / FOLDER
    root.mkdir(parents=True, exist_ok=True)
    name = f"step-{step:08d}"
    tmp = root / f".{name}.tmp-{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    try:
        save_file({n: p.detach().contiguous().cpu() for n, p in trainable.items()},
                  tmp / "trainable.safetensors")
        opt_tensors, opt_meta = _optimizer_split(optimizer.state_dict())
        for rank, rng in enumerate(rng_ranks):
            for key, value in rng["tensors"].items():
                opt_tensors[f"rng.{rank}.{key}"] = value.contiguous()
        save_file(opt_tensors, tmp / "optimizer.safetensors")
        payload = {"format": FORMAT, "step": step, **state, "optimizer": opt_meta,
                   "python_rng": [rng["python"] for rng in rng_ranks]}
        (tmp / "state.json").write_text(json.dumps(payload), encoding="utf-8")
        for file in tmp.iterdir():
            with open(file, "rb") as f:
                os.fsync(f.fileno())
        final = root / name
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    pointer_tmp = root / f".{POINTER}.tmp-{uuid.uuid4().hex[:8]}"
    pointer_tmp.write_text(json.dumps({"step": step, "folder": name}), encoding="utf-8")
    os.replace(pointer_tmp, root / POINTER)
    fsync_dir(root)
    manifest.record(job_dir, step, f"{FOLDER}/{name}", metrics, keep)
    return final


def resume_folder(job_dir: Path, on_corrupt: Callable[[int, str], None]) -> Path | None:
    """The checkpoint a rerun continues from: the newest whose files verify against the
    manifest (each newer corrupt one goes to ``on_corrupt(step, reason)``), or where a
    folder has no manifest (older runs), the one ``latest.json`` names."""
    if manifest.read(job_dir):
        entry = manifest.newest_good(job_dir, lambda bad, why: on_corrupt(bad["step"], why))
        return None if entry is None else job_dir / entry["path"]
    return latest(job_dir)


def load_weights(folder: Path, trainable: dict[str, torch.nn.Parameter]) -> None:
    """Only the trained weights of a checkpoint (a branch: fresh optimizer and data order)."""
    weights = load_file(folder / "trainable.safetensors")
    if set(weights) != set(trainable):
        raise SpecError("cannot branch: the source checkpoint trains other weights than "
                        "this job (another model, method or LoRA setting).")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(weights[name].to(param.dtype))


def latest(job_dir: Path) -> Path | None:
    pointer = job_dir / FOLDER / POINTER
    if not pointer.is_file():
        return None
    folder = job_dir / FOLDER / json.loads(pointer.read_text(encoding="utf-8"))["folder"]
    return folder if folder.is_dir() else None


def load(folder: Path, trainable: dict[str, torch.nn.Parameter],
         optimizer: torch.optim.Optimizer, rank: int, world: int) -> dict[str, Any]:
    """Restore weights, optimizer and this rank's RNG; return ``state.json``."""
    state = json.loads((folder / "state.json").read_text(encoding="utf-8"))
    if state.get("format") != FORMAT:
        raise SpecError(f"{folder} is not a fine-tuning checkpoint of this trainer.")
    weights = load_file(folder / "trainable.safetensors")
    if set(weights) != set(trainable):
        raise SpecError("The checkpoint in the job folder trains other weights than this "
                        "spec (another model, method or LoRA setting); use an empty job "
                        "folder.")
    with torch.no_grad():
        for name, param in trainable.items():
            param.copy_(weights[name].to(param.dtype))
    tensors = load_file(folder / "optimizer.safetensors")
    optimizer.load_state_dict(_optimizer_join(tensors, state["optimizer"]))
    ranks = len(state["python_rng"])
    # A checkpoint from another rank count: rank 0's stream continues, others reseed.
    source = rank if ranks == world else 0
    prefix = f"rng.{source}."
    restore_rng({"tensors": {k[len(prefix):]: v for k, v in tensors.items()
                             if k.startswith(prefix)},
                 "python": state["python_rng"][source]})
    if ranks != world and rank:
        torch.manual_seed(state["step"] * 7_919 + rank)
    return state
