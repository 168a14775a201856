"""The webhook resource over HTTP: registration and its validation, the secret shown once,
ownership (users their own endpoints, admins everyone's), deliveries; and the same through
the Python client and the CLI."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from llm_train_api import create_app
from llm_train_api.cli.main import main
from llm_train_api.client import NotFound, ValidationError
from tests.helpers.clients import admin_client, client_as

HOOK = "http://127.0.0.1:9/hook"


@pytest.fixture
def app(tmp_path):
    """Private addresses allowed (the receivers of these tests are on loopback)."""
    app = create_app({"INSTANCE_PATH": str(tmp_path / "instance"), "EXECUTOR": "none",
                      "WEBHOOK_ALLOW_PRIVATE": True})
    yield app
    app.extensions["llm_train_api.runtime"].close()


def _register(client, url=HOOK, **body):
    return client.post("/webhooks", json={"url": url, **body})


def test_registration_answers_the_secret_once(app):
    alice = client_as(app, "alice", "user")
    resp = _register(alice, events=["job.failed", "job.succeeded"], description="ci")
    assert resp.status_code == 201, resp.json
    hook = resp.json
    assert hook["secret"].startswith("whsec_") and hook["owner"] == "alice"
    assert hook["scope"] == "own" and hook["events"] == ["job.failed", "job.succeeded"]
    assert resp.headers["Location"] == f"/webhooks/{hook['id']}"
    got = alice.get(f"/webhooks/{hook['id']}").json
    assert "secret" not in got and got["url"] == HOOK
    assert all("secret" not in h for h in alice.get("/webhooks").json)
    assert hook["secret"] not in alice.get(f"/webhooks/{hook['id']}/deliveries").text


def test_by_default_every_native_event_and_admins_hear_every_job(app):
    hook = _register(admin_client(app)).json
    assert hook["scope"] == "all"
    assert hook["events"] == ["job.cancelled", "job.failed", "job.paused", "job.succeeded"]


@pytest.mark.parametrize(("body", "field"), [
    ({"url": "ftp://example.com/"}, "url"),
    ({"url": "http://user:pw@127.0.0.1/"}, "url"),
    ({"url": "http://169.254.169.254/latest"}, "url"),
    ({"url": HOOK, "events": ["job.exploded"]}, "events"),
    ({"url": HOOK, "events": []}, "events"),
    ({"url": HOOK, "description": " "}, "description"),
    ({"events": ["job.failed"]}, "url"),
    ({"url": HOOK, "secret": "mine"}, "secret"),
])
def test_bad_registrations_are_422_and_change_nothing(app, body, field):
    alice = client_as(app, "alice", "user")
    resp = alice.post("/webhooks", json=body)
    assert resp.status_code == 422, resp.json
    assert field in resp.json["errors"]["json"]
    assert alice.get("/webhooks").json == []


def test_a_private_url_is_refused_with_the_setting_off(tmp_path):
    app = create_app({"INSTANCE_PATH": str(tmp_path / "closed"), "EXECUTOR": "none"})
    try:
        admin = admin_client(app)
        for url in (HOOK, "http://[::1]/h", "http://10.0.0.1/h", "http://localhost/h"):
            resp = _register(admin, url)
            assert resp.status_code == 422, url
            assert "WEBHOOK_ALLOW_PRIVATE" in resp.json["errors"]["json"]["url"][0]
        assert admin.get("/webhooks").json == []
    finally:
        app.extensions["llm_train_api.runtime"].close()


def test_users_see_and_delete_only_their_own_endpoints(app):
    alice, bob = client_as(app, "alice", "user"), client_as(app, "bob", "user")
    admin = admin_client(app)
    hook = _register(alice).json["id"]
    _register(bob)
    assert [h["owner"] for h in alice.get("/webhooks").json] == ["alice"]
    for path in (f"/webhooks/{hook}", f"/webhooks/{hook}/deliveries"):
        assert bob.get(path).status_code == 404
    assert bob.delete(f"/webhooks/{hook}").status_code == 404
    assert alice.get(f"/webhooks/{hook}").status_code == 200
    assert sorted(h["owner"] for h in admin.get("/webhooks").json) == ["alice", "bob"]
    assert admin.delete(f"/webhooks/{hook}").status_code == 204
    assert alice.get(f"/webhooks/{hook}").status_code == 404
    assert alice.delete(f"/webhooks/{hook}").status_code == 404


def test_workers_may_not_register(app):
    worker = client_as(app, "w", "worker")
    assert _register(worker).status_code == 403
    assert worker.get("/webhooks").status_code == 403


def test_deliveries_show_what_is_sent_and_page(app):
    alice = client_as(app, "alice", "user")
    hook = _register(alice, events=["job.cancelled"]).json["id"]
    for n in range(3):
        assert alice.post("/jobs", json={"job_id": f"j{n}", "model_name": "m",
                                         "dataset": "d"}).status_code == 201
        assert alice.post(f"/jobs/j{n}/cancel").status_code == 200
    first = alice.get(f"/webhooks/{hook}/deliveries?limit=2")
    assert first.status_code == 200
    assert [d["job_id"] for d in first.json] == ["j2", "j1"]
    delivery = first.json[0]
    assert delivery["state"] == "pending" and delivery["attempts"] == 0
    assert delivery["next_attempt_at"] and delivery["id"].startswith("msg_")
    assert delivery["payload"]["type"] == "job.cancelled"
    assert delivery["payload"]["data"]["job_id"] == "j2"
    assert delivery["payload"]["data"]["previous_status"] == "queued"
    link = first.headers["Link"]
    rest = alice.get(link[1:link.index(">")])
    assert [d["job_id"] for d in rest.json] == ["j0"] and "Link" not in rest.headers
    assert alice.get(f"/webhooks/{hook}/deliveries?cursor=bad").status_code == 400


def test_the_client_and_the_cli(server, api):
    hook = api.create_webhook(HOOK, ["job.failed"], description="from the client")
    assert hook.secret.startswith("whsec_") and hook.events == ["job.failed"]
    assert [h.id for h in api.list_webhooks()] == [hook.id]
    assert api.get_webhook(hook.id).secret is None
    assert list(api.webhook_deliveries(hook.id)) == []
    with pytest.raises(ValidationError):
        api.create_webhook("ftp://nope/")
    run = CliRunner().invoke
    base = ["--url", server.url, "--token", server.token]
    made = run(main, ["webhooks", "create", HOOK, "--event", "job.succeeded", *base])
    assert made.exit_code == 0, made.output
    assert "secret: whsec_" in made.stdout
    listing = run(main, ["webhooks", "list", *base]).stdout
    assert hook.id in listing and "job.succeeded" in listing
    assert run(main, ["webhooks", "deliveries", hook.id, *base]).exit_code == 0
    assert run(main, ["webhooks", "delete", hook.id, *base]).exit_code == 0
    with pytest.raises(NotFound):
        api.get_webhook(hook.id)
    gone = run(main, ["webhooks", "delete", hook.id, *base])
    assert gone.exit_code == 1 and "404" in gone.stderr


def test_the_dashboard_has_a_webhooks_page(app):
    client = admin_client(app)
    page = client.get("/ui/webhooks")
    assert page.status_code == 200 and b"webhooks.js" in page.data
    assert b'href="/ui/webhooks"' in client.get("/ui/models").data
    script = client.get("/ui/static/webhooks.js")
    assert script.status_code == 200
    assert b'"/webhooks/" + encodeURIComponent(shown) + "/deliveries' in script.data
