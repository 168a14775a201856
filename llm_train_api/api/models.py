"""Models: the GPT configurations the built-in trainer builds, and Hugging Face-format
models imported as tar archives or found under LLM_TRAIN_API_MODEL_ROOTS.

Who sees and changes which is services.models; the files are artifacts.models (imports)
and artifacts.model_roots (root folders). These views parse and serialise.
"""

from __future__ import annotations

from flask import Response, request
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import fields, validate
from werkzeug.exceptions import RequestEntityTooLarge

from llm_train_api.api.auth import Role, current_principal, require_role
from llm_train_api.api.base import (
    ApiBlueprint,
    get_jobs,
    get_runtime,
    get_settings,
    public_url_for,
)
from llm_train_api.api.schema_base import Schema
from llm_train_api.api.schemas import StorageErrorSchema, UTCDateTime
from llm_train_api.domain import GIB
from llm_train_api.services import models as model_access

blp = ApiBlueprint(
    "models",
    __name__,
    url_prefix="/models",
    description="Models: the built-in GPTs, with their hyperparameter schemas, and Hugging "
    "Face-format models: import, list, describe, delete.",
)

UPLOAD_ENDPOINT = "models.ModelResource"
TAR_TYPES = ("application/x-tar", "application/gzip", "application/x-gzip")
# Types that say nothing about the format: the archive's first bytes decide.
NEUTRAL_TYPES = frozenset({"", "application/octet-stream"})


class HyperparameterSchema(Schema):
    name = fields.String(required=True)
    type = fields.String(required=True, metadata={
        "enum": ["integer", "number", "boolean", "string", "object",
                 "string or array of strings"],
        "description": "`object`: its keys are listed under `properties`."})
    default = fields.Raw(allow_none=True, metadata={"description": "Used when omitted."})
    doc = fields.String(required=True)
    nullable = fields.Boolean(required=True)
    minimum = fields.Raw(metadata={"type": "number", "description": "Inclusive lower bound."})
    exclusive_minimum = fields.Raw(metadata={"type": "number",
                                             "description": "Exclusive lower bound."})
    maximum = fields.Raw(metadata={"type": "number", "description": "Inclusive upper bound."})
    choices = fields.List(fields.String(), metadata={"description": "Allowed values."})
    properties = fields.List(fields.Nested(lambda: HyperparameterSchema()), metadata={
        "description": "`object` only: its keys, in this same shape."})


class ModelSchema(Schema):
    name = fields.String(required=True, metadata={"description": "The job's `model_name`."})
    kind = fields.String(required=True, metadata={
        "enum": ["builtin", "hf"],
        "description": "`builtin`: a GPT the built-in trainer builds from scratch; `hf`: a "
        "Hugging Face-format model folder."})
    param_count = fields.Integer(required=True, metadata={
        "description": "Parameters (for `hf`, from the tensor shapes of the safetensors "
        "headers)."})
    vocab_size = fields.Integer(allow_none=True, metadata={
        "description": "256 (bytes) for built-in models; from config.json for `hf`."})
    # Built-in models.
    n_layer = fields.Integer(metadata={"description": "Built-in models only."})
    n_head = fields.Integer(metadata={"description": "Built-in models only."})
    n_embd = fields.Integer(metadata={"description": "Built-in models only."})
    block_size = fields.Integer(metadata={"description": "Built-in models: longest context."})
    bias = fields.Boolean(metadata={"description": "Built-in models only."})
    description = fields.String(metadata={"description": "Built-in models only."})
    hyperparameters = fields.List(fields.Nested(HyperparameterSchema), metadata={
        "description": "The trainer's hyperparameters: a built-in model's own schema; for "
        "`hf`, the fine-tuning trainer's (in `GET /models/{name}` only)."})
    # Hugging Face-format models.
    architecture = fields.String(metadata={
        "description": "`hf` only: the causal-LM class config.json names, such as "
        "LlamaForCausalLM."})
    model_type = fields.String(allow_none=True,
                               metadata={"description": "`hf` only: config.json's model_type."})
    context_length = fields.Integer(allow_none=True, metadata={
        "description": "`hf` only: longest context (max_position_embeddings or equivalent)."})
    has_chat_template = fields.Boolean(metadata={
        "description": "`hf` only: chat_template.jinja/.json, or one in "
        "tokenizer_config.json."})
    size_bytes = fields.Integer(metadata={"description": "`hf` only: the model files."})
    sha256 = fields.String(metadata={
        "description": "`hf` only: sha256 over the sorted (file name, file sha256) pairs."})
    owner = fields.String(allow_none=True, metadata={
        "description": "`hf` only: the user whose own import this is; null for published "
        "models, which everyone may use."})
    created_at = UTCDateTime(metadata={"description": "`hf` only: when it was stored."})
    source = fields.String(metadata={
        "enum": ["upload", "root", "job"],
        "description": "`hf` only: `upload` (imported through the API), `root` (a folder "
        "under LLM_TRAIN_API_MODEL_ROOTS: read-only) or `job` (the merged result of a "
        "succeeded fine-tuning job, owned by the job's owner)."})
    base_model = fields.String(allow_none=True, metadata={
        "description": "`source: job` only: the model the job fine-tuned."})
    job_id = fields.String(allow_none=True, metadata={
        "description": "`source: job` only: the job that made it (it may since have been "
        "deleted; the model stays)."})
    method = fields.String(allow_none=True, metadata={
        "enum": ["lora", "full", None],
        "description": "`source: job` only: how it was fine-tuned."})


class OwnerArgs(Schema):
    owner = fields.String(validate=validate.Length(min=1, max=256), metadata={
        "description": "Admins: address this user's own import of that name."})


@blp.before_request
def _model_upload_limit() -> None:
    # The import has its own limit instead of the JSON one (MAX_CONTENT_LENGTH); Werkzeug
    # then 413s a Content-Length above it before anything is read.
    if request.endpoint == UPLOAD_ENDPOINT and request.method == "PUT":
        request.max_content_length = int(get_settings().MAX_MODEL_UPLOAD_GB * GIB)


def _place() -> model_access.Place:
    return model_access.Place.of(get_runtime().data_dir, get_settings())


@blp.route("")
class Models(MethodView):
    @blp.response(200, ModelSchema(many=True), description="Built-in models (smallest "
                  "first), published imports, users' imports (the caller's own; every "
                  "user's for an admin), then models under LLM_TRAIN_API_MODEL_ROOTS.")
    def get(self):
        """List models"""
        return model_access.list_visible(_place(), current_principal())


@blp.route("/<name>")
class ModelResource(MethodView):
    @blp.arguments(OwnerArgs, location="query", as_kwargs=True)
    @blp.response(200, ModelSchema)
    @blp.error(404, "No such model (also another user's, and names that could never "
               "exist).")
    def get(self, name: str, owner: str | None = None):
        """Get one model (a built-in one, the caller's own import, a published one)"""
        return model_access.get_visible(_place(), current_principal(), name, owner)

    @blp.response(201, ModelSchema, description="Created.", headers={
        "Location": {"description": "URL of the model.", "schema": {"type": "string"}}})
    @blp.alt_response(200, schema=ModelSchema, description="Replaced an existing model.")
    @blp.error(404, "Not a model URL (a path separator in the name, such as '%2F').")
    @blp.error(409, "The name is a built-in model's (in any case), the caller's "
               "fine-tuned model's, or, for an admin, a folder's under "
               "LLM_TRAIN_API_MODEL_ROOTS; or queued or running jobs name the model (named "
               "in the message).")
    @blp.alt_response(413, schema=StorageErrorSchema, description="The archive, or what "
                      "it unpacks to, is larger than LLM_TRAIN_API_MAX_MODEL_UPLOAD_GB; or, "
                      "for a user, it would take their storage (datasets, models, job "
                      "folders) over LLM_TRAIN_API_MAX_STORAGE_GB_PER_USER: then `reason` "
                      "is `storage_quota_exceeded`, with `usage_bytes` and `limit_bytes`. "
                      "Nothing was stored.")
    @blp.error(415, "Content-Type is not a tar archive (application/x-tar, "
               "application/gzip, application/x-gzip or application/octet-stream).")
    @blp.error(422, "Invalid name (letters, digits, '.', '_', '-', no '..', starting with a "
               "letter or digit); or the archive is refused, the message naming the member "
               "and why: not a tar stream, an absolute path, '..', a link, a device or "
               "fifo, a nested folder, a duplicate, too many members, a pickle weight "
               "file (*.bin, *.pt, *.pth, *.pkl, *.ckpt), a file that is not part of a "
               "model folder, a config.json that does not name a ForCausalLM "
               "architecture, a safetensors file whose header does not match its size, "
               "an index naming a missing file, no weights, no tokenizer.")
    @blp.alt_response(507, schema=StorageErrorSchema, description="The disk is full: "
                      "nothing was stored.")
    @blp.doc(requestBody={
        "required": True,
        "description": "A tar archive (plain or gzip-compressed; told apart by its first "
        "bytes) of a Hugging Face-format model folder, at the top level or inside one "
        "folder: config.json, *.safetensors (with model.safetensors.index.json when "
        "sharded), tokenizer files, optionally generation_config.json and a chat "
        "template. Streamed to disk; chunked transfer encoding is fine.",
        "content": {t: {"schema": {"type": "string", "format": "binary"}}
                    for t in (*TAR_TYPES, "application/octet-stream")},
    })
    def put(self, name: str):
        """Import or replace a Hugging Face-format model

        The archive is unpacked into a staging folder as it streams, checked as hostile
        input (see the 422), and moved into place whole. A user's import is their own,
        seen by them (and admins) alone, and counts against their storage quota; an
        admin's is published for everyone.
        """
        principal = require_role(Role.ADMIN, Role.USER)
        mimetype = request.mimetype or ""
        if mimetype not in TAR_TYPES and mimetype not in NEUTRAL_TYPES:
            abort(415, message=f"Content-Type {mimetype!r} is not a model archive: send a "
                  "tar archive as application/x-tar, or gzip-compressed as "
                  "application/gzip.")
        try:
            result = model_access.import_model(_place(), principal, name, request.stream,
                                               jobs=get_jobs(), settings=get_settings())
        except RequestEntityTooLarge:
            # Werkzeug's own cut-off of a chunked body at max_content_length.
            abort(413, message=f"The archive is larger than {request.max_content_length} "
                  "bytes (LLM_TRAIN_API_MAX_MODEL_UPLOAD_GB); nothing was stored.")
        if result.created:
            location = public_url_for(UPLOAD_ENDPOINT, name=name)
            return result.info, 201, {"Location": location}
        return result.info, 200

    @blp.arguments(OwnerArgs, location="query", as_kwargs=True)
    @blp.response(204, description="Deleted.")
    @blp.error(403, "A published model can only be deleted by an admin.")
    @blp.error(404, "No such model.")
    @blp.error(409, "A built-in model, or a folder under LLM_TRAIN_API_MODEL_ROOTS "
               "(managed on disk); or queued or running jobs name the model (named in the "
               "message). Deleting a fine-tuned model leaves its job.")
    def delete(self, name: str, owner: str | None = None):
        """Delete an imported model (a user's own; an admin's: the published one, or
        `owner`'s)"""
        principal = require_role(Role.ADMIN, Role.USER)
        model_access.delete_model(_place(), principal, name, jobs=get_jobs(), owner=owner)
        return Response(status=204)


# A response's `content` given with @blp.doc replaces the whole response object, so the
# description goes in both places.
_ARCHIVE_200 = ("The model's files as an uncompressed tar archive, bare names at the top "
                "level (config.json, *.safetensors, tokenizer files...): extracted into a "
                "folder, it loads with AutoModelForCausalLM.from_pretrained and "
                "AutoTokenizer.from_pretrained, and imports again with PUT. Streamed, with "
                "a Content-Length.")


@blp.route("/<name>/archive")
class ModelArchive(MethodView):
    @blp.arguments(OwnerArgs, location="query", as_kwargs=True)
    @blp.response(200, description=_ARCHIVE_200)
    @blp.doc(responses={"200": {"description": _ARCHIVE_200, "content": {
        "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
    @blp.error(404, "No such model (also another user's, and names that could never "
               "exist).")
    @blp.error(409, "A built-in GPT: the built-in trainer builds it from scratch, so it "
               "has no files (a trained one is a job's checkpoint, under "
               "/jobs/{id}/artifacts).")
    def get(self, name: str, owner: str | None = None):
        """Download a Hugging Face-format model as a tar archive

        Any model GET /models/{name} finds, with the same rules: an import (the caller's
        own, or a published one), a folder under LLM_TRAIN_API_MODEL_ROOTS, or the result
        of a fine-tuning job (a job's `fine_tuned_model`). The archive is made while it is
        sent, never in memory.
        """
        archive = model_access.model_archive(_place(), current_principal(), name, owner)
        return Response(archive, mimetype="application/x-tar", direct_passthrough=True,
                        headers={"Content-Length": str(archive.size),
                                 "Content-Disposition": f'attachment; filename="{name}.tar"'})
