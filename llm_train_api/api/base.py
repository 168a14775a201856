"""What every resource blueprint shares: strict JSON parsing, access to the runtime, and the
URLs of Location and Link headers."""

from __future__ import annotations

import functools
import inspect
from collections.abc import Callable
from typing import Any

from flask import Response, current_app, request, url_for
from flask_smorest import Blueprint
from flask_smorest.error_handler import ErrorSchema
from flask_smorest.utils import (
    resolve_schema_instance,
    set_status_and_headers_in_response,
    unpack_tuple_response,
)

from llm_train_api.api.errors import StrictJSONParser
from llm_train_api.config import Settings
from llm_train_api.runtime import Runtime
from llm_train_api.store.jobs import JobRepository

RUNTIME_KEY = "llm_train_api.runtime"


class ApiBlueprint(Blueprint):
    ARGUMENTS_PARSER = StrictJSONParser()

    def response(self, status_code: Any, schema: Any = None,
                 **kwargs: Any) -> Callable[[Any], Any]:
        """flask-smorest's response, with a wrapper that does less on every request.

        Its own wrapper also keeps each dumped result in the app context for its ETag and
        pagination features, which the service does not use (a job's ETag is its own
        revision), and looks the app up twice. Here the view's result is dumped with the
        same schema and answered as flask-smorest answers it; the documentation is
        flask-smorest's own.
        """
        document = super().response(status_code, schema, **kwargs)
        dump = None if schema is None else resolve_schema_instance(schema).dump

        def decorator(func: Any) -> Any:
            documented = document(func)
            if inspect.iscoroutinefunction(func):
                return documented

            @functools.wraps(func)
            def respond(*args: Any, **kw: Any) -> Any:
                result, status, headers = unpack_tuple_response(func(*args, **kw))
                if isinstance(result, Response):
                    set_status_and_headers_in_response(result, status, headers)
                    return result
                response = current_app.json.response(result if dump is None else dump(result))
                set_status_and_headers_in_response(response, status, headers)
                if status is None:
                    response.status_code = status_code
                return response

            respond._apidoc = documented._apidoc  # type: ignore[attr-defined]
            return respond

        return decorator

    def alt_response(self, *args: Any, **kwargs: Any) -> Callable[[Any], Any]:
        """flask-smorest's alt_response, without its wrapper at call time.

        flask-smorest wraps a view once per documented alternative response, and every
        wrapper looks the app up and asks it whether the view is a coroutine function, on
        every request: eight layers on `POST /jobs`. The documentation is all they add,
        so here it goes on the view function itself.
        """
        document = super().alt_response(*args, **kwargs)

        def decorator(func: Any) -> Any:
            documented = document(func)
            if inspect.iscoroutinefunction(func):
                return documented
            func._apidoc = documented._apidoc
            return func

        return decorator

    def error(self, status: int, description: str):
        """Document an error response in the OpenAPI spec, in the shape the handlers emit."""
        return self.alt_response(status, schema=ErrorSchema, description=description)


def get_runtime() -> Runtime:
    """The app's runtime (create_app builds it), for the request being served."""
    return current_app.extensions[RUNTIME_KEY]


def get_settings() -> Settings:
    return get_runtime().settings


def get_jobs() -> JobRepository:
    """The job repository the views read and change jobs through."""
    return get_runtime().jobs


def public_url(path: str) -> str:
    """The URL of `path` (from the app's root, with its query) for a Location or Link header.

    PUBLIC_URL when it is set; the request's own host when TRUSTED_PROXIES is set (ProxyFix
    has replaced it with the forwarded one, which the proxy vouches for); otherwise a
    relative reference, which RFC 7231 allows for Location and RFC 8288 for Link. The Host
    header a client sends is never copied into a URL the service hands out.
    """
    settings = get_settings()
    if settings.PUBLIC_URL:
        return settings.PUBLIC_URL.rstrip("/") + path
    if settings.TRUSTED_PROXIES:
        return request.url_root.rstrip("/") + path
    return request.script_root + path


def public_url_for(endpoint: str, **values: str) -> str:
    """public_url for a view's URL."""
    return public_url(url_for(endpoint, **values)[len(request.script_root):])
