import os
from pathlib import Path

import pytest

from llm_train_api.training.datasets import (
    DatasetError,
    builtin_dir,
    list_datasets,
    resolve_dataset,
    source_files,
)
from llm_train_api.training.tinytext import generate


@pytest.fixture
def root(tmp_path: Path) -> Path:
    ds = tmp_path / "data" / "datasets"
    ds.mkdir(parents=True)
    (ds / "corpus.txt").write_text("hello")
    (ds / "docs.jsonl").write_text('{"text": "a"}\n')
    (ds / "folder").mkdir()
    (ds / "folder" / "b.txt").write_text("b")
    (ds / "folder" / "sub").mkdir()
    (ds / "folder" / "sub" / "a.jsonl").write_text('{"text": "a"}\n')
    (ds / "folder" / "ignored.csv").write_text("x")
    (tmp_path / "secret.txt").write_text("secret")
    return tmp_path / "data"


def test_resolves_files_with_or_without_extension_and_folders(root):
    ds = (root / "datasets").resolve()
    assert resolve_dataset("corpus", root) == ds / "corpus.txt"
    assert resolve_dataset("corpus.txt", root) == ds / "corpus.txt"
    assert resolve_dataset("docs", root) == ds / "docs.jsonl"
    assert resolve_dataset("folder", root) == ds / "folder"
    files = source_files(ds / "folder")
    assert [f.relative_to(ds / "folder").as_posix() for f in files] == ["b.txt", "sub/a.jsonl"]


def test_data_dir_from_env(root, monkeypatch):
    monkeypatch.setenv("LLM_TRAIN_API_DATA_DIR", str(root))
    assert resolve_dataset("corpus").name == "corpus.txt"


@pytest.mark.parametrize(
    "name",
    ["..", "../secret", "../secret.txt", "/etc/passwd", "folder/b", "folder/../corpus",
     "a\\b", "..\\secret", "corpus\x00", "", ".hidden", "-rf", "x" * 200, "corpus..txt",
     "~root", "%2e%2e", None, 42, "builtin:../../etc/passwd", "builtin:nope"],
)
def test_unsafe_or_invalid_names_are_refused(root, name):
    with pytest.raises(DatasetError):
        resolve_dataset(name, root)


def test_unknown_dataset_is_named(root):
    with pytest.raises(DatasetError, match="nope"):
        resolve_dataset("nope", root)


def test_symlinks_pointing_outside_are_refused(root):
    ds = root / "datasets"
    os.symlink(root.parent / "secret.txt", ds / "leak.txt")
    with pytest.raises(DatasetError, match="outside"):
        resolve_dataset("leak", root)
    (ds / "sneaky").mkdir()
    (ds / "sneaky" / "ok.txt").write_text("fine")
    os.symlink(root.parent / "secret.txt", ds / "sneaky" / "leak.txt")
    with pytest.raises(DatasetError, match="outside"):
        resolve_dataset("sneaky", root)
    os.symlink(root.parent, ds / "escape")
    with pytest.raises(DatasetError, match="outside"):
        resolve_dataset("escape", root)
    # a symlink that stays inside is fine
    os.symlink(ds / "corpus.txt", ds / "alias.txt")
    assert resolve_dataset("alias", root).name == "corpus.txt"


def test_builtin_dataset_always_resolves_and_matches_its_generator(tmp_path):
    path = resolve_dataset("builtin:tinytext", tmp_path / "empty")
    assert path.parent == builtin_dir()
    text = path.read_text(encoding="utf-8")
    assert text == generate()
    assert 30_000 < len(text.encode()) < 100_000


def test_list_datasets(root):
    names = list_datasets(root)
    assert names[0] == "builtin:tinytext"
    assert {"corpus.txt", "docs.jsonl", "folder"} <= set(names)
