"""Who is calling, and what they may do: bearer tokens, roles, ownership, and the HTTP
rules every endpoint shares (CORS, security headers).

Every request is authenticated before anything else runs, so a view only ever sees a known
principal. Views marked `@public` (health probes, the API docs, the dashboard's static
shell) are the only exceptions. The rules that depend on the object, such as ownership,
live in the views, through the helpers below: another user's job or dataset is a 404,
never a 403, so ids do not leak; a 403 means "yours, but your role may not do that".
"""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable
from typing import Any, TypeVar

import flask
from flask import current_app, g, request
from flask_smorest import Api, abort

from llm_train_api.api.base import get_runtime, get_settings
from llm_train_api.domain import ANONYMOUS, Job, JobNotFound, Principal, Role
from llm_train_api.runtime import Runtime
from llm_train_api.store.tokens import TokenRepository

F = TypeVar("F", bound=Callable[..., Any])
log = logging.getLogger("llm_train_api.auth")
_CORS_KEY = "llm_train_api.cors_origins"
_PUBLIC_KEY = "llm_train_api.public_endpoints"
_AUTH_KEY = "llm_train_api.auth_enabled"
_PUBLIC_ATTR = "_llm_train_api_public"
_REALM = 'Bearer realm="llm_train_api"'
# Flask's and flask-smorest's own endpoints that must stay open.
_PUBLIC_ENDPOINTS = frozenset({"static", "api-docs.openapi_json", "api-docs.openapi_swagger_ui",
                               "swagger_asset"})

__all__ = ["ANONYMOUS", "Principal", "Role", "authorize_scrape", "current_principal",
           "ensure_visible", "init_app", "owner_scope", "public", "require_role"]


def public(view: F) -> F:
    """Mark a view function (or MethodView class) as reachable without a token."""
    setattr(view, _PUBLIC_ATTR, True)
    return view


def _is_public(app: flask.Flask, endpoint: str | None) -> bool:
    """Whether `endpoint` is open without a token; asked on every request, so each
    endpoint's answer is kept (views are marked when they are defined, never later)."""
    known: dict[str | None, bool] = app.extensions[_PUBLIC_KEY]
    try:
        return known[endpoint]
    except KeyError:
        pass
    view = app.view_functions.get(endpoint or "")
    answer = endpoint in _PUBLIC_ENDPOINTS or bool(view is not None and (
        getattr(view, _PUBLIC_ATTR, False)
        or getattr(getattr(view, "view_class", None), _PUBLIC_ATTR, False)))
    # Only endpoints the app has: the dictionary cannot grow past them.
    if view is not None or endpoint in _PUBLIC_ENDPOINTS:
        known[endpoint] = answer
    return answer


def auth_enabled() -> bool:
    return bool(current_app.extensions[_AUTH_KEY])


def token_store() -> TokenRepository:
    return get_runtime().tokens


def current_principal() -> Principal:
    """The caller. Public views see the anonymous principal."""
    return g.get("principal") or ANONYMOUS


def _bearer_token() -> str | None:
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


def _unauthorized(message: str, *, invalid: bool) -> None:
    # The token itself is never logged: the client's address and the path are enough to
    # follow up, and a log must not become a place to harvest credentials from.
    log.warning("authentication failed: %s %s from %s: %s", request.method, request.path,
                request.remote_addr, "unknown or revoked token" if invalid else "no token")
    challenge = f'{_REALM}, error="invalid_token"' if invalid else _REALM
    abort(401, message=message, headers={"WWW-Authenticate": challenge})


def authenticate_request() -> None:
    """before_request: set `g.principal`, or answer 401."""
    req = request._get_current_object()  # one proxy lookup, not one per attribute
    if req.method == "OPTIONS" or req.routing_exception is not None:
        return  # CORS preflights carry no credentials; unknown URLs are 404/405 for all
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    if _is_public(app, req.endpoint):
        return
    if not app.extensions[_AUTH_KEY]:
        g.principal = ANONYMOUS
        return
    token = _bearer_token()
    if token is None:
        _unauthorized("Authentication required: send `Authorization: Bearer <token>`.",
                      invalid=False)
    principal = token_store().authenticate(token)
    if principal is None:
        _unauthorized("Invalid or revoked token.", invalid=True)
    g.principal = principal


def require_role(*roles: Role) -> Principal:
    """The caller, if its role is one of `roles`; else 403."""
    principal = current_principal()
    if principal.role not in roles:
        allowed = " or ".join(r.value for r in roles)
        abort(403, message=f"Forbidden: this needs the {allowed} role; your token's role is "
              f"{principal.role.value!r}.")
    return principal


def owner_scope() -> str | None:
    """The owner a caller's job queries are limited to: a user's own name, else None."""
    principal = current_principal()
    return principal.name if principal.role is Role.USER else None


def ensure_visible(job: Job) -> Job:
    """Another user's job is a 404: the same answer as for a job that does not exist."""
    scope = owner_scope()
    if scope is not None and job.owner != scope:
        raise JobNotFound(job.id)
    return job


def authorize_scrape() -> None:
    """Guard /metrics: an admin token, or LLM_TRAIN_API_METRICS_TOKEN; else 401/403."""
    if not auth_enabled():
        return
    token = _bearer_token()
    if token is None:
        _unauthorized("Authentication required: send the metrics token or an admin token.",
                      invalid=False)
    configured = get_settings().METRICS_TOKEN
    if configured and hmac.compare_digest(token.encode(), configured.encode()):
        return
    principal = token_store().authenticate(token)
    if principal is None:
        _unauthorized("Invalid or revoked token.", invalid=True)
    g.principal = principal
    require_role(Role.ADMIN)


# ----------------------------------------------------------------------------- headers

# The Content-Security-Policies, one per kind of page, all defined here.
# Any HTML the API itself serves (error pages, redirects).
HTML_CSP = ("default-src 'self'; img-src 'self' data:; object-src 'none'; "
            "base-uri 'none'; form-action 'self'; frame-ancestors 'none'")
# Swagger UI's page starts itself with an inline script (flask-smorest's template).
DOCS_CSP = ("default-src 'self'; script-src 'self' 'unsafe-inline'; "
            "style-src 'self' 'unsafe-inline'; img-src 'self' data:; object-src 'none'; "
            "base-uri 'none'; frame-ancestors 'none'")
# The dashboard (ui/): no inline script or style, nothing from another origin, no framing.
UI_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
          "connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
          "frame-ancestors 'none'")
_CORS_EXPOSE = "ETag, Link, Location, Retry-After, WWW-Authenticate"
_CORS_ALLOW_HEADERS = "Authorization, Content-Type, If-Match, If-None-Match"


def security_headers(response: flask.Response) -> flask.Response:
    headers = response.headers
    # A scan of the few headers a response has: werkzeug's `setdefault` raises and catches
    # a KeyError to find a header missing, which is what this one nearly always is.
    if not any(name.lower() == "x-content-type-options" for name, _ in headers):
        headers.add("X-Content-Type-Options", "nosniff")
    if response.mimetype == "text/html":
        docs = request.endpoint == "api-docs.openapi_swagger_ui"
        response.headers.setdefault("Content-Security-Policy", DOCS_CSP if docs else HTML_CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
    return response


def _cors_origins(raw: str) -> frozenset[str]:
    return frozenset(o.strip().rstrip("/") for o in raw.split(",") if o.strip())


def cors_headers(response: flask.Response) -> flask.Response:
    """after_request, registered only when LLM_TRAIN_API_CORS_ORIGINS is set: CORS headers
    for a page whose origin it lists (or for any, with `*`)."""
    origins = current_app.extensions[_CORS_KEY]
    origin = request.headers.get("Origin")
    if not origin or (origin not in origins and "*" not in origins):
        return response
    response.headers["Access-Control-Allow-Origin"] = origin
    response.headers.add("Vary", "Origin")
    response.headers["Access-Control-Expose-Headers"] = _CORS_EXPOSE
    if request.method == "OPTIONS" and "Access-Control-Request-Method" in request.headers:
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, PUT, PATCH, DELETE"
        response.headers["Access-Control-Allow-Headers"] = _CORS_ALLOW_HEADERS
        response.headers["Access-Control-Max-Age"] = "600"
    return response


# ----------------------------------------------------------------------------- wiring

BEARER_SCHEME = {"type": "http", "scheme": "bearer",
                 "description": "An API token: `Authorization: Bearer ltk_...`. Create one "
                 "with `llm-train-api tokens create`."}


def init_app(app: flask.Flask, runtime: Runtime) -> None:
    settings = runtime.settings
    app.extensions[_CORS_KEY] = _cors_origins(settings.CORS_ORIGINS)
    app.extensions[_PUBLIC_KEY] = {}
    app.extensions[_AUTH_KEY] = settings.AUTH != "disabled"
    app.before_request(authenticate_request)
    if app.extensions[_CORS_KEY]:  # off (the default): no hook to run on every response
        app.after_request(cors_headers)
    app.after_request(security_headers)
    if settings.AUTH == "disabled":
        log.warning("LLM_TRAIN_API_AUTH=disabled: anyone who can reach this port is an "
                    "admin. Use it only on loopback, for local experiments.")
    elif settings.BOOTSTRAP_TOKEN:
        runtime.tokens.bootstrap(runtime.instance_path)


def document(api: Api, app: flask.Flask) -> None:
    """Put the bearer scheme in the OpenAPI document (Swagger UI's Authorize button), mark
    the public operations, and document 401/403 (and 429 for quotas) on the others."""
    api.spec.components.security_scheme("bearerAuth", BEARER_SCHEME)
    public_paths = set()
    for rule in app.url_map.iter_rules():
        view = app.view_functions.get(rule.endpoint)
        if rule.endpoint in _PUBLIC_ENDPOINTS or getattr(view, _PUBLIC_ATTR, False) or getattr(
                getattr(view, "view_class", None), _PUBLIC_ATTR, False):
            public_paths.add(_openapi_path(rule.rule))
    error = {"$ref": "#/components/schemas/Error"}
    # apispec keeps the paths it was given in `_paths`; there is no public way to amend
    # operations after flask-smorest registered them.
    for path, operations in api.spec._paths.items():
        for method, operation in operations.items():
            if method not in ("get", "post", "put", "patch", "delete"):
                continue
            if path in public_paths:
                operation["security"] = []
                continue
            responses = operation.setdefault("responses", {})
            responses.setdefault("401", {"description": "No token, or an invalid or revoked "
                                         "one.", "content": {"application/json":
                                                             {"schema": error}}})
            responses.setdefault("403", {"description": "The token's role may not do this.",
                                         "content": {"application/json": {"schema": error}}})
            if (path, method) in (("/jobs", "post"), ("/datasets/{name}", "put")):
                responses.setdefault("429", {"description": "A per-user limit "
                                             "(LLM_TRAIN_API_MAX_*_PER_USER) is reached; the "
                                             "message names it.", "content": {
                                                 "application/json": {"schema": error}}})


def _openapi_path(rule: str) -> str:
    out = []
    for part in rule.split("/"):
        if part.startswith("<") and part.endswith(">"):
            part = "{" + part[1:-1].split(":")[-1] + "}"
        out.append(part)
    return "/".join(out)
