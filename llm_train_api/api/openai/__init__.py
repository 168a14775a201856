"""The OpenAI-compatible API under `/v1`: files, fine-tuning jobs and models, so that
OpenAI's SDK, with only `base_url` and `api_key` changed, runs a fine-tuning workflow
against this service (docs/openai.md). Same tokens, owners, quotas and jobs as the
native API; errors in OpenAI's shape (api.openai.errors)."""

from __future__ import annotations

from typing import Any

import flask
from flask_smorest import Api

from llm_train_api.api.openai import errors, files, fine_tuning, models
from llm_train_api.api.openai.errors import OpenAIErrorSchema, is_openai_path

BLUEPRINTS = (files.blp, fine_tuning.blp, models.blp)
# Endpoints whose POST has no JSON body: a multipart upload, an action without payload.
RAW_BODY_ENDPOINTS = frozenset({files.UPLOAD_ENDPOINT})
NO_BODY_ENDPOINTS = frozenset({fine_tuning.CANCEL_ENDPOINT, fine_tuning.PAUSE_ENDPOINT,
                               fine_tuning.RESUME_ENDPOINT})
_ERROR_SCHEMA_NAME = "OpenAIError"


def init_app(app: flask.Flask, api: Api) -> None:
    """Register the `/v1` blueprints and the rewriting of its errors."""
    errors.register(app)
    for blueprint in BLUEPRINTS:
        api.register_blueprint(blueprint)


_LINKS = {
    ("/v1/files", "post"): ("file_id", {
        "GetFile": ("/v1/files/{file_id}", "get"),
        "GetFileContent": ("/v1/files/{file_id}/content", "get"),
        "DeleteFile": ("/v1/files/{file_id}", "delete")}),
    ("/v1/fine_tuning/jobs", "post"): ("job_id", {
        "GetFineTuningJob": ("/v1/fine_tuning/jobs/{job_id}", "get"),
        "CancelFineTuningJob": ("/v1/fine_tuning/jobs/{job_id}/cancel", "post"),
        "PauseFineTuningJob": ("/v1/fine_tuning/jobs/{job_id}/pause", "post"),
        "ResumeFineTuningJob": ("/v1/fine_tuning/jobs/{job_id}/resume", "post"),
        "ListFineTuningJobEvents": ("/v1/fine_tuning/jobs/{job_id}/events", "get"),
        "ListFineTuningJobCheckpoints": ("/v1/fine_tuning/jobs/{job_id}/checkpoints",
                                         "get")}),
}


def _operation_ref(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def _links(paths: dict[str, Any]) -> None:
    """OpenAPI links from the file or job a 200 created to what reads or changes it."""
    for (path, method), (parameter, targets) in _LINKS.items():
        paths[path][method]["responses"]["200"]["links"] = {
            name: {"operationRef": _operation_ref(*target),
                   "parameters": {parameter: "$response.body#/id"}}
            for name, target in targets.items()}


def document(api: Api) -> None:
    """Links from what creates a file or a job to what reads it; and every error
    response of a `/v1` operation (including the 401/403 that auth adds to every
    operation, and flask-smorest's defaults) stated in OpenAI's shape."""
    schemas = api.spec.components.schemas
    if _ERROR_SCHEMA_NAME not in schemas:
        api.spec.components.schema(_ERROR_SCHEMA_NAME, schema=OpenAIErrorSchema)
    ref = {"$ref": f"#/components/schemas/{_ERROR_SCHEMA_NAME}"}
    _links(api.spec._paths)
    for path, operations in api.spec._paths.items():
        if not is_openai_path(path):
            continue
        for operation in operations.values():
            if not isinstance(operation, dict):
                continue
            responses: dict[str, Any] = operation.get("responses", {})
            for status, response in list(responses.items()):
                if status == "default" or (status.isdigit() and int(status) >= 400):
                    description = (response.get("description") if isinstance(response, dict)
                                   else None) or "An error, in OpenAI's shape."
                    if status == "422":
                        del responses[status]  # /v1 answers field errors with a 400
                        continue
                    responses[status] = {"description": description,
                                         "content": {"application/json": {"schema": ref}}}
