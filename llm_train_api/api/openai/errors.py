"""Errors under `/v1` in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

Every error the service raises keeps its one source (api.errors, webargs, auth, Werkzeug);
`rewrite` turns the native body into OpenAI's on the way out, for `/v1` paths only, so a
401 from auth, a 404 for an unknown route, a 405, 413, 415, a field error, a domain error
and a quota all answer alike. Native field errors become `param` in OpenAI's names, and
the statuses become those the OpenAI API uses (a field error is a 400, not a 422).
"""

from __future__ import annotations

from http import HTTPStatus
from typing import Any

import flask
from marshmallow import fields

from llm_train_api.api.schema_base import Schema
from llm_train_api.services.openai_compat.hyperparams import TranslationError

PREFIX = "/v1"
_LOCATIONS = ("json", "query", "form", "files", "headers", "view_args", "path")

# Native request fields -> the OpenAI request's names for them.
PARAM_NAMES = {
    "model_name": "model",
    "dataset": "training_file",
    "validation_dataset": "validation_file",
    "output_model": "suffix",
    "hyperparameters.epochs": "hyperparameters.n_epochs",
    "hyperparameters.learning_rate": "hyperparameters.learning_rate_multiplier",
}

# HTTP status -> (OpenAI error type, code). A 422 answers as a 400, as OpenAI's would.
_KINDS: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("invalid_request_error", "permission_denied"),
    404: ("invalid_request_error", "not_found"),
    405: ("invalid_request_error", "method_not_allowed"),
    408: ("invalid_request_error", "request_timeout"),
    409: ("invalid_request_error", "conflict"),
    412: ("invalid_request_error", "precondition_failed"),
    413: ("invalid_request_error", "request_too_large"),
    415: ("invalid_request_error", "unsupported_media_type"),
    429: ("rate_limit_error", "rate_limit_exceeded"),
}
STATUS_REMAP = {422: 400}


class OpenAIErrorDetailSchema(Schema):
    message = fields.String(required=True)
    type = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)
    code = fields.String(required=True, allow_none=True)


class OpenAIErrorSchema(Schema):
    """OpenAI's error body."""

    error = fields.Nested(OpenAIErrorDetailSchema, required=True)


def is_openai_path(path: str) -> bool:
    return path == PREFIX or path.startswith(PREFIX + "/")


def body(status: int, message: str, *, param: str | None = None,
         code: str | None = None, error_type: str | None = None) -> dict[str, Any]:
    kind, default_code = _KINDS.get(status, ("server_error", None))
    return {"error": {"message": message, "type": error_type or kind, "param": param,
                      "code": code if code is not None else default_code}}


def _first_field(errors: Any, path: tuple[str, ...] = ()) -> tuple[str | None, str | None]:
    """The first field named in webargs/marshmallow `errors`, and its first message."""
    if isinstance(errors, dict):
        for key, value in errors.items():
            step = path if (not path and key in _LOCATIONS) else (*path, str(key))
            found = _first_field(value, step)
            if found[0] is not None or found[1] is not None:
                return found
        return None, None
    if isinstance(errors, list):
        messages = [m for m in errors if isinstance(m, str)]
        if messages:
            return (".".join(path) or None), messages[0]
        for item in errors:
            found = _first_field(item, path)
            if found != (None, None):
                return found
        return None, None
    if isinstance(errors, str):
        return (".".join(path) or None), errors
    return None, None


def openai_param(native: str | None) -> str | None:
    """The OpenAI request's name for a native field path."""
    if native is None:
        return None
    for name, mapped in PARAM_NAMES.items():
        if native == name or native.startswith(name + "."):
            return mapped + native[len(name):]
    return native


def _phrase(status: int) -> str:
    try:
        return HTTPStatus(status).phrase
    except ValueError:
        return f"HTTP {status}"


def translate(native: dict[str, Any], status: int) -> tuple[dict[str, Any], int]:
    """A native error body (`{code, status, message, errors?}`) as OpenAI's, with the
    status OpenAI's API would answer."""
    new_status = STATUS_REMAP.get(status, status)
    message = str(native.get("message") or _phrase(status))
    param, detail = _first_field(native.get("errors"))
    param = openai_param(param)
    if detail and (message.startswith("Invalid request") or "see `errors`" in message):
        message = f"Invalid value for {param!r}: {detail}" if param else detail
    code = None
    error_type = None
    if native.get("reason") == "storage_quota_exceeded":
        new_status, code, error_type = 429, "storage_quota_exceeded", "insufficient_quota"
    return body(new_status, message, param=param, code=code, error_type=error_type), new_status


def rewrite(response: flask.Response) -> flask.Response:
    """after_request: a native error body under `/v1` becomes OpenAI's."""
    if response.status_code < 400 or not is_openai_path(flask.request.path):
        return response
    native = response.get_json(silent=True) if response.is_json else None
    if isinstance(native, dict) and isinstance(native.get("error"), dict):
        return response  # already OpenAI's
    if not isinstance(native, dict):
        native = {}
    payload, status = translate(native, response.status_code)
    response.set_data(flask.json.dumps(payload))
    response.mimetype = "application/json"
    response.status_code = status
    return response


def register(app: flask.Flask) -> None:
    app.after_request(rewrite)

    @app.errorhandler(TranslationError)
    def _translation_error(error: TranslationError):  # noqa: ANN202 - Flask handler
        return flask.jsonify(body(400, str(error), param=error.param, code=error.code)), 400
