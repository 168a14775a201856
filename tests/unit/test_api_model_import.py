"""PUT /models/{name}: importing a Hugging Face-format model as a tar archive, in process.

The folders are tiny Llamas written by hand (tests/helpers/hf_models.py). Every hostile
archive gets a 4xx naming the problem and leaves the store exactly as it was.
"""

from __future__ import annotations

import hashlib
import io
import struct
import tarfile
from pathlib import Path

import pytest

from llm_train_api import create_app
from llm_train_api.artifacts import model_archive
from llm_train_api.domain import GIB
from tests.helpers.clients import admin_client
from tests.helpers.disk import full_disk_for
from tests.helpers.hf_models import (
    PARAMS,
    config,
    llama_tensors,
    member,
    safetensors,
    tar_archive,
    tiny_llama,
)

TAR = "application/x-tar"


def models_dir(app) -> Path:
    return Path(app.extensions["llm_train_api.runtime"].data_dir) / "models"


def put(client, name, body, content_type=TAR):
    return client.put(f"/models/{name}", data=body, content_type=content_type)


def error(resp, code, *needles):
    assert resp.status_code == code, resp.get_data(as_text=True)
    body = resp.get_json()
    assert body["code"] == code and resp.mimetype == "application/json"
    for needle in needles:
        assert needle in body["message"], body["message"]
    return body


def snapshot(app) -> list[tuple[str, int]]:
    """Every path under DATA_DIR/models with its size: the store's state."""
    root = models_dir(app)
    return sorted((str(p.relative_to(root)), p.stat().st_size if p.is_file() else -1)
                  for p in root.rglob("*")) if root.exists() else []


def file_hash(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(f"{name}\0{hashlib.sha256(files[name]).hexdigest()}\n".encode())
    return digest.hexdigest()


def test_import_creates_then_replaces_and_describes(client, app):
    files = tiny_llama()
    resp = put(client, "tiny", tar_archive(files, prefix="tiny-llama"))
    assert resp.status_code == 201, resp.get_json()
    assert resp.headers["Location"].endswith("/models/tiny")
    body = resp.get_json()
    assert body == {**body, "name": "tiny", "kind": "hf", "architecture": "LlamaForCausalLM",
                    "model_type": "llama", "param_count": PARAMS, "context_length": 64,
                    "vocab_size": 32, "has_chat_template": True, "owner": None,
                    "source": "upload", "size_bytes": sum(map(len, files.values())),
                    "sha256": file_hash(files)}
    described = client.get("/models/tiny").get_json()
    schema = described.pop("hyperparameters")  # the fine-tuning trainer's, on GET one only
    assert described == body and "hyperparameters" not in body
    by_name = {p["name"]: p for p in schema}
    assert by_name["method"]["choices"] == ["lora", "full", "qlora", "dpo"]
    assert by_name["lora"]["type"] == "object"
    assert {p["name"] for p in by_name["lora"]["properties"]} >= {"r", "alpha", "dropout",
                                                                   "target_modules"}
    stored = models_dir(app) / "tiny"
    assert sorted(p.name for p in stored.iterdir() if not p.name.startswith(".")) == \
        sorted(files)
    assert (stored / "model.safetensors").read_bytes() == files["model.safetensors"]

    # Gzip-compressed, sharded, flat: the hash depends only on the files.
    sharded = tiny_llama(sharded=True, chat_template=False)
    again = put(client, "tiny", tar_archive(sharded, compress=True), "application/gzip")
    assert again.status_code == 200, again.get_json()
    assert again.get_json()["param_count"] == PARAMS
    assert again.get_json()["sha256"] == file_hash(sharded)
    assert again.get_json()["has_chat_template"] is False
    assert sorted(p.name for p in stored.iterdir() if not p.name.startswith(".")) == \
        sorted(sharded)
    assert [p.name for p in models_dir(app).iterdir() if p.name.startswith(".upload")] == []
    # The magic bytes decide when the type says nothing.
    resp = put(client, "other", tar_archive(files, compress=True), "application/octet-stream")
    assert resp.status_code == 201 and resp.get_json()["sha256"] == file_hash(files)


def test_a_chat_template_file_and_a_folder_prefix_of_dot(client):
    files = {**tiny_llama(chat_template=False), "chat_template.jinja": b"{{ messages }}"}
    resp = put(client, "chat", tar_archive(files, prefix="."))
    assert resp.status_code == 201, resp.get_json()
    assert resp.get_json()["has_chat_template"] is True


def _truncated_weights() -> dict[str, bytes]:
    files = tiny_llama()
    files["model.safetensors"] = files["model.safetensors"][:-4]
    return files


def _lying_length() -> dict[str, bytes]:
    raw = tiny_llama()["model.safetensors"]
    return {**tiny_llama(), "model.safetensors": struct.pack("<Q", 10**7) + raw[8:]}


def _lying_offsets() -> dict[str, bytes]:
    tensors = llama_tensors()
    raw = safetensors(tensors)
    # Claim a bigger shape for the embedding than its byte range holds.
    raw = raw.replace(b'"shape": [32, 8]', b'"shape": [64, 8]', 1)
    return {**tiny_llama(), "model.safetensors": raw}


def _missing_shard() -> dict[str, bytes]:
    files = tiny_llama(sharded=True)
    del files["model-00002-of-00002.safetensors"]
    return files


def _dup() -> bytes:
    files = tiny_llama()
    return tar_archive(files, extra=[member("config.json", size=3)])


HOSTILE = {
    "absolute path": (lambda: tar_archive(tiny_llama(), extra=[member("/etc/x.json")]),
                      ["/etc/x.json", "absolute"]),
    "dot-dot": (lambda: tar_archive(tiny_llama(), extra=[member("../config.json")]),
                ["../config.json", "'..'"]),
    "symlink": (lambda: tar_archive(tiny_llama(), extra=[
        member("vocab.json", tarfile.SYMTYPE, linkname="/etc/passwd")]), ["vocab.json", "link"]),
    "hardlink": (lambda: tar_archive(tiny_llama(), extra=[
        member("vocab.json", tarfile.LNKTYPE, linkname="config.json")]), ["vocab.json", "link"]),
    "char device": (lambda: tar_archive(tiny_llama(), extra=[
        member("vocab.json", tarfile.CHRTYPE)]), ["vocab.json", "device"]),
    "block device": (lambda: tar_archive(tiny_llama(), extra=[
        member("vocab.json", tarfile.BLKTYPE)]), ["vocab.json", "device"]),
    "fifo": (lambda: tar_archive(tiny_llama(), extra=[member("vocab.json", tarfile.FIFOTYPE)]),
             ["vocab.json", "fifo"]),
    "pickle weights": (lambda: tar_archive({"pytorch_model.bin": b"\x80\x04K\x01.",
                                            **tiny_llama()}), ["pytorch_model.bin", "pickle"]),
    "pickle .pt": (lambda: tar_archive({**tiny_llama(), "x.pt": b"."}), ["x.pt", "pickle"]),
    "unexpected file": (lambda: tar_archive({**tiny_llama(), "setup.py": b"import os"}),
                        ["setup.py", "not a file of a Hugging Face model folder"]),
    "dotfile": (lambda: tar_archive({**tiny_llama(), ".gitattributes": b""}),
                [".gitattributes"]),
    "nested folder": (lambda: tar_archive({"a/b/config.json": config()}),
                      ["a/b/config.json", "nested"]),
    "two folders": (lambda: tar_archive({"a/config.json": config(), "b/tokenizer.json": b"{}"}),
                    ["b/tokenizer.json", "one folder"]),
    "duplicate member": (_dup, ["config.json", "twice"]),
    "too many members": (lambda: tar_archive({}, extra=[member(".", tarfile.DIRTYPE)] * 1001),
                         ["more than 1000 members"]),
    "bad config.json": (lambda: tar_archive({**tiny_llama(), "config.json": b"{nope"}),
                        ["config.json", "not valid JSON"]),
    "no config.json": (lambda: tar_archive({k: v for k, v in tiny_llama().items()
                                            if k != "config.json"}), ["No config.json"]),
    "not causal": (lambda: tar_archive({**tiny_llama(), "config.json": config(
        architectures=["BertForMaskedLM"])}), ["BertForMaskedLM", "ForCausalLM"]),
    "truncated safetensors": (lambda: tar_archive(_truncated_weights()),
                              ["model.safetensors", "truncated"]),
    "lying header length": (lambda: tar_archive(_lying_length()),
                            ["model.safetensors", "header says 10000000 bytes"]),
    "lying tensor sizes": (lambda: tar_archive(_lying_offsets()),
                           ["model.embed_tokens.weight", "need 2048"]),
    "index names a missing file": (lambda: tar_archive(_missing_shard()),
                                   ["model-00002-of-00002.safetensors", "not in the model"]),
    "no weights": (lambda: tar_archive({k: v for k, v in tiny_llama().items()
                                        if k != "model.safetensors"}), ["No weights"]),
    "no tokenizer": (lambda: tar_archive({k: v for k, v in tiny_llama().items()
                                          if k != "tokenizer.json"}), ["No tokenizer"]),
    "not a tar": (lambda: b"hello, this is not an archive" * 40, ["not a tar archive"]),
    "empty body": (lambda: b"", ["empty"]),
    "truncated archive": (lambda: tar_archive(tiny_llama())[:3000], ["not a valid tar"]),
    "corrupt gzip": (lambda: tar_archive(tiny_llama(), compress=True)[:10] + b"\xff" * 600,
                     ["not a valid tar"]),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archives_are_422_and_change_nothing(client, app, case):
    assert put(client, "tiny", tar_archive(tiny_llama())).status_code == 201
    before, described = snapshot(app), client.get("/models/tiny").get_json()
    make, needles = HOSTILE[case]
    for name in ("tiny", "fresh"):
        error(put(client, name, make()), 422, *needles)
        assert snapshot(app) == before
    assert client.get("/models/tiny").get_json() == described
    assert client.get("/models/fresh").status_code == 404


def test_the_size_cap_counts_sent_and_unpacked_bytes(tmp_path):
    cap = 64 * 1024
    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "EXECUTOR": "none",
                      "MAX_MODEL_UPLOAD_GB": cap / GIB})
    try:
        client = admin_client(app)
        assert put(client, "tiny", tar_archive(tiny_llama())).status_code == 201
        before = snapshot(app)
        big = {**tiny_llama(), "README.md": b"x" * cap}
        # Sent as is: Content-Length over the cap, refused before a byte is read.
        error(put(client, "big", tar_archive(big)), 413)
        # Chunked, without a length: counted as it streams. These files fit; with the
        # tar headers around them the archive does not.
        small = tiny_llama()
        fits = {**small, "README.md": b"x" * (cap - sum(map(len, small.values())) - 10)}
        assert len(tar_archive(fits)) > cap
        resp = client.put("/models/big", input_stream=io.BytesIO(tar_archive(fits)),
                          content_type=TAR, environ_overrides={
                              "CONTENT_LENGTH": "", "wsgi.input_terminated": True})
        error(resp, 413, "larger than", "LLM_TRAIN_API_MAX_MODEL_UPLOAD_GB")
        # Compressed it is small; what it unpacks to is not (a gzip bomb stops there).
        bomb = tar_archive(big, compress=True)
        assert len(bomb) < cap
        error(put(client, "big", bomb, "application/gzip"), 413, "unpacks to more than")
        assert snapshot(app) == before
    finally:
        app.extensions["llm_train_api.runtime"].close()


@pytest.mark.parametrize("ctype", ["text/plain", "application/json", "application/zip"])
def test_other_content_types_are_415(client, app, ctype):
    error(put(client, "tiny", tar_archive(tiny_llama()), ctype), 415, ctype)
    assert snapshot(app) == []


@pytest.mark.parametrize("name", ["gpt2", "GPT2", "gpt-nano"])
def test_builtin_names_are_409(client, name):
    error(put(client, name, tar_archive(tiny_llama())), 409, "built-in")
    error(client.delete(f"/models/{name}"), 409, "built-in")
    assert client.get("/models/gpt2").get_json()["kind"] == "builtin"


@pytest.mark.parametrize("name", ["-x", "a..b", "x" * 129, ".hidden", "a b"])
def test_impossible_names_are_422_on_put_and_404_otherwise(client, app, name):
    error(put(client, name, tar_archive(tiny_llama())), 422, "Invalid model name")
    error(client.get(f"/models/{name}"), 404)
    error(client.delete(f"/models/{name}"), 404)
    assert snapshot(app) == []


def test_a_full_disk_is_507_and_stores_nothing(client, app, monkeypatch):
    full_disk_for(monkeypatch, model_archive, lambda path, mode: "x" in mode)
    body = error(put(client, "tiny", tar_archive(tiny_llama())), 507, "full", "not stored")
    assert body["message"]
    assert [p for p in snapshot(app) if p[0] != ".lock"] == []
    assert client.get("/models/tiny").status_code == 404
