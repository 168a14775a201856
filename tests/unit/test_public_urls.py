"""Location and Link URLs: built from PUBLIC_URL when it is set, from the forwarded host
only behind trusted proxies, and relative otherwise; never from the Host header a client
sends. The Python client follows the relative ones."""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path

import pytest

from llm_train_api import create_app
from llm_train_api.client import Client, RetryPolicy
from llm_train_api.config import ConfigError, Settings
from tests.helpers.clients import admin_client
from tests.helpers.servers import ThreadedServer

EVIL = "evil.example"
JOB = {"model_name": "gpt-nano", "dataset": "d", "hyperparameters": {"learning_rate": 0.001}}


@pytest.fixture
def make_app(tmp_path) -> Iterator:
    apps = []

    def make(**settings):
        app = create_app({"INSTANCE_PATH": str(tmp_path / f"instance{len(apps)}"),
                          "EXECUTOR": "none", **settings})
        apps.append(app)
        return app

    yield make
    for app in apps:
        app.extensions["llm_train_api.runtime"].close()


def urls_handed_out(app, **request_options) -> list[str]:
    """Every Location and Link URL the API answers with: a created job, a created dataset,
    and the next pages of jobs, of a job's events and of its loss curve."""
    client = admin_client(app)
    for i in range(3):
        created = client.post("/jobs", json={**JOB, "job_id": f"j{i}"}, **request_options)
        assert created.status_code == 201, created.get_data(as_text=True)
    uploaded = client.put("/datasets/tiny", data=b"some text\n" * 10,
                          content_type="text/plain", **request_options)
    assert uploaded.status_code == 201, uploaded.get_data(as_text=True)
    queue = app.extensions["llm_train_api.runtime"].queue
    assert queue.claim("w1", 30).id == "j0"
    queue.record_progress("j0", "w1", {"step": 3},
                          [{"step": s, "train_loss": 1.0 / s} for s in (1, 2, 3)])
    links = [client.get(path, **request_options).headers.get("Link", "")
             for path in ("/jobs?limit=1", "/jobs/j0/events?limit=1",
                          "/jobs/j0/metrics?limit=1")]
    urls = [created.headers["Location"], uploaded.headers["Location"]]
    for link in links:
        match = re.fullmatch(r'<([^>]+)>; rel="next"', link)
        assert match, link
        urls.append(match.group(1))
    return urls


HOSTILE = {"headers": {"Host": EVIL, "X-Forwarded-Host": EVIL,
                       "X-Forwarded-Proto": "https"}}


def test_without_public_url_the_urls_are_relative_whatever_the_host_header(make_app):
    urls = urls_handed_out(make_app(), **HOSTILE)
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls
    assert not any(EVIL in url for url in urls)
    assert urls[0] == "/jobs/j2" and urls[1] == "/datasets/tiny"


def test_public_url_makes_them_absolute(make_app):
    urls = urls_handed_out(make_app(PUBLIC_URL="https://train.example.com/api/"), **HOSTILE)
    assert all(url.startswith("https://train.example.com/api/") for url in urls), urls
    assert urls[0] == "https://train.example.com/api/jobs/j2"
    assert "limit=1" in urls[2]


def test_behind_trusted_proxies_the_forwarded_host_is_used(make_app):
    forwarded = {"headers": {"X-Forwarded-Host": "train.example.com",
                             "X-Forwarded-Proto": "https", "X-Forwarded-For": "10.0.0.1"}}
    urls = urls_handed_out(make_app(TRUSTED_PROXIES=1), **forwarded)
    assert all(url.startswith("https://train.example.com/") for url in urls), urls


@pytest.mark.parametrize("bad", ["train.example.com", "ftp://x", "https://x/?a=1",
                                 "https://", "https://x/#frag", "https://x y"])
def test_a_public_url_that_is_not_one_is_refused(bad):
    with pytest.raises(ConfigError, match="PUBLIC_URL"):
        Settings.load({}, {"PUBLIC_URL": bad})


def test_the_python_client_pages_through_relative_links(make_app):
    app = make_app()
    token = (Path(app.instance_path) / "admin-token").read_text().strip()
    retry = RetryPolicy(attempts=1, backoff_s=0.01, max_backoff_s=0.01)
    with ThreadedServer(app) as server, Client(server.url, token=token, retry=retry) as api:
        for i in range(5):
            api.create_job("gpt-nano", "d", job_id=f"p{i}")
        page = api.list_jobs_page(limit=2)
        assert page.next_cursor
        assert [job.id for job in api.list_jobs(page_size=2)] == [f"p{i}" for i in range(4, -1, -1)]
        queue = app.extensions["llm_train_api.runtime"].queue
        assert queue.claim("w1", 30).id == "p0"
        curve = [{"step": s, "train_loss": 1.0} for s in range(1, 6)]
        queue.record_progress("p0", "w1", {"step": 5}, curve)
        assert [p.step for p in api.job_metrics("p0")] == [1, 2, 3, 4, 5]
        assert len(list(api.job_events("p0", page_size=1))) == 2  # created, claimed


def test_under_a_path_prefix_the_urls_keep_it(make_app):
    """Mounted below a prefix (SCRIPT_NAME, as a proxy's sub-path gives it): every URL the
    API hands out, the created job's Location included, starts with the prefix."""
    urls = urls_handed_out(make_app(), base_url="http://localhost/api")
    assert urls[0] == "/api/jobs/j2" and urls[1] == "/api/datasets/tiny"
    assert all(url.startswith("/api/") for url in urls), urls
