"""schemathesis hooks for tests/system/test_fuzz_api.py (`hooks` in its schemathesis.toml).

One check of the service's own on top of schemathesis's: every error is JSON in the
`{code, status, message, errors?}` shape, with `code` equal to the status; under `/v1`
(the OpenAI-compatible API) in OpenAI's `{"error": {message, type, param, code}}` instead.
"""

from __future__ import annotations

import json
from typing import Any

import schemathesis


@schemathesis.check
def json_error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    status = response.status_code
    if status < 400:
        return None
    media = (response.headers.get("content-type") or [""])[0].split(";")[0].strip()
    if media != "application/json":
        raise AssertionError(f"error {status} is not JSON (Content-Type {media!r})")
    try:
        body = json.loads(response.content)
    except ValueError as exc:
        raise AssertionError(f"error {status} has a body that is not JSON: {exc}") from None
    if not isinstance(body, dict):
        raise AssertionError(f"error {status} body is not an object: {body!r}"[:300])
    path = getattr(getattr(case, "operation", None), "path", "") or ""
    if path == "/v1" or path.startswith("/v1/"):
        return _openai_error_shape(status, body)
    problems = []
    if body.get("code") != status:
        problems.append(f"code={body.get('code')!r}")
    if not isinstance(body.get("status"), str) or not body.get("status"):
        problems.append(f"status={body.get('status')!r}")
    if not isinstance(body.get("message"), str) or not body.get("message"):
        problems.append(f"message={body.get('message')!r}")
    if "errors" in body and not isinstance(body["errors"], dict | list):
        problems.append(f"errors={body['errors']!r}")
    if problems:
        raise AssertionError(f"error {status} body has a bad shape ({', '.join(problems)}): "
                             f"{json.dumps(body)[:300]}")
    return None


def _openai_error_shape(status: int, body: dict[str, Any]) -> None:
    error = body.get("error")
    if (set(body) != {"error"} or not isinstance(error, dict)
            or set(error) != {"message", "type", "param", "code"}
            or not isinstance(error["message"], str) or not error["message"]
            or not isinstance(error["type"], str) or not error["type"]
            or not isinstance(error["param"], str | None)
            or not isinstance(error["code"], str | None)):
        raise AssertionError(f"error {status} under /v1 is not in OpenAI's shape: "
                             f"{json.dumps(body)[:300]}")
