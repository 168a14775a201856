"""The Ray executor against a private Ray head started with token authentication
(RAY_AUTH_MODE=token): the dispatcher and the API's admission lookup send the token; a
dispatcher without it, or with a wrong one, refuses to start with a message that names the
setting and never shows a token."""

from __future__ import annotations

import logging
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Iterator

import pytest

from llm_train_api.config import ConfigError
from llm_train_api.services import ray_capacity
from llm_train_api.worker.ray_executor import RayExecutor
from tests.helpers.live import wait_status
from tests.helpers.ray_cluster import RayHead
from tests.helpers.servers import FAST, REPO_ROOT, TINY, WorkerProcess

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def auth_head() -> Iterator[RayHead]:
    """One private Ray head with token authentication for this module's tests."""
    head = RayHead(token=secrets.token_hex(16))
    head.start()
    yield head
    head.stop()


@pytest.fixture(autouse=True)
def no_ray_token_in_env(monkeypatch):
    """Only what a test sets: no RAY_AUTH_* of the caller's shell leaks into our processes."""
    for name in list(os.environ):
        if name.startswith("RAY_AUTH_") or name == "LLM_TRAIN_API_RAY_TOKEN":
            monkeypatch.delenv(name)


def _env(tmp_path, **extra: str) -> dict[str, str]:
    return {"LLM_TRAIN_API_DATABASE_URL": f"sqlite:///{tmp_path / 'jobs.sqlite3'}",
            "LLM_TRAIN_API_EXECUTOR": "local",
            "LLM_TRAIN_API_INSTANCE_PATH": str(tmp_path / "instance"),
            "LLM_TRAIN_API_RAY_PYTHON": sys.executable, **FAST, **extra}


def test_a_job_trains_through_a_dispatcher_with_the_token(auth_head, gunicorn_factory,
                                                          tmp_path):
    env = _env(tmp_path, LLM_TRAIN_API_RAY_TOKEN=auth_head.token)
    server = gunicorn_factory(workers=1, env=env)
    dispatcher = WorkerProcess(env, tmp_path / "dispatcher.log",
                               ("--executor", "ray", "--ray-address", auth_head.address))
    try:
        body = {"job_id": "rauth", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
                "hyperparameters": {**TINY, "max_steps": 10}}
        assert server.http.post(server.url + "/jobs", json=body, timeout=10).status_code == 201
        job = wait_status(server, "rauth", {"succeeded", "failed", "cancelled"}, 180)
        assert job["status"] == "succeeded", job["error_message"]
        sid = job["progress"]["ray_submission_id"]
        assert str(auth_head.client().get_job_status(sid).value) == "SUCCEEDED"
        text = server.http.get(f"{server.url}/jobs/rauth/logs", timeout=10).text
        assert '@@llm_train_api {"event":"done"' in text  # logs streamed with the token
    finally:
        dispatcher.stop(signal.SIGTERM)
    log = dispatcher.log.read_text()
    assert "Ray token: from LLM_TRAIN_API_RAY_TOKEN" in log
    assert auth_head.token not in log


@pytest.mark.parametrize("token", ["", "wrong-" + "x" * 20])
def test_a_dispatcher_without_the_right_token_refuses_to_start(auth_head, tmp_path, token):
    env = {**os.environ, **_env(tmp_path, LLM_TRAIN_API_RAY_TOKEN=token)}
    out = subprocess.run(
        [sys.executable, "-m", "llm_train_api.cli", "worker", "--executor", "ray",
         "--ray-address", auth_head.address],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode != 0
    assert "Traceback" not in out.stderr
    assert "LLM_TRAIN_API_RAY_TOKEN" in out.stderr
    if token:
        assert "refused the token from LLM_TRAIN_API_RAY_TOKEN" in out.stderr
        assert token not in out.stderr + out.stdout
    else:
        assert "requires a token (Ray token authentication) and none was sent" in out.stderr


def test_rays_own_variables_are_honoured_when_the_setting_is_empty(auth_head, tmp_path,
                                                                   monkeypatch):
    executor = RayExecutor(auth_head.address, data_dir=str(tmp_path / "data"))
    monkeypatch.setenv("RAY_AUTH_TOKEN", auth_head.token)
    with pytest.raises(ConfigError, match="only use it with RAY_AUTH_MODE=token"):
        executor.check()  # as Ray's clients: RAY_AUTH_TOKEN alone is not used
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    executor = RayExecutor(auth_head.address, data_dir=str(tmp_path / "data"))
    executor.check()
    assert executor.client.get_job_info  # connected, version checked with the token
    token_file = tmp_path / "token"
    token_file.write_text(f"{auth_head.token}\n")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(token_file))
    RayExecutor(auth_head.address, data_dir=str(tmp_path / "data")).check()


def test_the_capacity_lookup_sends_the_token_and_names_the_setting_when_refused(
        auth_head, caplog):
    ray_capacity._cache.clear()
    [node] = ray_capacity.node_capacities(auth_head.address, auth_head.token)
    assert node["CPU"] == auth_head.num_cpus
    with caplog.at_level(logging.WARNING, logger="llm_train_api.ray"):
        assert ray_capacity.node_capacities(auth_head.address, "not-the-token") == []
        assert ray_capacity.node_capacities(auth_head.address, "") == []
    text = caplog.text
    assert "refused the token from LLM_TRAIN_API_RAY_TOKEN" in text
    assert "requires a token" in text and "not-the-token" not in text


def test_the_api_admits_against_a_cluster_with_auth(auth_head, gunicorn_factory, tmp_path):
    """LLM_TRAIN_API_RAY_ADDRESS and _RAY_TOKEN on the API host: capacity is checked at
    creation, which needs the token (without it the cluster is unknown and all is admitted)."""
    server = gunicorn_factory(workers=1, env=_env(
        tmp_path, LLM_TRAIN_API_RAY_ADDRESS=auth_head.address,
        LLM_TRAIN_API_RAY_TOKEN=auth_head.token))
    body = {"job_id": "rauth422", "model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "hyperparameters": {**TINY, "max_steps": 5}}
    resp = server.http.post(server.url + "/jobs", timeout=10,
                            json={**body, "resources": {"cpus": 2, "gpus": 1}})
    assert resp.status_code == 422, resp.text
    [message] = resp.json()["errors"]["json"]["resources"]
    assert "the largest node has 2 CPU(s), 0 GPU(s)" in message
    fits = server.http.post(server.url + "/jobs", timeout=10,
                            json={**body, "resources": {"cpus": 2, "gpus": 0}})
    assert fits.status_code == 201, fits.text
