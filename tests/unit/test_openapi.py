"""The OpenAPI document covers every endpoint and error, and Swagger UI works offline."""

from __future__ import annotations

import re

import pytest

ROUTES = {
    ("/jobs", "get"): {"200", "400", "422"},
    ("/jobs", "post"): {"200", "201", "400", "404", "409", "413", "415", "422"},
    ("/jobs/{job_id}", "get"): {"200", "304", "404"},
    ("/jobs/{job_id}", "delete"): {"204", "404", "412"},
    ("/jobs/{job_id}/status", "patch"): {"200", "404", "409", "412", "415", "422"},
    ("/jobs/{job_id}/events", "get"): {"200", "400", "404", "422"},
    ("/jobs/{job_id}/metrics", "get"): {"200", "404", "422"},
    ("/jobs/{job_id}/cancel", "post"): {"200", "404"},
    ("/jobs/{job_id}/pause", "post"): {"200", "202", "404", "409"},
    ("/jobs/{job_id}/resume", "post"): {"200", "404", "409"},
    ("/jobs/{job_id}/logs", "get"): {"200", "404", "422"},
    ("/jobs/{job_id}/artifacts", "get"): {"200", "404"},
    ("/jobs/{job_id}/artifacts/{name}", "get"): {"200", "404"},
    ("/jobs/{job_id}/checkpoints", "get"): {"200", "404"},
    ("/jobs/{job_id}/checkpoints/{step}/archive", "get"): {"200", "404", "409"},
    ("/models", "get"): {"200"},
    ("/models/{name}", "get"): {"200", "404", "422"},
    ("/models/{name}", "put"): {"200", "201", "404", "409", "413", "415", "422", "507"},
    ("/models/{name}", "delete"): {"204", "403", "404", "409", "422"},
    ("/models/{name}/archive", "get"): {"200", "404", "409", "422"},
    ("/datasets", "get"): {"200"},
    ("/datasets/{name}", "get"): {"200", "404"},
    ("/datasets/{name}", "put"): {"200", "201", "403", "404", "409", "413", "415", "422"},
    ("/datasets/{name}", "delete"): {"204", "403", "404", "409"},
    ("/healthz", "get"): {"200"},
    ("/readyz", "get"): {"200", "503"},
    ("/whoami", "get"): {"200"},
    ("/webhooks", "get"): {"200"},
    ("/webhooks", "post"): {"201", "400", "413", "415", "422", "429"},
    ("/webhooks/{webhook_id}", "get"): {"200", "404"},
    ("/webhooks/{webhook_id}", "delete"): {"204", "404"},
    ("/webhooks/{webhook_id}/deliveries", "get"): {"200", "400", "404", "422"},
    # The OpenAI-compatible API: field errors are 400s, as OpenAI's API answers them.
    ("/v1/files", "get"): {"200", "400"},
    ("/v1/files", "post"): {"200", "400", "409", "413", "415", "429", "507"},
    ("/v1/files/{file_id}", "get"): {"200", "404"},
    ("/v1/files/{file_id}", "delete"): {"200", "400", "404", "409"},
    ("/v1/files/{file_id}/content", "get"): {"200", "404"},
    ("/v1/fine_tuning/jobs", "get"): {"200", "400", "404"},
    ("/v1/fine_tuning/jobs", "post"): {"200", "400", "409", "413", "415", "429", "503"},
    ("/v1/fine_tuning/jobs/{job_id}", "get"): {"200", "404"},
    ("/v1/fine_tuning/jobs/{job_id}/cancel", "post"): {"200", "404"},
    ("/v1/fine_tuning/jobs/{job_id}/events", "get"): {"200", "400", "404"},
    ("/v1/fine_tuning/jobs/{job_id}/pause", "post"): {"200", "404", "409"},
    ("/v1/fine_tuning/jobs/{job_id}/resume", "post"): {"200", "404", "409"},
    ("/v1/fine_tuning/jobs/{job_id}/checkpoints", "get"): {"200", "400", "404"},
    ("/v1/models", "get"): {"200"},
    ("/v1/models/{model_id}", "get"): {"200", "404"},
}
PUBLIC = {("/healthz", "get"), ("/readyz", "get")}
QUOTA_LIMITED = {("/jobs", "post"), ("/datasets/{name}", "put")}
# Served outside the OpenAPI document: the docs themselves, the dashboard, Prometheus.
NOT_API = re.compile(r"^/(openapi\.json|docs|static/|ui|metrics)")


@pytest.fixture
def spec(client):
    resp = client.get("/openapi.json")
    assert resp.status_code == 200
    return resp.get_json()


def test_every_route_and_status_code_is_documented(app, spec):
    documented = {(path, method) for path, ops in spec["paths"].items() for method in ops
                  if method != "parameters"}
    assert documented == set(ROUTES)
    for (path, method), codes in ROUTES.items():
        op = spec["paths"][path][method]
        if (path, method) not in PUBLIC:
            codes = codes | {"401", "403"}
        if (path, method) in QUOTA_LIMITED:
            codes = codes | {"429"}
        assert codes <= set(op["responses"]), (path, method, set(op["responses"]))
        assert op.get("summary"), (path, method)
        # Public operations opt out of the document-wide bearer requirement.
        assert ("security" in op and op["security"] == []) == ((path, method) in PUBLIC)
    # And every API route the app serves is in the document.
    served = {re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", r.rule) for r in app.url_map.iter_rules()}
    assert {p for p in served if not NOT_API.match(p)} == {path for path, _ in ROUTES}


def test_swagger_ui_offers_the_bearer_scheme(spec):
    assert spec["components"]["securitySchemes"]["bearerAuth"] == {
        **spec["components"]["securitySchemes"]["bearerAuth"], "type": "http",
        "scheme": "bearer"}
    assert spec["security"] == [{"bearerAuth": []}]


def test_schemas_describe_the_seed_payloads(spec):
    schemas = spec["components"]["schemas"]
    job = schemas["Job"]["properties"]
    for field in ["id", "model_name", "dataset", "hyperparameters", "status", "created_at",
                  "updated_at", "error_message"]:
        assert field in job
    assert set(job["status"]["enum"]) == {"queued", "running", "succeeded", "failed", "cancelled",
                                          "paused"}
    assert "pause_requested_at" in job
    create = schemas["JobCreate"]
    assert set(create["required"]) == {"model_name", "dataset"}
    assert create["properties"]["job_id"]["pattern"].startswith("^[A-Za-z0-9]")
    params = {p["name"] for p in spec["paths"]["/jobs"]["get"]["parameters"]}
    assert {"status", "model_name", "dataset", "created_after", "created_before", "limit",
            "cursor"} <= params


def test_swagger_ui_is_served_without_internet(client):
    page = client.get("/docs")
    assert page.status_code == 200
    html = page.get_data(as_text=True)
    assets = re.findall(r'(?:src|href)="([^"]+)"', html)
    assert assets, html
    for asset in assets:
        assert not asset.startswith(("http:", "https:", "//")), f"external asset {asset}"
        resp = client.get("/" + asset if not asset.startswith("/") else asset)
        assert resp.status_code == 200, asset
        assert len(resp.data) > 1000
    assert '"/openapi.json"' in html


@pytest.mark.parametrize("executor", ["none", "local"])
def test_the_document_is_valid_openapi(tmp_path, executor):
    from openapi_spec_validator import OpenAPIV30SpecValidator

    from llm_train_api import create_app
    from tests.helpers.clients import admin_client

    app = create_app({"INSTANCE_PATH": str(tmp_path / "i"), "EXECUTOR": executor})
    try:
        document = admin_client(app).get("/openapi.json").get_json()
    finally:
        app.extensions["llm_train_api.runtime"].close()
    errors = [f"{'/'.join(map(str, e.absolute_path))}: {e.message}"[:400]
              for e in OpenAPIV30SpecValidator(document).iter_errors()]
    assert errors == []
