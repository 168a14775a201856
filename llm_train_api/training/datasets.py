"""Dataset names -> files under ``<data_dir>/datasets`` (torch-free, used by the API).

A dataset is a UTF-8 ``.txt`` file, a JSON Lines ``.jsonl`` file whose objects have a
``text`` string field, or a folder holding such files (searched recursively, sorted by
relative path, hidden entries skipped). ``name`` may omit the extension.

Names come from API clients, so they are treated as hostile: only
``^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$`` without ``..`` is accepted (this already rules out
absolute paths, ``/``, ``\\`` and NUL), and after resolving symlinks every file must
still lie inside the datasets folder.

Built-in datasets ship inside the package and always resolve, so a fresh install can run
a demo job: ``builtin:tinytext`` (about 48 KB of deterministic synthetic English-like
text, see :mod:`.tinytext`).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

DATA_DIR_ENV = "LLM_TRAIN_API_DATA_DIR"
DEFAULT_DATA_DIR = "instance/data"
DATASET_SUFFIXES = (".txt", ".jsonl")
BUILTIN_PREFIX = "builtin:"
BUILTIN_DATASETS = {"tinytext": "tinytext.txt"}

_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


class DatasetError(ValueError):
    """Bad, unsafe or unknown dataset name, or unreadable dataset content."""


def default_data_dir(data_dir: str | os.PathLike[str] | None = None) -> Path:
    """``data_dir`` if given, else ``$LLM_TRAIN_API_DATA_DIR``, else ``./instance/data``."""
    if data_dir is None or str(data_dir) == "":
        data_dir = os.environ.get(DATA_DIR_ENV) or DEFAULT_DATA_DIR
    return Path(data_dir)


def datasets_root(data_dir: str | os.PathLike[str] | None = None) -> Path:
    return default_data_dir(data_dir) / "datasets"


def builtin_dir() -> Path:
    return Path(__file__).resolve().parent / "data"


def check_dataset_name(name: object) -> str:
    """Return ``name`` if it is a syntactically safe dataset name, else raise."""
    if not isinstance(name, str):
        raise DatasetError("Dataset name must be a string.")
    if name.startswith(BUILTIN_PREFIX):
        if name[len(BUILTIN_PREFIX) :] in BUILTIN_DATASETS:
            return name
        known = ", ".join(BUILTIN_PREFIX + k for k in BUILTIN_DATASETS)
        raise DatasetError(f"Unknown built-in dataset {name!r}; built-ins: {known}.")
    if not _NAME_RE.fullmatch(name) or ".." in name:
        raise DatasetError(
            f"Invalid dataset name {name!r}: use letters, digits, '.', '_' and '-' only "
            "(no path separators or '..')."
        )
    return name


def is_inside(path: Path, root: Path) -> bool:
    """Whether `path` (resolved by the caller) lies within `root`."""
    try:
        path.relative_to(root)
    except ValueError:
        return False
    return True


def resolve_dataset(name: object, data_dir: str | os.PathLike[str] | None = None) -> Path:
    """Map a dataset name to an existing file or folder, refusing anything outside.

    Raises :class:`DatasetError` for invalid names, missing datasets and symlinks that
    point outside ``<data_dir>/datasets``.
    """
    name = check_dataset_name(name)
    if name.startswith(BUILTIN_PREFIX):
        return builtin_dir() / BUILTIN_DATASETS[name[len(BUILTIN_PREFIX) :]]
    root = datasets_root(data_dir).resolve()
    candidates = [name] + [name + suffix for suffix in DATASET_SUFFIXES]
    for candidate in candidates:
        path = root / candidate
        if not (path.is_file() or path.is_dir()):
            continue
        real = path.resolve()
        if not is_inside(real, root):
            raise DatasetError(f"Dataset {name!r} points outside the datasets folder.")
        if real.is_dir() or real.suffix in DATASET_SUFFIXES:
            source_files(real, root)  # validates the folder's entries as well
            return real
    raise DatasetError(f"Unknown dataset {name!r} (looked in {root}).")


def source_files(path: Path, root: Path | None = None) -> list[Path]:
    """The ``.txt``/``.jsonl`` files making up a dataset, in a stable order.

    With ``root``, files whose real path leaves ``root`` (symlinks) are refused.
    """
    if path.is_file():
        files = [path]
    else:
        files = []
        for dirpath, dirnames, filenames in os.walk(path, followlinks=False):
            dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
            for filename in sorted(filenames):
                if not filename.startswith(".") and filename.endswith(DATASET_SUFFIXES):
                    files.append(Path(dirpath) / filename)
        files.sort(key=lambda p: p.relative_to(path).as_posix())
        if not files:
            raise DatasetError(f"Dataset folder {path.name!r} holds no .txt or .jsonl files.")
    if root is not None:
        for file in files:
            if not is_inside(file.resolve(), root):
                raise DatasetError(
                    f"Dataset file {file.name!r} points outside the datasets folder."
                )
    return files


def list_datasets(data_dir: str | os.PathLike[str] | None = None) -> list[str]:
    """Names that :func:`resolve_dataset` accepts: built-ins, then user datasets."""
    names = [BUILTIN_PREFIX + k for k in BUILTIN_DATASETS]
    root = datasets_root(data_dir)
    if root.is_dir():
        for entry in sorted(root.iterdir()):
            if entry.name.startswith("."):
                continue
            if entry.is_dir() or entry.suffix in DATASET_SUFFIXES:
                try:
                    resolve_dataset(entry.name, data_dir)
                except DatasetError:
                    continue
                names.append(entry.name)
    return names
