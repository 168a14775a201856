"""What the client returns: plain dataclasses built from the service's JSON.

Forward compatible by construction: :func:`parse` takes the fields a class declares and
keeps whatever else the server sends in ``extra``, so a newer server that adds fields
never breaks an older client, and a field the server stops sending becomes its default.
Timestamps become timezone-aware :class:`datetime` objects.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from datetime import datetime, timezone
from functools import cache
from typing import Any, Generic, TypeVar

T = TypeVar("T")

TERMINAL_STATUSES = frozenset({"succeeded", "failed", "cancelled"})


def parse_datetime(value: Any) -> datetime | None:
    """ISO 8601 from the server; a missing offset means UTC, as the server documents."""
    if value is None or isinstance(value, datetime):
        return value
    text = str(value)
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    parsed = datetime.fromisoformat(text)
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=timezone.utc)


@cache
def _datetime_fields(cls: type) -> frozenset[str]:
    hints = typing.get_type_hints(cls)
    return frozenset(name for name, hint in hints.items() if "datetime" in str(hint))


def parse(cls: type[T], data: Any) -> T:
    """An instance of the dataclass `cls` from a JSON object; unknown keys go to `extra`."""
    if not isinstance(data, dict):
        from llm_train_api.client.errors import UnexpectedResponse

        raise UnexpectedResponse(f"expected a JSON object for {cls.__name__}, got "
                                 f"{type(data).__name__}")
    names = {f.name for f in dataclasses.fields(cls) if f.init and f.name != "extra"}
    dates = _datetime_fields(cls)
    kwargs: dict[str, Any] = {}
    extra: dict[str, Any] = {}
    for key, value in data.items():
        if key in names:
            kwargs[key] = parse_datetime(value) if key in dates else value
        else:
            extra[key] = value
    obj = cls(**kwargs)
    obj.extra = extra  # type: ignore[attr-defined]
    return obj


@dataclass
class Progress:
    """A running job's latest figures, as its worker reports them."""

    phase: str | None = None
    step: int | None = None
    total_steps: int | None = None
    fraction: float | None = None
    eta_s: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    tokens_per_s: float | None = None
    epoch: float | None = None
    last_checkpoint_step: int | None = None
    resumed_from_step: int | None = None
    device: str | None = None
    pid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Job:
    id: str
    model_name: str = ""
    dataset: str = ""
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    status: str = ""
    created_at: datetime | None = None
    updated_at: datetime | None = None
    error_message: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    priority: int = 0
    attempts: int = 0
    max_attempts: int | None = None
    max_runtime_seconds: int | None = None
    resources: dict[str, Any] | None = None
    dataset_sha256: str | None = None
    progress: dict[str, Any] | None = None
    worker: str | None = None
    owner: str | None = None
    #: ``builtin`` (a GPT trained from scratch) or ``hf`` (a fine-tuned Hugging Face model).
    model_kind: str | None = None
    validation_dataset: str | None = None
    #: Fine-tuning: the model the result becomes once the job succeeds.
    output_model: str | None = None
    #: A succeeded fine-tuning job: the model it produced (``download_model`` fetches it).
    fine_tuned_model: str | None = None
    #: A running job asked to pause: when (its worker checkpoints and stops it, then the
    #: job reads ``paused``). None when no pause is pending.
    pause_requested_at: datetime | None = None
    #: Only in a dry run of a fine-tuning job: examples, tokens, truncations, steps, memory.
    plan: dict[str, Any] | None = None
    #: A branched job: ``job_id``, ``created_us`` and ``step`` of the checkpoint it started from.
    origin: dict[str, Any] | None = None
    #: Once a run ended: ``final`` and ``best`` metrics and ``best_checkpoint`` (a step).
    result: dict[str, Any] | None = None
    #: ``openai`` for a job created through the OpenAI-compatible API (``/v1``), with its
    #: OpenAI ``metadata`` and ``suffix``; None for the native API.
    api: str | None = None
    metadata: dict[str, str] | None = None
    suffix: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    #: The job's ETag (from the response header): pass it as ``if_match`` to make a status
    #: change conditional on nobody having changed the job since.
    etag: str | None = field(default=None, compare=False)

    @property
    def is_terminal(self) -> bool:
        """succeeded, failed or cancelled: nothing will change it any more."""
        return self.status in TERMINAL_STATUSES

    @property
    def progress_info(self) -> Progress | None:
        """`progress` as a typed object (None before a worker has reported anything)."""
        return parse(Progress, self.progress) if self.progress else None


@dataclass
class JobEvent:
    at: datetime | None = None
    kind: str = ""
    from_status: str | None = None
    to_status: str | None = None
    actor: str | None = None
    message: str | None = None
    attempt: int | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class MetricPoint:
    step: int
    epoch: float | None = None
    train_loss: float | None = None
    val_loss: float | None = None
    lr: float | None = None
    tokens_per_s: float | None = None
    elapsed_s: float | None = None
    val_perplexity: float | None = None
    val_token_accuracy: float | None = None
    train_token_accuracy: float | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)

    @property
    def rewards(self) -> dict[str, float]:
        """A DPO job's rewards at this step, by the server's names (``rewards/margins``,
        ``rewards/accuracies``, ``val_rewards/margins``, ...); empty for other jobs."""
        return {k: v for k, v in self.extra.items()
                if k.startswith(("rewards/", "val_rewards/")) and v is not None}


@dataclass
class Checkpoint:
    """One kept checkpoint: its step's metrics, size and sha256 (see docs/api.md)."""

    step: int
    created_at: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    size: int | None = None
    sha256: str | None = None
    files: dict[str, str] = field(default_factory=dict)
    status: str = "good"
    is_best: bool = False
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Artifact:
    name: str
    size_bytes: int = 0
    modified_at: datetime | None = None
    kind: str = "other"
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Dataset:
    name: str
    format: str = ""
    sha256: str | None = None
    size_bytes: int = 0
    lines: int | None = None
    created_at: datetime | None = None
    builtin: bool = False
    kind: str | None = None  # chat | instruction | text; None for folders
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Model:
    """A model: `kind` ``builtin`` (a GPT the built-in trainer builds: the n_* fields,
    block_size, hyperparameters) or ``hf`` (a Hugging Face-format folder, imported or
    under the server's MODEL_ROOTS: architecture, context_length, sha256, ...)."""

    name: str
    kind: str = "builtin"
    param_count: int = 0
    vocab_size: int | None = 0
    n_layer: int = 0
    n_head: int = 0
    n_embd: int = 0
    block_size: int = 0
    bias: bool = False
    description: str = ""
    hyperparameters: list[dict[str, Any]] = field(default_factory=list)
    architecture: str | None = None
    model_type: str | None = None
    context_length: int | None = None
    has_chat_template: bool | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    owner: str | None = None
    created_at: datetime | None = None
    source: str | None = None
    #: Fine-tuned models (``source`` ``job``): the model the job started from, the job,
    #: and its method.
    base_model: str | None = None
    job_id: str | None = None
    method: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class Health:
    status: str = ""
    schema_version: int | None = None
    database: str | None = None
    extra: dict[str, Any] = field(default_factory=dict, repr=False)
    #: False when the server answered 503 (``readyz``: the database is not usable).
    ok: bool = field(default=True, compare=False)


@dataclass
class Identity:
    """Who the server takes the caller for (``GET /whoami``)."""

    name: str = ""
    role: str = ""
    auth: str = ""
    extra: dict[str, Any] = field(default_factory=dict, repr=False)


@dataclass
class LogLine:
    """One line of a followed log; `offset` is the byte offset just after it (the SSE id),
    which resumes the stream exactly there."""

    text: str
    offset: int | None = None


@dataclass
class Page(Generic[T]):
    """One page of a paginated list; `next_cursor` is None on the last page."""

    items: list[T]
    next_cursor: str | None = None

    def __iter__(self):
        return iter(self.items)

    def __len__(self) -> int:
        return len(self.items)


def to_dict(obj: Any) -> Any:
    """JSON-ready form of a client dataclass (extra fields merged back, ISO timestamps);
    what the CLI's ``--json`` prints."""
    if isinstance(obj, list):
        return [to_dict(item) for item in obj]
    if not dataclasses.is_dataclass(obj):
        return obj
    out: dict[str, Any] = {}
    for f in dataclasses.fields(obj):
        value = getattr(obj, f.name)
        if f.name in ("extra", "ok"):
            continue
        if f.name == "etag" and value is None:
            continue
        out[f.name] = value.isoformat() if isinstance(value, datetime) else value
    out.update(getattr(obj, "extra", {}) or {})
    return out
