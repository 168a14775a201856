"""Fixtures of the unit tier: the app of tests/conftest.py served over real HTTP from a
thread of this process, and a Python client of it acting as the admin."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_train_api.client import Client, RetryPolicy
from tests.helpers.servers import ThreadedServer

NO_RETRY = RetryPolicy(attempts=1, backoff_s=0.01, max_backoff_s=0.01)


@pytest.fixture
def server(app) -> Iterator[ThreadedServer]:
    with ThreadedServer(app) as server:
        server.token = (Path(app.instance_path) / "admin-token").read_text().strip()
        yield server


@pytest.fixture
def api(server) -> Iterator[Client]:
    with Client(server.url, token=server.token, retry=NO_RETRY) as api:
        yield api
