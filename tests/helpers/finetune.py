"""Putting the tiny Hugging Face model and a chat dataset into a live service the way a
user does: the model folder packed as a tar and imported over `PUT /models/{name}`, the
conversations uploaded as JSON Lines over `PUT /datasets/{name}`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.hf_models import tar_archive
from tests.helpers.tiny_hf import chat_records


def import_model_and_chat(service, model_dir: Path, *, model: str = "tiny",
                          dataset: str = "chat.jsonl", records: int = 32) -> None:
    """Import `model_dir` as `model` and upload `records` conversations as `dataset`."""
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    resp = service.http.put(f"{service.url}/models/{model}", data=tar_archive(files),
                            headers={"Content-Type": "application/x-tar"}, timeout=30)
    assert resp.status_code == 201, resp.text
    chat = "".join(json.dumps(r) + "\n" for r in chat_records(records)).encode()
    resp = service.http.put(f"{service.url}/datasets/{dataset}", data=chat,
                            headers={"Content-Type": "application/jsonl"}, timeout=30)
    assert resp.status_code == 201, resp.text
