"""Flask's JSON provider on orjson: encoding a page of 100 jobs is a visible share of a
list request with the standard library encoder, and several times cheaper with orjson.

Request bodies are still parsed by the standard library (see http_errors.StrictJSONParser),
which reports NaN and Infinity by name.
"""

from __future__ import annotations

import dataclasses
import decimal
import uuid
from typing import Any

import orjson
from flask import Response
from flask.json.provider import JSONProvider

_OPTIONS = orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, decimal.Decimal | uuid.UUID):
        return str(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if hasattr(value, "__html__"):
        return str(value.__html__())
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


class OrjsonProvider(JSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return orjson.dumps(obj, default=_default, option=_OPTIONS).decode()

    def loads(self, s: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(s)

    def response(self, *args: Any, **kwargs: Any) -> Response:
        obj = self._prepare_response_obj(args, kwargs)
        body = orjson.dumps(obj, default=_default, option=_OPTIONS)
        return self._app.response_class(body, mimetype="application/json")


__all__ = ["OrjsonProvider"]
