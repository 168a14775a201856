"""Every endpoint and every error case, through the Flask test client on SQLite."""

from __future__ import annotations

import json
import re
import uuid
from datetime import datetime, timedelta, timezone
from urllib.parse import quote

import pytest

from tests.helpers.clients import admin_client

SEED_JOB = {
    "job_id": "job-001",
    "model_name": "gpt-mini",
    "dataset": "dataset-v1",
    "hyperparameters": {"learning_rate": 0.001, "epochs": 5},
}
ISO_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}\+00:00$")


def create(client, **overrides):
    body = {**SEED_JOB, **overrides}
    # Encoded by the standard library, which (unlike the server's encoder) can also write
    # the lone surrogates that hostile clients send.
    return client.post("/jobs", data=json.dumps(body), content_type="application/json")


def assert_error(resp, code: int) -> dict:
    assert resp.status_code == code, resp.get_data(as_text=True)
    assert resp.mimetype == "application/json"
    body = resp.get_json()
    assert body["code"] == code
    assert isinstance(body["status"], str) and body["status"]
    assert isinstance(body["message"], str) and body["message"]
    return body


def job_count(client) -> int:
    return len(client.get("/jobs?limit=1000").get_json())


# --------------------------------------------------------------------------- create


def test_create_returns_201_seed_shape_location_and_etag(client):
    resp = create(client)
    assert resp.status_code == 201
    job = resp.get_json()
    assert list(job)[:8] == ["id", "model_name", "dataset", "hyperparameters", "status",
                             "created_at", "updated_at", "error_message"]
    assert job["id"] == "job-001"
    assert job["hyperparameters"] == {"learning_rate": 0.001, "epochs": 5}
    assert job["status"] == "queued" and job["error_message"] is None
    assert ISO_UTC.match(job["created_at"]) and job["created_at"] == job["updated_at"]
    assert job["started_at"] is None and job["finished_at"] is None
    assert resp.headers["Location"].endswith("/jobs/job-001")
    assert resp.headers["ETag"].startswith('"')
    assert client.get(resp.headers["Location"]).get_json() == job


def test_create_without_job_id_generates_url_safe_unique_ids(client):
    ids = set()
    body = {k: v for k, v in SEED_JOB.items() if k != "job_id"}
    for _ in range(20):
        resp = client.post("/jobs", json=body)
        assert resp.status_code == 201
        ids.add(resp.get_json()["id"])
    assert len(ids) == 20
    assert all(re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$", i) for i in ids)


def test_hyperparameters_default_to_empty_object(client):
    resp = client.post("/jobs", json={"model_name": "m", "dataset": "d"})
    assert resp.status_code == 201
    assert resp.get_json()["hyperparameters"] == {}


def test_identical_retry_returns_existing_job_with_200(client):
    first = create(client).get_json()
    again = create(client)
    assert again.status_code == 200
    assert again.get_json() == first
    assert job_count(client) == 1


def test_same_id_different_body_is_409_and_changes_nothing(client):
    first = create(client).get_json()
    body = assert_error(create(client, dataset="other"), 409)
    assert "job-001" in body["message"]
    assert client.get("/jobs/job-001").get_json() == first


@pytest.mark.parametrize(
    "bad_id",
    ["", "-leading-dash", ".hidden", "a" * 129, "has space", "slash/inside", "../etc",
     "ünïcode", "semi;colon", 123, None, True],
)
def test_invalid_job_id_is_422(client, bad_id):
    body = assert_error(create(client, job_id=bad_id), 422)
    assert "job_id" in body["errors"]["json"]
    assert job_count(client) == 0


@pytest.mark.parametrize(
    "field,value",
    [
        ("model_name", ""), ("model_name", "   "), ("model_name", "x" * 257), ("model_name", 5),
        ("model_name", None), ("model_name", "nul\x00byte"), ("dataset", ""), ("dataset", []),
        ("dataset", "\ud800"), ("hyperparameters", []), ("hyperparameters", "lr=1"),
        ("hyperparameters", None), ("hyperparameters", {"k": "\x00"}),
    ],
)
def test_wrong_field_values_are_422_naming_the_field(client, field, value):
    body = assert_error(create(client, **{field: value}), 422)
    assert field in body["errors"]["json"]
    assert job_count(client) == 0


@pytest.mark.parametrize("missing", ["model_name", "dataset"])
def test_missing_required_field_is_422(client, missing):
    body = {k: v for k, v in SEED_JOB.items() if k != missing}
    err = assert_error(client.post("/jobs", json=body), 422)
    assert missing in err["errors"]["json"]


def test_unknown_field_is_422(client):
    err = assert_error(create(client, priority_boost=9), 422)
    assert err["errors"]["json"] == {"priority_boost": ["Unknown field."]}
    assert job_count(client) == 0


def test_hyperparameters_bounded_in_depth_and_size(app, client):
    settings = app.extensions["llm_train_api.runtime"].settings
    deep: dict = {}
    node = deep
    for _ in range(settings.MAX_HYPERPARAMETERS_DEPTH + 1):
        node["x"] = {}
        node = node["x"]
    err = assert_error(create(client, hyperparameters=deep), 422)
    assert "deeply" in str(err["errors"])
    big = {"blob": "x" * (settings.MAX_HYPERPARAMETERS_BYTES + 1)}
    err = assert_error(create(client, hyperparameters=big), 422)
    assert "Too large" in str(err["errors"])
    assert job_count(client) == 0


@pytest.mark.parametrize("literal", ["NaN", "Infinity", "-Infinity"])
def test_non_finite_numbers_are_rejected(client, literal):
    raw = '{"model_name": "m", "dataset": "d", "hyperparameters": {"lr": ' + literal + "}}"
    err = assert_error(client.post("/jobs", data=raw, content_type="application/json"), 400)
    assert literal in err["message"]
    assert job_count(client) == 0


@pytest.mark.parametrize(("number", "says"), [
    ("1e400", "1e400 is out of range"),
    ("-1e400", "-1e400 is out of range"),
    (str(2**63), f"{2**63} is out of range: integers must fit in 64 bits"),
    (str(-(2**63) - 1), "out of range: integers must fit in 64 bits"),
    ("9" * 5000, "(5000 digits) is out of range"),  # past Python's own int() limit
])
def test_numbers_that_cannot_be_stored_exactly_are_400(client, number, says):
    # They used to be a 500 (infinity, 5000 digits) or come back as an inexact float (2^63).
    for body in ('{"model_name": "m", "dataset": "d", "hyperparameters": {"x": %s}}',
                 '{"model_name": "m", "dataset": "d", "priority": %s}'):
        resp = client.post("/jobs", data=body % number, content_type="application/json")
        err = assert_error(resp, 400)
        assert says in err["message"] and len(err["message"]) < 200
    assert job_count(client) == 0


def test_numbers_at_the_edges_are_kept_exactly(client):
    raw = ('{"model_name": "m", "dataset": "d", "hyperparameters": {"big": 9223372036854775807, '
           '"small": -9223372036854775808, "huge": 1.7e308, "tiny": 1e-400}}')
    resp = client.post("/jobs", data=raw, content_type="application/json")
    assert resp.status_code == 201, resp.get_data(as_text=True)
    stored = client.get(resp.headers["Location"]).get_json()["hyperparameters"]
    assert stored == {"big": 2**63 - 1, "small": -(2**63), "huge": 1.7e308, "tiny": 0.0}
    assert type(stored["big"]) is int


@pytest.mark.parametrize("raw", ["{bad json", "", "\xff\xfe", '{"model_name": "m",}'])
def test_malformed_json_is_400(client, raw):
    assert_error(client.post("/jobs", data=raw, content_type="application/json"), 400)
    assert job_count(client) == 0


@pytest.mark.parametrize("raw", ["[]", '"string"', "42", "null"])
def test_json_that_is_not_an_object_is_422(client, raw):
    assert_error(client.post("/jobs", data=raw, content_type="application/json"), 422)


@pytest.mark.parametrize("ctype", ["text/plain", "application/x-www-form-urlencoded", None])
def test_non_json_content_type_is_415(client, ctype):
    kwargs = {"data": '{"model_name": "m", "dataset": "d"}'}
    if ctype:
        kwargs["content_type"] = ctype
    err = assert_error(client.post("/jobs", **kwargs), 415)
    assert "application/json" in err["message"]
    assert job_count(client) == 0


def test_oversized_body_is_413(app, client):
    limit = app.extensions["llm_train_api.runtime"].settings.MAX_JSON_BYTES
    raw = '{"model_name": "m", "dataset": "d", "hyperparameters": {"x": "%s"}}' % ("y" * limit)
    assert_error(client.post("/jobs", data=raw, content_type="application/json"), 413)
    assert job_count(client) == 0


# --------------------------------------------------------------------------- get


def test_get_missing_job_is_404(client):
    err = assert_error(client.get("/jobs/nope"), 404)
    assert "nope" in err["message"]


@pytest.mark.parametrize("path", ["/jobs/..%2F..%2Fetc%2Fpasswd", "/jobs/%00", "/jobs/a%20b"])
def test_path_tricks_are_404(client, path):
    assert_error(client.get(path), 404)


def test_get_supports_etag_and_if_none_match(client):
    create(client)
    resp = client.get("/jobs/job-001")
    etag = resp.headers["ETag"]
    cached = client.get("/jobs/job-001", headers={"If-None-Match": etag})
    assert cached.status_code == 304 and cached.data == b""
    assert cached.headers["ETag"] == etag
    client.patch("/jobs/job-001/status", json={"status": "running"})
    fresh = client.get("/jobs/job-001", headers={"If-None-Match": etag})
    assert fresh.status_code == 200 and fresh.headers["ETag"] != etag


def test_etag_of_recreated_job_differs(client):
    etag = create(client).headers["ETag"]
    client.delete("/jobs/job-001")
    assert create(client).headers["ETag"] != etag


# --------------------------------------------------------------------------- status


def test_patch_status_moves_job_and_records_timestamps(client):
    create(client)
    running = client.patch("/jobs/job-001/status", json={"status": "running"})
    assert running.status_code == 200
    job = running.get_json()
    assert job["status"] == "running" and ISO_UTC.match(job["started_at"])
    assert job["updated_at"] > job["created_at"] or job["updated_at"] == job["created_at"]
    failed = client.patch("/jobs/job-001/status",
                          json={"status": "failed", "error_message": "CUDA OOM"}).get_json()
    assert failed["status"] == "failed" and failed["error_message"] == "CUDA OOM"
    assert ISO_UTC.match(failed["finished_at"])


def test_same_status_again_is_idempotent_and_changes_nothing(client):
    create(client)
    first = client.patch("/jobs/job-001/status", json={"status": "running"})
    again = client.patch("/jobs/job-001/status", json={"status": "running"})
    assert again.status_code == 200
    assert again.get_json() == first.get_json()
    assert again.headers["ETag"] == first.headers["ETag"]
    events = client.get("/jobs/job-001/events").get_json()
    assert [e["to_status"] for e in events] == ["queued", "running"]


def test_illegal_transition_is_409_naming_current_and_allowed(client):
    create(client)
    err = assert_error(client.patch("/jobs/job-001/status", json={"status": "succeeded"}), 409)
    assert ("'queued'" in err["message"]
            and "cancelled, failed, paused, running" in err["message"])
    assert err["current_status"] == "queued"
    assert err["allowed_targets"] == ["cancelled", "failed", "paused", "running"]
    assert client.get("/jobs/job-001").get_json()["status"] == "queued"


@pytest.mark.parametrize("target", ["queued", "running", "succeeded"])
def test_error_message_with_non_failure_target_is_422(client, target):
    create(client)
    err = assert_error(
        client.patch("/jobs/job-001/status", json={"status": target, "error_message": "x"}), 422
    )
    assert "error_message" in err["errors"]["json"]
    assert client.get("/jobs/job-001").get_json()["status"] == "queued"


def test_empty_error_message_counts_as_none(client):
    create(client)
    job = client.patch("/jobs/job-001/status", json={"status": "running", "error_message": ""})
    assert job.status_code == 200 and job.get_json()["error_message"] is None


def test_requeue_clears_error_message_and_finished_at(client):
    create(client)
    client.patch("/jobs/job-001/status", json={"status": "running"})
    job = client.patch("/jobs/job-001/status", json={"status": "queued"}).get_json()
    assert job["status"] == "queued" and job["error_message"] is None
    assert job["finished_at"] is None


def test_cancel_keeps_reason(client):
    create(client)
    job = client.patch("/jobs/job-001/status",
                       json={"status": "cancelled", "error_message": "user asked"}).get_json()
    assert job["status"] == "cancelled" and job["error_message"] == "user asked"


@pytest.mark.parametrize(
    "body,field",
    [({"status": "sleeping"}, "status"), ({}, "status"), ({"status": None}, "status"),
     ({"status": "failed", "error_message": 5}, "error_message"),
     ({"status": "failed", "extra": 1}, "extra"),
     ({"status": "failed", "error_message": "x" * 8193}, "error_message")],
)
def test_bad_status_bodies_are_422(client, body, field):
    create(client)
    err = assert_error(client.patch("/jobs/job-001/status", json=body), 422)
    assert field in err["errors"]["json"]
    assert client.get("/jobs/job-001").get_json()["status"] == "queued"


def test_patch_missing_job_is_404(client):
    assert_error(client.patch("/jobs/ghost/status", json={"status": "running"}), 404)


def test_patch_status_requires_json(client):
    create(client)
    assert_error(client.patch("/jobs/job-001/status", data="status=running"), 415)


def test_if_match_current_etag_succeeds_and_stale_is_412(client):
    etag = create(client).headers["ETag"]
    ok = client.patch("/jobs/job-001/status", json={"status": "running"},
                      headers={"If-Match": etag})
    assert ok.status_code == 200
    stale = client.patch("/jobs/job-001/status", json={"status": "cancelled"},
                         headers={"If-Match": etag})
    err = assert_error(stale, 412)
    assert ok.headers["ETag"].strip('"') in err["message"]
    assert client.get("/jobs/job-001").get_json()["status"] == "running"


@pytest.mark.parametrize("header", ['"garbage"', '"1-1"', 'W/"weak"',
                                    # Past 64 bits: these were a 500 (the database could
                                    # not compare them).
                                    '"ffffffffffffffffff-1"', '"1-99999999999999999999"',
                                    '"ffffffffffffffff-1"', '"1-' + "9" * 5000 + '"'])
def test_if_match_that_cannot_match_is_412(client, header):
    create(client)
    assert_error(client.patch("/jobs/job-001/status", json={"status": "running"},
                              headers={"If-Match": header}), 412)
    assert client.get("/jobs/job-001").get_json()["status"] == "queued"


def test_if_match_star_and_lists(client):
    etag = create(client).headers["ETag"]
    star = client.patch("/jobs/job-001/status", json={"status": "running"},
                        headers={"If-Match": "*"})
    assert star.status_code == 200
    new = star.headers["ETag"]
    listed = client.patch("/jobs/job-001/status", json={"status": "succeeded"},
                          headers={"If-Match": f'{etag}, {new}'})
    assert listed.status_code == 200 and listed.get_json()["status"] == "succeeded"


# --------------------------------------------------------------------------- delete


@pytest.mark.parametrize("status", ["queued", "running", "succeeded", "failed", "cancelled"])
def test_delete_any_status_is_204_then_404(client, status):
    create(client)
    if status != "queued":
        if status in ("succeeded",):
            client.patch("/jobs/job-001/status", json={"status": "running"})
        client.patch("/jobs/job-001/status", json={"status": status})
    assert client.get("/jobs/job-001").get_json()["status"] == status
    resp = client.delete("/jobs/job-001")
    assert resp.status_code == 204 and resp.data == b""
    assert_error(client.get("/jobs/job-001"), 404)
    assert_error(client.delete("/jobs/job-001"), 404)
    assert_error(client.get("/jobs/job-001/events"), 404)


def test_delete_with_if_match_deletes_only_the_state_it_names(client):
    stale = create(client).headers["ETag"]
    current = client.patch("/jobs/job-001/status", json={"status": "running"}).headers["ETag"]
    for header in (stale, '"garbage"', '"ffffffffffffffffff-1"'):
        err = assert_error(client.delete("/jobs/job-001", headers={"If-Match": header}), 412)
        assert current.strip('"') in err["message"]
    assert client.get("/jobs/job-001").get_json()["status"] == "running"
    kinds = [e["kind"] for e in client.get("/jobs/job-001/events").get_json()]
    assert "deleted" not in kinds
    assert client.delete("/jobs/job-001", headers={"If-Match": current}).status_code == 204
    assert_error(client.delete("/jobs/job-001", headers={"If-Match": current}), 404)
    create(client)
    assert client.delete("/jobs/job-001", headers={"If-Match": "*"}).status_code == 204


# --------------------------------------------------------------------------- list


def test_list_is_newest_first_array(client):
    for i in range(5):
        create(client, job_id=f"j{i}")
    jobs = client.get("/jobs").get_json()
    assert [j["id"] for j in jobs] == ["j4", "j3", "j2", "j1", "j0"]


def test_list_paginates_with_link_header(client):
    for i in range(7):
        create(client, job_id=f"j{i}")
    seen, url = [], "/jobs?limit=3"
    pages = 0
    while url:
        resp = client.get(url)
        assert resp.status_code == 200
        seen += [j["id"] for j in resp.get_json()]
        pages += 1
        link = resp.headers.get("Link")
        url = None
        if link:
            m = re.match(r'^<([^>]+)>; rel="next"$', link)
            assert m, link
            url = m.group(1)
            assert "limit=3" in url
    assert seen == [f"j{i}" for i in range(6, -1, -1)] and pages == 3


def test_list_filters(client):
    create(client, job_id="a", model_name="m1", dataset="d1")
    create(client, job_id="b", model_name="m2", dataset="d1")
    create(client, job_id="c", model_name="m2", dataset="d2")
    client.patch("/jobs/b/status", json={"status": "running"})
    client.patch("/jobs/c/status", json={"status": "cancelled"})

    def ids(qs):
        resp = client.get("/jobs?" + qs)
        assert resp.status_code == 200, resp.get_json()
        return [j["id"] for j in resp.get_json()]

    assert ids("status=queued") == ["a"]
    assert ids("status=running&status=cancelled") == ["c", "b"]
    assert ids("status=running&status=running") == ["b"]
    assert ids("model_name=m2") == ["c", "b"]
    assert ids("dataset=d1") == ["b", "a"]
    assert ids("model_name=m2&dataset=d1") == ["b"]
    created_b = client.get("/jobs/b").get_json()["created_at"]
    assert ids("created_after=" + quote(created_b)) == ["c"]
    assert ids("created_before=" + quote(created_b)) == ["a"]
    future = (datetime.now(timezone.utc) + timedelta(days=1)).isoformat()
    assert ids("created_after=" + quote(future)) == []
    assert ids("created_before=2030-01-01T00:00:00") == ["c", "b", "a"]  # naive = UTC


@pytest.mark.parametrize(
    "qs,where",
    [("limit=0", "limit"), ("limit=1001", "limit"), ("limit=abc", "limit"),
     ("status=sleeping", "status"), ("created_after=yesterday", "created_after"),
     ("bogus=1", "bogus"), ("model_name=", "model_name"), ("dataset=%00", "dataset")],
)
def test_bad_list_queries_are_422(client, qs, where):
    err = assert_error(client.get("/jobs?" + qs), 422)
    assert where in err["errors"]["query"]


@pytest.mark.parametrize("cursor", ["abc", "!!!", "eyJ4IjoxfQ", "WzEsLTEsMl0", "W10"])
def test_bad_cursor_is_400(client, cursor):
    err = assert_error(client.get("/jobs?cursor=" + cursor), 400)
    assert "cursor" in err["message"]


# --------------------------------------------------------------------------- misc


def test_events_timeline(client):
    create(client)
    client.patch("/jobs/job-001/status", json={"status": "running"})
    client.patch("/jobs/job-001/status", json={"status": "failed", "error_message": "boom"})
    events = client.get("/jobs/job-001/events").get_json()
    assert [(e["kind"], e["from_status"], e["to_status"]) for e in events] == [
        ("created", None, "queued"), ("status", "queued", "running"),
        ("status", "running", "failed")]
    assert events[-1]["message"] == "boom"
    assert all(ISO_UTC.match(e["at"]) for e in events)


def test_unknown_route_and_method_are_json(client):
    assert_error(client.get("/nowhere"), 404)
    resp = client.put("/jobs/job-001")
    assert_error(resp, 405)
    assert "DELETE" in resp.headers["Allow"]


def test_health_and_readiness(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.get_json()["schema_version"] >= 1


def test_readyz_is_503_when_the_schema_is_missing(app, client):
    with app.extensions["llm_train_api.runtime"].database.engine.begin() as conn:
        conn.exec_driver_sql("DROP TABLE schema_version")
    resp = client.get("/readyz")
    assert resp.status_code == 503
    assert "database unavailable" in resp.get_json()["status"]


def test_start_up_fails_loudly_on_an_unreachable_database(tmp_path):
    from sqlalchemy.exc import OperationalError

    from llm_train_api import create_app

    with pytest.raises(OperationalError):
        create_app({"INSTANCE_PATH": str(tmp_path),
                    "DATABASE_URL": "postgresql+psycopg://nobody@127.0.0.1:1/none"})


def test_lost_database_connection_is_503_and_the_next_request_recovers(tmp_path, pg_url,
                                                                        pg_server):
    from sqlalchemy import create_engine

    from llm_train_api import create_app

    tag = f"llm_train_api_test_{uuid.uuid4().hex[:8]}"
    app = create_app({"INSTANCE_PATH": str(tmp_path),
                      "DATABASE_URL": f"{pg_url}&application_name={tag}", "DB_POOL_SIZE": 1,
                      "EXECUTOR": "none"})
    client = admin_client(app)
    assert create(client).status_code == 201
    runtime = app.extensions["llm_train_api.runtime"]
    admin = create_engine(pg_server)
    with admin.connect() as conn:  # kill the app's pooled sessions, as a failover would
        killed = conn.exec_driver_sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = %(tag)s AND pid <> pg_backend_pid()", {"tag": tag}
        ).scalar()
    admin.dispose()
    assert killed >= 1
    first = client.get("/jobs/job-001")  # meets the dead connection: no pre-ping
    assert first.status_code == 503
    assert first.headers["Retry-After"] == "1"
    assert first.get_json()["code"] == 503
    assert client.get("/jobs/job-001").status_code == 200
    runtime.close()


def test_an_unexpected_server_error_is_still_json(app, client, monkeypatch):
    store = app.extensions["llm_train_api.runtime"].jobs

    def broken(job_id):
        raise RuntimeError("bug")

    monkeypatch.setattr(store, "get_job", broken)
    body = assert_error(client.get("/jobs/job-001"), 500)
    assert "bug" not in body["message"]  # no internals leak to clients
