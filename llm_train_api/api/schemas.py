"""marshmallow schemas: the one definition of every payload, for validation and for the
OpenAPI document alike.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

from flask_smorest.error_handler import ErrorSchema
from marshmallow import (
    ValidationError,
    fields,
    post_load,
    validate,
    validates,
    validates_schema,
)

from llm_train_api.api.base import get_settings
from llm_train_api.api.lean_schemas import LeanDumpSchema, LeanLoadSchema
from llm_train_api.api.schema_base import Schema
from llm_train_api.domain import JOB_ID_PATTERN, JobStatus
from llm_train_api.store.pagination import CURSOR_PATTERN, DEFAULT_LIMIT, MAX_LIMIT
from llm_train_api.store.rows import canonical_json

NAME_MAX_LENGTH = 256
ERROR_MESSAGE_MAX_LENGTH = 8192


def _reject_unstorable(value: str) -> None:
    """NUL and lone surrogates cannot be stored in PostgreSQL text or encoded as UTF-8."""
    if "\x00" in value:
        raise ValidationError("NUL characters are not allowed.")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise ValidationError("Invalid unicode (lone surrogate).") from None


# What str.strip() removes, as a regular expression class that Python and ECMA-262 (the
# OpenAPI document's dialect) read alike.
WHITESPACE_CLASS = (r"[\t-\r\u001c-\u001f \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029"
                    r"\u202f\u205f\u3000]")
NO_NUL_PATTERN = r"^[^\u0000]*$"
# At least one character that is neither whitespace nor NUL (NonBlank, and no NUL).
NON_BLANK_PATTERN = (r"^[^\u0000]*[^\u0000\t-\r\u001c-\u001f \u0085\u00a0\u1680"
                     r"\u2000-\u200a\u2028\u2029\u202f\u205f\u3000][^\u0000]*$")


class Text(fields.String):
    """A string that every supported database can store as given: NUL characters and lone
    surrogates are refused with a 422 (PostgreSQL text cannot hold the first, UTF-8 cannot
    encode the second). The OpenAPI document states the first as a `pattern` (lone
    surrogates are not characters a JSON Schema string can hold), and, with NonBlank,
    that some character is not whitespace; a field with its own Regexp keeps that one."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if not any(isinstance(v, validate.Regexp) for v in self.validators):
            blank = any(isinstance(v, NonBlank) for v in self.validators)
            self.metadata = {"pattern": NON_BLANK_PATTERN if blank else NO_NUL_PATTERN,
                             **self.metadata}

    def _deserialize(self, value: Any, attr: str | None, data: Any, **kwargs: Any) -> str:
        result = super()._deserialize(value, attr, data, **kwargs)
        _reject_unstorable(result)
        return result


class NonBlank(validate.Validator):
    error = "Must contain a non-whitespace character."

    def __call__(self, value: str) -> str:
        if not value.strip():
            raise ValidationError(self.error)
        return value


class UTCDateTime(fields.DateTime):
    """ISO 8601 with microseconds and an explicit +00:00, always the same width."""

    # What LeanDumpSchema inlines for it: `value.isoformat(timespec="microseconds")`.
    lean_isoformat = True

    def _serialize(self, value: datetime | None, attr: str | None, obj: Any, **kwargs: Any):
        if value is None:
            return None
        return value.isoformat(timespec="microseconds")


class ResourcesSchema(Schema):
    cpus = fields.Integer(strict=True, load_default=1, validate=validate.Range(min=1, max=1024),
                          metadata={"description": "CPU cores for the trainer."})
    gpus = fields.Integer(strict=True, load_default=0, validate=validate.Range(min=0, max=64),
                          metadata={"description": "GPUs for the trainer."})
    memory_gb = fields.Float(allow_none=True, load_default=None,
                             validate=validate.Range(min=0, min_inclusive=False, max=65536),
                             metadata={"description": "Memory the job may use, GiB (more "
                                       "than 0).", "exclusiveMinimum": True})
    # No load_default: an absent `processes` stays absent (stored resources of single-process
    # jobs are unchanged); post_load fills it in only where it is not 1.
    processes = fields.Integer(strict=True, validate=validate.Range(min=1, max=64), metadata={
        "default": 1,
        "description": "Trainer processes (data-parallel ranks) on one node, run under "
        "torchrun when above 1; hyperparameters.batch_size stays the global batch and is "
        "split evenly over them. Default 1, or one per GPU when gpus > 1. CPU jobs need "
        "cpus >= processes; GPU jobs one process per GPU."})

    @validates_schema
    def _processes_fit(self, data: dict[str, Any], **kwargs: Any) -> None:
        processes, gpus = data.get("processes"), data.get("gpus", 0)
        if processes is None:
            return
        if gpus and processes != gpus:
            raise ValidationError(
                f"With gpus > 0 each process drives one GPU: processes must equal gpus "
                f"({gpus}), not {processes}.", "processes")
        cpus = data.get("cpus", 1)
        if not gpus and processes > cpus:
            raise ValidationError(
                f"processes ({processes}) must not exceed cpus ({cpus}): each CPU process "
                f"needs a core of its own; ask for cpus >= {processes}.", "processes")

    @post_load
    def _default_processes(self, data: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
        if data.get("processes") is None and data.get("gpus", 0) > 1:
            data["processes"] = data["gpus"]  # a multi-GPU job uses all of its GPUs
        return data


class JobCreateSchema(LeanLoadSchema):
    job_id = Text(
        validate=validate.Regexp(
            JOB_ID_PATTERN,
            error="Must be 1-128 characters of letters, digits, '.', '_' or '-', "
            "starting with a letter or digit.",
        ),
        metadata={
            "description": "Unique id. Omit it and the server picks a URL-safe one. Resending "
            "an identical body with the same id returns the existing job (200).",
            "example": "job-001",
        },
    )
    model_name = Text(
        required=True,
        validate=[validate.Length(min=1, max=NAME_MAX_LENGTH), NonBlank()],
        metadata={"example": "gpt-mini"},
    )
    dataset = Text(
        required=True,
        validate=[validate.Length(min=1, max=NAME_MAX_LENGTH), NonBlank()],
        metadata={"example": "builtin:tinytext"},
    )
    hyperparameters = fields.Dict(
        keys=fields.String(),
        load_default=dict,
        metadata={
            "description": "Training hyperparameters, a JSON object (bounded size and depth).",
            "example": {"learning_rate": 0.001, "epochs": 5},
        },
    )

    # strict: a fractional number is a 422, not silently truncated.
    priority = fields.Integer(
        strict=True, load_default=0, validate=validate.Range(min=-1000, max=1000),
        metadata={"description": (
            "Order inside the owner's own queue: workers claim higher priorities first, "
            "then older jobs. A user may set at most LLM_TRAIN_API_MAX_USER_PRIORITY "
            "(default 10).")},
    )
    max_attempts = fields.Integer(
        strict=True, load_default=3, validate=validate.Range(min=1, max=100),
        metadata={"description": "Runs allowed before a job whose worker keeps dying fails."},
    )
    max_runtime_seconds = fields.Integer(
        strict=True, allow_none=True, load_default=None,
        validate=validate.Range(min=1, max=31_536_000),
        metadata={"description": "A run longer than this ends `failed`, 'deadline exceeded'."},
    )
    resources = fields.Nested(ResourcesSchema, allow_none=True, load_default=None)
    validation_dataset = Text(
        allow_none=True, load_default=None,
        validate=[validate.Length(min=1, max=NAME_MAX_LENGTH), NonBlank()],
        metadata={"description": "Fine-tuning (a Hugging Face-format `model_name`) only: "
                  "a dataset to validate on instead of a held-out share of `dataset`. It "
                  "must live where `dataset` does (both the caller's own, or both "
                  "published)."})
    output_model = Text(
        allow_none=True, load_default=None,
        validate=validate.Length(min=1, max=128),
        metadata={"description": "Fine-tuning only: the model name the result gets once "
                  "the job succeeds (default: the job id), owned by the job's owner and "
                  "listed by GET /models. 409 when the name already means a model for the "
                  "caller, or another of their queued or running jobs will produce it.",
                  "example": "my-assistant"})
    from_checkpoint = Text(
        allow_none=True, load_default=None, validate=validate.Length(min=1, max=140),
        metadata={"description": "Branch: start from the weights of another job's "
                  "checkpoint, `<job_id>` (its best checkpoint, else its newest) or "
                  "`<job_id>:<step>`, with a new optimizer, data order and "
                  "hyperparameters. The same `model_name` (and for fine-tuning the same "
                  "method and LoRA settings) is required (422); a job the caller cannot "
                  "see is a 404; a step not kept a 422; a corrupt checkpoint a 409.",
                  "example": "job-001:200"})

    @validates("hyperparameters")
    def _bounded(self, value: dict[str, Any], **_: Any) -> None:
        settings = get_settings()
        max_depth = settings.MAX_HYPERPARAMETERS_DEPTH
        max_bytes = settings.MAX_HYPERPARAMETERS_BYTES
        _check_json_value(value, depth=1, max_depth=max_depth)
        size = len(canonical_json(value).encode())  # the bytes the row will hold
        if size > max_bytes:
            raise ValidationError(f"Too large: {size} bytes serialised, the limit is {max_bytes}.")


def _check_json_value(value: Any, *, depth: int, max_depth: int) -> None:
    if depth > max_depth:
        raise ValidationError(f"Nested too deeply: the limit is {max_depth} levels.")
    if isinstance(value, dict):
        for key, item in value.items():
            _reject_unstorable(key)
            _check_json_value(item, depth=depth + 1, max_depth=max_depth)
    elif isinstance(value, list):
        for item in value:
            _check_json_value(item, depth=depth + 1, max_depth=max_depth)
    elif isinstance(value, str):
        _reject_unstorable(value)


class JobSchema(LeanDumpSchema):
    id = fields.String(metadata={"example": "job-001"})
    model_name = fields.String(metadata={"example": "gpt-mini"})
    dataset = fields.String(metadata={"example": "builtin:tinytext"})
    hyperparameters = fields.Dict(metadata={"example": {"learning_rate": 0.001, "epochs": 5}})
    status = fields.Enum(JobStatus, by_value=True)
    created_at = UTCDateTime(metadata={"description": "ISO 8601, UTC, with offset."})
    updated_at = UTCDateTime()
    error_message = fields.String(
        allow_none=True,
        metadata={"description": "Why the job failed or was cancelled; null otherwise."},
    )
    started_at = UTCDateTime(
        allow_none=True, metadata={"description": "When the job last entered `running`."}
    )
    finished_at = UTCDateTime(
        allow_none=True, metadata={"description": "When the job reached a final status."}
    )
    priority = fields.Integer()
    attempts = fields.Integer(metadata={"description": "Runs started so far."})
    max_attempts = fields.Integer()
    max_runtime_seconds = fields.Integer(allow_none=True)
    resources = fields.Dict(allow_none=True)
    dataset_sha256 = fields.String(
        allow_none=True, metadata={"description": "The dataset's content hash at creation."})
    progress = fields.Dict(
        allow_none=True,
        metadata={"description": "While running: phase, step, total_steps, fraction, eta_s, "
                  "train_loss, val_loss, tokens_per_s."},
    )
    worker = fields.String(allow_none=True,
                           metadata={"description": "The worker running the job."})
    owner = fields.String(allow_none=True, metadata={
        "description": "The name of the token that created the job; null when the server "
        "ran with auth disabled."})
    model_kind = fields.String(allow_none=True, metadata={
        "enum": ["builtin", "hf", None],
        "description": "`builtin`: a GPT trained from scratch by the built-in trainer; "
        "`hf`: a Hugging Face-format model fine-tuned (its `hyperparameters.method`: lora, "
        "full, qlora or dpo). Null where the job was not admitted (LLM_TRAIN_API_EXECUTOR=none)."})
    validation_dataset = fields.String(allow_none=True)
    output_model = fields.String(allow_none=True, metadata={
        "description": "Fine-tuning: the model the result becomes once the job succeeds."})
    fine_tuned_model = fields.String(allow_none=True, dump_only=True, metadata={
        "description": "A succeeded fine-tuning job: the name of the model it produced "
        "(its `output_model`, registered before the job was marked succeeded; "
        "`GET /models/{name}`, `GET /models/{name}/archive`). Null otherwise, and for "
        "jobs that save an adapter only."})
    pause_requested_at = UTCDateTime(allow_none=True, metadata={
        "description": "A running job asked to pause (`POST /jobs/{id}/pause`): when. Its "
        "worker checkpoints and stops the run, then the job reads `paused`. Null when no "
        "pause is pending."})
    origin = fields.Dict(allow_none=True, metadata={
        "description": "A branched job (`from_checkpoint`): the `job_id`, `created_us` and "
        "`step` of the checkpoint it starts from, and that checkpoint's `sha256`; null "
        "otherwise. The checkpoint is held for the branch until the branch ends, even if "
        "its source job prunes it meanwhile."})
    result = fields.Dict(allow_none=True, dump_only=True, metadata={
        "description": "Once a run ended: `final` (the last evaluated metrics), `best` (the "
        "best checkpoint's metrics), `best_checkpoint` (its step) and `selection_metric` "
        "(`val_loss`: lowest is best). Null before."})
    api = fields.String(allow_none=True, dump_only=True, metadata={
        "enum": ["openai", None],
        "description": "`openai` for a job created through the OpenAI-compatible API "
        "(POST /v1/fine_tuning/jobs); null for the native API."})
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), allow_none=True,
                           dump_only=True, metadata={
                               "description": "A `/v1` job's OpenAI metadata (up to 16 "
                               "string pairs); null otherwise."})
    suffix = fields.String(allow_none=True, dump_only=True, metadata={
        "description": "A `/v1` job's OpenAI suffix (part of its fine-tuned model's OpenAI "
        "name, `ft:<base>:<org>:<suffix>:<job id>`); null otherwise."})


class PlanSchema(Schema):
    """A fine-tuning job's run, counted by the trainer's own planning code."""

    kind = fields.String(metadata={"enum": ["chat", "instruction", "preference", "text"]})
    records = fields.Integer(metadata={"description": "Records read (both datasets)."})
    examples = fields.Integer(metadata={"description": "Examples kept (DPO: pairs)."})
    pairs = fields.Integer(metadata={"description": "DPO only: preference pairs kept (a "
                                     "pair is two sequences: its tokens count both)."})
    tokens = fields.Integer(metadata={"description": "Their tokens, after truncation."})
    truncated = fields.Integer(metadata={"description": "Examples cut to max_seq_length "
                                         "(DPO: pairs with an answer cut)."})
    dropped = fields.Integer(metadata={"description": "Examples left with nothing to "
                                       "learn after the cut."})
    train_sequences = fields.Integer()
    val_sequences = fields.Integer()
    train_tokens = fields.Integer()
    val_tokens = fields.Integer()
    steps_per_epoch = fields.Integer()
    total_steps = fields.Integer()
    method = fields.String(metadata={"enum": ["lora", "full", "qlora", "dpo"]})
    estimated_memory_bytes = fields.Integer(allow_none=True, metadata={
        "description": "What admission compares with LLM_TRAIN_API_WORKER_MEMORY_GB, per "
        "process (docs/trainer.md#memory)."})
    memory = fields.Dict(metadata={"description": "The estimate by component, bytes."})


class JobPreviewSchema(JobSchema):
    plan = fields.Nested(PlanSchema, metadata={
        "description": "Only in a dry run of a fine-tuning job: what the run will be."})


class StatusUpdateSchema(LeanLoadSchema):
    status = fields.Enum(JobStatus, by_value=True, required=True)
    error_message = Text(
        allow_none=True,
        load_default=None,
        validate=validate.Length(max=ERROR_MESSAGE_MAX_LENGTH),
        metadata={
            "description": "Kept with `failed` and `cancelled` (the reason). With any other "
            "target a non-empty value is rejected (422), and the transition clears the old "
            "one. An empty or blank string counts as null."
        },
    )


class JobListQuerySchema(LeanLoadSchema):
    status = fields.List(
        fields.Enum(JobStatus, by_value=True),
        metadata={"description": "Repeat to match any of several statuses."},
    )
    model_name = Text(validate=validate.Length(min=1, max=NAME_MAX_LENGTH))
    dataset = Text(validate=validate.Length(min=1, max=NAME_MAX_LENGTH))
    created_after = fields.AwareDateTime(
        default_timezone=timezone.utc,
        metadata={"description": "ISO 8601; without an offset it is taken as UTC."},
    )
    created_before = fields.AwareDateTime(default_timezone=timezone.utc)
    limit = fields.Integer(
        load_default=DEFAULT_LIMIT,
        validate=validate.Range(min=1, max=MAX_LIMIT),
        metadata={"description": f"Page size, default {DEFAULT_LIMIT}, at most {MAX_LIMIT}."},
    )
    cursor = fields.String(
        validate=validate.Length(max=200),
        metadata={"description": "Copy it from the `Link: rel=\"next\"` header. Any value "
                  "of this pattern is accepted (the page starts after that position); "
                  "another is a 400.", "pattern": CURSOR_PATTERN},
    )


class JobEventSchema(LeanDumpSchema):
    at = UTCDateTime()
    kind = fields.String(metadata={
        "description": "`created`, `status`, `claimed`, `requeued`, `lease_expired`, "
        "`paused`, `pause_requested`, `pause_withdrawn`, `resumed`, or `checkpoint_corrupt` "
        "(a resume skipped a checkpoint whose sha256 no longer matched; the message says "
        "which and where the run continued)."})
    from_status = fields.Enum(JobStatus, by_value=True, allow_none=True)
    to_status = fields.Enum(JobStatus, by_value=True, allow_none=True)
    actor = fields.String(allow_none=True,
                          metadata={"description": "The worker or client that caused it: "
                                    "`role:name` for API callers, a worker id for workers."})
    message = fields.String(allow_none=True)
    attempt = fields.Integer(allow_none=True)


class PageQuerySchema(Schema):
    limit = fields.Integer(load_default=DEFAULT_LIMIT, validate=validate.Range(min=1,
                                                                              max=MAX_LIMIT))
    cursor = fields.String(validate=validate.Length(max=200),
                           metadata={"description": "From the `Link` header; another "
                                     "value of this pattern is accepted, others are a 400.",
                                     "pattern": CURSOR_PATTERN})


METRICS_PAGE_MAX = 10_000


class MetricsQuerySchema(Schema):
    after_step = fields.Integer(load_default=-1, validate=validate.Range(min=-1, max=2**31 - 1),
                                metadata={"description": "Only steps after this one."})
    limit = fields.Integer(load_default=METRICS_PAGE_MAX,
                           validate=validate.Range(min=1, max=METRICS_PAGE_MAX),
                           metadata={"description": "Most points in one page. Pages end "
                                     "between steps; the `Link` header has the next one."})


def _reward(key: str, description: str) -> fields.Float:
    # The keys hold a '/', as TRL names them, so they are data keys of plain attributes.
    return fields.Float(allow_none=True, data_key=key, attribute=key,
                        metadata={"description": f"DPO jobs: {description}"})


class MetricPointSchema(Schema):
    step = fields.Integer()
    epoch = fields.Float(allow_none=True)
    train_loss = fields.Float(allow_none=True)
    val_loss = fields.Float(allow_none=True)
    val_perplexity = fields.Float(allow_none=True)
    val_token_accuracy = fields.Float(allow_none=True)
    train_token_accuracy = fields.Float(allow_none=True)
    lr = fields.Float(allow_none=True)
    tokens_per_s = fields.Float(allow_none=True)
    elapsed_s = fields.Float(allow_none=True)
    rewards_chosen = _reward("rewards/chosen", "mean reward of the chosen answers, "
                             "beta * (log pi - log ref).")
    rewards_rejected = _reward("rewards/rejected", "mean reward of the rejected answers.")
    rewards_margins = _reward("rewards/margins", "mean of chosen minus rejected reward.")
    rewards_accuracies = _reward("rewards/accuracies", "share of pairs whose chosen answer "
                                 "has the higher reward.")
    val_rewards_margins = _reward("val_rewards/margins", "rewards/margins on the "
                                  "validation pairs.")
    val_rewards_accuracies = _reward("val_rewards/accuracies", "rewards/accuracies on the "
                                     "validation pairs.")


class CreateQuerySchema(LeanLoadSchema):
    dry_run = fields.Boolean(load_default=False, metadata={
        "description": "Validate only: nothing is created (200 with the would-be job)."})


class TransitionErrorSchema(ErrorSchema):
    """The 409 of an illegal status change, which tells the client where it can go next."""

    current_status = fields.Enum(JobStatus, by_value=True)
    allowed_targets = fields.List(fields.Enum(JobStatus, by_value=True))


class StorageErrorSchema(ErrorSchema):
    """A refusal for lack of storage. Over the per-user storage quota, also `reason`
    (`storage_quota_exceeded`), what the user stores and the cap, in bytes."""

    reason = fields.String(metadata={"enum": ["storage_quota_exceeded"]})
    usage_bytes = fields.Integer()
    limit_bytes = fields.Integer()


class HealthSchema(Schema):
    status = fields.String(metadata={"example": "ok"})
    schema_version = fields.Integer()
    database = fields.String(metadata={"example": "sqlite"})
