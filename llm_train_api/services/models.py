"""Which models a caller sees, imports and deletes: the ownership rules of `/models`.

Models come from sources, each listing and finding models in its own place:

- `builtin`: the GPT configurations the built-in trainer builds (training.catalog);
- `imported`: Hugging Face-format folders imported through the API (artifacts.models),
  a user's own in their home (only they and admins see them), an admin's published;
- `roots`: folders under LLM_TRAIN_API_MODEL_ROOTS (artifacts.model_roots), published,
  read-only;
- `fine-tuned`: the merged models of succeeded fine-tuning jobs (artifacts.finetuned),
  owned by the job's owner (published when the job had none: auth disabled).

A name means, for an owner (a caller, or the owner of a job): the built-in model, else
their own import, else their own fine-tuned model, else a published import, else a
published fine-tuned model, else a root folder (`resolve_for_owner`). Job creation and
workers resolve names with that same function, so a job trains the model its owner sees.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from functools import cache
from pathlib import Path
from typing import Any, BinaryIO

from llm_train_api.artifacts import finetuned, model_roots
from llm_train_api.artifacts import models as model_files
from llm_train_api.artifacts.folder_archive import FolderArchive
from llm_train_api.artifacts.homes import USERS_FOLDER, owner_home
from llm_train_api.artifacts.model_errors import (
    ModelConflict,
    ModelNotFound,
    ModelReadOnly,
)
from llm_train_api.artifacts.models import ImportResult, ModelInfo
from llm_train_api.config import Settings
from llm_train_api.domain import GIB, Principal, Role
from llm_train_api.services import storage
from llm_train_api.store.jobs import JobRepository
from llm_train_api.training.catalog import MODELS, catalog_as_json
from llm_train_api.training.hf.hyperparams import (
    hyperparameter_schema as finetune_hyperparameter_schema,
)

Model = dict[str, Any]  # as the API serialises it


@dataclass(frozen=True)
class Place:
    """Where the caller's models are looked for: the data dir and the model roots."""

    data_dir: str
    roots: list[Path]

    @classmethod
    def of(cls, data_dir: str | os.PathLike[str], settings: Settings) -> Place:
        return cls(str(data_dir), model_roots.parse_roots(settings.MODEL_ROOTS))


@cache
def _builtins() -> dict[str, Model]:
    return {m["name"]: {**m, "kind": "builtin"} for m in catalog_as_json()}


def is_builtin(name: str) -> bool:
    """Built-in names are reserved in any case: `GPT2` would read as `gpt2`."""
    return name.lower() in MODELS


def _as_model(info: ModelInfo) -> Model:
    return asdict(info)


def _user_homes(data_dir: str, folder: Callable[[Path], Path] = model_files.models_root
                ) -> list[tuple[str, str]]:
    """(home, owner) of every user whose home has `folder` (imported models by default),
    by name."""
    users = Path(data_dir) / USERS_FOLDER
    try:
        names = sorted(e.name for e in os.scandir(users) if e.is_dir(follow_symlinks=False))
    except FileNotFoundError:
        return []
    return [(str(users / n), n) for n in names if folder(users / n).is_dir()]


def _own(infos: list[ModelInfo], owner: str | None) -> list[ModelInfo]:
    return [replace(info, owner=owner) for info in infos]


# ---------------------------------------------------------------- sources


def _builtin_list(place: Place, principal: Principal) -> list[Model]:
    return list(_builtins().values())


def _imported_list(place: Place, principal: Principal) -> list[Model]:
    infos = model_files.list_infos(place.data_dir)
    if principal.role is Role.USER:
        homes = [(owner_home(place.data_dir, principal.name), principal.name)]
    else:
        homes = _user_homes(place.data_dir)
    for home, owner in homes:
        infos += _own(model_files.list_infos(home), owner)
    return [_as_model(info) for info in infos]


def _roots_list(place: Place, principal: Principal) -> list[Model]:
    return [_as_model(info) for info in model_roots.list_infos(place.data_dir, place.roots)]


def _finetuned_list(place: Place, principal: Principal) -> list[Model]:
    homes: list[tuple[str, str | None]]
    if principal.role is Role.USER:
        homes = [(owner_home(place.data_dir, principal.name), principal.name)]
    else:
        homes = [(place.data_dir, None),
                 *_user_homes(place.data_dir, finetuned.finetuned_root)]
    return [_as_model(info) for home, owner in homes
            for info in _own(finetuned.list_infos(home), owner)]


SOURCES: tuple[Callable[[Place, Principal], list[Model]], ...] = (
    _builtin_list, _imported_list, _roots_list, _finetuned_list)


def list_visible(place: Place, principal: Principal) -> list[Model]:
    """Built-in models first, then published imports, imports of users (the caller's own;
    every user's for an admin), root folders, then fine-tuned models (the caller's own;
    every user's for an admin); by name within each."""
    return [model for source in SOURCES for model in source(place, principal)]


@dataclass(frozen=True)
class ResolvedModel:
    """What a model name means for an owner: its description, and the folder a trainer
    loads (None for a built-in model, which the built-in trainer builds)."""

    model: Model
    path: Path | None

    @property
    def kind(self) -> str:
        return str(self.model["kind"])


def _lookups(place: Place, owner: str | None
             ) -> list[Callable[[str], tuple[ModelInfo, Path | None]]]:
    """The owner's places, in the order a name is looked for (see the module doc)."""
    homes = ([owner_home(place.data_dir, owner)] if owner is not None else []) \
        + [place.data_dir]
    steps: list[Callable[[str], tuple[ModelInfo, Path | None]]] = []
    for home in homes:
        own = None if home == place.data_dir else owner
        steps.append(lambda n, h=home, o=own: (
            replace(model_files.get_info(h, n), owner=o), model_files.model_path(h, n)))
        steps.append(lambda n, h=home, o=own: (
            replace(finetuned.get_info(h, n), owner=o), finetuned.model_path(h, n)))
    steps.append(lambda n: (model_roots.get_info(place.data_dir, place.roots, n),
                            model_roots.discover(place.roots).get(n)))
    return steps


def resolve_for_owner(place: Place, owner: str | None, name: str) -> ResolvedModel:
    """The model `name` means for `owner` (None: the published models only); ModelNotFound
    when none."""
    if name in _builtins():
        return ResolvedModel(_builtins()[name], None)
    for lookup in _lookups(place, owner):
        try:
            info, path = lookup(name)
        except ModelNotFound:
            continue
        if path is not None:
            return ResolvedModel(_as_model(info), path)
    raise ModelNotFound(f"Model {name!r} not found; built-in models: "
                        f"{', '.join(MODELS)} (GET /models lists every model).")


def _owner_for(principal: Principal, owner: str | None) -> str | None:
    """Whose imports the caller addresses (None: the published ones). `owner` is the query
    parameter: admins may name any user; a user has only their own."""
    if principal.role is Role.USER:
        if owner is not None and owner != principal.name:
            raise ModelNotFound("Users see only their own models and published ones.")
        return principal.name
    return owner


def locate_visible(place: Place, principal: Principal, name: str,
                   owner: str | None = None) -> ResolvedModel:
    """The model `name` means for the caller, with its folder (ModelNotFound when none).
    With `owner` (admins), that user's import or fine-tuned model of that name."""
    if owner is None:
        return resolve_for_owner(place, _owner_for(principal, None) or principal.owner,
                                 name)
    own = _owner_for(principal, owner)
    home = owner_home(place.data_dir, own)
    for source in (model_files, finetuned):
        try:
            info = replace(source.get_info(home, name), owner=own)
        except ModelNotFound:
            continue
        path = source.model_path(home, name)
        if path is not None:
            return ResolvedModel(_as_model(info), path)
    raise ModelNotFound(f"User {owner!r} has no model {name!r}.")


def get_visible(place: Place, principal: Principal, name: str,
                owner: str | None = None) -> Model:
    """The model `name` means for the caller (ModelNotFound when none). With `owner`
    (admins), that user's import of that name. A Hugging Face-format model comes with the
    fine-tuning trainer's hyperparameter schema (here only: the list stays small)."""
    model = locate_visible(place, principal, name, owner).model
    if model["kind"] == "hf":  # the fine-tuning trainer's schema, as a built-in's has its own
        model = {**model, "hyperparameters": finetune_hyperparameter_schema()}
    return model


def model_archive(place: Place, principal: Principal, name: str,
                  owner: str | None = None) -> FolderArchive:
    """The files of the model `name` (as GET finds it) as a tar stream. A built-in GPT has
    no files: ModelConflict."""
    model = locate_visible(place, principal, name, owner)
    if model.path is None:
        raise ModelConflict(f"{name!r} is a built-in GPT: the built-in trainer builds it "
                            "from scratch, so it has no files to download. A trained one "
                            "is a job's checkpoint: GET /jobs/{id}/artifacts/ckpt_best.pt.")
    try:
        return FolderArchive(model.path, model_files.folder_files(model.path))
    except FileNotFoundError:  # deleted (renamed away) between the lookup and the open
        raise ModelNotFound(f"Model {name!r} not found.") from None


def _in_use(jobs: JobRepository, owner: str | None) -> Callable[[str], list[str]]:
    """Queued or running jobs naming the model: the owner's for a user's own import,
    anyone's for a published one."""
    return lambda name: jobs.model_in_use(name, owner=owner)


def _refuse_reserved(place: Place, name: str, *, action: str, roots_too: bool) -> None:
    if is_builtin(name):
        raise ModelConflict(f"{name!r} is the name of a built-in model, which cannot be "
                            f"{action}; choose another name.")
    if roots_too and name in model_roots.discover(place.roots):
        raise ModelConflict(f"{name!r} is a model folder under LLM_TRAIN_API_MODEL_ROOTS, "
                            f"managed on disk: it cannot be {action} through the API.")


def import_model(place: Place, principal: Principal, name: str, stream: BinaryIO, *,
                 jobs: JobRepository, settings: Settings) -> ImportResult:
    """Store the archive in `stream` as the caller's model `name`: a user's own (held to
    their storage quota), an admin's published."""
    model_files.check_name(name)
    owner = principal.name if principal.role is Role.USER else None
    _refuse_reserved(place, name, action="replaced", roots_too=owner is None)
    mine = finetuned.model_path(owner_home(place.data_dir, principal.owner), name)
    if mine is not None:
        raise ModelConflict(f"{name!r} is the name of your fine-tuned model; delete it "
                            "first, or choose another name.")
    quota = storage.model_quota(place.data_dir, principal, jobs, settings)
    result = model_files.store_import(
        owner_home(place.data_dir, owner), name, stream,
        max_bytes=int(settings.MAX_MODEL_UPLOAD_GB * GIB),
        in_use=_in_use(jobs, owner), quota=quota, owner=owner)
    return result


def delete_model(place: Place, principal: Principal, name: str, *, jobs: JobRepository,
                 owner: str | None = None) -> None:
    """Delete the caller's import `name` (an admin's: the published one, or with `owner`
    that user's). A user asking to delete a published model is told it is read-only for
    them (ModelReadOnly); built-in and root models are never deleted (ModelConflict)."""
    own = _owner_for(principal, owner)
    if owner is None:
        _refuse_reserved(place, name, action="deleted", roots_too=False)
    home = owner_home(place.data_dir, own)
    try:
        model_files.delete_model(home, name, in_use=_in_use(jobs, own))
        return
    except ModelNotFound:
        pass
    results = own if own is not None else principal.owner  # whose fine-tuned models
    try:
        finetuned.delete(owner_home(place.data_dir, results), name,
                         in_use=_in_use(jobs, results))
        return
    except ModelNotFound:
        if owner is not None:
            raise ModelNotFound(f"User {owner!r} has no model {name!r}.") from None
    if own is not None and model_files.model_path(place.data_dir, name) is not None:
        raise ModelReadOnly(f"Model {name!r} is published; only an admin can delete it.")
    _refuse_reserved(place, name, action="deleted", roots_too=True)
    raise ModelNotFound(f"Model {name!r} not found.")
