"""The job model shared by the API, the store and (later) the workers.

Everything here is plain Python so the rules of the job life cycle can be read, tested and
reused without a database or a web framework in the way.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

JOB_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$"
_JOB_ID_RE = re.compile(JOB_ID_PATTERN)


class JobStatus(str, enum.Enum):
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    # Stopped on request, its checkpoint kept: neither claimable nor final (see `resume`).
    PAUSED = "paused"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES


FINAL_STATUSES = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})

# The life cycle. A target reachable from several sources lets the store express a
# transition as one conditional UPDATE (`WHERE status IN sources`), so racing requests
# are decided by the database rather than by a read followed by a write.
ALLOWED_TRANSITIONS: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset(
        {JobStatus.RUNNING, JobStatus.CANCELLED, JobStatus.FAILED, JobStatus.PAUSED}
    ),
    JobStatus.RUNNING: frozenset(
        {JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.QUEUED,
         JobStatus.PAUSED}
    ),
    # A paused job goes back to the queue (resume) or ends (cancel); it never runs as it is:
    # only a claim of a queued job starts a run.
    JobStatus.PAUSED: frozenset({JobStatus.QUEUED, JobStatus.CANCELLED}),
    JobStatus.SUCCEEDED: frozenset(),
    JobStatus.FAILED: frozenset(),
    JobStatus.CANCELLED: frozenset(),
}


def sources_of(target: JobStatus) -> frozenset[JobStatus]:
    """Statuses from which `target` may be entered."""
    return frozenset(src for src, dsts in ALLOWED_TRANSITIONS.items() if target in dsts)


def allowed_targets(current: JobStatus) -> list[str]:
    """Targets a client may ask for next, sorted for stable error messages."""
    return sorted(s.value for s in ALLOWED_TRANSITIONS[current])


# error_message explains why a job ended without success. Keeping it only where it means
# something stops a requeued or succeeded job from showing a stale failure reason.
ERROR_MESSAGE_TARGETS = frozenset({JobStatus.FAILED, JobStatus.CANCELLED})


def is_valid_job_id(value: str) -> bool:
    return bool(_JOB_ID_RE.match(value))


# The zero of the store's integer microsecond timestamps.
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
GIB = 1024**3


def to_epoch_us(value: datetime) -> int:
    """Exact integer microseconds (float timestamps lose precision); naive means UTC."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=timezone.utc)
    delta = value - EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


@dataclass(frozen=True, slots=True)
class NewJob:
    """What a client asks for; the store turns it into a `Job`."""

    job_id: str
    model_name: str
    dataset: str
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    priority: int = 0
    max_attempts: int = 3
    max_runtime_seconds: int | None = None
    resources: dict[str, Any] | None = None
    # Recorded at creation so that a worker can refuse data that changed under the job.
    dataset_sha256: str | None = None
    # The principal that creates it (None with auth disabled); not part of the request hash:
    # the same body from another owner is a different job, which the store refuses.
    owner: str | None = None
    # Fine-tuning (a Hugging Face-format model): held-out data, and the name its result
    # gets as a model. `model_kind` ("builtin" or "hf") is decided at admission, from the
    # model the name meant then; None where nothing admitted the job (EXECUTOR=none).
    validation_dataset: str | None = None
    output_model: str | None = None
    model_kind: str | None = None
    # A branch (`from_checkpoint`): {"job_id", "created_us", "step"} of the source
    # checkpoint, resolved at creation.
    origin: dict[str, Any] | None = None
    # Jobs created through the OpenAI-compatible `/v1` API: api "openai", their
    # `metadata` (up to 16 string pairs) and `suffix` (part of the fine-tuned model's name).
    api: str | None = None
    metadata: dict[str, str] | None = None
    suffix: str | None = None

    def request_fields(self) -> list[Any]:
        """What makes two creates 'the same request' for idempotent retries. Options left
        at their defaults are omitted, so hashes of jobs created before they existed hold."""
        fields = [self.model_name, self.dataset, self.hyperparameters]
        options = [self.priority, self.max_attempts, self.max_runtime_seconds, self.resources]
        if options != [0, 3, None, None]:
            fields.append(options)
        if self.validation_dataset is not None or self.output_model is not None:
            fields.append({"validation_dataset": self.validation_dataset,
                           "output_model": self.output_model})
        if self.origin is not None:
            fields.append({"origin": self.origin})
        return fields


# Not frozen: a frozen dataclass pays an object.__setattr__ per field on construction, which
# is a measurable share of listing a page. Treat instances as read-only all the same.
@dataclass(slots=True)
class Job:
    id: str
    model_name: str
    dataset: str
    hyperparameters: dict[str, Any]
    status: JobStatus
    created_at: datetime
    updated_at: datetime
    error_message: str | None
    started_at: datetime | None
    finished_at: datetime | None
    version: int
    priority: int = 0
    max_attempts: int = 3
    attempts: int = 0
    max_runtime_seconds: int | None = None
    resources: dict[str, Any] | None = None
    dataset_sha256: str | None = None
    # Where a running job is: phase, step, total_steps, fraction, eta_s, latest losses.
    progress: dict[str, Any] | None = None
    worker: str | None = None  # the worker holding the lease while it runs
    owner: str | None = None  # who created it; None when auth was disabled
    validation_dataset: str | None = None
    output_model: str | None = None  # the model a succeeded fine-tuning job registers
    model_kind: str | None = None  # "builtin" or "hf"; None: not admitted (EXECUTOR=none)
    origin: dict[str, Any] | None = None  # a branch: the checkpoint it started from
    # A running job asked to pause: its worker stops the run at its next heartbeat, the
    # trainer checkpoints, and the job becomes `paused`. None when no pause is pending.
    pause_requested_at: datetime | None = None
    # How often a run of this job was paused: part of a Ray run's submission id, since a
    # pause takes back the attempt its run counted.
    pauses: int = 0

    api: str | None = None  # "openai": created through /v1; None: the native API
    metadata: dict[str, str] | None = None  # /v1 jobs' OpenAI metadata
    suffix: str | None = None  # /v1 jobs' OpenAI suffix

    @property
    def result(self) -> dict[str, Any] | None:
        """Final and best metrics and the best checkpoint, as the trainer's last run
        reported them (kept in `progress` by the worker)."""
        return (self.progress or {}).get("result")

    @property
    def fine_tuned_model(self) -> str | None:
        """The model a succeeded fine-tuning job produced: its `output_model`. A worker
        registers that model before it marks the job succeeded, and a registration that
        fails fails the job, so every succeeded job with an `output_model` has made it."""
        if self.status is JobStatus.SUCCEEDED and self.model_kind == "hf":
            return self.output_model
        return None

    @property
    def revision(self) -> Revision:
        return Revision(to_epoch_us(self.created_at), self.version)

    @property
    def etag(self) -> str:
        return self.revision.etag


@dataclass(frozen=True, slots=True)
class Revision:
    """Identifies one state of one job: the ETag, and the If-Match precondition.

    The creation time is part of it so that a job deleted and re-created under the same id
    never matches an ETag of its namesake.
    """

    created_us: int
    version: int

    @property
    def etag(self) -> str:
        return f"{self.created_us:x}-{self.version}"

    @classmethod
    def from_etag(cls, etag: str) -> Revision | None:
        created, _, version = etag.partition("-")
        if len(created) > 16 or len(version) > 19:
            return None  # beyond 64 bits: no job has it, and the database could not compare
        try:
            rev = cls(int(created, 16), int(version))
        except ValueError:
            return None
        in_range = 0 <= rev.created_us < 2**63 and 0 <= rev.version < 2**63
        return rev if in_range and rev.etag == etag else None


@dataclass(slots=True)
class JobEvent:
    """One entry of a job's timeline: a status change and who or what caused it."""

    job_id: str
    at: datetime
    kind: str
    from_status: JobStatus | None
    to_status: JobStatus | None
    actor: str | None
    message: str | None
    attempt: int | None = None
    seq: int = 0


class DomainError(Exception):
    """Base for errors a client caused. The API maps each subclass to one HTTP status
    (one table, in api/errors.py), so the code that raises them never speaks HTTP."""

    # Field-level details in marshmallow's shape ({location: {field: [message]}}), or None.
    errors: dict[str, Any] | None = None


class JobNotFound(DomainError):
    def __init__(self, job_id: str) -> None:
        super().__init__(f"Job {job_id!r} not found.")
        self.job_id = job_id


class JobIdConflict(DomainError):
    def __init__(self, job_id: str, *, other_owner: bool = False) -> None:
        # Another owner's job: say only that the id is taken (ids are global), nothing of it.
        detail = "" if other_owner else " by a job with a different body"
        super().__init__(f"Job id {job_id!r} is already taken{detail}.")
        self.job_id = job_id


class QuotaExceeded(DomainError):
    """A per-user cap (LLM_TRAIN_API_MAX_*_PER_USER) would be exceeded: 429."""

    def __init__(self, what: str, setting: str, cap: int) -> None:
        super().__init__(
            f"Limit reached: at most {cap} {what} per user ({setting}={cap}). "
            "Wait for some to finish, or cancel or delete some, then retry."
        )
        self.setting = setting
        self.cap = cap


class IllegalTransition(DomainError):
    def __init__(self, job_id: str, current: JobStatus, target: JobStatus) -> None:
        allowed = allowed_targets(current)
        if allowed:
            tail = f"allowed targets are: {', '.join(allowed)}."
        else:
            tail = f"{current.value!r} is final, no further status change is allowed."
        super().__init__(
            f"Cannot change job {job_id!r} from {current.value!r} to {target.value!r}: {tail}"
        )
        self.current = current
        self.target = target
        self.allowed = allowed


class PreconditionFailed(DomainError):
    def __init__(self, job_id: str, current_etag: str) -> None:
        super().__init__(
            f"Job {job_id!r} has changed (its ETag is now {current_etag}); "
            "fetch it again and retry."
        )
        self.current_etag = current_etag


class InvalidRequest(DomainError):
    """A request the service understood but will not act on, with per-field reasons."""

    def __init__(self, message: str, errors: dict[str, Any]) -> None:
        super().__init__(message)
        self.errors = errors


class StatusChangeForbidden(DomainError):
    """The caller's role may not ask for this status at all (a user asking for anything
    but `cancelled`)."""


class StatusManagedByWorkers(DomainError):
    """With the built-in executor the workers drive statuses; clients may only cancel."""


# Who a request acts for: a principal (a token's name) and its role.


class Role(str, enum.Enum):
    ADMIN = "admin"  # everything, everyone's jobs and datasets; publishes datasets
    USER = "user"  # creates jobs; sees and changes only its own jobs and datasets
    WORKER = "worker"  # an external executor: reads any job, makes any legal status change


@dataclass(frozen=True)
class Principal:
    name: str
    role: Role
    token_id: int | None = None  # None: auth is disabled and nobody is identified

    @property
    def anonymous(self) -> bool:
        return self.token_id is None

    @property
    def actor(self) -> str:
        """How the principal appears in job events: `role:name`."""
        return f"{self.role.value}:{self.name}"

    @property
    def owner(self) -> str | None:
        """What new jobs and datasets record as their owner (None when anonymous)."""
        return None if self.anonymous else self.name


ANONYMOUS = Principal("anonymous", Role.ADMIN)
