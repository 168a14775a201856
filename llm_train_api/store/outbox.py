"""The webhook outbox: which status changes are events, what each event is called, and the
statement that queues one delivery per interested endpoint in the status change's own
transaction.

Writing the deliveries with the change (rather than after it, or from another process
watching for changes) is what makes "nothing is lost" hold: a committed change always has
its deliveries, a rolled-back one never does, whichever process crashes when. The senders
(services/webhooks/sender.py) then work through the table.

The insert is an INSERT ... SELECT over the endpoints that want the event: with no webhooks
it matches nothing and writes nothing, at the cost of one index probe.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    BigInteger,
    Integer,
    String,
    Text,
    and_,
    bindparam,
    case,
    insert,
    literal,
    or_,
    select,
)

from llm_train_api.store.tables import webhook_deliveries, webhook_events, webhooks

# The one table of event-worthy statuses and the verb each event is named with. `paused`
# is a status another part of the service adds; listing it here is all it needs.
EVENT_STATUSES: dict[str, str] = {
    "succeeded": "succeeded",
    "failed": "failed",
    "cancelled": "cancelled",
    "paused": "paused",
}
# How a job came in decides the family of its event names: jobs of the native API are
# `job.<verb>`; jobs created through the OpenAI-compatible `/v1` API are
# `fine_tuning.job.<verb>`, the names OpenAI's own webhooks use.
NATIVE_API = "native"
OPENAI_API = "openai"
EVENT_PREFIXES: dict[str, str] = {NATIVE_API: "job.", OPENAI_API: "fine_tuning.job."}
EVENT_TYPES: tuple[str, ...] = tuple(
    prefix + verb for prefix in EVENT_PREFIXES.values() for verb in EVENT_STATUSES.values())
PENDING, DELIVERED, FAILED = "pending", "delivered", "failed"

_DELIVERY_COLUMNS = ["webhook_id", "event_type", "job_id", "job_created_us", "job_owner",
                     "job_status", "previous_status", "error_message", "occurred_us", "state",
                     "attempts", "next_attempt_us"]


def job_api(row: Any) -> str:
    """Which API a job came through: the jobs row's `api` ("openai" for `/v1`), native
    when NULL."""
    return getattr(row, "api", None) or NATIVE_API


def event_type(status: str, api: str = NATIVE_API) -> str | None:
    """The event a job of `api` entering `status` is, or None when that is no event."""
    verb = EVENT_STATUSES.get(status)
    return None if verb is None else EVENT_PREFIXES[api] + verb


def event_type_sql(status: Any, api: Any) -> Any:
    """`event_type` as SQL over a job's status and api columns (NULL for a status that is
    no event)."""
    whens = []
    for name, prefix in EVENT_PREFIXES.items():
        is_api = api == literal(name, String) if name != NATIVE_API else or_(
            api.is_(None), api == literal(NATIVE_API, String))
        whens += [(and_(status == literal(s, String), is_api), literal(prefix + verb, String))
                  for s, verb in EVENT_STATUSES.items()]
    return case(*whens, else_=literal(None, String))


def _deliveries_from(source: dict[str, Any], event: Any, owner: Any) -> Any:
    """SELECT one delivery row per endpoint that wants `event` for a job of `owner`."""
    return (
        select(webhooks.c.id, event, source["job_id"], source["job_created_us"], owner,
               source["job_status"], source["previous_status"], source["error_message"],
               source["occurred_us"], literal(PENDING, String), literal(0, Integer),
               source["occurred_us"])
        .select_from(webhook_events.join(webhooks,
                                         webhooks.c.id == webhook_events.c.webhook_id))
        .where(webhook_events.c.event_type == event,
               or_(webhooks.c.all_jobs == 1, webhooks.c.owner == owner))
    )


# The outbox insert for one changed job given as bind parameters (SQLite, and the reaper's
# batch on both backends): the caller computes `event` and skips it when there is none.
INSERT_DELIVERIES = insert(webhook_deliveries).from_select(
    _DELIVERY_COLUMNS,
    _deliveries_from({
        "job_id": bindparam("job_id", type_=String),
        "job_created_us": bindparam("job_created_us", type_=BigInteger),
        "job_status": bindparam("job_status", type_=String),
        "previous_status": bindparam("previous_status", type_=String),
        "error_message": bindparam("error_message", type_=Text),
        "occurred_us": bindparam("occurred_us", type_=BigInteger),
    }, bindparam("event", type_=String), bindparam("job_owner", type_=String)),
)


def delivery_params(row: Any, at_us: int) -> dict[str, Any] | None:
    """INSERT_DELIVERIES' parameters for a job row just changed (None: no event)."""
    event = event_type(row.status, job_api(row))
    if event is None:
        return None
    return {"event": event, "job_id": row.id, "job_created_us": row.created_us,
            "job_owner": row.owner, "job_status": row.status,
            "previous_status": getattr(row, "previous_status", None),
            "error_message": row.error_message, "occurred_us": at_us}


def deliveries_cte(changed: Any, at_us: Any) -> Any:
    """A data-modifying CTE that queues the deliveries of the rows of the CTE `changed`
    (PostgreSQL: it rides in the status change's own statement)."""
    previous = changed.c.previous_status if "previous_status" in changed.c \
        else literal(None, String)
    source = {"job_id": changed.c.id, "job_created_us": changed.c.created_us,
              "job_status": changed.c.status, "previous_status": previous,
              "error_message": changed.c.error_message, "occurred_us": at_us}
    rows = _deliveries_from(source, event_type_sql(changed.c.status, changed.c.api),
                            changed.c.owner)
    rows = rows.select_from(changed)
    return insert(webhook_deliveries).from_select(_DELIVERY_COLUMNS, rows).cte("outbox")


def queue_webhook_deliveries(conn: Any, rows: Any, at_us: int) -> None:
    """Queue the deliveries of several changed job rows inside `conn`'s transaction (the
    reaper's batch); rows whose status is no event cost nothing."""
    batch = [p for p in (delivery_params(row, at_us) for row in rows) if p is not None]
    if batch:
        conn.execute(INSERT_DELIVERIES, batch)
