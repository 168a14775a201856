"""The Python client and the CLI on a job's checkpoints, over real HTTP against the app
served from a thread: listing, the verified download, a branch, and `jobs compare`."""

from __future__ import annotations

import hashlib
import json
import tarfile

import pytest
from click.testing import CliRunner

from llm_train_api.artifacts import jobs as jobfiles
from llm_train_api.cli.jobs_checkpoints import hyperparameter_diff
from llm_train_api.cli.main import main
from llm_train_api.client import Conflict, NotFound
from llm_train_api.training import manifest


@pytest.fixture
def trunk(app, api):
    api.create_job("gpt-nano", "builtin:tinytext", {"learning_rate": 0.001}, job_id="trunk")
    runtime = app.extensions["llm_train_api.runtime"]
    folder = jobfiles.job_dir(runtime.data_dir, runtime.jobs.get_job("trunk"))
    (folder / "checkpoints").mkdir(parents=True)
    for step, loss in ((10, 2.0), (20, 1.5)):
        (folder / f"checkpoints/step-{step:08d}.pt").write_bytes(b"w%d" % step * 1000)
        manifest.record(folder, step, f"checkpoints/step-{step:08d}.pt",
                        {"step": step, "val_loss": loss, "val_token_accuracy": 0.5}, keep=3)
    return folder


def cli(server, *args):
    result = CliRunner().invoke(main, [*args[:2], "--url", server.url, "--token",
                                       server.token, *args[2:]], catch_exceptions=False)
    return result


def test_client_lists_downloads_and_branches(api, trunk, tmp_path):
    kept = api.list_checkpoints("trunk")
    assert [(c.step, c.is_best) for c in kept] == [(10, False), (20, True)]
    path = api.download_checkpoint("trunk", 20, tmp_path)
    with tarfile.open(path) as tar:
        data = tar.extractfile("step-00000020.pt").read()
    assert hashlib.sha256(data).hexdigest() == kept[1].sha256
    twig = api.create_job("gpt-nano", "builtin:tinytext", {"learning_rate": 0.01},
                          job_id="twig", from_checkpoint="trunk:10")
    assert twig.origin["step"] == 10 and api.get_job("twig").origin["job_id"] == "trunk"
    with pytest.raises(NotFound):
        api.create_job("gpt-nano", "builtin:tinytext", job_id="x", from_checkpoint="nope")
    (trunk / "checkpoints/step-00000010.pt").write_bytes(b"changed")
    with pytest.raises(Conflict):
        api.download_checkpoint("trunk", 10, tmp_path / "bad.tar")
    assert not (tmp_path / "bad.tar").exists()


def test_cli_checkpoints_download_submit_and_compare(server, trunk, tmp_path):
    listed = cli(server, "jobs", "checkpoints", "trunk")
    assert listed.exit_code == 0, listed.output
    rows = listed.output.splitlines()
    assert rows[0].split()[:3] == ["STEP", "BEST", "STATUS"]
    assert rows[2].split()[:2] == ["20", "*"]
    as_json = json.loads(cli(server, "jobs", "checkpoints", "trunk", "--json").output)
    assert [c["step"] for c in as_json] == [10, 20]

    out = tmp_path / "ckpt"
    got = cli(server, "jobs", "download-checkpoint", "trunk", "10", "-o", str(out),
              "--extract")
    assert got.exit_code == 0, got.output
    assert (out / "step-00000010.pt").read_bytes() == b"w10" * 1000

    made = cli(server, "jobs", "submit", "--model", "gpt-nano", "--dataset",
               "builtin:tinytext", "--job-id", "twig", "--from-checkpoint", "trunk:20",
               "--hp", "learning_rate=0.01", "--json")
    assert made.exit_code == 0, made.output
    assert json.loads(made.output)["origin"]["step"] == 20
    shown = cli(server, "jobs", "get", "twig")
    assert any(line.split() == ["branched", "from", "trunk", "step", "20"]
               for line in shown.output.splitlines())

    compared = cli(server, "jobs", "compare", "trunk", "twig")
    assert compared.exit_code == 0, compared.output
    line = next(r for r in compared.output.splitlines() if r.startswith("learning_rate"))
    assert line.split()[1:] == ["0.001", "0.01"]


def test_hyperparameter_diff_flattens_and_keeps_only_what_differs():
    diff = hyperparameter_diff([{"lr": 1, "lora": {"r": 8, "alpha": 16}, "seed": 1},
                                {"lr": 1, "lora": {"r": 16, "alpha": 16}}])
    assert diff == {"lora.r": [8, 16], "seed": [1, None]}
