"""A job's checkpoints: the list (step, time, metrics, size, sha256) and the download of
one, checked against its sha256 before a byte is sent. HTTP only: services.checkpoints
reads the manifest and verifies."""

from __future__ import annotations

from flask import Response
from flask.views import MethodView
from marshmallow import fields

from llm_train_api.api.auth import ensure_visible
from llm_train_api.api.base import ApiBlueprint, get_jobs, get_runtime
from llm_train_api.api.schema_base import Schema
from llm_train_api.artifacts.folder_archive import FolderArchive, visible_files
from llm_train_api.domain import Job, JobNotFound, is_valid_job_id
from llm_train_api.services import checkpoints

blp = ApiBlueprint(
    "checkpoints",
    __name__,
    url_prefix="/jobs",
    description="A job's checkpoints: listed with their metrics and sha256, downloaded "
                "verified.",
)


def _visible_job(job_id: str) -> Job:
    """The job, if it exists and the caller may see it; JobNotFound (404) otherwise."""
    if not is_valid_job_id(job_id):
        raise JobNotFound(job_id)
    return ensure_visible(get_jobs().get_job(job_id))


class CheckpointSchema(Schema):
    step = fields.Integer()
    created_at = fields.String(allow_none=True, metadata={
        "description": "When it was written (ISO 8601, UTC)."})
    metrics = fields.Dict(metadata={
        "description": "The metrics line of its step: train_loss, and where evaluated "
        "val_loss, val_perplexity, val_token_accuracy (or the preference trainer's own)."})
    size = fields.Integer(allow_none=True, metadata={"description": "Bytes, all files."})
    sha256 = fields.String(allow_none=True, metadata={
        "description": "The file's sha256 (built-in GPT: one .pt file); for a folder "
        "checkpoint (fine-tuning), the sha256 of its sorted `<name> <sha256>` lines, each "
        "file's hash being in `files`."})
    files = fields.Dict(metadata={"description": "File name to sha256."})
    status = fields.String(metadata={
        "enum": ["good", "corrupt"],
        "description": "`corrupt`: a resume found its bytes no longer match its sha256; it "
        "is skipped and never loaded."})
    is_best = fields.Boolean(metadata={
        "description": "The lowest val_loss of the kept checkpoints."})


_ARCHIVE_200 = ("The checkpoint as an uncompressed tar: a built-in GPT's `step-N.pt` "
                "(loads with `torch.load(weights_only=True)`), or a fine-tuning "
                "checkpoint's folder (trainable.safetensors, optimizer.safetensors, "
                "state.json). Sent only once its bytes match the recorded sha256.")


@blp.route("/<job_id>/checkpoints")
class JobCheckpoints(MethodView):
    @blp.response(200, CheckpointSchema(many=True),
                  description="Every checkpoint the job keeps, oldest first.")
    @blp.error(404, "No such job.")
    def get(self, job_id: str):
        """List a job's checkpoints

        The newest `keep_checkpoints` plus the best (lowest validation loss) are kept;
        an empty list when the job has written none yet."""
        return checkpoints.listing(get_runtime().data_dir, _visible_job(job_id))


@blp.route("/<job_id>/checkpoints/<int:step>/archive")
class JobCheckpointArchive(MethodView):
    @blp.response(200, description=_ARCHIVE_200)
    @blp.doc(responses={"200": {"description": _ARCHIVE_200, "content": {
        "application/x-tar": {"schema": {"type": "string", "format": "binary"}}}}})
    @blp.error(404, "No such job, or no checkpoint at that step.")
    @blp.error(409, "The checkpoint's bytes do not match its recorded sha256: it is "
               "corrupt and is not sent.")
    def get(self, job_id: str, step: int):
        """Download one checkpoint, verified"""
        job = _visible_job(job_id)
        path, entry = checkpoints.verified(get_runtime().data_dir, job, step)
        folder, names = ((path, visible_files(path)) if path.is_dir()
                         else (path.parent, [path.name]))
        archive = FolderArchive(folder, names)
        name = f"{job.id}-step-{step}.tar"
        return Response(archive, mimetype="application/x-tar", direct_passthrough=True,
                        headers={"Content-Length": str(archive.size),
                                 "Content-Disposition": f'attachment; filename="{name}"',
                                 "X-Checkpoint-Sha256": str(entry["sha256"])})
