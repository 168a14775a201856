"""`/v1/files`: OpenAI's file endpoints over datasets (services.openai_compat.files), and
the metrics CSV of a succeeded job (a `result_files` id), generated when read."""

from __future__ import annotations

from typing import Any

from flask import Response, request, send_file
from flask.views import MethodView
from flask_smorest import abort

from llm_train_api.api.auth import Role, current_principal, ensure_visible, require_role
from llm_train_api.api.base import get_jobs, get_runtime, get_settings
from llm_train_api.api.openai.base import OpenAIBlueprint, page
from llm_train_api.api.openai.schemas import (
    OpenAIFileDeletedSchema,
    OpenAIFileListQuerySchema,
    OpenAIFileListSchema,
    OpenAIFileSchema,
)
from llm_train_api.artifacts import datasets as dataset_files
from llm_train_api.domain import Job, JobNotFound, JobStatus, is_valid_job_id
from llm_train_api.services.openai_compat import files as openai_files
from llm_train_api.services.openai_compat.hyperparams import TranslationError
from llm_train_api.services.openai_compat.names import job_of_result_file
from llm_train_api.services.openai_compat.objects import (
    file_object,
    metrics_csv,
    result_file_object,
)

blp = OpenAIBlueprint("openai_files", __name__, url_prefix="/v1/files",
                      description="OpenAI-compatible files: the training data of "
                      "fine-tuning jobs (datasets underneath).")

UPLOAD_ENDPOINT = "openai_files.Files"
# Room for the multipart envelope around the file itself.
_MULTIPART_SLACK = 64 * 1024


@blp.before_request
def _upload_limit() -> None:
    # An upload has the dataset limit, not the JSON one (MAX_CONTENT_LENGTH).
    if request.endpoint == UPLOAD_ENDPOINT and request.method == "POST":
        request.max_content_length = get_settings().MAX_DATASET_BYTES + _MULTIPART_SLACK


def _result_job(file_id: str) -> Job | None:
    """The succeeded job whose result file `file_id` is (None: not a result file id)."""
    job_id = job_of_result_file(file_id)
    if job_id is None:
        return None
    if not is_valid_job_id(job_id):
        raise dataset_files.NotFound(f"No such file: {file_id!r}.")
    try:
        job = ensure_visible(get_jobs().get_job(job_id))
    except JobNotFound:
        raise dataset_files.NotFound(f"No such file: {file_id!r}.") from None
    if job.status is not JobStatus.SUCCEEDED:
        raise dataset_files.NotFound(f"No such file: {file_id!r}.")
    return job


def _result_csv(job: Job) -> bytes:
    return metrics_csv([{"step": step, **data}
                        for _seq, step, _at, data in get_jobs().metric_rows(job.id)])


@blp.route("")
class Files(MethodView):
    @blp.response(200, OpenAIFileSchema, description="The stored file.")
    @blp.error(400, "No `file` part, a `purpose` other than `fine-tune`, or content that is "
               "not a JSON Lines dataset (the message names the line).")
    @blp.error(409, "A conflicting dataset.")
    @blp.error(413, "Larger than LLM_TRAIN_API_MAX_DATASET_BYTES.")
    @blp.error(415, "Not multipart/form-data.")
    @blp.error(429, "A per-user limit: LLM_TRAIN_API_MAX_DATASETS_PER_USER files, or the "
               "storage quota (code `storage_quota_exceeded`).")
    @blp.error(507, "The disk is full: nothing was stored.")
    @blp.doc(requestBody={"required": True, "content": {"multipart/form-data": {"schema": {
        "type": "object", "required": ["file", "purpose"],
        "properties": {"file": {"type": "string", "format": "binary"},
                       "purpose": {"type": "string", "enum": [openai_files.PURPOSE]}}}}}})
    def post(self):
        """Upload a file (OpenAI's `files.create`, `purpose=fine-tune`)

        The file becomes a dataset of the caller's, named by its id, with the same checks,
        caps and storage quota as `PUT /datasets/{name}`: JSON Lines of chat, instruction,
        text or preference records (OpenAI's `input`/`preferred_output`/
        `non_preferred_output` shape or TRL's, for DPO jobs).
        """
        principal = require_role(Role.ADMIN, Role.USER)
        if request.mimetype != "multipart/form-data":
            abort(415, message="Content-Type must be multipart/form-data (got "
                  f"{request.mimetype or 'none'}).")
        purpose = request.form.get("purpose")
        if purpose != openai_files.PURPOSE:
            raise TranslationError(f"purpose must be {openai_files.PURPOSE!r} (the only "
                                   f"purpose this service stores), got {purpose!r}.",
                                   "purpose")
        upload = request.files.get("file")
        if upload is None:
            raise TranslationError("A multipart `file` part is required.", "file")
        filename = (upload.filename or "upload.jsonl")[:openai_files.FILENAME_MAX_LENGTH]
        stored = openai_files.upload(get_runtime().data_dir, principal,
                                     filename.replace("\x00", ""),
                                     dataset_files.read_chunks(upload.stream),
                                     jobs=get_jobs(), settings=get_settings())
        return file_object(stored)

    @blp.arguments(OpenAIFileListQuerySchema(), location="query")
    @blp.response(200, OpenAIFileListSchema, description="The caller's uploaded files.")
    @blp.error(400, "Invalid query parameters, or an `after` that is not one of the files.")
    def get(self, args: dict[str, Any]):
        """List files (newest first unless `order=asc`)"""
        found = openai_files.list_files(get_runtime().data_dir, current_principal())
        if args.get("purpose") not in (None, openai_files.PURPOSE):
            found = []
        if args["order"] == "asc":
            found.reverse()
        if "after" in args:
            ids = [f.id for f in found]
            if args["after"] not in ids:
                raise TranslationError(f"after: no file {args['after']!r} in this list.",
                                       "after")
            found = found[ids.index(args["after"]) + 1:]
        shown = [file_object(f) for f in found[:args["limit"]]]
        return page(shown, len(found) > args["limit"],
                    first_id=shown[0]["id"] if shown else None,
                    last_id=shown[-1]["id"] if shown else None)


@blp.route("/<file_id>")
class FileResource(MethodView):
    @blp.response(200, OpenAIFileSchema)
    @blp.error(404, "No such file (or another user's).")
    def get(self, file_id: str):
        """Get a file's description"""
        job = _result_job(file_id)
        if job is not None:
            return result_file_object(job, len(_result_csv(job)))
        return file_object(openai_files.get_file(get_runtime().data_dir,
                                                 current_principal(), file_id))

    @blp.response(200, OpenAIFileDeletedSchema)
    @blp.error(400, "A result file: it is part of its job (delete the job instead).")
    @blp.error(404, "No such file (or another user's).")
    @blp.error(409, "Queued or running jobs train on it (named in the message).")
    def delete(self, file_id: str):
        """Delete a file and its dataset"""
        principal = require_role(Role.ADMIN, Role.USER)
        if _result_job(file_id) is not None:
            raise TranslationError("A result file is generated from its job and cannot be "
                                   "deleted on its own; delete the job "
                                   "(DELETE /jobs/{id}) instead.", "file_id")
        openai_files.delete_file(get_runtime().data_dir, principal, file_id, jobs=get_jobs())
        return {"id": file_id, "object": "file", "deleted": True}


@blp.route("/<file_id>/content")
class FileContent(MethodView):
    @blp.response(200, description="The file's bytes.", content_type="application/octet-stream")
    @blp.error(404, "No such file (or another user's).")
    def get(self, file_id: str):
        """Download a file's content (a result file: its step_metrics.csv)"""
        job = _result_job(file_id)
        if job is not None:
            return Response(_result_csv(job), mimetype="text/csv")
        path = openai_files.file_path(get_runtime().data_dir, current_principal(), file_id)
        return send_file(path, mimetype="application/octet-stream", conditional=False)
