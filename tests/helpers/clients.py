"""Flask test clients that authenticate: as the bootstrap admin, or as a new principal."""

from __future__ import annotations

from pathlib import Path

from flask import Flask
from flask.testing import FlaskClient


def _with_token(app: Flask, token: str) -> FlaskClient:
    client = app.test_client()
    client.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {token}"
    return client


def admin_client(app: Flask) -> FlaskClient:
    """A client with the admin token the app wrote to its instance folder on first start."""
    return _with_token(app, (Path(app.instance_path) / "admin-token").read_text().strip())


def client_as(app: Flask, name: str, role: str) -> FlaskClient:
    """A client with a freshly issued token for `name` in `role`."""
    _info, secret = app.extensions["llm_train_api.runtime"].tokens.create(name, role)
    return _with_token(app, secret)
