"""A job's files: its training log (whole, tail, or followed live) and its artifacts.

Everything is read from the job's folder in the artifact store (artifacts.jobs); nothing
here writes. The reading itself is artifacts.logs; these views only wire it to HTTP.
"""

from __future__ import annotations

import os
import re
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from flask import Flask, Response, current_app, request, send_file
from flask.blueprints import BlueprintSetupState
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import RAISE, fields, validate

from llm_train_api.api.auth import current_principal, ensure_visible
from llm_train_api.api.base import (
    RUNTIME_KEY,
    ApiBlueprint,
    get_jobs,
    get_runtime,
    get_settings,
)
from llm_train_api.api.schema_base import Schema
from llm_train_api.api.schemas import UTCDateTime
from llm_train_api.api.streams import (
    DETACHED_STREAM_KEY,
    SLOTS_KEY,
    STREAM_HUB_KEY,
    DetachedStream,
    StreamSlots,
)
from llm_train_api.artifacts import jobs as jobfiles
from llm_train_api.artifacts import logs
from llm_train_api.artifacts.folder_archive import (
    ADAPTER_ARTIFACT,
    adapter_archive,
    adapter_entry,
)
from llm_train_api.domain import Job, JobNotFound, is_valid_job_id
from llm_train_api.training.datasets import is_inside

blp = ApiBlueprint(
    "artifacts",
    __name__,
    url_prefix="/jobs",
    description="A job's training log and the files it produced (checkpoints, metrics).",
)

MAX_TAIL = 100_000
# A plain file name as the trainer writes them: no separators, no leading dot (temporary
# files are hidden), nothing that needs decoding.
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_MIMETYPES = {".log": "text/plain", ".txt": "text/plain", ".json": "application/json",
              ".jsonl": "application/jsonl"}


@blp.record_once
def _count_streams(state: BlueprintSetupState) -> None:
    settings = state.app.extensions[RUNTIME_KEY].settings
    state.app.extensions[SLOTS_KEY] = StreamSlots(
        per_process=settings.LOG_STREAMS_PER_PROCESS, per_owner=settings.LOG_STREAMS_PER_USER)


def active_followers(app: Flask) -> int:
    """Log streams open in this process."""
    return app.extensions[SLOTS_KEY].active


class LogQuerySchema(Schema):
    tail = fields.Integer(validate=validate.Range(1, MAX_TAIL), metadata={
        "description": "Only the last N lines (with `follow`: start with them)."})
    follow = fields.Boolean(load_default=False, metadata={
        "description": "Stream the log as Server-Sent Events until the job ends."})


class ArtifactSchema(Schema):
    name = fields.String(required=True)
    size_bytes = fields.Integer(required=True)
    modified_at = UTCDateTime(required=True)
    kind = fields.String(required=True,
                         metadata={"enum": ["checkpoint", "metrics", "log", "spec", "adapter",
                                            "other"]})


def _job(job_id: str) -> Job:
    if not is_valid_job_id(job_id):
        raise JobNotFound(job_id)
    return ensure_visible(get_jobs().get_job(job_id))


# A response's `content` given with @blp.doc replaces the whole response object, so the
# description goes in both places.
_LOG_200 = ("The log as text/plain; with `follow=true`, a `text/event-stream`. Empty when the "
            "job has not logged anything yet.")
_ARTIFACT_200 = ("The file, as an attachment (`application/octet-stream` for checkpoints). "
                 "Supports conditional and range requests, except `adapter.tar`: a "
                 "fine-tuning job's LoRA adapter folder (`output/adapter`) as a tar archive "
                 "made while it is sent (extracted, it loads with peft's "
                 "`PeftModel.from_pretrained`).")


@blp.route("/<job_id>/logs")
class JobLogs(MethodView):
    @blp.arguments(LogQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, description=_LOG_200)
    @blp.doc(responses={"200": {"description": _LOG_200, "content": {
        "text/plain": {"schema": {"type": "string"}},
        # One Server-Sent Event: a log line (`data`, with its byte offset as `id`), or
        # `event: end` / `event: timeout` (reconnect with Last-Event-ID).
        "text/event-stream": {"schema": {"type": "object", "properties": {
            "event": {"type": "string"}, "data": {"type": "string"},
            "id": {"type": "string"}, "retry": {"type": "integer"}}}},
    }}})
    @blp.error(404, "No such job.")
    @blp.error(422, "Bad `tail` (1 to 100000) or `follow`, or an unknown parameter.")
    @blp.error(429, "With `follow`: this server process already holds "
               "LLM_TRAIN_API_LOG_STREAMS_PER_PROCESS streams, or the caller "
               "LLM_TRAIN_API_LOG_STREAMS_PER_USER; `Retry-After` says when to try again.")
    def get(self, args: dict[str, Any], job_id: str):
        """A job's training log

        Without parameters, the whole log as it is now. `tail=N` gives the last N lines,
        read backwards from the end in blocks (a huge log is never read whole).

        `follow=true` streams the log as Server-Sent Events: `retry:` first, then each line
        as `data: <line>` with `id: <byte offset after it>`; a comment every few seconds
        keeps idle connections open; `event: end` (data: the final status, or `deleted`)
        when the job reaches a final status, after the last lines. After
        LLM_TRAIN_API_LOG_FOLLOW_MAX_S seconds the server ends the stream with
        `event: timeout` instead and the client reconnects, sending `Last-Event-ID` to
        resume exactly where it stopped (EventSource does this by itself). Without `tail`
        or `Last-Event-ID` the stream starts at the beginning of the log.

        Streams are served off the request threads, one thread per server process for
        all of them; each process holds at most LLM_TRAIN_API_LOG_STREAMS_PER_PROCESS
        streams, and LLM_TRAIN_API_LOG_STREAMS_PER_USER for one user (429 beyond).
        """
        job = _job(job_id)
        path = jobfiles.log_path(get_runtime().data_dir, job)
        if args["follow"]:
            return _follow(job, path, args.get("tail"))
        log = logs.snapshot(path, args.get("tail"))
        if log is None:
            return Response(b"", mimetype="text/plain")
        return Response(log.chunks(), mimetype="text/plain",
                        headers={"Content-Length": str(log.size)})


def _follow(job: Job, path: Path, tail: int | None) -> Response:
    """The log as Server-Sent Events: handed to the server's stream hub where the server
    offers one (api.gunicorn_worker), else streamed from this thread."""
    start = logs.resume_offset(path, request.headers.get("Last-Event-ID"), tail)
    release = current_app.extensions[SLOTS_KEY].acquire(current_principal().name)
    max_s = float(get_settings().LOG_FOLLOW_MAX_S)
    headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    # The stream outlives the request context: it gets the store, not get_jobs().
    jobs = get_jobs()
    if request.environ.get(STREAM_HUB_KEY) is not None:
        follower = logs.LogFollower(path, start, max_s=max_s)
        request.environ[DETACHED_STREAM_KEY] = DetachedStream(
            follower, job.id, job.revision.created_us, jobs.job_states, release)
        return Response(iter(()), mimetype="text/event-stream", headers=headers)
    stream = logs.follow(path, start, final_status=logs.final_status_of(jobs.get_job, job),
                         max_s=max_s, on_close=release)
    return Response(stream, mimetype="text/event-stream", headers=headers)


def _kind(name: str) -> str:
    if name.endswith(".pt"):
        return "checkpoint"
    if name == "metrics.jsonl":
        return "metrics"
    if name.endswith(".log"):
        return "log"
    if name == "spec.json":
        return "spec"
    return "other"


def _artifact_path(folder: Path, name: str) -> Path | None:
    """The real path of the plain file `name` in `folder`, or None if it is not one."""
    if not _ARTIFACT_NAME.fullmatch(name) or ".." in name:
        return None
    try:
        root = folder.resolve(strict=True)
        real = (folder / name).resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a symlink loop
        return None
    if real == root or not is_inside(real, root) or not real.is_file():
        return None
    return real


@blp.route("/<job_id>/artifacts")
class JobArtifacts(MethodView):
    @blp.response(200, ArtifactSchema(many=True),
                  description="The job folder's files by name; empty before the job ran.")
    @blp.error(404, "No such job.")
    def get(self, job_id: str):
        """List a job's files (checkpoints, metrics, log, spec; a fine-tuning job's LoRA
        adapter as `adapter.tar`)"""
        folder = jobfiles.job_dir(get_runtime().data_dir, _job(job_id))
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
        adapter = adapter_entry(folder)
        if adapter is not None:
            out.append({"name": ADAPTER_ARTIFACT, "size_bytes": adapter[0], "kind": "adapter",
                        "modified_at": datetime.fromtimestamp(adapter[1], timezone.utc)})
        for name in names:
            real = _artifact_path(folder, name)
            if real is None:
                continue
            try:
                st = real.stat()
            except OSError:
                continue  # removed meanwhile
            out.append({"name": name, "size_bytes": st.st_size, "kind": _kind(name),
                        "modified_at": datetime.fromtimestamp(st.st_mtime, timezone.utc)})
        return out


@blp.route("/<job_id>/artifacts/<name>")
class JobArtifact(MethodView):
    @blp.response(200, description=_ARTIFACT_200)
    @blp.doc(responses={"200": {"description": _ARTIFACT_200, "content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    @blp.error(404, "No such job, or no such plain file in its folder (names with path "
               "separators, '..', a leading dot, or symlinks leading outside are refused).")
    def get(self, job_id: str, name: str):
        """Download one of a job's files"""
        folder = jobfiles.job_dir(get_runtime().data_dir, _job(job_id))
        archive = adapter_archive(folder) if name == ADAPTER_ARTIFACT else None
        if archive is not None:
            return Response(archive, mimetype="application/x-tar", direct_passthrough=True,
                            headers={"Content-Length": str(archive.size),
                                     "Content-Disposition":
                                     f'attachment; filename="{ADAPTER_ARTIFACT}"'})
        real = _artifact_path(folder, name)
        if real is None:
            abort(404, message=f"Job {job_id!r} has no file {name!r}.")
        mimetype = _MIMETYPES.get(Path(name).suffix, "application/octet-stream")
        return send_file(real, mimetype=mimetype, as_attachment=True, download_name=name,
                         conditional=True, max_age=0)
