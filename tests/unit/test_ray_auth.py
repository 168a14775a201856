"""Which token the dispatcher and the admission lookup send to a Ray cluster."""

from __future__ import annotations

import pytest

from llm_train_api.config import ConfigError, Settings
from llm_train_api.services.ray_auth import RayToken, refusal, resolve


def test_the_setting_wins_over_rays_own_variables(tmp_path):
    env = {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": "ray-env", "HOME": str(tmp_path)}
    token = resolve(" mine \n", env)
    assert (token.value, token.source) == ("mine", "LLM_TRAIN_API_RAY_TOKEN")
    assert token.headers() == {"Authorization": "Bearer mine"}


def test_rays_variables_are_read_as_ray_reads_them(tmp_path):
    home = tmp_path / "home"
    assert resolve("", {"RAY_AUTH_TOKEN": "t", "HOME": str(home)}) == RayToken()  # no mode
    mode = {"RAY_AUTH_MODE": "token", "HOME": str(home)}
    assert resolve("", {**mode, "RAY_AUTH_TOKEN": " t "}).value == "t"
    path = tmp_path / "tok"
    path.write_text("from-file\n")
    both = {**mode, "RAY_AUTH_TOKEN": "", "RAY_AUTH_TOKEN_PATH": str(path)}
    assert resolve("", both) == RayToken("from-file", "RAY_AUTH_TOKEN_PATH")
    assert resolve("", mode) == RayToken()  # no ~/.ray/auth_token
    (home / ".ray").mkdir(parents=True)
    (home / ".ray" / "auth_token").write_text("default")
    assert resolve("", mode).value == "default"
    assert resolve("", {**mode, "RAY_AUTH_MODE": "disabled"}) == RayToken()


def test_an_unreadable_or_empty_token_file_is_an_error(tmp_path):
    mode = {"RAY_AUTH_MODE": "token", "HOME": str(tmp_path)}
    with pytest.raises(ConfigError, match="RAY_AUTH_TOKEN_PATH=.* cannot be read"):
        resolve("", {**mode, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "missing")})
    (tmp_path / "empty").write_text(" \n")
    with pytest.raises(ConfigError, match="is empty"):
        resolve("", {**mode, "RAY_AUTH_TOKEN_PATH": str(tmp_path / "empty")})


def test_the_token_stays_out_of_reprs_and_messages():
    token = RayToken("s3cret-value", "LLM_TRAIN_API_RAY_TOKEN")
    settings = Settings.load(environ={"LLM_TRAIN_API_RAY_TOKEN": "s3cret-value"})
    assert settings.RAY_TOKEN == "s3cret-value"
    for text in (repr(token), repr(settings), refusal("http://h:8265", 403, token),
                 refusal("http://h:8265", 401, token)):
        assert "s3cret-value" not in text
    assert "LLM_TRAIN_API_RAY_TOKEN" in refusal("http://h:8265", 403, token)
    assert Settings.load(environ={}).RAY_TOKEN == ""
