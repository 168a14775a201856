"""`/v1/fine_tuning/jobs`: OpenAI's fine-tuning job endpoints over native jobs.

A job created here is a native job (services.job_creation.prepare_job: the same
admission, owner, quotas and workers) whose id is `ftjob-<hex>`, with api `openai`,
its metadata and suffix; every native job is listed here too, and every job made here is
in `GET /jobs`. Cancel, pause and resume are the native verbs (services.status_changes,
store.pausing) with the same ownership rules; checkpoints are the job's manifest
(services.checkpoints) as OpenAI's checkpoint objects.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from datetime import datetime, timezone
from typing import Any

from flask import request
from flask.views import MethodView
from marshmallow import RAISE

from llm_train_api.api.auth import (
    Role,
    current_principal,
    ensure_visible,
    owner_scope,
    require_role,
)
from llm_train_api.api.base import get_jobs, get_runtime, get_settings
from llm_train_api.api.openai.base import OpenAIBlueprint, page
from llm_train_api.api.openai.schemas import (
    FineTuningCheckpointListQuerySchema,
    FineTuningCheckpointListSchema,
    FineTuningEventListQuerySchema,
    FineTuningEventListSchema,
    FineTuningJobCreateSchema,
    FineTuningJobListQuerySchema,
    FineTuningJobListSchema,
    FineTuningJobSchema,
)
from llm_train_api.artifacts.model_errors import ModelNotFound
from llm_train_api.domain import Job, JobNotFound, is_valid_job_id
from llm_train_api.services import checkpoints, status_changes, storage
from llm_train_api.services.job_creation import builtin_executor, prepare_job, queued_cap
from llm_train_api.services.models import Place, resolve_for_owner
from llm_train_api.services.openai_compat.hyperparams import (
    TranslationError,
    native_hyperparameters,
)
from llm_train_api.services.openai_compat.names import (
    job_of_model_name,
    native_model_name,
    new_job_id,
)
from llm_train_api.services.openai_compat.objects import (
    OPENAI_API,
    checkpoint_object,
    fine_tuned_model_name,
    job_event_object,
    job_object,
    metrics_event_object,
)
from llm_train_api.store import pausing
from llm_train_api.store.pagination import JobQuery

blp = OpenAIBlueprint("openai_fine_tuning", __name__, url_prefix="/v1/fine_tuning/jobs",
                      description="OpenAI-compatible fine-tuning jobs: native jobs in "
                      "OpenAI's shape.")

CANCEL_ENDPOINT = "openai_fine_tuning.JobCancel"
PAUSE_ENDPOINT = "openai_fine_tuning.JobPause"
RESUME_ENDPOINT = "openai_fine_tuning.JobResume"
# How many jobs a metadata-filtered listing reads at most to fill one page.
MAX_SCAN = 10_000
_SCAN_PAGE = 200
_METADATA_FILTER = {
    "name": "metadata", "in": "query", "style": "deepObject", "explode": True,
    "required": False,
    "description": "Only jobs whose metadata has these pairs: `metadata[key]=value`.",
    # Values are strings by nature (a query string holds nothing else), so the schema
    # states only that the parameter is an object of pairs.
    "schema": {"type": "object"},
}


def checked_id(job_id: str) -> str:
    """`job_id`, or JobNotFound for an id no job can have: answered before the database."""
    if not is_valid_job_id(job_id):
        raise JobNotFound(job_id)
    return job_id


def visible_job(job_id: str) -> Job:
    return ensure_visible(get_jobs().get_job(checked_id(job_id)))


def _base_model(name: str) -> str:
    """The native model an OpenAI model name means: a fine-tuned model's OpenAI name
    (`ft:...`) is its job's result; any other name is the native name itself."""
    job_id = job_of_model_name(name)
    if job_id is None or not is_valid_job_id(job_id):
        return name
    try:
        job = visible_job(job_id)
    except JobNotFound:
        return name
    if fine_tuned_model_name(job) == name and job.fine_tuned_model is not None:
        return job.fine_tuned_model
    return name


def _metadata_filters() -> dict[str, str]:
    """`metadata[key]=value` query pairs; any other unknown parameter is a 400."""
    filters: dict[str, str] = {}
    for key, value in request.args.items(multi=True):
        if key.startswith("metadata[") and key.endswith("]") and len(key) > 10:
            filters[key[9:-1]] = value
        elif key not in ("after", "limit"):
            raise TranslationError(f"Unknown query parameter {key!r}.", key)
    return filters


@blp.route("")
class Jobs(MethodView):
    @blp.arguments(FineTuningJobCreateSchema(), error_status_code=400)
    @blp.response(200, FineTuningJobSchema, description="Created and queued.")
    @blp.error(400, "Invalid fields (named by `param` in OpenAI's names): an unknown model, "
               "a file the caller does not have or whose data the trainer refuses, "
               "hyperparameters out of range, a `reinforcement` method, a `dpo` method "
               "whose training file is not preference data (or preference data with "
               "another method).")
    @blp.error(409, "The fine-tuned model's name is already taken.")
    @blp.error(413, "Body larger than LLM_TRAIN_API_MAX_JSON_BYTES.")
    @blp.error(415, "Content-Type is not application/json.")
    @blp.error(429, "A per-user limit: LLM_TRAIN_API_MAX_QUEUED_PER_USER queued jobs, or "
               "the storage quota.")
    @blp.error(503, "The fine-tuning stack is unavailable; retry later.")
    def post(self, body: dict[str, Any]):
        """Create a fine-tuning job (OpenAI's `fine_tuning.jobs.create`)"""
        principal = require_role(Role.ADMIN, Role.USER)
        settings = get_settings()
        data_dir = get_runtime().data_dir
        hyperparameters = native_hyperparameters(body)
        model = _base_model(body["model"])
        job_id = new_job_id()
        native = {"job_id": job_id, "model_name": model, "dataset": body["training_file"],
                  "validation_dataset": body["validation_file"],
                  "hyperparameters": hyperparameters, "priority": 0, "max_attempts": 3,
                  "max_runtime_seconds": None, "resources": None,
                  "output_model": None}
        if _is_finetunable(model, principal.owner):
            native["output_model"] = native_model_name(job_id, body["suffix"])
        new = prepare_job(native, owner=principal.owner, settings=settings,
                          data_dir=data_dir, jobs=get_jobs())
        new = dataclasses.replace(new, api=OPENAI_API, metadata=body["metadata"] or None,
                                  suffix=body["suffix"])
        storage.check_room_for_job(data_dir, principal, get_jobs(), settings, new.job_id)
        job, _created = get_jobs().create_job(new, actor=principal.actor,
                                              max_queued=queued_cap(settings, principal))
        return job_object(job)

    @blp.arguments(FineTuningJobListQuerySchema(), location="query", error_status_code=400)
    @blp.response(200, FineTuningJobListSchema, description="Jobs, newest first.")
    @blp.doc(parameters=[_METADATA_FILTER])
    @blp.error(400, "Invalid query parameters.")
    @blp.error(404, "`after` names no job the caller can see.")
    def get(self, args: dict[str, Any]):
        """List fine-tuning jobs (every job the caller sees, native ones too)"""
        filters = _metadata_filters()
        key = get_jobs().sort_key(visible_job(args["after"]).id) if "after" in args else None
        limit = args["limit"]
        found: list[Job] = []
        scanned = 0
        while len(found) <= limit and scanned < MAX_SCAN:
            batch = get_jobs().list_jobs(JobQuery(
                owner=owner_scope(), limit=_SCAN_PAGE if filters else limit + 1, after=key))
            scanned += len(batch.jobs)
            found.extend(j for j in batch.jobs if _matches(j, filters))
            if batch.next_key is None:
                break
            key = batch.next_key
        return page([job_object(j) for j in found[:limit]], len(found) > limit)


def _matches(job: Job, filters: Mapping[str, str]) -> bool:
    metadata = job.metadata or {}
    return all(metadata.get(k) == v for k, v in filters.items())


def _is_finetunable(model: str, owner: str | None) -> bool:
    """Whether `model` is a Hugging Face-format model for `owner` (its job then registers
    a fine-tuned model); an unknown model is left to admission, which names it."""
    place = Place.of(get_runtime().data_dir, get_settings())
    try:
        return resolve_for_owner(place, owner, model).kind == "hf"
    except ModelNotFound:
        return False


@blp.route("/<job_id>")
class JobResource(MethodView):
    @blp.response(200, FineTuningJobSchema)
    @blp.error(404, "No such job (or another user's).")
    def get(self, job_id: str):
        """Get a fine-tuning job"""
        return job_object(visible_job(job_id))


@blp.route("/<job_id>/cancel")
class JobCancel(MethodView):
    @blp.response(200, FineTuningJobSchema, description="The job, now `cancelled` (or already "
                  "final: unchanged).")
    @blp.error(404, "No such job (or another user's).")
    def post(self, job_id: str):
        """Cancel a fine-tuning job"""
        principal = current_principal()
        job = status_changes.cancel(get_jobs(), checked_id(job_id), principal, owner=owner_scope(),
                                    visible_job=lambda: visible_job(job_id))
        return job_object(job)


@blp.route("/<job_id>/events")
class JobEvents(MethodView):
    @blp.arguments(FineTuningEventListQuerySchema(), location="query", error_status_code=400)
    @blp.response(200, FineTuningEventListSchema, description="The job's events and metrics "
                  "points, newest first.")
    @blp.error(400, "Invalid query parameters, or an `after` that is not one of the job's "
               "events.")
    @blp.error(404, "No such job (or another user's).")
    def get(self, args: dict[str, Any], job_id: str):
        """List a fine-tuning job's events (status changes and `Step N/M` metrics)"""
        job = visible_job(job_id)
        events, _more = get_jobs().job_events(job.id, limit=1000)
        total = (job.progress or {}).get("total_steps")
        timeline = [(int(e.at.timestamp() * 1_000_000), 0, e.seq, job_event_object(job, e))
                    for e in events]
        timeline += [(at_us, 1, seq, metrics_event_object(seq, step, at_us, data, total))
                     for seq, step, at_us, data in get_jobs().metric_rows(job.id)]
        timeline.sort(key=lambda t: t[:3], reverse=True)
        objects = [t[3] for t in timeline]
        if "after" in args:
            ids = [o["id"] for o in objects]
            if args["after"] not in ids:
                raise TranslationError(f"after: no event {args['after']!r} in this job.",
                                       "after")
            objects = objects[ids.index(args["after"]) + 1:]
        return page(objects[:args["limit"]], len(objects) > args["limit"])


@blp.route("/<job_id>/pause")
class JobPause(MethodView):
    @blp.response(200, FineTuningJobSchema, description="The job: `paused` when it was "
                  "queued (or paused already); a running job still reads `running` until "
                  "its worker has checkpointed and stopped the run, moments later.")
    @blp.error(404, "No such job (or another user's).")
    @blp.error(409, "The job is finished (succeeded, failed or cancelled): nothing is left "
               "to pause.")
    def post(self, job_id: str):
        """Pause a fine-tuning job (its next run continues from the checkpoint it stops at)"""
        principal = current_principal()
        outcome = pausing.pause_job(get_jobs(), checked_id(job_id), actor=principal.actor,
                                    owner=owner_scope(),
                                    workers_stop_runs=builtin_executor(get_settings()))
        return job_object(outcome.job)


@blp.route("/<job_id>/resume")
class JobResume(MethodView):
    @blp.response(200, FineTuningJobSchema, description="The job: `queued` again (it was "
                  "paused); still `running` with its pending pause withdrawn; or "
                  "unchanged (queued, or running with no pause pending).")
    @blp.error(404, "No such job (or another user's).")
    @blp.error(409, "The job is finished (succeeded, failed or cancelled): it cannot run "
               "again.")
    def post(self, job_id: str):
        """Resume a paused fine-tuning job"""
        principal = current_principal()
        outcome = pausing.resume_job(get_jobs(), checked_id(job_id), actor=principal.actor,
                                     owner=owner_scope())
        return job_object(outcome.job)


@blp.route("/<job_id>/checkpoints")
class JobCheckpoints(MethodView):
    @blp.arguments(FineTuningCheckpointListQuerySchema(), location="query", unknown=RAISE,
                   error_status_code=400)
    @blp.response(200, FineTuningCheckpointListSchema, description="The checkpoints the job "
                  "keeps, newest first (a corrupt one is left out: it cannot be used).")
    @blp.error(400, "Invalid query parameters, or an `after` that is not one of the job's "
               "checkpoints.")
    @blp.error(404, "No such job (or another user's).")
    def get(self, args: dict[str, Any], job_id: str):
        """List a fine-tuning job's checkpoints"""
        job = visible_job(job_id)
        objects = [checkpoint_object(job, entry["step"], _written_at(entry["created_at"]),
                                     entry["metrics"])
                   for entry in reversed(checkpoints.listing(get_runtime().data_dir, job))
                   if entry["status"] != "corrupt"]
        if "after" in args:
            ids = [o["id"] for o in objects]
            if args["after"] not in ids:
                raise TranslationError(f"after: no checkpoint {args['after']!r} in this job.",
                                       "after")
            objects = objects[ids.index(args["after"]) + 1:]
        data = objects[:args["limit"]]
        return page(data, len(objects) > args["limit"],
                    first_id=data[0]["id"] if data else None,
                    last_id=data[-1]["id"] if data else None)


def _written_at(value: Any) -> datetime | None:
    """A manifest entry's `created_at` (ISO 8601, UTC); None when missing or unreadable."""
    if not isinstance(value, str):
        return None
    try:
        written = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return None
    return written if written.tzinfo is not None else written.replace(tzinfo=timezone.utc)
