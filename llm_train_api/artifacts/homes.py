"""Which file an owner's dataset name means: the one resolver for jobs.

Datasets are named per owner. The published datasets (uploaded by admins, usable by
everyone) are in DATA_DIR/datasets; a user's own are in DATA_DIR/users/<name>/datasets.
Every dataset function takes a "data root" holding a `datasets` folder, so an owner's home
is simply another data root. A job names a dataset as its owner sees it: the owner's own
first, then the published one.

`resolve_owned_dataset` answers that once per job: admission pins the result's sha256 to
the new job, and a worker resolves again at launch (the files may have changed since) and
hands the trainer the home it found.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

from llm_train_api.artifacts.datasets import dataset_sha256
from llm_train_api.training.datasets import BUILTIN_PREFIX, DatasetError, resolve_dataset

USERS_FOLDER = "users"


def owner_home(data_dir: str | os.PathLike[str], owner: str | None) -> str:
    """The data root an owner uploads to: their own, or the published one for None."""
    if owner is None:
        return str(data_dir)
    return str(Path(data_dir) / USERS_FOLDER / owner)


@dataclass(frozen=True)
class ResolvedDataset:
    """A dataset name resolved for its owner: where it lives and what it holds."""

    name: str
    # The data root it was found in (the owner's home or the published one): what the
    # trainer's RunSpec.data_dir must be for it to find the same files.
    home: str
    # The file or folder itself, real (symlinks resolved, checked to stay inside).
    path: Path
    # Whose dataset it is: the owner's own, or None for a published or built-in one.
    owner: str | None

    @cached_property
    def sha256(self) -> str:
        """The content hash; computed on first use only (a worker may not need it)."""
        return dataset_sha256(self.path)


def resolve_owned_dataset(
    data_dir: str | os.PathLike[str], owner: str | None, name: str
) -> ResolvedDataset:
    """What `name` means for `owner`: their own dataset first, then the published one.

    Raises DatasetError (naming the folder it looked in) when neither exists or the name
    is unsafe; the message is the published lookup's, as an owner without a dataset of
    that name would expect.
    """
    if owner is not None and not name.startswith(BUILTIN_PREFIX):
        home = owner_home(data_dir, owner)
        try:
            return ResolvedDataset(name, home, resolve_dataset(name, home), owner)
        except DatasetError:
            pass
    home = str(data_dir)
    return ResolvedDataset(name, home, resolve_dataset(name, home), None)
