"""artifacts.homes.resolve_owned_dataset: which file an owner's dataset name means."""

from __future__ import annotations

import hashlib

import pytest

from llm_train_api.artifacts.homes import owner_home, resolve_owned_dataset
from llm_train_api.training.datasets import DatasetError


def write(root, name, data=b"hello\n"):
    folder = root / "datasets"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_bytes(data)


def test_an_owners_own_dataset_comes_first_then_the_published_one(tmp_path):
    write(tmp_path, "corpus.txt", b"published\n")
    home = owner_home(tmp_path, "alice")
    write(tmp_path / "users" / "alice", "corpus.txt", b"alice's\n")

    mine = resolve_owned_dataset(tmp_path, "alice", "corpus")
    assert (mine.home, mine.owner) == (home, "alice")
    assert mine.path.read_bytes() == b"alice's\n"

    theirs = resolve_owned_dataset(tmp_path, "bob", "corpus")
    assert (theirs.home, theirs.owner) == (str(tmp_path), None)
    assert theirs.path.read_bytes() == b"published\n"
    assert resolve_owned_dataset(tmp_path, None, "corpus.txt").owner is None


def test_builtins_resolve_for_everyone(tmp_path):
    resolved = resolve_owned_dataset(tmp_path, "alice", "builtin:tinytext")
    assert resolved.owner is None and resolved.path.is_file()


def test_sha256_covers_name_and_bytes_and_is_computed_once(tmp_path):
    write(tmp_path, "corpus.txt")
    resolved = resolve_owned_dataset(tmp_path, None, "corpus")
    expected = hashlib.sha256(b"\0corpus.txt\0hello\n").hexdigest()
    assert resolved.sha256 == expected
    (tmp_path / "datasets" / "corpus.txt").write_bytes(b"changed\n")
    assert resolved.sha256 == expected  # pinned to this resolution
    assert resolve_owned_dataset(tmp_path, None, "corpus").sha256 != expected


def test_unknown_or_unsafe_names_raise_without_the_owners_path(tmp_path):
    with pytest.raises(DatasetError, match="Unknown dataset 'nope'") as info:
        resolve_owned_dataset(tmp_path, "alice", "nope")
    assert "users" not in str(info.value)
    with pytest.raises(DatasetError, match="Invalid dataset name"):
        resolve_owned_dataset(tmp_path, "alice", "../etc/passwd")
