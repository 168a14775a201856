"""Model imports through the Python client and the CLI, over real HTTP against the app
served from a thread of this process: the folder is packed into a tar stream as it is
sent (chunked), pickle weights are refused before anything is sent."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from llm_train_api.cli.main import main
from llm_train_api.client import Conflict, NotFound, ValidationError
from tests.helpers.cli import one_error_line
from tests.helpers.hf_models import PARAMS, tiny_llama, write_folder


def test_the_client_imports_lists_gets_and_deletes(api, tmp_path):
    folder = write_folder(tmp_path / "tiny", {**tiny_llama(sharded=True), ".gitattributes": b""})
    sent: list[int] = []
    model = api.import_model("tiny", folder, progress=sent.append)
    assert model.kind == "hf" and model.param_count == PARAMS and model.owner is None
    assert sum(sent) == sum(p.stat().st_size for p in folder.iterdir()
                            if not p.name.startswith("."))
    again = api.import_model("tiny", folder, gzip=True)
    assert again.sha256 == model.sha256 and again.created_at > model.created_at
    assert [m.name for m in api.list_models() if m.kind == "hf"] == ["tiny"]
    assert api.get_model("gpt-nano").kind == "builtin"
    assert api.get_model("tiny").context_length == 64
    with pytest.raises(Conflict):
        api.delete_model("gpt-nano")
    api.delete_model("tiny")
    with pytest.raises(NotFound):
        api.get_model("tiny")


def test_a_hugging_face_cache_snapshot_packs_its_links_as_files(api, tmp_path):
    blobs = write_folder(tmp_path / "blobs", tiny_llama())
    snapshot = tmp_path / "snapshots" / "abc"
    snapshot.mkdir(parents=True)
    for blob in blobs.iterdir():
        os.symlink(blob, snapshot / blob.name)
    assert api.import_model("cached", snapshot).param_count == PARAMS


def test_pickle_weights_are_refused_before_sending(api, tmp_path):
    folder = write_folder(tmp_path / "p", {**tiny_llama(), "pytorch_model.bin": b"\x80"})
    with pytest.raises(ValueError, match="pytorch_model.bin"):
        api.import_model("p", folder)
    with pytest.raises(NotFound):
        api.get_model("p")
    bad = write_folder(tmp_path / "bad", {**tiny_llama(), "notes.py": b""})
    with pytest.raises(ValidationError, match="notes.py"):
        api.import_model("bad", bad)


def test_the_cli_models_commands(server, tmp_path):
    folder = write_folder(tmp_path / "tiny", tiny_llama())
    run = CliRunner().invoke
    base = ["--url", server.url, "--token", server.token]
    result = run(main, ["models", "import", str(folder), "--name", "tiny", "--gzip", *base])
    assert result.exit_code == 0, result.output
    assert "tiny: imported (LlamaForCausalLM" in result.stdout
    listing = run(main, ["models", "list", *base]).stdout
    assert "tiny" in listing and "gpt-nano" in listing and "published" in listing
    assert "gpt-nano" in run(main, ["models", *base]).stdout  # bare: the list
    got = json.loads(run(main, ["models", "get", "tiny", "--json", *base]).stdout)
    assert got["param_count"] == PARAMS and got["kind"] == "hf"
    assert json.loads(run(main, ["models", "gpt-nano", "--json", *base]).stdout)["n_layer"] == 3
    assert "learning_rate" in run(main, ["models", "gpt-nano", *base]).stdout
    assert run(main, ["models", "delete", "tiny", *base]).stdout == "tiny: deleted\n"
    assert "404" in one_error_line(run(main, ["models", "delete", "tiny", *base]))
    assert run(main, ["models", "delete", "tiny", "--missing-ok", *base]).exit_code == 0

    pickled = write_folder(tmp_path / "pickled", {**tiny_llama(), "model.pt": b"\x80"})
    line = one_error_line(run(main, ["models", "import", str(pickled), "--name", "x", *base]))
    assert "model.pt" in line and "pickle" in line
