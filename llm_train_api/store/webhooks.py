"""Webhook endpoints and their deliveries in the database: register, list, delete; and the
senders' side of the outbox: claim due deliveries, record each answer.

A claim is a lease, as for jobs: it moves the delivery's `next_attempt_us` to the end of
the claim and names the claimer, so a sender that dies mid-delivery leaves the delivery
due again when its claim ends (delivery is at least once, never lost). Claims are one
conditional UPDATE: `FOR UPDATE SKIP LOCKED` on PostgreSQL lets several senders take
different deliveries at once; on SQLite the write lock serialises them and the repeated
`state`/`next_attempt_us` guard makes the UPDATE a compare-and-set. An answer is recorded
only while its claim still holds.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, bindparam, delete, func, select, update

from llm_train_api.domain import DomainError
from llm_train_api.store.database import Database
from llm_train_api.store.outbox import PENDING
from llm_train_api.store.rows import from_us, now_us
from llm_train_api.store.tables import webhook_deliveries, webhook_events, webhooks

WEBHOOK_ID_PREFIX = "wh_"
MESSAGE_ID_PREFIX = "msg_"


class WebhookNotFound(DomainError):
    """No such webhook, or another user's: 404 either way, so ids do not leak."""

    def __init__(self, webhook_id: str) -> None:
        super().__init__(f"Webhook {webhook_id!r} not found.")


@dataclass(frozen=True)
class Webhook:
    id: str
    owner: str | None
    all_jobs: bool
    url: str
    events: tuple[str, ...]
    description: str | None
    created_at: datetime


@dataclass(frozen=True)
class Delivery:
    """One event for one endpoint: what is (or was) sent, and how it went."""

    seq: int
    webhook_id: str
    event_type: str
    job_id: str
    job_created_us: int
    job_owner: str | None
    job_status: str
    previous_status: str | None
    error_message: str | None
    occurred_at: datetime
    state: str
    attempts: int
    next_attempt_at: datetime | None
    last_attempt_at: datetime | None
    last_status_code: int | None
    last_error: str | None
    delivered_at: datetime | None

    @property
    def id(self) -> str:
        """The Standard Webhooks message id: the same on every retry of this delivery."""
        return f"{MESSAGE_ID_PREFIX}{self.seq}"


@dataclass(frozen=True)
class Claimed:
    """A delivery a sender holds, with what it needs to send it."""

    delivery: Delivery
    url: str
    secret: str
    claim: str


def _delivery(row: Any) -> Delivery:
    state = row.state
    return Delivery(
        seq=row.seq, webhook_id=row.webhook_id, event_type=row.event_type,
        job_id=row.job_id, job_created_us=row.job_created_us, job_owner=row.job_owner,
        job_status=row.job_status, previous_status=row.previous_status,
        error_message=row.error_message, occurred_at=from_us(row.occurred_us),
        state=state, attempts=row.attempts,
        # While pending, next_attempt_us is the retry time (or the end of a claim).
        next_attempt_at=from_us(row.next_attempt_us) if state == PENDING else None,
        last_attempt_at=from_us(row.last_attempt_us), last_status_code=row.last_status_code,
        last_error=row.last_error, delivered_at=from_us(row.delivered_us))


def _claim_statement(*, skip_locked: bool) -> Any:
    due = (webhook_deliveries.c.state == PENDING,
           webhook_deliveries.c.next_attempt_us <= bindparam("now"))
    pick = (select(webhook_deliveries.c.seq).where(*due)
            .order_by(webhook_deliveries.c.next_attempt_us, webhook_deliveries.c.seq)
            .limit(bindparam("limit")))
    if skip_locked:
        pick = pick.with_for_update(skip_locked=True)
    return (update(webhook_deliveries)
            .where(webhook_deliveries.c.seq.in_(pick.scalar_subquery()), *due)
            .values(claim=bindparam("claimer"), next_attempt_us=bindparam("claim_end"),
                    attempts=webhook_deliveries.c.attempts + 1)
            .returning(*webhook_deliveries.c))


_CLAIM = {pg: _claim_statement(skip_locked=pg) for pg in (False, True)}
_ANY_DUE = (select(webhook_deliveries.c.seq)
            .where(webhook_deliveries.c.state == PENDING,
                   webhook_deliveries.c.next_attempt_us <= bindparam("now")).limit(1))
_NEXT_DUE = select(func.min(webhook_deliveries.c.next_attempt_us)).where(
    webhook_deliveries.c.state == PENDING)
_RECORD = (update(webhook_deliveries)
           .where(webhook_deliveries.c.seq == bindparam("delivery_seq"),
                  webhook_deliveries.c.claim == bindparam("claimer"),
                  webhook_deliveries.c.state == PENDING)
           .values(state=bindparam("new_state"), next_attempt_us=bindparam("next_us"),
                   claim=None, last_attempt_us=bindparam("at_us"),
                   last_status_code=bindparam("status_code"),
                   last_error=bindparam("error"), delivered_us=bindparam("done_us"))
           .returning(webhook_deliveries.c.seq))


class WebhookRepository:
    """Endpoints and the outbox, written through the jobs database's write path."""

    def __init__(self, database: Database) -> None:
        self.database = database

    # ------------------------------------------------------------------ endpoints
    def create(self, *, owner: str | None, all_jobs: bool, url: str,
               events: Sequence[str], description: str | None, secret: str) -> Webhook:
        webhook_id = WEBHOOK_ID_PREFIX + secrets.token_hex(12)
        ts = now_us()
        wanted = tuple(sorted(set(events)))  # the order every read returns them in

        def work(conn: Connection) -> None:
            conn.execute(webhooks.insert().values(
                id=webhook_id, owner=owner, all_jobs=int(all_jobs), url=url,
                description=description, secret=secret, created_us=ts))
            conn.execute(webhook_events.insert(),
                         [{"webhook_id": webhook_id, "event_type": e} for e in wanted])

        self.database.write(work)
        return Webhook(webhook_id, owner, all_jobs, url, wanted, description, from_us(ts))

    def count(self, owner: str | None) -> int:
        with self.database.reading() as conn:
            return conn.execute(select(func.count()).select_from(webhooks)
                                .where(webhooks.c.owner == owner)).scalar_one()

    def list(self, *, owner: str | None = None) -> list[Webhook]:
        """Every endpoint, or with `owner` only that owner's, oldest first."""
        stmt = select(webhooks).order_by(webhooks.c.seq)
        if owner is not None:
            stmt = stmt.where(webhooks.c.owner == owner)
        with self.database.reading() as conn:
            rows = conn.execute(stmt).all()
            events = self._events_of(conn, [r.id for r in rows])
        return [self._webhook(r, events.get(r.id, ())) for r in rows]

    def get(self, webhook_id: str, *, owner: str | None = None) -> Webhook:
        """One endpoint; with `owner`, another owner's is WebhookNotFound."""
        with self.database.reading() as conn:
            row = conn.execute(select(webhooks).where(webhooks.c.id == webhook_id)).first()
            if row is None or (owner is not None and row.owner != owner):
                raise WebhookNotFound(webhook_id)
            events = self._events_of(conn, [row.id])
        return self._webhook(row, events.get(row.id, ()))

    def delete(self, webhook_id: str, *, owner: str | None = None) -> None:
        """Remove the endpoint, its event types and its deliveries (pending ones are not
        sent: a sender holding one finds its claim gone and records nothing)."""

        def work(conn: Connection) -> None:
            stmt = delete(webhooks).where(webhooks.c.id == webhook_id)
            if owner is not None:
                stmt = stmt.where(webhooks.c.owner == owner)
            if conn.execute(stmt).rowcount != 1:
                raise WebhookNotFound(webhook_id)
            conn.execute(delete(webhook_events)
                         .where(webhook_events.c.webhook_id == webhook_id))
            conn.execute(delete(webhook_deliveries)
                         .where(webhook_deliveries.c.webhook_id == webhook_id))

        self.database.write(work)

    def deliveries(self, webhook_id: str, *, owner: str | None = None, limit: int = 50,
                   before_seq: int | None = None) -> tuple[list[Delivery], bool]:
        """The endpoint's deliveries, newest first, from before `before_seq`; and whether
        more remain."""
        self.get(webhook_id, owner=owner)
        stmt = (select(webhook_deliveries)
                .where(webhook_deliveries.c.webhook_id == webhook_id)
                .order_by(webhook_deliveries.c.seq.desc()).limit(limit + 1))
        if before_seq is not None:
            stmt = stmt.where(webhook_deliveries.c.seq < before_seq)
        with self.database.reading() as conn:
            rows = conn.execute(stmt).all()
        return [_delivery(r) for r in rows[:limit]], len(rows) > limit

    @staticmethod
    def _events_of(conn: Connection, ids: list[str]) -> dict[str, tuple[str, ...]]:
        found: dict[str, list[str]] = {}
        if ids:
            rows = conn.execute(select(webhook_events)
                                .where(webhook_events.c.webhook_id.in_(ids))
                                .order_by(webhook_events.c.event_type))
            for r in rows:
                found.setdefault(r.webhook_id, []).append(r.event_type)
        return {k: tuple(v) for k, v in found.items()}

    @staticmethod
    def _webhook(row: Any, events: tuple[str, ...]) -> Webhook:
        return Webhook(row.id, row.owner, bool(row.all_jobs), row.url, events,
                       row.description, from_us(row.created_us))

    # ------------------------------------------------------------------ senders
    def any_due(self, now: int | None = None) -> bool:
        """Whether a delivery is due: a read, so idle senders never take the write lock."""
        with self.database.reading() as conn:
            return conn.execute(_ANY_DUE, {"now": now or now_us()}).first() is not None

    def next_due_us(self) -> int | None:
        """When the earliest pending delivery falls due (None: nothing is pending)."""
        with self.database.reading() as conn:
            return conn.execute(_NEXT_DUE).scalar()

    def claim_due(self, claimer: str, claim_s: float, limit: int) -> list[Claimed]:
        """Take up to `limit` due deliveries for `claim_s` seconds."""
        ts = now_us()
        params = {"now": ts, "limit": limit, "claimer": claimer,
                  "claim_end": ts + int(claim_s * 1e6)}
        stmt = _CLAIM[self.database.is_postgresql]

        def work(conn: Connection) -> list[tuple[Any, Any]]:
            rows = conn.execute(stmt, params).all()
            if not rows:
                return []
            hooks = {h.id: h for h in conn.execute(
                select(webhooks.c.id, webhooks.c.url, webhooks.c.secret)
                .where(webhooks.c.id.in_(sorted({r.webhook_id for r in rows}))))}
            return [(r, hooks.get(r.webhook_id)) for r in rows]

        return [Claimed(_delivery(row), hook.url, hook.secret, claimer)
                for row, hook in self.database.write(work) if hook is not None]

    def record(self, claimed: Claimed, *, state: str, status_code: int | None,
               error: str | None, next_attempt_us: int | None) -> bool:
        """Write the outcome of one attempt: `delivered`, `failed` (given up), or still
        `pending` with its retry time. False when the claim no longer held (the delivery
        was deleted, or another sender took it after the claim ended)."""
        ts = now_us()
        params = {"delivery_seq": claimed.delivery.seq, "claimer": claimed.claim,
                  "new_state": state, "next_us": next_attempt_us, "at_us": ts,
                  "status_code": status_code, "error": error,
                  "done_us": ts if state != PENDING else None}
        return self.database.write(
            lambda conn: conn.execute(_RECORD, params).first() is not None)
