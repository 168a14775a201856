"""Where a principal's datasets live: datasets are named per owner.

The published datasets (uploaded by admins, usable by everyone) are in DATA_DIR/datasets;
a user's own are in DATA_DIR/users/<name>/datasets. Every other dataset function takes a
"data root" holding a `datasets` folder, so an owner's home is simply another data root.
A job names a dataset as its owner sees it: the owner's own first, then the published one.
"""

from __future__ import annotations

from pathlib import Path

from llm_train_api.training.datasets import BUILTIN_PREFIX, DatasetError, resolve_dataset

USERS_FOLDER = "users"


def owner_home(data_dir: str, owner: str | None) -> str:
    """The data root an owner uploads to: their own, or the published one for None."""
    if owner is None:
        return data_dir
    return str(Path(data_dir) / USERS_FOLDER / owner)


def dataset_home(data_dir: str, owner: str | None, name: str) -> str:
    """The data root in which `name` resolves for `owner` (theirs first, then published)."""
    if owner is not None and not name.startswith(BUILTIN_PREFIX):
        home = owner_home(data_dir, owner)
        try:
            resolve_dataset(name, home)
        except DatasetError:
            pass
        else:
            return home
    return data_dir
