"""Fuzzing the live API against its own OpenAPI document (schemathesis).

Two real gunicorn servers, one per executor mode, each fuzzed operation by operation with
schemathesis's positive and negative generators (derandomized, so CI runs are repeatable).
Every response must be: no 5xx, a documented status code and content type, a body that
conforms to the documented schema, JSON errors in the `{code, status, message, errors?}`
shape, and no 2xx for data the spec says is invalid.

The number of cases each run sent is printed in pytest's terminal summary.
"""

from __future__ import annotations

import pytest
import requests

from tests.helpers.fuzzing import FuzzRun, fuzz, unique

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 40  # per operation and generation mode
# A follow stream ends after this long, so a `logs?follow=true` case cannot hang the run.
# The helpers below create a few hundred jobs and datasets: no per-user cap (0) may turn
# them into 429s.
FUZZ_ENV = {"LLM_TRAIN_API_LOG_FOLLOW_MAX_S": "1", "LLM_TRAIN_API_LOG_LEVEL": "WARNING",
            "LLM_TRAIN_API_ACCESS_LOG": "", "LLM_TRAIN_API_MAX_QUEUED_PER_USER": "0",
            "LLM_TRAIN_API_MAX_DATASETS_PER_USER": "0"}

_RUNS: list[FuzzRun] = []


class _Summary:
    """Prints every fuzz run's summary line at the end of the pytest session."""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        if _RUNS:
            terminalreporter.section("schemathesis")
            for run in _RUNS:
                terminalreporter.write_line(run.summary_line())


@pytest.fixture(scope="module", autouse=True)
def _summary_plugin(request):
    plugin = _Summary()
    manager = request.config.pluginmanager
    if not any(isinstance(p, _Summary) for p in manager.get_plugins()):
        manager.register(plugin, "llm-train-api-fuzz-summary")
    yield


def _real_resources(server, job_body: dict) -> dict:
    """Makers of real path parameters: a fresh job, a fresh dataset, a catalog model."""

    def job(session: requests.Session) -> str:
        job_id = unique("fz")
        resp = session.post(f"{server.url}/jobs", json={"job_id": job_id, **job_body},
                            timeout=10)
        assert resp.status_code == 201, resp.text
        return job_id

    def dataset(session: requests.Session) -> str:
        name = unique("fzds")
        resp = session.put(f"{server.url}/datasets/{name}", data=b"hello fuzz\n" * 20,
                           headers={"Content-Type": "text/plain"}, timeout=10)
        assert resp.status_code == 201, resp.text
        return name

    return {("/jobs/", "job_id"): job, ("/datasets/", "name"): dataset,
            ("/models/", "name"): lambda _session: "gpt-nano"}


def _finish(run: FuzzRun, capsys) -> None:
    _RUNS.append(run)
    with capsys.disabled():
        print("\n" + run.report())
    assert run.cases > 0
    assert run.failures == 0, run.report()


def test_fuzz_registry_mode(gunicorn_factory, capsys):
    """LLM_TRAIN_API_EXECUTOR=none: the seed's pure registry."""
    server = gunicorn_factory(workers=2, env={**FUZZ_ENV, "LLM_TRAIN_API_EXECUTOR": "none"})
    run = fuzz(server.url, token=server.token, label="executor=none",
               max_examples=MAX_EXAMPLES,
               path_values=_real_resources(server, {"model_name": "m", "dataset": "d"}))
    _finish(run, capsys)


def test_fuzz_local_executor_mode(gunicorn_factory, capsys):
    """LLM_TRAIN_API_EXECUTOR=local (no worker): creation checks model, dataset and
    hyperparameters, and clients may only cancel."""
    server = gunicorn_factory(workers=2, env={**FUZZ_ENV, "LLM_TRAIN_API_EXECUTOR": "local"})
    body = {"model_name": "gpt-nano", "dataset": "builtin:tinytext",
            "hyperparameters": {"max_steps": 10}}
    # Half the positive creates name a real model and dataset (with the generated options),
    # so the 201 path and the admission checks past the name lookups are fuzzed too.
    run = fuzz(server.url, token=server.token, label="executor=local",
               max_examples=MAX_EXAMPLES, path_values=_real_resources(server, body),
               body_values={"POST /jobs": {**body, "hyperparameters": {}}})
    _finish(run, capsys)
