"""The application factory: `create_app(test_config=None)`, as in the Flask tutorial."""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import swagger_ui_bundle
from flask import Flask, send_from_directory
from werkzeug.middleware.proxy_fix import ProxyFix

from llm_train_api import ui
from llm_train_api.api import (
    artifacts,
    auth,
    checkpoints,
    datasets,
    health,
    jobs,
    models,
    openapi,
    webhooks,
    whoami,
)
from llm_train_api.api import errors as http_errors
from llm_train_api.api import metrics as observability
from llm_train_api.api import openai as openai_api
from llm_train_api.api.base import RUNTIME_KEY
from llm_train_api.api.json_provider import OrjsonProvider
from llm_train_api.api.lingering import DrainUnreadBody
from llm_train_api.config import Settings
from llm_train_api.runtime import Runtime

API_TITLE = "llm_train_api"
API_VERSION = "1"
_SWAGGER_ASSETS = "docs/static/"


class _App(Flask):
    """Flask, asking once per function whether it is a coroutine function.

    Flask asks it again on every call of every request hook and view (a dozen times per
    request here), a measurable share of a short request. The answer for a function never
    changes; bound methods are looked up by their function.
    """

    _coroutine: ClassVar[dict[Any, bool]] = {}

    def ensure_sync(self, func: Callable[..., Any]) -> Callable[..., Any]:
        key = getattr(func, "__func__", func)
        try:
            is_coroutine = self._coroutine[key]
        except KeyError:
            is_coroutine = self._coroutine[key] = inspect.iscoroutinefunction(func)
        except TypeError:  # an unhashable callable: ask Flask
            return super().ensure_sync(func)
        return self.async_to_sync(func) if is_coroutine else func


def create_app(test_config: Mapping[str, Any] | None = None) -> Flask:
    """Build the app. `test_config` takes the same names as LLM_TRAIN_API_* (without it)."""
    settings = Settings.load(overrides=test_config)
    runtime = Runtime.build(settings)
    app = _App(__name__, instance_path=str(runtime.instance_path),
                instance_relative_config=True)
    app.json = OrjsonProvider(app)
    # Flask's and flask-smorest's own keys only: the service reads its settings from
    # `runtime.settings` (api.base.get_settings), never through app.config.
    app.config.from_mapping(
        MAX_CONTENT_LENGTH=settings.MAX_JSON_BYTES,
        API_TITLE=API_TITLE,
        API_VERSION=API_VERSION,
        OPENAPI_VERSION="3.0.3",
        OPENAPI_URL_PREFIX="/",
        OPENAPI_JSON_PATH="openapi.json",
        OPENAPI_SWAGGER_UI_PATH="docs",
        # Relative to /docs, so the UI works offline and behind a path prefix.
        OPENAPI_SWAGGER_UI_URL=_SWAGGER_ASSETS,
        API_SPEC_OPTIONS={"info": {"description": _API_DESCRIPTION},
                          "security": [{"bearerAuth": []}]},
    )
    logging.getLogger("llm_train_api").setLevel(settings.LOG_LEVEL.upper())
    app.extensions[RUNTIME_KEY] = runtime

    # Innermost wrapper: it must see gunicorn's own wsgi.input once the response is sent.
    app.wsgi_app = DrainUnreadBody(app.wsgi_app)
    if settings.TRUSTED_PROXIES:
        n = settings.TRUSTED_PROXIES
        app.wsgi_app = ProxyFix(app.wsgi_app, x_for=n, x_proto=n, x_host=n, x_port=n,
                                x_prefix=n)

    api = http_errors.JsonErrorsApi(app)
    http_errors.register(app)
    auth.init_app(app, runtime)  # first: nothing else runs for an unauthenticated caller
    app.before_request(http_errors.require_json_body)
    for blueprint in (jobs.blp, artifacts.blp, checkpoints.blp, models.blp, datasets.blp,
                      health.blp, whoami.blp, webhooks.blp):
        api.register_blueprint(blueprint)
    openai_api.init_app(app, api)
    _serve_swagger_assets(app)
    observability.init_app(app, runtime)
    ui.init_app(app)
    auth.document(api, app)
    openapi.amend(api)
    openai_api.document(api)
    return app


def _serve_swagger_assets(app: Flask) -> None:
    assets = swagger_ui_bundle.swagger_ui_path

    @app.get(f"/{_SWAGGER_ASSETS}<path:filename>")
    def swagger_asset(filename: str):
        return send_from_directory(assets, filename, max_age=86_400)


_API_DESCRIPTION = """\
Queue, follow and manage LLM training jobs.

Every error is JSON: `{code, status, message, errors?}`. Timestamps are ISO 8601 in UTC
with an explicit offset. `GET /jobs` pages with an RFC 8288 `Link: rel="next"` header.
"""
