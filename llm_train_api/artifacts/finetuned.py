"""Fine-tuned models on disk: the merged model folder of a succeeded fine-tuning job,
registered under the job owner's home as a model of its own.

Layout under a data root (an owner's home; the data dir itself for jobs made with auth
disabled)::

    <root>/finetuned/<name>/              the model folder (Hugging Face format)
    <root>/finetuned/<name>/.model.json   its description, with base_model, job_id, method
    <root>/finetuned/.lock                serialises registrations and deletions

Registering moves the job's ``output/model`` folder here with one rename (the data dir is
one filesystem), so the result costs no copy and the model outlives the job: deleting the
job leaves it, deleting it leaves the job. A job registers again when its run is repeated
after a crash (the trainer writes ``output/model`` again): the same job's model is then
replaced, another job's never is.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import orjson

from llm_train_api.artifacts.model_errors import ModelConflict, ModelNotFound
from llm_train_api.artifacts.models import (
    META_NAME,
    ModelInfo,
    commit_lock,
    describe_folder,
    folder_in,
    folders_bytes,
    remove_folder,
    stored_names,
    swap,
    write_meta,
)
from llm_train_api.training.storage import fsync_dir

FINETUNED_FOLDER = "finetuned"
SOURCE = "job"


def finetuned_root(data_root: str | os.PathLike[str]) -> Path:
    return Path(data_root) / FINETUNED_FOLDER


def model_path(data_root: str | os.PathLike[str], name: str) -> Path | None:
    """The folder of the fine-tuned model `name` under this data root, if there is one."""
    return folder_in(finetuned_root(data_root), name)


def get_info(data_root: str | os.PathLike[str], name: str) -> ModelInfo:
    folder = model_path(data_root, name)
    if folder is None:
        raise ModelNotFound(f"Model {name!r} not found.")
    try:
        return ModelInfo.from_json(orjson.loads((folder / META_NAME).read_bytes()))
    except (OSError, ValueError, KeyError, TypeError):
        # Written before the rename that registers it: only a hand on the disk loses it.
        raise ModelNotFound(f"Model {name!r} not found.") from None


def list_infos(data_root: str | os.PathLike[str]) -> list[ModelInfo]:
    """The fine-tuned models under this data root, by name."""
    infos = []
    for name in stored_names(finetuned_root(data_root)):
        try:
            infos.append(get_info(data_root, name))
        except ModelNotFound:
            continue
    return infos


def stored_bytes(data_root: str | os.PathLike[str]) -> int:
    return folders_bytes(finetuned_root(data_root))


def register(data_root: str | os.PathLike[str], name: str, output: Path, *, owner: str | None,
             job_id: str, base_model: str, method: str) -> ModelInfo:
    """Move the model folder `output` into place as the fine-tuned model `name`.

    ModelConflict when another job's model has that name; the same job's is replaced.
    """
    info = replace(describe_folder(output, name, source=SOURCE), owner=owner,
                   base_model=base_model, job_id=job_id, method=method)
    write_meta(output, info)
    root = finetuned_root(data_root)
    root.mkdir(parents=True, exist_ok=True)
    with commit_lock(root):
        final = root / name
        if model_path(data_root, name) is None:
            os.rename(output, final)
        else:
            try:
                current = get_info(data_root, name).job_id
            except ModelNotFound:
                current = None
            if current != job_id:
                raise ModelConflict(f"A model named {name!r} exists (made by job "
                                    f"{current}); this job's result stays in its folder.")
            swap(output, final)  # the previous result is now at `output`
            shutil.rmtree(output, ignore_errors=True)
        fsync_dir(root)
    return info


def delete(data_root: str | os.PathLike[str], name: str, *,
           in_use: Callable[[str], list[str]]) -> None:
    """Remove the fine-tuned model `name` (ModelNotFound, or ModelConflict while queued or
    running jobs name it); its job, if it still exists, is left alone."""
    remove_folder(finetuned_root(data_root), name, in_use=in_use)
