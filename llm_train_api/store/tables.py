"""The SQL schema, as SQLAlchemy Core tables.

Timestamps are integer microseconds since the epoch (UTC): exact, compact, and they compare
and index the same way on SQLite and PostgreSQL.
"""

from __future__ import annotations

from sqlalchemy import (
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    text,
)

metadata = MetaData()

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL wants BIGINT.
_Seq = BigInteger().with_variant(Integer(), "sqlite")

jobs = Table(
    "jobs",
    metadata,
    # `seq` breaks ties between jobs created in the same microsecond and is the second half
    # of the keyset-pagination key (created_us, seq).
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("id", String(128), nullable=False, unique=True),
    Column("model_name", String(256), nullable=False),
    Column("dataset", String(256), nullable=False),
    Column("hyperparameters", Text, nullable=False),
    # sha256 of the create request: an identical retry returns the job, a different one 409s.
    Column("request_hash", String(64), nullable=False),
    Column("status", String(16), nullable=False),
    # Written by the same UPDATE that changes `status` (SQL evaluates SET from the old row),
    # so the compare-and-set also tells us which transition happened.
    Column("previous_status", String(16)),
    Column("error_message", Text),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("started_us", BigInteger),
    Column("finished_us", BigInteger),
    Column("version", Integer, nullable=False),
    # --- v2: execution by workers
    Column("priority", Integer, nullable=False, server_default=text("0")),
    Column("max_attempts", Integer, nullable=False, server_default=text("3")),
    # Runs started so far: a claim adds one, a graceful hand-back takes it back.
    Column("attempts", Integer, nullable=False, server_default=text("0")),
    Column("max_runtime_s", Integer),
    Column("resources", Text),
    Column("dataset_sha256", String(64)),
    # The claim is a lease: the worker that holds it must renew it before it expires, or
    # any worker's reaper hands the job back to the queue.
    Column("lease_owner", String(128)),
    Column("lease_expires_us", BigInteger),
    Column("progress", Text),
    # --- v3: who created the job (a token's principal name); NULL when auth was disabled.
    Column("owner", String(64)),
    # --- v5: fine-tuning jobs: held-out data, the name of the resulting model, and which
    # trainer the model needs ("builtin" or "hf"; NULL for jobs nothing admitted).
    Column("validation_dataset", String(256)),
    Column("output_model", String(128)),
    Column("model_kind", String(16)),
    # --- v6: a branched job's origin, JSON {"job_id", "created_us", "step"}; NULL otherwise.
    Column("origin", Text),
    # --- v7: pausing. When a pause of the running job was asked for (NULL: none pending),
    # and how many runs of it have been paused (a Ray run's submission id counts them).
    Column("pause_requested_us", BigInteger),
    Column("pauses", Integer, nullable=False, server_default=text("0")),
    # --- v9: jobs created through the OpenAI-compatible /v1 API: api "openai" (NULL for
    # the native API), their metadata (a JSON object of strings) and name suffix.
    Column("api", String(16)),
    Column("metadata", Text),
    Column("suffix", String(64)),
)

# One index per supported single filter, each ending in the sort key, so that every page is
# an index range scan whatever the table size.
Index("ix_jobs_created", jobs.c.created_us, jobs.c.seq)
Index("ix_jobs_status_created", jobs.c.status, jobs.c.created_us, jobs.c.seq)
Index("ix_jobs_model_created", jobs.c.model_name, jobs.c.created_us, jobs.c.seq)
Index("ix_jobs_dataset_created", jobs.c.dataset, jobs.c.created_us, jobs.c.seq)
# The claim order (priority, then age). Its status prefix also serves the scans of
# running jobs (expired leases, a worker's own jobs): those are as few as the slots that
# run them, so they need no index of their own.
Index("ix_jobs_claim", jobs.c.status, jobs.c.priority.desc(), jobs.c.created_us, jobs.c.seq)
# v3: a user's own listing (same shape as the others).
Index("ix_jobs_owner_created", jobs.c.owner, jobs.c.created_us, jobs.c.seq)
# v4: the fair claim's walk over the owners of queued jobs and each one's queue in claim
# order (priority, then age), and each owner's latest start. Its (status, owner) prefix
# is also what the per-user counts (quotas, running jobs) read.
Index("ix_jobs_owner_claim", jobs.c.status, jobs.c.owner, jobs.c.priority.desc(),
      jobs.c.created_us, jobs.c.seq)
Index("ix_jobs_owner_started", jobs.c.owner, jobs.c.started_us)

job_events = Table(
    "job_events",
    metadata,
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("job_id", String(128), nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("from_status", String(16)),
    Column("to_status", String(16)),
    Column("actor", String(128)),
    Column("message", Text),
    Column("attempt", Integer),  # v2
    # v3: which incarnation of the id the event belongs to (the job's created_us): a deleted
    # job's events are kept for the audit trail, and must not join a re-created job's.
    Column("job_created_us", BigInteger),
)
Index("ix_job_events_job", job_events.c.job_id, job_events.c.seq)

# v2: the loss curve, one row per logged step (a resumed run rewrites its overlap).
job_metrics = Table(
    "job_metrics",
    metadata,
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("job_id", String(128), nullable=False),
    Column("step", Integer, nullable=False),
    Column("at_us", BigInteger, nullable=False),
    Column("data", Text, nullable=False),
)
Index("ix_job_metrics_job_step", job_metrics.c.job_id, job_metrics.c.step)

# v3: API tokens. Only a SHA-256 of each token is kept: tokens are 256 random bits, so a
# fast hash is enough (there is nothing to brute-force), and a lookup is one index probe.
api_tokens = Table(
    "api_tokens",
    metadata,
    Column("id", _Seq, primary_key=True, autoincrement=True),
    Column("name", String(64), nullable=False),
    Column("role", String(16), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    # The first characters of the token, safe to show in `tokens list` to tell them apart.
    Column("prefix", String(16), nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger),
)

schema_version = Table(
    "schema_version",
    metadata,
    Column("id", Integer, primary_key=True),
    Column("version", Integer, nullable=False),
)

# v8: webhooks. An endpoint a user (their own jobs) or an admin (every job) registered, the
# event types it wants (one row each, so that matching is an index probe), and the outbox:
# one delivery row per (event, endpoint), written in the transaction of the status change.
webhooks = Table(
    "webhooks",
    metadata,
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("id", String(40), nullable=False, unique=True),
    # The principal who registered it; NULL when auth was disabled.
    Column("owner", String(64)),
    # 1: every owner's jobs (an admin's hook, or any hook while auth is disabled).
    Column("all_jobs", Integer, nullable=False),
    Column("url", Text, nullable=False),
    Column("description", Text),
    # The signing secret (`whsec_...`): kept because signing needs it; never returned after
    # the registration's answer, never logged.
    Column("secret", String(128), nullable=False),
    Column("created_us", BigInteger, nullable=False),
)
Index("ix_webhooks_owner", webhooks.c.owner, webhooks.c.seq)

webhook_events = Table(
    "webhook_events",
    metadata,
    Column("webhook_id", String(40), primary_key=True),
    Column("event_type", String(64), primary_key=True),
)
# The outbox insert's probe: the hooks that want this event type.
Index("ix_webhook_events_type", webhook_events.c.event_type, webhook_events.c.webhook_id)

webhook_deliveries = Table(
    "webhook_deliveries",
    metadata,
    # The message id sent as `webhook-id` is `msg_<seq>`: the same on every retry.
    Column("seq", _Seq, primary_key=True, autoincrement=True),
    Column("webhook_id", String(40), nullable=False),
    Column("event_type", String(64), nullable=False),
    # The event, as the status change wrote it (the payload is built from these columns, so
    # later changes to the job do not alter what was sent).
    Column("job_id", String(128), nullable=False),
    Column("job_created_us", BigInteger, nullable=False),
    Column("job_owner", String(64)),
    Column("job_status", String(16), nullable=False),
    Column("previous_status", String(16)),
    Column("error_message", Text),
    Column("occurred_us", BigInteger, nullable=False),
    # pending -> delivered | failed (gave up after WEBHOOK_MAX_AGE_S).
    Column("state", String(16), nullable=False),
    Column("attempts", Integer, nullable=False),
    # When a sender may next take it: the retry time, and while a sender holds it, the end
    # of that sender's claim (a sender killed mid-delivery leaves it due again then).
    Column("next_attempt_us", BigInteger),
    # Who holds the current claim: the answer is recorded only by the claim's holder.
    Column("claim", String(64)),
    Column("last_attempt_us", BigInteger),
    Column("last_status_code", Integer),
    Column("last_error", Text),
    Column("delivered_us", BigInteger),
)
Index("ix_webhook_deliveries_due", webhook_deliveries.c.state,
      webhook_deliveries.c.next_attempt_us)
Index("ix_webhook_deliveries_hook", webhook_deliveries.c.webhook_id, webhook_deliveries.c.seq)
