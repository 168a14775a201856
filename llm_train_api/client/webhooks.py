"""The webhook methods of :class:`~llm_train_api.client.Client`: register endpoints, list
and delete them, and read their deliveries. See docs/webhooks.md for verifying what they
receive (any Standard Webhooks library, e.g. ``standardwebhooks``)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from llm_train_api.client.downloads import seg
from llm_train_api.client.models import Page, parse


@dataclass
class Webhook:
    """An endpoint. `secret` is only set on the object :meth:`create_webhook` returns:
    the service shows it once."""

    id: str
    url: str = ""
    events: list[str] = field(default_factory=list)
    description: str | None = None
    owner: str | None = None
    scope: str = "own"  # own: the owner's jobs; all: every job (an admin's)
    created_at: datetime | None = None
    secret: str | None = field(default=None, repr=False)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class WebhookDelivery:
    """One event for one endpoint: what was sent, when, the answer, the next retry."""

    id: str
    webhook_id: str = ""
    event_type: str = ""
    job_id: str = ""
    state: str = ""  # pending | delivered | failed
    attempts: int = 0
    occurred_at: datetime | None = None
    next_attempt_at: datetime | None = None
    last_attempt_at: datetime | None = None
    last_status_code: int | None = None
    last_error: str | None = None
    delivered_at: datetime | None = None
    payload: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


class Webhooks:
    """Mixed into Client, which provides `_json`, `_list`, `_page` and `_delete`."""

    _json: Callable[..., Any]
    _list: Callable[..., Any]
    _page: Callable[..., Any]
    _delete: Callable[..., None]

    def create_webhook(self, url: str, events: Iterable[str] | None = None, *,
                       description: str | None = None) -> Webhook:
        """Register `url` for `events` (default: every native `job.*` event). The result's
        `secret` verifies the signatures; it cannot be read again. Not retried: a retry
        after a lost answer would register a second endpoint."""
        body: dict[str, Any] = {"url": url, "description": description}
        if events is not None:
            body["events"] = list(events)
        return parse(Webhook, self._json("POST", "/webhooks", retry=False, json=body))

    def list_webhooks(self) -> list[Webhook]:
        return self._list(Webhook, "/webhooks")

    def get_webhook(self, webhook_id: str) -> Webhook:
        return parse(Webhook, self._json("GET", f"/webhooks/{seg(webhook_id)}", retry=True))

    def delete_webhook(self, webhook_id: str) -> None:
        self._delete(f"/webhooks/{seg(webhook_id)}")

    def webhook_deliveries_page(self, webhook_id: str, *, limit: int | None = None,
                                cursor: str | None = None) -> Page[WebhookDelivery]:
        params = {k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v is not None}
        return self._page(WebhookDelivery, f"/webhooks/{seg(webhook_id)}/deliveries", params)

    def webhook_deliveries(self, webhook_id: str, *,
                           page_size: int | None = None) -> Iterator[WebhookDelivery]:
        """Every delivery of the endpoint, newest first, across pages."""
        cursor: str | None = None
        while True:
            page = self.webhook_deliveries_page(webhook_id, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor
