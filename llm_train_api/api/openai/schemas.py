"""Request and response schemas of `/v1`, after OpenAI's API reference: what the OpenAPI
document states and what the views validate. Objects are built by
services.openai_compat.objects; these schemas describe them."""

from __future__ import annotations

from typing import Any

from marshmallow import ValidationError, fields, validate, validates

from llm_train_api.api.schema_base import Schema
from llm_train_api.api.schemas import Text
from llm_train_api.services.openai_compat.names import SUFFIX_PATTERN
from llm_train_api.services.openai_compat.statuses import OPENAI_STATUSES

MAX_METADATA_PAIRS = 16
METADATA_KEY_MAX = 64
METADATA_VALUE_MAX = 512
JOBS_DEFAULT_LIMIT = 20
EVENTS_DEFAULT_LIMIT = 20
CHECKPOINTS_DEFAULT_LIMIT = 10
MAX_PAGE = 100
FILES_DEFAULT_LIMIT = 10_000
AUTO_OR_NUMBER = {"oneOf": [{"type": "string", "enum": ["auto"]}, {"type": "number"}]}


class _Metadata(fields.Dict):
    def __init__(self, **kwargs: Any) -> None:
        super().__init__(keys=Text(validate=validate.Length(max=METADATA_KEY_MAX)),
                         values=Text(validate=validate.Length(max=METADATA_VALUE_MAX)),
                         **kwargs)


class FineTuningJobCreateSchema(Schema):
    model = Text(required=True, validate=validate.Length(min=1, max=256),
                 metadata={"description": "A model of this service (GET /v1/models)."})
    training_file = Text(required=True, validate=validate.Length(min=1, max=256),
                         metadata={"description": "A file id (POST /v1/files), or a "
                                   "dataset name of the native API."})
    validation_file = Text(allow_none=True, load_default=None,
                           validate=validate.Length(min=1, max=256))
    hyperparameters = fields.Dict(keys=fields.String(), allow_none=True, load_default=None,
                                  metadata={"description": "Deprecated in OpenAI's API for "
                                            "`method`: n_epochs, batch_size, "
                                            "learning_rate_multiplier ('auto' or a number)."})
    method = fields.Dict(keys=fields.String(), allow_none=True, load_default=None,
                         metadata={"description": "`{\"type\": \"supervised\", "
                                   "\"supervised\": {\"hyperparameters\": {...}}}` or "
                                   "`{\"type\": \"dpo\", \"dpo\": {\"hyperparameters\": "
                                   "{...}}}` (DPO adds `beta`, and needs a preference "
                                   "training file); `reinforcement` is not supported."})
    suffix = Text(allow_none=True, load_default=None,
                  validate=validate.Regexp(SUFFIX_PATTERN, error="Up to 64 letters, digits, "
                                           "'_' or '-'."),
                  metadata={"description": "Part of the fine-tuned model's name."})
    seed = fields.Integer(strict=True, allow_none=True, load_default=None,
                          validate=validate.Range(min=0, max=2**31 - 1))
    metadata = _Metadata(allow_none=True, load_default=None,
                         metadata={"description": "Up to 16 string pairs (keys up to 64 "
                                   "characters, values up to 512)."})
    integrations = fields.List(fields.Dict(), allow_none=True, load_default=None,
                               metadata={"description": "Not supported: must be empty."})

    @validates("metadata")
    def _pairs(self, value: dict[str, str] | None, **_: Any) -> None:
        if value is not None and len(value) > MAX_METADATA_PAIRS:
            raise ValidationError(f"At most {MAX_METADATA_PAIRS} pairs.")

    @validates("integrations")
    def _no_integrations(self, value: list[Any] | None, **_: Any) -> None:
        if value:
            raise ValidationError("Integrations (Weights and Biases and others) are not "
                                  "supported by this service.")


class FineTuningJobListQuerySchema(Schema):
    after = Text(validate=validate.Length(min=1, max=128),
                 metadata={"description": "The id of the last job of the previous page."})
    limit = fields.Integer(load_default=JOBS_DEFAULT_LIMIT,
                           validate=validate.Range(min=1, max=MAX_PAGE))


class FineTuningEventListQuerySchema(Schema):
    after = Text(validate=validate.Length(min=1, max=128),
                 metadata={"description": "The id of the last event of the previous page."})
    limit = fields.Integer(load_default=EVENTS_DEFAULT_LIMIT,
                           validate=validate.Range(min=1, max=MAX_PAGE))


class FineTuningCheckpointListQuerySchema(Schema):
    after = Text(validate=validate.Length(min=1, max=128),
                 metadata={"description": "The id of the last checkpoint of the previous "
                           "page."})
    limit = fields.Integer(load_default=CHECKPOINTS_DEFAULT_LIMIT,
                           validate=validate.Range(min=1, max=MAX_PAGE))


class OpenAIFileListQuerySchema(Schema):
    after = Text(validate=validate.Length(min=1, max=128))
    limit = fields.Integer(load_default=FILES_DEFAULT_LIMIT,
                           validate=validate.Range(min=1, max=FILES_DEFAULT_LIMIT))
    order = fields.String(load_default="desc", validate=validate.OneOf(["asc", "desc"]))
    purpose = fields.String()


class FineTuningHyperparametersSchema(Schema):
    n_epochs = fields.Raw(metadata=AUTO_OR_NUMBER)
    batch_size = fields.Raw(metadata=AUTO_OR_NUMBER)
    learning_rate_multiplier = fields.Raw(metadata=AUTO_OR_NUMBER)
    beta = fields.Raw(metadata=AUTO_OR_NUMBER)


class FineTuningJobErrorSchema(Schema):
    code = fields.String(required=True)
    message = fields.String(required=True)
    param = fields.String(required=True, allow_none=True)


class FineTuningJobSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, metadata={"enum": ["fine_tuning.job"]})
    created_at = fields.Integer(required=True)
    error = fields.Nested(FineTuningJobErrorSchema, required=True, allow_none=True)
    fine_tuned_model = fields.String(required=True, allow_none=True, metadata={
        "description": "`ft:<base>:<org>[:<suffix>]:<job id>`: a model of this service."})
    finished_at = fields.Integer(required=True, allow_none=True)
    hyperparameters = fields.Nested(FineTuningHyperparametersSchema, required=True)
    method = fields.Dict(required=True)
    model = fields.String(required=True)
    organization_id = fields.String(required=True)
    result_files = fields.List(fields.String(), required=True)
    seed = fields.Integer(required=True, allow_none=True)
    status = fields.String(required=True, metadata={"enum": list(OPENAI_STATUSES)})
    trained_tokens = fields.Integer(required=True, allow_none=True)
    training_file = fields.String(required=True)
    validation_file = fields.String(required=True, allow_none=True)
    estimated_finish = fields.Integer(required=True, allow_none=True)
    integrations = fields.List(fields.Dict(), required=True)
    metadata = fields.Dict(keys=fields.String(), values=fields.String(), required=True,
                           allow_none=True)
    user_provided_suffix = fields.String(required=True, allow_none=True)


class _List(Schema):
    object = fields.String(required=True, metadata={"enum": ["list"]})
    has_more = fields.Boolean(required=True)


class FineTuningJobListSchema(_List):
    data = fields.List(fields.Nested(FineTuningJobSchema), required=True)


class FineTuningJobEventSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, metadata={"enum": ["fine_tuning.job.event"]})
    created_at = fields.Integer(required=True)
    level = fields.String(required=True, metadata={"enum": ["info", "warn", "error"]})
    message = fields.String(required=True)
    data = fields.Dict(required=True, allow_none=True)
    type = fields.String(required=True, metadata={"enum": ["message", "metrics"]})


class FineTuningEventListSchema(_List):
    data = fields.List(fields.Nested(FineTuningJobEventSchema), required=True)


class FineTuningCheckpointMetricsSchema(Schema):
    step = fields.Integer(required=True)
    train_loss = fields.Float(required=True, allow_none=True)
    train_mean_token_accuracy = fields.Float(required=True, allow_none=True)
    valid_loss = fields.Float(required=True, allow_none=True, metadata={
        "description": "The validation loss over the trainer's `eval_steps` batches, when "
        "the step was evaluated."})
    valid_mean_token_accuracy = fields.Float(required=True, allow_none=True)
    full_valid_loss = fields.Float(required=True, allow_none=True, metadata={
        "description": "Not measured by this service: null."})
    full_valid_mean_token_accuracy = fields.Float(required=True, allow_none=True, metadata={
        "description": "Not measured by this service: null."})


class FineTuningCheckpointSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True,
                           metadata={"enum": ["fine_tuning.job.checkpoint"]})
    created_at = fields.Integer(required=True)
    fine_tuned_model_checkpoint = fields.String(required=True, metadata={
        "description": "`<fine-tuned model name>:ckpt-step-<n>`; the checkpoint's files are "
        "`GET /jobs/{job_id}/checkpoints/{step}/archive` of the native API."})
    fine_tuning_job_id = fields.String(required=True)
    step_number = fields.Integer(required=True)
    metrics = fields.Nested(FineTuningCheckpointMetricsSchema, required=True)


class FineTuningCheckpointListSchema(_List):
    data = fields.List(fields.Nested(FineTuningCheckpointSchema), required=True)
    first_id = fields.String(required=True, allow_none=True)
    last_id = fields.String(required=True, allow_none=True)


class OpenAIFileSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, metadata={"enum": ["file"]})
    bytes = fields.Integer(required=True)
    created_at = fields.Integer(required=True)
    filename = fields.String(required=True)
    purpose = fields.String(required=True)
    status = fields.String(required=True)
    status_details = fields.String(required=True, allow_none=True)
    expires_at = fields.Integer(required=True, allow_none=True)


class OpenAIFileListSchema(_List):
    data = fields.List(fields.Nested(OpenAIFileSchema), required=True)
    first_id = fields.String(allow_none=True)
    last_id = fields.String(allow_none=True)


class OpenAIFileDeletedSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, metadata={"enum": ["file"]})
    deleted = fields.Boolean(required=True)


class OpenAIModelSchema(Schema):
    id = fields.String(required=True)
    object = fields.String(required=True, metadata={"enum": ["model"]})
    created = fields.Integer(required=True)
    owned_by = fields.String(required=True)


class OpenAIModelListSchema(Schema):
    object = fields.String(required=True, metadata={"enum": ["list"]})
    data = fields.List(fields.Nested(OpenAIModelSchema), required=True)
