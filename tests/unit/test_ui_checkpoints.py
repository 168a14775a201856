"""The dashboard's checkpoint table and compare-runs page are served (public shells, the
same security headers, scripts from this origin only); the data comes from the API."""

from __future__ import annotations

from llm_train_api.ui import CONTENT_SECURITY_POLICY


def test_the_compare_page_and_its_script_are_served(app):
    client = app.test_client()  # no token: the shells are public
    page = client.get("/ui/compare?jobs=a,b")
    assert page.status_code == 200
    assert page.headers["Content-Security-Policy"] == CONTENT_SECURITY_POLICY
    html = page.get_data(as_text=True)
    for needle in ('id="compare-chart"', 'id="compare-picker"', 'id="compare-table"',
                   "/ui/static/chart.js", "/ui/static/compare.js"):
        assert needle in html, needle
    assert "<script>" not in html  # no inline script
    script = client.get("/ui/static/compare.js")
    assert script.status_code == 200 and b"drawSeries" in script.data
    assert b"drawSeries" in client.get("/ui/static/chart.js").data


def test_the_job_page_has_the_checkpoint_table_and_links_to_compare(app):
    client = app.test_client()
    html = client.get("/ui/jobs/job-1").get_data(as_text=True)
    assert 'id="checkpoints-body"' in html and 'id="job-origin"' in html
    assert 'href="/ui/compare?jobs=job-1"' in html
    assert 'href="/ui/compare"' in client.get("/ui/").get_data(as_text=True)
    script = client.get("/ui/static/job.js").data
    assert b"/checkpoints" in script and b"/archive" in script
