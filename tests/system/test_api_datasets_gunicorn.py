"""Dataset uploads through real gunicorn: streamed and chunked bodies, and the size limits
that gunicorn and the app enforce together."""

from __future__ import annotations

import hashlib
import json
import os


def test_streamed_uploads_on_gunicorn(gunicorn_factory, tmp_path):
    limit = 2 * 1024 * 1024
    server = gunicorn_factory(workers=1, env={
        "LLM_TRAIN_API_EXECUTOR": "none",
        "LLM_TRAIN_API_MAX_DATASET_BYTES": str(limit),
        "LLM_TRAIN_API_DATA_DIR": str(tmp_path / "data"),
    })
    url = server.url + "/datasets/"
    text = {"Content-Type": "text/plain"}

    # Content-Length over the 1 MiB JSON limit but under the dataset limit: accepted.
    big = (b"x" * 99 + b"\n") * 15_000  # 1.5 MB
    resp = server.session().put(url + "big", data=big, headers=text, timeout=30)
    assert resp.status_code == 201, resp.text
    assert resp.json()["size_bytes"] == len(big) and resp.json()["lines"] == 15_000

    # Chunked (no Content-Length), under the limit: accepted, with the same hash.
    def chunks(data, size=64 * 1024):
        for i in range(0, len(data), size):
            yield data[i:i + size]

    resp = server.session().put(url + "big", data=chunks(big), headers=text, timeout=30)
    assert resp.status_code == 200, resp.text
    assert resp.json()["sha256"] == hashlib.sha256(big).hexdigest()

    # Chunked, over the limit: 413, and nothing written.
    huge = big * 2  # 3 MB
    resp = server.session().put(url + "huge", data=chunks(huge), headers=text, timeout=30)
    assert resp.status_code == 413, resp.text
    assert resp.json()["code"] == 413
    # Declared Content-Length over the limit: 413 before reading.
    resp = server.session().put(url + "huge", data=huge, headers=text, timeout=30)
    assert resp.status_code == 413
    assert server.http.get(url + "huge", timeout=10).status_code == 404
    assert sorted(os.listdir(tmp_path / "data" / "datasets")) == [".meta", "big.txt"]
    # JSON bodies keep their own limit.
    resp = server.http.post(server.url + "/jobs", headers={"Content-Type": "application/json"},
                         data=json.dumps({"model_name": "m", "dataset": "d",
                                          "hyperparameters": {"p": "x" * 1_100_000}}),
                         timeout=10)
    assert resp.status_code == 413
