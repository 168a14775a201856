"""Amendments to the generated OpenAPI document, for what marshmallow and apispec cannot
state on their own. `amend` runs once every blueprint is registered."""

from __future__ import annotations

from typing import Any

from flask_smorest import Api

from llm_train_api.api.schemas import WHITESPACE_CLASS
from llm_train_api.domain import ERROR_MESSAGE_TARGETS

# A dataset name as a path parameter: a built-in one, or letters, digits, '.', '_' and '-'
# starting with a letter or digit and without '..' (a dot is never followed by another).
DATASET_NAME_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": r"^(builtin:[a-z0-9_-]+|[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?)$",
}
# A model name as a path parameter (artifacts.models.NAME_PATTERN): the same characters,
# without the optional trailing dot.
MODEL_NAME_SCHEMA = {
    "type": "string",
    "minLength": 1,
    "maxLength": 128,
    "pattern": r"^[A-Za-z0-9](?:[A-Za-z0-9_-]|\.[A-Za-z0-9_-])*\.?$",
}


def amend(api: Api) -> None:
    schemas = api.spec.components.schemas
    for schema in schemas.values():
        _null_means_null(schema)
    _reason_only_when_final(schemas["StatusUpdate"])
    # apispec keeps the paths it was given in `_paths`; there is no public way to amend
    # operations after flask-smorest registered them.
    paths = api.spec._paths
    _path_parameter(paths["/datasets/{name}"], "name", DATASET_NAME_SCHEMA)
    _path_parameter(paths["/models/{name}"], "name", MODEL_NAME_SCHEMA)
    _links(paths)


def _links(paths: dict[str, Any]) -> None:
    """OpenAPI links from what creates a resource to what reads or changes it: the job a
    201 of `POST /jobs` made (not its 200, which with `dry_run=true` describes a job that
    does not exist), the dataset a `PUT` stored, under its name without the suffix, and
    the model a `PUT` imported."""
    job_links = {}
    for path, operations in paths.items():
        if path.startswith("/jobs/{job_id}"):
            for method in operations:
                if method in ("get", "post", "put", "patch", "delete"):
                    job_links[_link_name(method, path)] = {
                        "operationRef": _operation_ref(path, method),
                        "parameters": {"job_id": "$response.body#/id"}}
    paths["/jobs"]["post"]["responses"]["201"]["links"] = job_links
    dataset_links = {_link_name(method, "/datasets/{name}"): {
        "operationRef": _operation_ref("/datasets/{name}", method),
        "parameters": {"name": "$response.body#/name"}} for method in ("get", "delete")}
    model_links = {_link_name(method, "/models/{name}"): {
        "operationRef": _operation_ref("/models/{name}", method),
        "parameters": {"name": "$response.body#/name"}} for method in ("get", "delete")}
    for status in ("200", "201"):
        paths["/datasets/{name}"]["put"]["responses"][status]["links"] = dict(dataset_links)
        paths["/models/{name}"]["put"]["responses"][status]["links"] = dict(model_links)


def _operation_ref(path: str, method: str) -> str:
    return "#/paths/" + path.replace("~", "~0").replace("/", "~1") + "/" + method


def _link_name(method: str, path: str) -> str:
    """`GET /jobs/{job_id}/events` -> `GetJobEvents`."""
    words = [method.capitalize()]
    for part in path.strip("/").split("/"):
        if not part.startswith("{"):
            word = part[:-1] if part in ("jobs", "datasets", "models") else part
            words.append(word.capitalize())
    return "".join(words)


def _null_means_null(schema: dict[str, Any]) -> None:
    """apispec writes a nullable nested schema as `anyOf: [<ref>, {type: object, nullable:
    true}]`, whose second branch admits any object at all; restrict it to null."""
    for prop in (schema.get("properties") or {}).values():
        for branch in prop.get("anyOf", ()):
            if "$ref" not in branch and branch.get("nullable") is True:
                branch["enum"] = [None]


def _reason_only_when_final(schema: dict[str, Any]) -> None:
    """`error_message` is kept with the statuses that carry a reason; with another target
    only an absent, null or blank one is accepted (anything else is a 422)."""
    schema["anyOf"] = [
        {"properties": {"status": {"enum": sorted(s.value for s in ERROR_MESSAGE_TARGETS)}}},
        {"properties": {"error_message": {"type": "string", "nullable": True,
                                          "pattern": f"^{WHITESPACE_CLASS}*$"}}},
    ]


def _path_parameter(operations: dict[str, Any], name: str, schema: dict[str, Any]) -> None:
    for parameter in operations.get("parameters", ()):
        if parameter.get("in") == "path" and parameter.get("name") == name:
            parameter["schema"] = dict(schema)
