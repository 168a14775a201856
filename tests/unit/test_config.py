"""Settings: every LLM_TRAIN_API_* value is typed and checked before anything starts."""

from __future__ import annotations

import os

import pytest

from llm_train_api.config import ConfigError, Settings


def test_environment_values_are_typed():
    settings = Settings.load({"LLM_TRAIN_API_LEASE_S": "12.5", "LLM_TRAIN_API_DB_POOL_SIZE": " 7",
                              "LLM_TRAIN_API_DATA_DIR": "/srv/llm-train"})
    assert settings.LEASE_S == 12.5 and settings.DB_POOL_SIZE == 7
    assert settings.DATA_DIR == "/srv/llm-train"
    # Overrides (create_app's test_config) win over the environment.
    assert Settings.load({"LLM_TRAIN_API_AUTH": "bogus"}, {"AUTH": "disabled"}).AUTH == "disabled"


@pytest.mark.parametrize(("env", "names"), [
    ({"LLM_TRAIN_API_LEASE_S": "soon"}, "LLM_TRAIN_API_LEASE_S must be a float"),
    ({"LLM_TRAIN_API_DB_POOL_SIZE": "0"}, "LLM_TRAIN_API_DB_POOL_SIZE must be at least 1"),
    ({"LLM_TRAIN_API_AUTH": "off"}, "LLM_TRAIN_API_AUTH must be"),
    ({"LLM_TRAIN_API_EXECUTOR": "ray"}, "LLM_TRAIN_API_EXECUTOR must be"),
    ({"LLM_TRAIN_API_HEARTBEAT_S": "20"}, "HEARTBEAT_S must be at most half"),
    ({"LLM_TRAIN_API_LEASE_S": "2", "LLM_TRAIN_API_HEARTBEAT_S": "0.5"},
     "LEASE_S must be at least LLM_TRAIN_API_HEARTBEAT_S"),
    ({"LLM_TRAIN_API_LOG_STREAMS_PER_PROCESS": "0"}, "LOG_STREAMS_PER_PROCESS must be"),
    ({"LLM_TRAIN_API_REQUEST_HEAD_TIMEOUT_S": "0"}, "REQUEST_HEAD_TIMEOUT_S"),
    ({"LLM_TRAIN_API_WORKER_CONNECTIONS": "2"}, "WORKER_CONNECTIONS must be more"),
    ({"LLM_TRAIN_API_MAX_QUEUED_PER_USER": "-1"}, "per-user caps"),
])
def test_bad_values_are_refused_by_name(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.load(env)


@pytest.mark.parametrize("url", ["s3://bucket/llm", "gs://bucket", "file:///srv/llm",
                                 "memory://x", "abfs://container@account/x"])
def test_a_url_data_dir_is_refused(url):
    # As a path, "s3://bucket/llm" would quietly become a local folder called "s3:".
    with pytest.raises(ConfigError, match="DATA_DIR must be a filesystem path"):
        Settings.load({"LLM_TRAIN_API_DATA_DIR": url})


@pytest.mark.parametrize("path", ["/mnt/s3fs/bucket", "relative/data", "odd:name/data", ""])
def test_paths_are_accepted_as_data_dir(path):
    assert Settings.load({"LLM_TRAIN_API_DATA_DIR": path}).DATA_DIR == path


@pytest.mark.parametrize(("raw", "value"), [("1", True), ("true", True), ("Yes", True),
                                            ("on", True), ("0", False), ("false", False),
                                            ("no", False), ("OFF", False), ("", False)])
def test_booleans_read_the_usual_spellings(raw, value):
    assert Settings.load({"LLM_TRAIN_API_BOOTSTRAP_TOKEN": raw}).BOOTSTRAP_TOKEN is value


def test_server_settings_have_their_documented_defaults():
    settings = Settings.load({})
    assert (settings.BIND, settings.WORKERS, settings.THREADS, settings.ACCESS_LOG,
            settings.WORKER_GPUS, settings.BOOTSTRAP_TOKEN) == \
        ("127.0.0.1:8000", 0, 4, "-", "auto", True)
    assert settings.gunicorn_workers() == min(2 * (os.cpu_count() or 1) + 1, 9)
    assert Settings.load({"LLM_TRAIN_API_WORKERS": "3"}).gunicorn_workers() == 3
    # create_app's test_config passes typed values through.
    assert Settings.load({}, {"BOOTSTRAP_TOKEN": False}).BOOTSTRAP_TOKEN is False


@pytest.mark.parametrize(("raw", "gpus"), [("auto", None), ("", []), ("0", [0]),
                                           ("0,1", [0, 1]), (" 2, 3 ", [2, 3])])
def test_worker_gpus(raw, gpus):
    assert Settings.load({"LLM_TRAIN_API_WORKER_GPUS": raw}).worker_gpus() == gpus


@pytest.mark.parametrize(("env", "names"), [
    ({"LLM_TRAIN_API_BOOTSTRAP_TOKEN": "maybe"}, "BOOTSTRAP_TOKEN must be true or false"),
    ({"LLM_TRAIN_API_WORKERS": "-1"}, "LLM_TRAIN_API_WORKERS must be 0"),
    ({"LLM_TRAIN_API_WORKERS": "many"}, "LLM_TRAIN_API_WORKERS must be a int"),
    ({"LLM_TRAIN_API_THREADS": "0"}, "LLM_TRAIN_API_THREADS must be at least 1"),
    ({"LLM_TRAIN_API_BIND": " "}, "LLM_TRAIN_API_BIND must be"),
    ({"LLM_TRAIN_API_WORKER_GPUS": "gpu0"}, "LLM_TRAIN_API_WORKER_GPUS must be"),
    ({"LLM_TRAIN_API_WORKER_GPUS": "-1"}, "LLM_TRAIN_API_WORKER_GPUS must be"),
    ({"LLM_TRAIN_API_METRICS_DISPATCH_WINDOW": "0"}, "METRICS_DISPATCH_WINDOW must be"),
])
def test_bad_server_settings_are_refused_by_name(env, names):
    with pytest.raises(ConfigError, match=names):
        Settings.load(env)
