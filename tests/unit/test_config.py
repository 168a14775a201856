"""Settings: every LLM_TRAIN_API_* value is typed and checked before anything starts."""

from __future__ import annotations

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
