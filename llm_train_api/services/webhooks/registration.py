"""Registering webhook endpoints: what a registration may ask for, and whose jobs it hears.

A user's endpoint hears about the user's own jobs, an admin's about everyone's (and, with
authentication disabled, every endpoint hears about every job). The URL passes the SSRF
guard at registration (and again at every delivery, see sender.py). The signing secret is
made here and returned once, in the registration's answer.
"""

from __future__ import annotations

from collections.abc import Sequence

from llm_train_api.domain import InvalidRequest, Principal, QuotaExceeded, Role
from llm_train_api.services.webhooks import signing, ssrf
from llm_train_api.store.outbox import EVENT_PREFIXES, EVENT_TYPES, NATIVE_API
from llm_train_api.store.webhooks import Webhook, WebhookRepository

# Endpoints one principal may register: each one costs a delivery per event.
MAX_WEBHOOKS_PER_OWNER = 50
# What a registration without `events` hears: every native event.
DEFAULT_EVENTS = tuple(e for e in EVENT_TYPES if e.startswith(EVENT_PREFIXES[NATIVE_API]))


class TooManyWebhooks(QuotaExceeded):
    """A principal already has MAX_WEBHOOKS_PER_OWNER endpoints: 429."""

    def __init__(self) -> None:
        Exception.__init__(self, f"Limit reached: at most {MAX_WEBHOOKS_PER_OWNER} webhooks "
                           "per user. Delete one, then retry.")
        self.setting = "MAX_WEBHOOKS_PER_OWNER"
        self.cap = MAX_WEBHOOKS_PER_OWNER


def _invalid(field: str, message: str) -> InvalidRequest:
    return InvalidRequest(message, {"json": {field: [message]}})


def check_events(events: Sequence[str] | None) -> tuple[str, ...]:
    """The event types asked for, deduplicated; every one must be known."""
    if events is None:
        return DEFAULT_EVENTS
    wanted = tuple(dict.fromkeys(events))
    unknown = [e for e in wanted if e not in EVENT_TYPES]
    if unknown or not wanted:
        raise _invalid("events", f"Unknown event types {unknown}; known: "
                       f"{', '.join(EVENT_TYPES)}." if unknown else
                       "Name at least one event type.")
    return wanted


def register(repository: WebhookRepository, principal: Principal, *, url: str,
             events: Sequence[str] | None, description: str | None,
             allow_private: bool) -> tuple[Webhook, str]:
    """Register an endpoint for `principal`; the webhook and its secret (shown once)."""
    wanted = check_events(events)
    try:
        ssrf.check(url, allow_private=allow_private)
    except ssrf.UnsafeURL as exc:
        raise _invalid("url", str(exc)) from None
    owner = principal.owner
    if owner is not None and repository.count(owner) >= MAX_WEBHOOKS_PER_OWNER:
        raise TooManyWebhooks
    secret = signing.new_secret()
    webhook = repository.create(owner=owner, all_jobs=principal.role is Role.ADMIN, url=url,
                                events=wanted, description=description, secret=secret)
    return webhook, secret


def visible_owner(principal: Principal) -> str | None:
    """Whose endpoints a principal sees and deletes: a user their own, an admin all."""
    return None if principal.role is Role.ADMIN else principal.name
