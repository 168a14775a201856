import json
import threading
from pathlib import Path

import numpy as np
import pytest
import torch

from llm_train_api.training import data as data_mod
from llm_train_api.training.data import (
    BatchSampler,
    PreparationInterrupted,
    dataset_sha256,
    load_tokens,
    prepare_tokens,
)
from llm_train_api.training.datasets import DatasetError

TEXT = "Grüße, 世界! naïve café — " * 50  # multi-byte characters across chunk borders


def test_streaming_prepare_with_tiny_chunks_gives_exact_bytes(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(TEXT, encoding="utf-8")
    prepared = prepare_tokens(src, tmp_path / "cache", chunk_size=7)
    raw = TEXT.encode("utf-8")
    assert prepared.n_tokens == len(raw) and not prepared.cached
    assert bytes(load_tokens(prepared)) == raw
    assert prepared.path.parent.name == prepared.sha256 == dataset_sha256(src, 13)
    # same content again: cache hit, no rewrite
    again = prepare_tokens(src, tmp_path / "cache", chunk_size=5)
    assert again.cached and again.path == prepared.path
    assert not [p for p in (tmp_path / "cache").iterdir() if p.name.startswith(".tmp")]


def test_streaming_memory_is_bounded_by_chunk_not_file(tmp_path, monkeypatch):
    src = tmp_path / "big.txt"
    src.write_bytes(b"0123456789abcdef" * 65536)  # 1 MiB
    reads: list[int] = []
    real_open = open

    class Spy:
        def __init__(self, f):
            self.f = f

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            self.f.close()

        def read(self, n=-1):
            assert n != -1, "whole-file read"
            out = self.f.read(n)
            reads.append(len(out))
            return out

    def spy_open(path, mode="r", *args, **kwargs):
        f = real_open(path, mode, *args, **kwargs)
        return Spy(f) if Path(path) == src else f

    monkeypatch.setattr("builtins.open", spy_open)
    prepared = prepare_tokens(src, tmp_path / "cache", chunk_size=4096)
    monkeypatch.undo()
    assert max(reads) <= 4096 and len(reads) >= 2 * 256
    assert np.array_equal(load_tokens(prepared), np.frombuffer(src.read_bytes(), np.uint8))


def test_jsonl_and_folders_join_documents(tmp_path):
    folder = tmp_path / "ds"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.txt").write_text("alpha")
    records = [{"text": "one"}, {"text": "twö", "id": 3}]
    (folder / "sub" / "b.jsonl").write_text(
        "\n".join(json.dumps(r) for r in records) + "\n\n")
    prepared = prepare_tokens(folder, tmp_path / "cache", chunk_size=3)
    assert bytes(load_tokens(prepared)).decode() == "alpha\n\none\n\ntwö"


@pytest.mark.parametrize(
    ("name", "content", "match"),
    [("bad.txt", b"ok \xff\xfe", "UTF-8"), ("bad.jsonl", b'{"text": 1}\n', "text"),
     ("bad2.jsonl", b"not json\n", "JSON"), ("empty.txt", b"", "empty")],
)
def test_bad_content_is_refused(tmp_path, name, content, match):
    src = tmp_path / name
    src.write_bytes(content)
    with pytest.raises(DatasetError, match=match):
        prepare_tokens(src, tmp_path / "cache", chunk_size=4)
    assert not list((tmp_path / "cache").glob("*"))


def test_concurrent_preparers_agree(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(TEXT * 20, encoding="utf-8")
    results, errors = [], []

    def work():
        try:
            results.append(prepare_tokens(src, tmp_path / "cache", chunk_size=64))
        except Exception as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    assert len({(r.sha256, r.path, r.n_tokens) for r in results}) == 1
    assert bytes(load_tokens(results[0])) == (TEXT * 20).encode()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [results[0].sha256]


def test_losing_the_rename_race_keeps_the_winners_copy(tmp_path, monkeypatch):
    src = tmp_path / "t.txt"
    src.write_text(TEXT, encoding="utf-8")
    real_rename = data_mod.os.rename

    def rename_after_other_preparer(src_dir, dst_dir):
        # Another process finishes first: its complete copy appears at the final path.
        Path(dst_dir).mkdir()
        (Path(dst_dir) / "tokens.bin").write_bytes(TEXT.encode())
        (Path(dst_dir) / "meta.json").write_text(json.dumps({"n_tokens": len(TEXT.encode())}))
        real_rename(src_dir, dst_dir)  # raises: target exists and is not empty

    monkeypatch.setattr(data_mod.os, "rename", rename_after_other_preparer)
    prepared = prepare_tokens(src, tmp_path / "cache", chunk_size=16)
    assert prepared.cached
    assert bytes(load_tokens(prepared)) == TEXT.encode()
    assert [p.name for p in (tmp_path / "cache").iterdir()] == [prepared.sha256]


def test_batches_are_a_function_of_seed_and_step():
    tokens = np.frombuffer(bytes(range(256)) * 20, dtype=np.uint8).copy()
    a = BatchSampler(tokens, block_size=16, batch_size=4, seed=1, val_fraction=0.1,
                     accumulation_steps=2)
    b = BatchSampler(tokens, block_size=16, batch_size=4, seed=1, val_fraction=0.1,
                     accumulation_steps=2)
    x5, y5 = a.train_batch(5)
    assert x5.shape == (2, 4, 16) and x5.dtype == torch.long
    a.train_batch(6)
    assert torch.equal(b.train_batch(5)[0], x5)  # independent of call history
    assert not torch.equal(a.train_batch(4)[0], x5)
    assert torch.equal(y5[..., :-1], x5[..., 1:])  # targets are inputs shifted by one
    assert torch.equal((x5[..., 1:] - x5[..., :-1]) % 256, torch.ones(2, 4, 15, dtype=torch.long))
    # validation windows come from the tail only
    xv, _ = a.val_batch(0)
    assert int(xv.min()) >= 0 and torch.equal(a.val_batch(0)[0], xv)
    assert a.n_train + a.n_val == len(tokens) and a.n_val == len(tokens) // 10


def test_too_small_dataset_is_a_dataset_error():
    tokens = np.zeros(50, dtype=np.uint8)
    with pytest.raises(DatasetError, match="too small"):
        BatchSampler(tokens, block_size=32, batch_size=2, seed=0, val_fraction=0.1)


def test_preparation_can_be_interrupted_between_chunks(tmp_path):
    src = tmp_path / "t.txt"
    src.write_text(TEXT * 10, encoding="utf-8")
    calls = []

    def should_stop():
        calls.append(1)
        return len(calls) > 100  # in the write pass: the hash pass reads 67 chunks

    with pytest.raises(PreparationInterrupted):
        prepare_tokens(src, tmp_path / "cache", chunk_size=256, should_stop=should_stop)
    assert len(calls) == 101
    assert (tmp_path / "cache").is_dir()  # the write pass had started ...
    assert not list((tmp_path / "cache").iterdir())  # ... and left nothing behind


def test_unchanged_dataset_is_not_rehashed_but_a_changed_one_is(tmp_path, monkeypatch):
    src = tmp_path / "t.txt"
    src.write_text("first version " * 100)
    first = prepare_tokens(src, tmp_path / "cache", chunk_size=64)

    def no_hashing(*args, **kwargs):
        raise AssertionError("re-hashed an unchanged dataset")

    monkeypatch.setattr(data_mod, "dataset_sha256", no_hashing)
    again = prepare_tokens(src, tmp_path / "cache", chunk_size=64)
    assert again.cached and again.sha256 == first.sha256
    monkeypatch.undo()
    src.write_text("second version " * 100)
    changed = prepare_tokens(src, tmp_path / "cache", chunk_size=64)
    assert changed.sha256 != first.sha256 and not changed.cached
    assert bytes(load_tokens(changed)) == ("second version " * 100).encode()
