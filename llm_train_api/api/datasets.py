"""Datasets: upload (raw, streamed), list, inspect and delete the files jobs train on.

Files live under `DATA_DIR/datasets/`, where the trainer's `resolve_dataset` finds them;
metadata in `DATA_DIR/datasets/.meta/` (see `llm_train_api.artifacts.datasets`). Those are the
published datasets, which admins upload and everyone may use; a user's own datasets live
in a home of their own (see `llm_train_api.artifacts.homes`) and only that user sees them.
Who reads and writes which is services.datasets; these views parse and serialise.
"""

from __future__ import annotations

from flask import Response, request
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import fields

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
from llm_train_api.artifacts import datasets as dataset_files
from llm_train_api.services import datasets as dataset_access

blp = ApiBlueprint(
    "datasets",
    __name__,
    url_prefix="/datasets",
    description="Datasets jobs train on: upload, list, inspect, delete.",
)

UPLOAD_ENDPOINT = "datasets.DatasetResource"
TEXT_TYPES = frozenset({"text/plain"})
JSONL_TYPES = frozenset({"application/jsonl", "application/x-ndjson", "application/json-lines"})
# Types that say nothing about the format: the name's suffix must then decide.
NEUTRAL_TYPES = frozenset({"", "application/octet-stream"})


class DatasetSchema(Schema):
    name = fields.String(required=True, metadata={"description": "The name jobs use."})
    format = fields.String(required=True, metadata={"enum": ["txt", "jsonl", "folder"]})
    sha256 = fields.String(allow_none=True,
                           metadata={"description": "Of the file's bytes; null for folders."})
    size_bytes = fields.Integer(required=True)
    lines = fields.Integer(allow_none=True,
                           metadata={"description": "Newline-separated lines; null for folders."})
    kind = fields.String(allow_none=True, metadata={
        "enum": ["chat", "instruction", "preference", "text"],
        "description": "What the records are: chat ({\"messages\": [...]}), instruction "
        "({\"prompt\", \"completion\"}), preference ({\"prompt\", \"chosen\", "
        "\"rejected\"} or {\"input\", \"preferred_output\", \"non_preferred_output\"}: "
        "for method dpo) or text ({\"text\"} records, or a .txt file); null for folders. "
        "Fine-tuning masks the loss by it (docs/trainer.md)."})
    created_at = UTCDateTime(required=True,
                             metadata={"description": "When this version was stored."})
    builtin = fields.Boolean(required=True,
                             metadata={"description": "Shipped with the service; read-only."})
    owner = fields.String(allow_none=True, metadata={
        "description": "The user whose own dataset this is; null for built-in and published "
        "datasets, which everyone may use."})


@blp.before_request
def _dataset_upload_limit() -> None:
    # The upload has its own limit instead of the JSON one (MAX_CONTENT_LENGTH); Werkzeug
    # then 413s a Content-Length above it before anything is read.
    if request.endpoint == UPLOAD_ENDPOINT and request.method == "PUT":
        request.max_content_length = get_settings().MAX_DATASET_BYTES


@blp.route("")
class Datasets(MethodView):
    @blp.response(200, DatasetSchema(many=True),
                  description="Built-in datasets first, then the stored ones by name.")
    def get(self):
        """List datasets: built-in, published, then (for a user) the caller's own"""
        return dataset_access.list_visible(get_runtime().data_dir, current_principal())


@blp.route("/<name>")
class DatasetResource(MethodView):
    @blp.response(200, DatasetSchema)
    @blp.error(404, "No such dataset (also for names that could never exist, such as "
               "'..' or names with path separators).")
    def get(self, name: str):
        """Get a dataset's metadata (a user's own first, then the published one)"""
        return dataset_access.get_visible(get_runtime().data_dir, current_principal(), name)

    @blp.response(201, DatasetSchema, description="Created.", headers={
        "Location": {"description": "URL of the dataset.", "schema": {"type": "string"}}})
    @blp.alt_response(200, schema=DatasetSchema, description="Replaced an existing dataset.")
    @blp.error(403, "Built-in datasets (the 'builtin:' prefix) are read-only.")
    @blp.error(404, "Not a dataset URL (a path separator in the name, such as '%2F').")
    @blp.error(409, "The dataset is used by queued or running jobs (named in the message), "
               "or it is a folder managed on disk.")
    @blp.alt_response(413, schema=StorageErrorSchema, description="Body larger than "
                      "LLM_TRAIN_API_MAX_DATASET_BYTES; or, for a user, an upload that would "
                      "take their storage (own datasets plus job folders) over "
                      "LLM_TRAIN_API_MAX_STORAGE_GB_PER_USER: then `reason` is "
                      "`storage_quota_exceeded`, with `usage_bytes` and `limit_bytes`. "
                      "Nothing was stored.")
    @blp.alt_response(507, schema=StorageErrorSchema, description="The disk is full: "
                      "nothing was stored. (A dataset is stored once it is renamed into "
                      "place; a full disk after that still answers 201 or 200.)")
    @blp.error(429, "The user already has LLM_TRAIN_API_MAX_DATASETS_PER_USER datasets.")
    @blp.error(415, "Content-Type is not text/plain or JSON Lines, and the name has no "
               ".txt/.jsonl suffix; or the two disagree.")
    @blp.error(422, "Invalid name (letters, digits, '.', '_', '-', no '..', no leading dot), "
               "text that is not UTF-8, or a JSON Lines line that is not an object with a "
               "string 'text' field (the message names the line); an empty dataset.")
    @blp.doc(requestBody={
        "required": True,
        "description": "The raw dataset, streamed to disk (chunked transfer encoding is "
        "fine). UTF-8 text, or JSON Lines whose objects have a string `text` field; not "
        "empty.",
        # Text is a non-empty string; JSON Lines stays binary, since a string schema cannot
        # state its per-line shape (the 422 says which line is wrong).
        "content": {"text/plain": {"schema": {"type": "string", "minLength": 1}},
                    **{t: {"schema": {"type": "string", "format": "binary", "minLength": 1}}
                       for t in sorted(JSONL_TYPES)}},
    })
    def put(self, name: str):
        """Upload or replace a dataset

        The format comes from Content-Type (`text/plain` → `.txt`; `application/jsonl`,
        `application/x-ndjson`, `application/json-lines` → `.jsonl`), or from a `.txt` /
        `.jsonl` suffix of the name (which is then not part of the dataset's name). The
        body is validated and hashed while it streams to a temporary file, which replaces
        the old version atomically only once complete and valid.

        A user's upload is their own dataset, seen by them alone; an admin's is published
        for everyone.
        """
        principal = require_role(Role.ADMIN, Role.USER)
        stem, fmt = _upload_format(name)
        result = dataset_access.upload(get_runtime().data_dir, principal, stem, fmt,
                                       dataset_files.read_chunks(request.stream),
                                       jobs=get_jobs(), settings=get_settings())
        info = result.info
        if result.created:
            location = public_url_for("datasets.DatasetResource", name=stem)
            return info, 201, {"Location": location}
        return info, 200

    @blp.response(204, description="Deleted.")
    @blp.error(403, "Built-in datasets are read-only; published ones can only be deleted by "
               "an admin.")
    @blp.error(404, "No such dataset.")
    @blp.error(409, "The dataset is used by queued or running jobs (named in the message), "
               "or it is a folder managed on disk.")
    def delete(self, name: str):
        """Delete a dataset (a user's own; an admin's: the published one)"""
        principal = require_role(Role.ADMIN, Role.USER)
        dataset_access.delete(get_runtime().data_dir, principal, name, jobs=get_jobs())
        return Response(status=204)


def _upload_format(name: str) -> tuple[str, str]:
    stem, suffix_fmt = dataset_files.split_name(name)
    mimetype = request.mimetype or ""
    if mimetype in TEXT_TYPES:
        charset = request.mimetype_params.get("charset", "utf-8").lower()
        if charset not in ("utf-8", "utf8"):
            abort(415, message=f"Text datasets must be UTF-8 (got charset={charset}).")
        type_fmt: str | None = "txt"
    elif mimetype in JSONL_TYPES:
        type_fmt = "jsonl"
    elif mimetype in NEUTRAL_TYPES:
        type_fmt = None
    else:
        abort(415, message=f"Content-Type {mimetype!r} is not a dataset format: use "
              "text/plain or application/jsonl (or a .txt/.jsonl suffix in the name).")
    if type_fmt and suffix_fmt and type_fmt != suffix_fmt:
        abort(415, message=f"Content-Type {mimetype!r} says {type_fmt!r} but the name "
              f"{name!r} says {suffix_fmt!r}.")
    fmt = type_fmt or suffix_fmt
    if fmt is None:
        abort(415, message="Cannot tell the dataset format: send Content-Type text/plain or "
              "application/jsonl, or end the name with .txt or .jsonl.")
    return stem, fmt
