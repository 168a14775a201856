"""Models in read-only folders named by LLM_TRAIN_API_MODEL_ROOTS, listed without copying.

Each root (the setting is colon-separated, like PATH) is scanned one level deep:

- a sub-folder holding `config.json` is a model named after the folder;
- a Hugging Face cache entry `models--<org>--<name>` is a model named `<org>--<name>`
  (the entry's name without its `models--` prefix), read from the snapshot `refs/main`
  points to, else the most recently modified one under `snapshots/`.

Folders whose name is not a valid model name, or that are not a causal LM in safetensors
(`hf_folder.describe`), are skipped. A name found in several roots means the first one.

Describing a model hashes its files, which for a large model takes a while, so the
description is cached, keyed by the folder's and its files' (size, mtime) signature: in
memory, and in DATA_DIR/models/.roots/ for the other processes and restarts. A changed file
changes the signature, and the model is described again on the next read.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import threading
import uuid
from dataclasses import replace
from pathlib import Path

import orjson

from llm_train_api.artifacts.hf_folder import CONFIG
from llm_train_api.artifacts.model_errors import ModelError, ModelNotFound
from llm_train_api.artifacts.models import (
    ModelInfo,
    describe_folder,
    folder_files,
    is_valid_name,
    models_root,
)

CACHE_PREFIX = "models--"
CACHE_FOLDER = ".roots"

log = logging.getLogger("llm_train_api.artifacts")

_memory: dict[str, tuple[list[int], ModelInfo]] = {}
_memory_lock = threading.Lock()


def parse_roots(setting: str) -> list[Path]:
    """The folders of a MODEL_ROOTS value, in order, empty parts ignored."""
    return [Path(part) for part in setting.split(os.pathsep) if part.strip()]


def _snapshot(entry: Path) -> Path | None:
    snapshots = entry / "snapshots"
    with contextlib.suppress(OSError):
        ref = (entry / "refs" / "main").read_text().strip()
        if ref and "/" not in ref and (snapshots / ref / CONFIG).is_file():
            return snapshots / ref
    try:
        candidates = [p for p in snapshots.iterdir() if (p / CONFIG).is_file()]
    except OSError:
        return None
    return max(candidates, key=lambda p: p.stat().st_mtime, default=None)


def discover(roots: list[Path]) -> dict[str, Path]:
    """Model name -> folder, for every model folder under the roots."""
    found: dict[str, Path] = {}
    for root in roots:
        try:
            entries = sorted(os.scandir(root), key=lambda e: e.name)
        except OSError:
            continue
        for entry in entries:
            if entry.name.startswith(".") or not entry.is_dir():
                continue
            path = Path(entry.path)
            if entry.name.startswith(CACHE_PREFIX):
                name, folder = entry.name[len(CACHE_PREFIX):], _snapshot(path)
            else:
                name, folder = entry.name, path if (path / CONFIG).is_file() else None
            if folder is not None and is_valid_name(name):
                found.setdefault(name, folder)
    return found


def _signature(folder: Path) -> list[int]:
    stats = [folder.stat()] + [(folder / f).stat() for f in folder_files(folder)]
    return [value for st in stats for value in (st.st_size, st.st_mtime_ns)]


def _cache_file(data_dir: str | os.PathLike[str], folder: Path) -> Path:
    key = hashlib.sha256(os.fsencode(folder.resolve())).hexdigest()[:32]
    return models_root(data_dir) / CACHE_FOLDER / f"{key}.json"


def describe(data_dir: str | os.PathLike[str], name: str, folder: Path) -> ModelInfo:
    """The description of the root model `name` at `folder`, from a cache when the files
    are unchanged (ModelError when the folder is not a usable model)."""
    signature = _signature(folder)
    key = str(folder)
    with _memory_lock:
        cached = _memory.get(key)
    if cached is not None and cached[0] == signature:
        return replace(cached[1], name=name)
    cache_file = _cache_file(data_dir, folder)
    info: ModelInfo | None = None
    with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
        stored = orjson.loads(cache_file.read_bytes())
        if stored["signature"] == signature:
            info = ModelInfo.from_json(stored["info"])
    if info is None:
        info = describe_folder(folder, name, source="root")
        with contextlib.suppress(OSError):  # a cache: without it, only slower
            cache_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = cache_file.with_name(f".{uuid.uuid4().hex}.tmp")
            tmp.write_bytes(orjson.dumps({"signature": signature, "info": info.to_json()}))
            os.replace(tmp, cache_file)
    with _memory_lock:
        _memory[key] = (signature, info)
    return replace(info, name=name)


def list_infos(data_dir: str | os.PathLike[str], roots: list[Path]) -> list[ModelInfo]:
    """Every usable model under the roots, by name."""
    infos = []
    for name, folder in sorted(discover(roots).items()):
        try:
            infos.append(describe(data_dir, name, folder))
        except (ModelError, OSError) as exc:
            log.warning("model folder %s skipped: %s", folder, exc)
    return infos


def get_info(data_dir: str | os.PathLike[str], roots: list[Path], name: str) -> ModelInfo:
    folder = discover(roots).get(name) if is_valid_name(name) else None
    if folder is None:
        raise ModelNotFound(f"Model {name!r} not found.")
    try:
        return describe(data_dir, name, folder)
    except (ModelError, OSError) as exc:
        log.warning("model folder %s skipped: %s", folder, exc)
        raise ModelNotFound(f"Model {name!r} not found.") from None
