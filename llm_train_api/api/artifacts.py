"""A job's files: its training log (whole, tail, or followed live) and its artifacts.

Everything is read from the job's folder in the artifact store,
`jobfiles.job_dir(DATA_DIR, job)`; nothing here writes.
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, BinaryIO

from flask import Response, request, send_file
from flask.views import MethodView
from flask_smorest import abort
from marshmallow import RAISE, Schema, fields, validate

from llm_train_api.api.auth import ensure_visible
from llm_train_api.api.base import ApiBlueprint, get_jobs, get_runtime, get_settings
from llm_train_api.api.schemas import UTCDateTime
from llm_train_api.artifacts import jobs as jobfiles
from llm_train_api.domain import Job, JobNotFound, is_valid_job_id
from llm_train_api.store.jobs import JobRepository
from llm_train_api.training.datasets import is_inside

blp = ApiBlueprint(
    "artifacts",
    __name__,
    url_prefix="/jobs",
    description="A job's training log and the files it produced (checkpoints, metrics).",
)

READ_BLOCK = 64 * 1024
MAX_TAIL = 100_000
POLL_S = 0.5
KEEPALIVE_S = 5.0
RETRY_MS = 1000
# A plain file name as the trainer writes them: no separators, no leading dot (temporary
# files are hidden), nothing that needs decoding.
_ARTIFACT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,254}$")
_MIMETYPES = {".log": "text/plain", ".txt": "text/plain", ".json": "application/json",
              ".jsonl": "application/jsonl"}


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
                         metadata={"enum": ["checkpoint", "metrics", "log", "spec", "other"]})


def _job(job_id: str) -> Job:
    if not is_valid_job_id(job_id):
        raise JobNotFound(job_id)
    return ensure_visible(get_jobs().get_job(job_id))


# ----------------------------------------------------------------------------- logs

_followers = 0
_followers_lock = threading.Lock()


def active_followers() -> int:
    """Log streams open in this process (each holds one gthread worker thread)."""
    return _followers


def _count_follower(delta: int) -> None:
    global _followers
    with _followers_lock:
        _followers += delta


@blp.route("/<job_id>/logs")
class JobLogs(MethodView):
    @blp.arguments(LogQuerySchema, location="query", unknown=RAISE)
    @blp.response(200, description="The log as text/plain; with `follow=true`, a "
                  "`text/event-stream`. Empty when the job has not logged anything yet.")
    @blp.doc(responses={"200": {"content": {
        "text/plain": {"schema": {"type": "string"}},
        # One Server-Sent Event: a log line (`data`, with its byte offset as `id`), or
        # `event: end` / `event: timeout` (reconnect with Last-Event-ID).
        "text/event-stream": {"schema": {"type": "object", "properties": {
            "event": {"type": "string"}, "data": {"type": "string"},
            "id": {"type": "string"}, "retry": {"type": "integer"}}}},
    }}})
    @blp.error(404, "No such job.")
    @blp.error(422, "Bad `tail` (1 to 100000) or `follow`, or an unknown parameter.")
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

        Each follower holds one gunicorn gthread worker thread for at most
        LOG_FOLLOW_MAX_S seconds; size LLM_TRAIN_API_THREADS for the expected followers.
        """
        job = _job(job_id)
        path = jobfiles.log_path(str(get_runtime().data_dir), job)
        if args["follow"]:
            start = _resume_offset(path, args.get("tail"))
            stream = _follow(get_jobs(), job, path, start,
                             get_settings().LOG_FOLLOW_MAX_S)
            return Response(stream, mimetype="text/event-stream",
                            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        try:
            f = open(path, "rb")  # noqa: SIM115 - closed by the response generator
        except FileNotFoundError:
            return Response(b"", mimetype="text/plain")
        size = os.fstat(f.fileno()).st_size
        start = _tail_offset(f, size, args["tail"]) if "tail" in args else 0
        return Response(_read_range(f, start, size), mimetype="text/plain",
                        headers={"Content-Length": str(size - start)})


def _read_range(f: BinaryIO, start: int, end: int) -> Iterator[bytes]:
    """Bytes [start, end) of `f` (a snapshot of a growing file), then close it."""
    try:
        f.seek(start)
        remaining = end - start
        while remaining > 0:
            block = f.read(min(READ_BLOCK, remaining))
            if not block:
                break
            remaining -= len(block)
            yield block
    finally:
        f.close()


def _tail_offset(f: BinaryIO, size: int, n: int) -> int:
    """Where the last `n` lines of the first `size` bytes of `f` start, reading backwards."""
    if size == 0:
        return 0
    f.seek(size - 1)
    end = size - 1 if f.read(1) == b"\n" else size  # a final newline ends the last line
    found = 0
    pos = end
    while pos > 0:
        start = max(0, pos - READ_BLOCK)
        f.seek(start)
        block = f.read(pos - start)
        idx = len(block)
        while (idx := block.rfind(b"\n", 0, idx)) >= 0:
            found += 1
            if found == n:
                return start + idx + 1
        pos = start
    return 0


def _resume_offset(path: Path, tail: int | None) -> int:
    last_id = request.headers.get("Last-Event-ID", "").strip()
    # Ids are byte offsets; one that is not (or is absurdly long) is ignored like a missing one.
    if last_id.isdigit() and len(last_id) <= 19:
        return int(last_id)
    if tail is None:
        return 0
    try:
        with open(path, "rb") as f:
            return _tail_offset(f, os.fstat(f.fileno()).st_size, tail)
    except FileNotFoundError:
        return 0


def _sse_event(data: bytes, offset: int) -> bytes:
    # SSE treats CR, LF and CRLF alike as line ends: each piece becomes a data field and
    # the client joins them with "\n", so a progress bar's \r cannot break the framing.
    text = data.decode("utf-8", errors="replace")
    if text.endswith("\r"):  # a CRLF line whose LF was the split point: no empty last piece
        text = text[:-1]
    pieces = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    body = "".join(f"data: {piece}\n" for piece in pieces)
    return f"id: {offset}\n{body}\n".encode()


def _follow(store: JobRepository, job: Job, path: Path, offset: int, max_s: float):
    """The SSE stream. Its own store access: it runs after the request context is gone."""

    def events() -> Iterator[bytes]:
        nonlocal offset
        _count_follower(+1)
        f: BinaryIO | None = None
        partial = b""
        deadline = time.monotonic() + max_s
        last_sent = time.monotonic()
        try:
            yield f"retry: {RETRY_MS}\n\n".encode()
            while True:
                final = _final_status(store, job)
                if f is None:
                    try:
                        f = open(path, "rb")  # noqa: SIM115 - closed in finally
                    except FileNotFoundError:
                        pass
                if f is not None:
                    if os.fstat(f.fileno()).st_size < offset:
                        offset, partial = 0, b""  # the log was truncated: start over
                    f.seek(offset)
                    while block := f.read(READ_BLOCK):
                        data = partial + block
                        cut = data.rfind(b"\n") + 1
                        partial = data[cut:]
                        start = offset - (len(data) - len(block))
                        offset += len(block)
                        out = []
                        pos = 0
                        for line in data[:cut].split(b"\n")[:-1]:
                            pos += len(line) + 1
                            out.append(_sse_event(line, start + pos))
                        if out:
                            last_sent = time.monotonic()
                            yield b"".join(out)
                if final is not None:
                    if partial:  # the last line had no newline: the job is over, send it
                        yield _sse_event(partial, offset)
                    yield f"event: end\ndata: {final}\n\n".encode()
                    return
                now = time.monotonic()
                if now >= deadline:
                    yield b"event: timeout\ndata: reconnect\n\n"
                    return
                if now - last_sent >= KEEPALIVE_S:
                    last_sent = now
                    yield b": keepalive\n\n"
                time.sleep(POLL_S)
        finally:  # also on GeneratorExit, when the client went away
            if f is not None:
                f.close()
            _count_follower(-1)

    return events()


def _final_status(store: JobRepository, job: Job) -> str | None:
    """The job's final status, `deleted`, or None while it may still log."""
    try:
        current = store.get_job(job.id)
    except JobNotFound:
        return "deleted"
    if current.revision.created_us != job.revision.created_us:
        return "deleted"  # deleted and re-created under the same id: another log
    return current.status.value if current.status.is_final else None


# ----------------------------------------------------------------------------- artifacts


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
        """List a job's files (checkpoints, metrics, log, spec)"""
        folder = jobfiles.job_dir(str(get_runtime().data_dir), _job(job_id))
        try:
            names = sorted(os.listdir(folder))
        except (FileNotFoundError, NotADirectoryError):
            return []
        out = []
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
    @blp.response(200, description="The file, as an attachment (`application/octet-stream` "
                  "for checkpoints). Supports conditional and range requests.")
    @blp.doc(responses={"200": {"content": {
        "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    @blp.error(404, "No such job, or no such plain file in its folder (names with path "
               "separators, '..', a leading dot, or symlinks leading outside are refused).")
    def get(self, job_id: str, name: str):
        """Download one of a job's files"""
        folder = jobfiles.job_dir(str(get_runtime().data_dir), _job(job_id))
        real = _artifact_path(folder, name)
        if real is None:
            abort(404, message=f"Job {job_id!r} has no file {name!r}.")
        mimetype = _MIMETYPES.get(Path(name).suffix, "application/octet-stream")
        return send_file(real, mimetype=mimetype, as_attachment=True, download_name=name,
                         conditional=True, max_age=0)
