"""Putting the tiny Hugging Face model and its datasets into a live service the way a user
does: the model folder packed as a tar and imported over `PUT /models/{name}`, records
uploaded as JSON Lines over `PUT /datasets/{name}`."""

from __future__ import annotations

import json
from pathlib import Path

from tests.helpers.hf_models import tar_archive
from tests.helpers.tiny_hf import chat_records


def import_model(service, model_dir: Path, name: str = "tiny") -> None:
    """Import the model folder `model_dir` as `name`."""
    files = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    resp = service.http.put(f"{service.url}/models/{name}", data=tar_archive(files),
                            headers={"Content-Type": "application/x-tar"}, timeout=30)
    assert resp.status_code == 201, resp.text


def upload_jsonl(service, name: str, records: list[dict]) -> None:
    """Upload `records` as the JSON Lines dataset `name`."""
    data = "".join(json.dumps(r) + "\n" for r in records).encode()
    resp = service.http.put(f"{service.url}/datasets/{name}", data=data,
                            headers={"Content-Type": "application/jsonl"}, timeout=30)
    assert resp.status_code == 201, resp.text


def import_model_and_chat(service, model_dir: Path, *, model: str = "tiny",
                          dataset: str = "chat.jsonl", records: int = 32) -> None:
    """Import `model_dir` as `model` and upload `records` conversations as `dataset`."""
    import_model(service, model_dir, model)
    upload_jsonl(service, dataset, chat_records(records))
