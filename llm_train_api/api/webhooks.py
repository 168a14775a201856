"""The webhook resource: register an endpoint (its signing secret is in that answer only),
list, get and delete endpoints, and read each one's deliveries. HTTP only: who hears what
and which URLs are allowed is in services/webhooks/."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any
from urllib.parse import quote, urlencode

from flask import Response, request
from flask.views import MethodView
from marshmallow import RAISE, fields, validate

from llm_train_api.api.auth import Role, current_principal, require_role
from llm_train_api.api.base import ApiBlueprint, get_runtime, get_settings, public_url
from llm_train_api.api.schema_base import Schema
from llm_train_api.api.schemas import NonBlank, PageQuerySchema, Text, UTCDateTime
from llm_train_api.services.webhooks import registration
from llm_train_api.services.webhooks.sender import payload
from llm_train_api.services.webhooks.ssrf import MAX_URL_LENGTH
from llm_train_api.store.outbox import EVENT_TYPES
from llm_train_api.store.pagination import decode_seq_cursor, encode_seq_cursor
from llm_train_api.store.webhooks import WebhookRepository

blp = ApiBlueprint(
    "webhooks",
    __name__,
    url_prefix="/webhooks",
    description="Signed webhooks (Standard Webhooks): endpoints told when jobs succeed, "
    "fail, are cancelled or paused. See docs/webhooks.md.",
)
DESCRIPTION_MAX_LENGTH = 500


def _webhooks() -> WebhookRepository:
    return get_runtime().webhooks


class WebhookCreateSchema(Schema):
    url = Text(required=True, validate=[validate.Length(min=1, max=MAX_URL_LENGTH),
                                        validate.Regexp(r"^https?://")],
               metadata={"description": "Where to POST events: http(s), a public host "
                         "(private addresses only with LLM_TRAIN_API_WEBHOOK_ALLOW_PRIVATE)."})
    events = fields.List(fields.String(validate=validate.OneOf(EVENT_TYPES)),
                         validate=validate.Length(min=1, max=len(EVENT_TYPES)),
                         metadata={"description": "Event types to receive. Default: every "
                                   "native one (`job.*`)."})
    description = Text(allow_none=True, load_default=None,
                       validate=[validate.Length(max=DESCRIPTION_MAX_LENGTH), NonBlank()])


class WebhookSchema(Schema):
    id = fields.String(required=True)
    url = fields.String(required=True)
    events = fields.List(fields.String(), required=True)
    description = fields.String(allow_none=True)
    owner = fields.String(allow_none=True, metadata={
        "description": "Who registered it (null when auth is disabled)."})
    scope = fields.Function(lambda w: "all" if w.all_jobs else "own", metadata={
        "description": "`own`: events of the owner's jobs; `all`: of every job (an "
        "admin's endpoint)."})
    created_at = UTCDateTime(required=True)


class WebhookCreatedSchema(WebhookSchema):
    secret = fields.String(required=True, metadata={
        "description": "The signing secret (`whsec_...`). Shown only in this answer: store "
        "it now, it cannot be read again."})


class DeliverySchema(Schema):
    id = fields.String(required=True, metadata={
        "description": "The message id, sent as `webhook-id` (the same on every retry)."})
    webhook_id = fields.String(required=True)
    event_type = fields.String(required=True)
    job_id = fields.String(required=True)
    state = fields.String(required=True, metadata={
        "description": "`pending` (to be sent or retried), `delivered` (a 2xx answer), "
        "or `failed` (given up after LLM_TRAIN_API_WEBHOOK_MAX_AGE_S)."})
    attempts = fields.Integer(required=True)
    occurred_at = UTCDateTime(required=True)
    next_attempt_at = UTCDateTime(allow_none=True, metadata={
        "description": "While pending: when the next attempt is due."})
    last_attempt_at = UTCDateTime(allow_none=True)
    last_status_code = fields.Integer(allow_none=True, metadata={
        "description": "The HTTP status of the last answer (null: no answer)."})
    last_error = fields.String(allow_none=True, metadata={
        "description": "Why the last attempt failed: the status and the start of the body, "
        "a transport error, or a refused address."})
    delivered_at = UTCDateTime(allow_none=True)
    payload = fields.Function(payload, metadata={"description": "The JSON body sent."})


def _visible_owner() -> str | None:
    return registration.visible_owner(current_principal())


@blp.route("")
class Webhooks(MethodView):
    @blp.response(200, WebhookSchema(many=True), description="The caller's endpoints (an "
                  "admin's: everyone's), oldest first.")
    def get(self):
        """List webhook endpoints"""
        require_role(Role.ADMIN, Role.USER)
        return _webhooks().list(owner=_visible_owner())

    @blp.arguments(WebhookCreateSchema())
    @blp.response(201, WebhookCreatedSchema, description="Registered. The answer carries "
                  "the signing secret, shown this once.",
                  headers={"Location": {"description": "URL of the new endpoint.",
                                        "schema": {"type": "string"}}})
    @blp.error(400, "Malformed JSON.")
    @blp.error(413, "Body larger than LLM_TRAIN_API_MAX_JSON_BYTES.")
    @blp.error(415, "Content-Type is not application/json.")
    @blp.error(422, "Invalid fields under `errors.json.<field>`: an unknown event type, a "
               "URL that is not http(s), carries credentials, does not resolve, or resolves "
               "to a loopback, private, link-local or metadata address (see "
               "LLM_TRAIN_API_WEBHOOK_ALLOW_PRIVATE).")
    @blp.error(429, "The caller already has the most endpoints one user may register.")
    def post(self, body: dict[str, Any]):
        """Register a webhook endpoint

        Users hear about their own jobs, admins about everyone's. Deliveries are signed
        per the Standard Webhooks spec with the secret in this answer.
        """
        principal = require_role(Role.ADMIN, Role.USER)
        webhook, secret = registration.register(
            _webhooks(), principal, url=body["url"], events=body.get("events"),
            description=body["description"],
            allow_private=get_settings().WEBHOOK_ALLOW_PRIVATE)
        created = SimpleNamespace(**vars(webhook), secret=secret)
        return created, 201, {"Location": public_url(f"/webhooks/{quote(webhook.id)}")}


@blp.route("/<webhook_id>")
class WebhookResource(MethodView):
    @blp.response(200, WebhookSchema)
    @blp.error(404, "No such webhook (or another user's).")
    def get(self, webhook_id: str):
        """Get one webhook endpoint (never its secret)"""
        require_role(Role.ADMIN, Role.USER)
        return _webhooks().get(webhook_id, owner=_visible_owner())

    @blp.response(204, description="Deleted, with its deliveries: nothing more is sent.")
    @blp.error(404, "No such webhook (or another user's).")
    def delete(self, webhook_id: str):
        """Delete a webhook endpoint"""
        require_role(Role.ADMIN, Role.USER)
        _webhooks().delete(webhook_id, owner=_visible_owner())
        return Response(status=204)


@blp.route("/<webhook_id>/deliveries")
class WebhookDeliveries(MethodView):
    @blp.arguments(PageQuerySchema(), location="query", unknown=RAISE)
    @blp.response(200, DeliverySchema(many=True), description="Deliveries, newest first: "
                  "what was sent, when, the answer, the next retry. More pages through the "
                  "`Link: rel=\"next\"` header.",
                  headers={"Link": {"description": 'The next page, `<url>; rel="next"`.',
                                    "schema": {"type": "string"}}})
    @blp.error(400, "Invalid cursor.")
    @blp.error(404, "No such webhook (or another user's).")
    def get(self, args: dict[str, Any], webhook_id: str):
        """A webhook endpoint's deliveries"""
        require_role(Role.ADMIN, Role.USER)
        before = decode_seq_cursor(args["cursor"]) if "cursor" in args else None
        items, more = _webhooks().deliveries(webhook_id, owner=_visible_owner(),
                                             limit=args["limit"], before_seq=before)
        headers = {}
        if more:
            params = request.args.to_dict(flat=False)
            params["cursor"] = [encode_seq_cursor(items[-1].seq)]
            headers["Link"] = (f'<{public_url(quote(request.path))}?'
                               f'{urlencode(params, doseq=True)}>; rel="next"')
        return items, 200, headers
