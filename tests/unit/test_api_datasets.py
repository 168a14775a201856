"""Datasets: streamed uploads, metadata, listing, delete and path tricks, in process."""

from __future__ import annotations

import hashlib
import json
import os

import pytest

from llm_train_api.training.datasets import resolve_dataset


def data_dir(app) -> str:
    return str(app.extensions["llm_train_api.runtime"].data_dir)


@pytest.fixture
def root(app):
    return os.path.join(data_dir(app), "datasets")


def put(client, name, data, content_type="text/plain"):
    return client.put(f"/datasets/{name}", data=data, content_type=content_type)


def error(resp, code):
    assert resp.status_code == code, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["code"] == code and body["message"]
    return body


def visible(root):
    return sorted(n for n in os.listdir(root) if not n.startswith("."))


def test_upload_text_creates_then_replaces(client, app, root):
    data = b"hello\nworld\nno newline at the end"
    resp = put(client, "corpus", data)
    assert resp.status_code == 201, resp.get_json()
    body = resp.get_json()
    assert body["name"] == "corpus" and body["format"] == "txt" and body["builtin"] is False
    assert body["sha256"] == hashlib.sha256(data).hexdigest()
    assert body["size_bytes"] == len(data) and body["lines"] == 3
    assert resp.headers["Location"].endswith("/datasets/corpus")
    assert resolve_dataset("corpus", data_dir(app)).read_bytes() == data
    assert client.get("/datasets/corpus").get_json() == body

    again = put(client, "corpus", b"v2\n")
    assert again.status_code == 200 and again.get_json()["lines"] == 1
    assert visible(root) == ["corpus.txt"]


def test_upload_jsonl_by_content_type_or_suffix(client, app, root):
    lines = b'{"text": "a"}\n\n{"text": "b", "id": 2}\n'
    for ctype in ("application/jsonl", "application/x-ndjson", "application/json-lines"):
        resp = put(client, "docs", lines, ctype)
        assert resp.status_code in (200, 201) and resp.get_json()["format"] == "jsonl"
    resp = put(client, "more.jsonl", lines, "application/octet-stream")
    assert resp.status_code == 201 and resp.get_json()["name"] == "more"
    assert resolve_dataset("more", data_dir(app)).name == "more.jsonl"
    # Switching format replaces the other file, so the name never means two datasets.
    assert put(client, "docs", b"plain\n").get_json()["format"] == "txt"
    assert visible(root) == ["docs.txt", "more.jsonl"]
    assert client.get("/datasets/docs.txt").get_json()["name"] == "docs"


@pytest.mark.parametrize("ctype", ["application/json", "image/png", ""])
def test_unknown_format_is_415(client, root, ctype):
    error(put(client, "x", b"data\n", ctype), 415)
    error(put(client, "x.txt", b"data\n", "application/jsonl"), 415)  # they disagree
    error(put(client, "x", b"data\n", "text/plain; charset=latin-1"), 415)
    assert not os.path.exists(root) or visible(root) == []


def test_bad_jsonl_names_the_line_and_keeps_the_old_version(client, app, root):
    assert put(client, "d", b'{"text": "ok"}\n', "application/jsonl").status_code == 201
    bad = {b'{"text": "ok"}\n{"text": 1}\n': "Line 2",
           b'{"text": "ok"}\n\n[1, 2]\n': "Line 3",
           b'{"text": "ok"}\n{"text": NaN}\n': "Line 2",
           b'not json\n': "Line 1",
           b"\n\n": "at least one record"}
    for data, where in bad.items():
        body = error(put(client, "d", data, "application/jsonl"), 422)
        assert where in body["message"]
    assert resolve_dataset("d", data_dir(app)).read_bytes() == b'{"text": "ok"}\n'
    assert sorted(os.listdir(root)) == [".meta", "d.jsonl"]  # no temporary file left


CHAT_LINE = (b'{"messages": [{"role": "user", "content": "hi"}, '
             b'{"role": "assistant", "content": "hello", "weight": 1}]}\n')


@pytest.mark.parametrize(("data", "kind"), [
    (CHAT_LINE * 2, "chat"),
    (b'{"prompt": "2+2=", "completion": "4"}\n', "instruction"),
    (b'{"text": "a", "messages": 1}\n', "text"),
])
def test_jsonl_kind_is_detected_and_described(client, app, root, data, kind):
    body = put(client, "k", data, "application/jsonl").get_json()
    assert body["kind"] == kind
    assert client.get("/datasets/k").get_json()["kind"] == kind
    assert {d["name"]: d["kind"] for d in client.get("/datasets").get_json()}["k"] == kind


def test_text_files_and_builtins_are_of_kind_text(client):
    assert put(client, "t", b"plain\n").get_json()["kind"] == "text"
    assert client.get("/datasets/builtin:tinytext").get_json()["kind"] == "text"


@pytest.mark.parametrize(("data", "where"), [
    (CHAT_LINE + b'{"messages": [{"role": "user", "content": "only a question"}]}\n',
     "Line 2: no assistant message"),
    (CHAT_LINE + b"\n" + b'{"prompt": "a", "completion": "b"}\n',
     "Line 3 is an instruction record, but the file is chat"),
    (CHAT_LINE + b'{"messages": [{"role": "assistant", "content": "x", "weight": 0.5}]}\n',
     "Line 2: messages[0].weight must be 0 or 1"),
    (b'{"prompt": "a", "completion": 1}\n', "Line 1: an instruction record needs"),
])
def test_bad_chat_or_instruction_line_is_422_naming_it_and_changes_nothing(
        client, app, root, data, where):
    assert put(client, "d", CHAT_LINE, "application/jsonl").status_code == 201
    body = error(put(client, "d", data, "application/jsonl"), 422)
    assert where in body["message"]
    assert resolve_dataset("d", data_dir(app)).read_bytes() == CHAT_LINE
    assert client.get("/datasets/d").get_json()["kind"] == "chat"


def test_metadata_without_a_kind_gets_one_and_keeps_its_date(client, root):
    created = put(client, "old", CHAT_LINE, "application/jsonl").get_json()
    meta = os.path.join(root, ".meta", "old.json")
    with open(meta, "rb") as f:
        stored = json.loads(f.read())
    del stored["kind"]  # as written before datasets had kinds
    with open(meta, "w") as f:
        json.dump(stored, f)
    body = client.get("/datasets/old").get_json()
    assert body["kind"] == "chat" and body["created_at"] == created["created_at"]


def test_invalid_utf8_and_empty_text_are_422(client, root):
    body = error(put(client, "t", b"fine\nfine\nbad \xff here\n"), 422)
    assert "Line 3" in body["message"] and "UTF-8" in body["message"]
    error(put(client, "t", b"\xe2\x82"), 422)  # truncated sequence at the very end
    error(put(client, "t", b""), 422)
    assert visible(root) == []


def test_list_includes_builtin_and_stored(client):
    put(client, "b", b"x\n")
    put(client, "a", b'{"text": "y"}\n', "application/jsonl")
    listed = client.get("/datasets").get_json()
    assert [d["name"] for d in listed] == ["builtin:tinytext", "a", "b"]
    assert listed[0]["builtin"] is True and listed[0]["size_bytes"] > 40_000
    assert client.get("/datasets/builtin:tinytext").get_json() == listed[0]


def test_metadata_is_recomputed_when_the_file_changed_behind_the_api(client, root):
    put(client, "c", b"one\n")
    with open(os.path.join(root, "c.txt"), "ab") as f:
        f.write(b"two\nthree\n")
    body = client.get("/datasets/c").get_json()
    assert body["lines"] == 3 and body["size_bytes"] == 14
    assert body["sha256"] == hashlib.sha256(b"one\ntwo\nthree\n").hexdigest()


def test_builtin_is_read_only(client):
    for name in ("builtin:tinytext", "builtin:other"):
        error(put(client, name, b"x\n"), 403)
    error(client.delete("/datasets/builtin:tinytext"), 403)
    error(client.get("/datasets/builtin:other"), 404)


def test_delete(client, root):
    put(client, "gone", b"x\n")
    resp = client.delete("/datasets/gone")
    assert resp.status_code == 204 and resp.data == b""
    assert visible(root) == [] and os.listdir(os.path.join(root, ".meta")) == [".lock"]
    error(client.delete("/datasets/gone"), 404)
    error(client.get("/datasets/gone"), 404)


def test_dataset_in_use_by_queued_or_running_job_cannot_change(client):
    put(client, "busy", b"x\n")
    for job_id, name in (("j1", "busy"), ("j2", "busy.txt")):
        resp = client.post("/jobs", json={"job_id": job_id, "model_name": "gpt-nano",
                                          "dataset": name})
        assert resp.status_code == 201, resp.get_json()
    client.patch("/jobs/j2/status", json={"status": "running"})
    for resp in (put(client, "busy", b"y\n"), client.delete("/datasets/busy")):
        body = error(resp, 409)
        assert "j1" in body["message"] and "j2" in body["message"]
    for job_id in ("j1", "j2"):
        client.patch(f"/jobs/{job_id}/status", json={"status": "cancelled"})
    assert put(client, "busy", b"y\n").status_code == 200
    assert client.delete("/datasets/busy").status_code == 204


def test_folder_datasets_are_listed_but_not_managed(client, root):
    os.makedirs(os.path.join(root, "shards"))
    with open(os.path.join(root, "shards", "a.txt"), "wb") as f:
        f.write(b"abc\n")
    listed = {d["name"]: d for d in client.get("/datasets").get_json()}
    assert listed["shards"]["format"] == "folder" and listed["shards"]["size_bytes"] == 4
    error(put(client, "shards", b"x\n"), 409)
    error(client.delete("/datasets/shards"), 409)


# Names with a separator never reach the view (404 from routing); other impossible names
# are a 422 on PUT (the name is being created: say what is allowed) and a 404 on GET and
# DELETE (a name that can never exist does not exist).
@pytest.mark.parametrize("raw", ["..%2Fescape", "%2Fetc%2Fpasswd", "..%2F..%2Fx.txt"])
def test_path_separators_are_404(client, tmp_path, raw):
    error(put(client, raw, b"x\n"), 404)
    error(client.get(f"/datasets/{raw}"), 404)
    error(client.delete(f"/datasets/{raw}"), 404)


@pytest.mark.parametrize("raw", ["%2e%2e", "..", "a..b", "a%5Cb", "a%00b", ".hidden",
                                 "%2Ehidden", ".meta", "a%20b", "x" * 200])
def test_impossible_names_are_422_on_put_and_404_otherwise(client, app, root, raw):
    error(put(client, raw, b"x\n"), 422)
    error(client.get(f"/datasets/{raw}"), 404)
    error(client.delete(f"/datasets/{raw}"), 404)
    assert not os.path.exists(root) or visible(root) == []
    assert not os.path.exists(os.path.join(data_dir(app), "escape"))


def test_symlink_leading_outside_is_not_a_dataset(client, app, root, tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"secret\n")
    os.makedirs(root)
    os.symlink(secret, os.path.join(root, "leak.txt"))
    error(client.get("/datasets/leak"), 404)
    assert "leak" not in [d["name"] for d in client.get("/datasets").get_json()]
