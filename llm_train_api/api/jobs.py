"""The job resource: create, list, get, change status, cancel, delete; plus the timeline
and the loss curve. HTTP only: what a job may be and who may change what is in services/."""

from __future__ import annotations

from dataclasses import replace
from typing import Any
from urllib.parse import quote, urlencode

from flask import Response, current_app, jsonify, request
from flask.blueprints import BlueprintSetupState
from flask.views import MethodView
from marshmallow import RAISE

from llm_train_api.api.auth import (
    Role,
    current_principal,
    ensure_visible,
    owner_scope,
    require_role,
)
from llm_train_api.api.base import (
    RUNTIME_KEY,
    ApiBlueprint,
    get_jobs,
    get_runtime,
    get_settings,
    public_url,
)
from llm_train_api.api.schemas import (
    CreateQuerySchema,
    JobCreateSchema,
    JobEventSchema,
    JobListQuerySchema,
    JobPreviewSchema,
    JobSchema,
    MetricPointSchema,
    MetricsQuerySchema,
    PageQuerySchema,
    StatusUpdateSchema,
    StorageErrorSchema,
    TransitionErrorSchema,
)
from llm_train_api.artifacts.jobs import remove_job_dir
from llm_train_api.domain import (
    Job,
    JobNotFound,
    JobStatus,
    PreconditionFailed,
    Revision,
    is_valid_job_id,
)
from llm_train_api.services import status_changes, storage
from llm_train_api.services.checkpoints import resolve_origin
from llm_train_api.services.finetune_plan import PlanSlots
from llm_train_api.services.job_creation import (
    builtin_executor,
    check_priority,
    dry_run_plan,
    prepare_job,
    preview,
    queued_cap,
)
from llm_train_api.store import pausing
from llm_train_api.store.pagination import (
    JobQuery,
    decode_cursor,
    decode_seq_cursor,
    encode_cursor,
    encode_seq_cursor,
)

blp = ApiBlueprint(
    "jobs",
    __name__,
    url_prefix="/jobs",
    description="Training jobs: submit them, follow them, change their status, delete them.",
)

# The dry-run planners of this process (services.finetune_plan.PlanSlots).
PLANNERS_KEY = "llm_train_api.planners"


@blp.record_once
def _bound_planners(state: BlueprintSetupState) -> None:
    settings = state.app.extensions[RUNTIME_KEY].settings
    state.app.extensions[PLANNERS_KEY] = PlanSlots(settings.PLANS_PER_PROCESS)


_ETAG_HEADER = {"ETag": {"description": "Changes whenever the job changes.",
                         "schema": {"type": "string"}}}


def _checked_id(job_id: str) -> str:
    # An id that could never have been created cannot exist; answer before touching the DB.
    if not is_valid_job_id(job_id):
        raise JobNotFound(job_id)
    return job_id


def _visible_job(job_id: str) -> Job:
    """The job, if it exists and the caller may see it; JobNotFound (404) otherwise."""
    return ensure_visible(get_jobs().get_job(_checked_id(job_id)))


def _readable_id(job_id: str) -> str:
    """The id, once the caller may read that job. The store's own reads 404 a missing
    job, so only a user (whose view is limited to its own jobs) costs an extra lookup."""
    if owner_scope() is not None:
        _visible_job(job_id)
    return _checked_id(job_id)


def _with_etag(job: Job, status: int = 200, headers: dict[str, str] | None = None):
    return job, status, {"ETag": f'"{job.etag}"', **(headers or {})}


@blp.route("")
class Jobs(MethodView):
    # Unknown query parameters are errors too: a typo like `?stauts=` must not list everything.
    @blp.arguments(JobListQuerySchema(), location="query", unknown=RAISE)
    @blp.response(
        200,
        JobSchema(many=True),
        description="Jobs, newest first. When more remain, a `Link: <url>; rel=\"next\"` "
        "header (RFC 8288) gives the next page.",
        headers={"Link": {"description": 'The next page, `<url>; rel="next"`.',
                          "schema": {"type": "string"}}},
    )
    @blp.error(400, "Invalid cursor.")
    def get(self, args: dict[str, Any]):
        """List jobs"""
        query = JobQuery(
            statuses=tuple(dict.fromkeys(args.get("status", ()))),
            owner=owner_scope(),
            model_name=args.get("model_name"),
            dataset=args.get("dataset"),
            created_after=args.get("created_after"),
            created_before=args.get("created_before"),
            limit=args["limit"],
            after=decode_cursor(args["cursor"]) if "cursor" in args else None,
        )
        page = get_jobs().list_jobs(query)
        headers = {}
        if page.next_key is not None:
            headers["Link"] = _next_link(cursor=encode_cursor(page.next_key))
        return page.jobs, 200, headers

    @blp.arguments(CreateQuerySchema(), location="query", unknown=RAISE)
    @blp.arguments(JobCreateSchema())
    @blp.response(
        201,
        JobSchema,
        description="Created and queued.",
        headers={"Location": {"description": "URL of the new job.",
                              "schema": {"type": "string"}}, **_ETAG_HEADER},
    )
    @blp.alt_response(200, schema=JobPreviewSchema, description="An identical request with "
                      "this job_id was already accepted; this is that job (safe client "
                      "retries). With `dry_run=true`: the job as it would be created, which "
                      "does not exist (no `Location`, no `ETag`); for a fine-tuning job "
                      "also its `plan` (examples, tokens, truncations, steps, memory).")
    @blp.error(400, "Malformed JSON, NaN/Infinity in it, or an integer outside 64 bits.")
    @blp.error(404, "`from_checkpoint` names a job that does not exist or that the caller "
               "cannot see.")
    @blp.error(409, "job_id is already taken by a job with a different body; or "
               "`output_model` already means a model for the caller, or is the result of "
               "another of their queued or running jobs; or the `from_checkpoint` "
               "checkpoint is corrupt (its sha256 no longer matches).")
    @blp.error(413, "Body larger than LLM_TRAIN_API_MAX_JSON_BYTES.")
    @blp.error(415, "Content-Type is not application/json.")
    @blp.alt_response(429, schema=StorageErrorSchema, description="A per-user limit is "
                      "reached; the message names it: LLM_TRAIN_API_MAX_QUEUED_PER_USER "
                      "queued jobs, or LLM_TRAIN_API_MAX_STORAGE_GB_PER_USER of storage "
                      "(then also `reason: storage_quota_exceeded`, `usage_bytes` and "
                      "`limit_bytes`).")
    @blp.error(422, "Invalid fields (wrong types, unknown fields, a bad `job_id`, oversized "
               "or too deep `hyperparameters`, a user's `priority` above "
               "LLM_TRAIN_API_MAX_USER_PRIORITY), under `errors.json.<field>`. With the "
               "built-in executor also: a model not in the catalog (`model_name`), a "
               "dataset the caller cannot see (`dataset`), hyperparameters the model's "
               "schema refuses (`hyperparameters.<name>`), a memory estimate over the "
               "workers' limit (`hyperparameters._memory`), `processes` that do not fit "
               "`cpus`/`gpus` (`resources.processes`), a global `batch_size` that does not "
               "split over them, or "
               "a job bigger than any node of the Ray cluster (`resources`). For a Hugging "
               "Face-format model: its own hyperparameters (`method` lora, full or qlora; "
               "qlora only with LLM_TRAIN_API_QLORA_WORKERS), a chat dataset for a model "
               "without a chat template, `max_seq_length` over its context, an invalid "
               "`output_model`; for a built-in GPT: a chat or instruction dataset, "
               "`validation_dataset` or `output_model`. A dry run also: data the "
               "fine-tuning trainer refuses (`dataset`). `from_checkpoint`: malformed, a "
               "step the source job does not keep, or a source of another model (or "
               "fine-tuning method).")
    @blp.error(507, "The disk is full: the `from_checkpoint` checkpoint could not be "
               "held for the new job, which was not created.")
    @blp.error(503, "A dry run of a fine-tuning job could not plan the run (too slow: "
               "LLM_TRAIN_API_PLAN_TIMEOUT_S, or no fine-tuning stack on the API host), or "
               "this process already runs LLM_TRAIN_API_PLANS_PER_PROCESS planners (then "
               "with `Retry-After`); the job may still be fine without dry_run.")
    def post(self, query: dict[str, Any], body: dict[str, Any]):
        """Create a training job

        With the built-in executor (the default) the model must be in the catalog, the
        dataset must exist and the hyperparameters must pass the trainer's schema, else 422
        with field-level errors. `?dry_run=true` checks without creating anything.
        Needs the admin or user role; the job belongs to the caller.
        """
        principal = require_role(Role.ADMIN, Role.USER)
        runtime = get_runtime()
        settings, jobs, data_dir = runtime.settings, runtime.jobs, runtime.data_dir
        check_priority(body["priority"], settings, principal)
        new = prepare_job(body, owner=principal.owner, settings=settings, data_dir=data_dir,
                          jobs=jobs)
        if body.get("from_checkpoint"):
            new = replace(new, origin=resolve_origin(
                body["from_checkpoint"], jobs=jobs, scope=owner_scope(),
                data_dir=data_dir, model_name=new.model_name,
                hyperparameters=new.hyperparameters, pin=not query["dry_run"]))
        storage.check_room_for_job(data_dir, principal, jobs, settings, new.job_id)
        if query["dry_run"]:
            answer = JobSchema().dump(preview(new))
            plan = dry_run_plan(new, settings=settings, data_dir=data_dir,
                                planners=current_app.extensions[PLANNERS_KEY])
            if plan is not None:
                answer["plan"] = plan
            return jsonify(answer)
        job, created = jobs.create_job(new, actor=principal.actor,
                                       max_queued=queued_cap(settings, principal))
        if not created:
            return _with_etag(job, 200)
        # This collection's URL and the id: what url_for("jobs.JobResource") builds, for a
        # tenth of its cost on the busiest write.
        location = public_url(f"{request.path}/{quote(job.id, safe='')}")
        return _with_etag(job, 201, {"Location": location})


@blp.route("/<job_id>")
class JobResource(MethodView):
    @blp.response(200, JobSchema, headers=_ETAG_HEADER)
    @blp.alt_response(304, description="Not modified (If-None-Match matched the ETag).")
    @blp.error(404, "No such job.")
    def get(self, job_id: str):
        """Get one job"""
        job = _visible_job(job_id)
        etag = job.etag
        if "HTTP_IF_NONE_MATCH" in request.environ and request.if_none_match.contains_weak(etag):
            return Response(status=304, headers={"ETag": f'"{etag}"'})
        return job, 200, {"ETag": f'"{etag}"'}

    @blp.response(204, description="Deleted, with its folder (logs, checkpoints). A running "
                  "job is stopped by its worker, and its folder removed by a worker's sweep "
                  "soon after.")
    @blp.error(404, "No such job.")
    @blp.error(412, "If-Match did not match the job's current ETag: nothing was deleted.")
    def delete(self, job_id: str):
        """Delete a job, whatever its status

        Admins delete any job, users their own. The job's events are kept, with a
        `deleted` event naming who deleted it. Send `If-Match` to delete only the state
        you last saw.
        """
        principal = require_role(Role.ADMIN, Role.USER)
        job_id = _checked_id(job_id)
        gone = get_jobs().delete_job(job_id, owner=owner_scope(), actor=principal.actor,
                                      expected=_expected_revision(job_id))
        if gone.status is not JobStatus.RUNNING:
            # Nobody runs it, and nobody can start it now that the delete committed. A
            # running job's trainer may still be writing: its worker's sweep removes that.
            remove_job_dir(get_runtime().data_dir, gone.id, gone.created_us)
        return Response(status=204)


@blp.route("/<job_id>/status")
class JobStatusResource(MethodView):
    @blp.arguments(StatusUpdateSchema())
    @blp.response(200, JobSchema, description="The job after the change; an unchanged job "
                  "when it already had this status.", headers=_ETAG_HEADER)
    @blp.error(404, "No such job.")
    @blp.alt_response(409, schema=TransitionErrorSchema, description="Illegal transition; "
                      "the message names the current status and the allowed targets, also "
                      "given as `current_status` and `allowed_targets`.")
    @blp.error(412, "If-Match did not match the job's current ETag.")
    @blp.error(415, "Content-Type is not application/json.")
    def patch(self, body: dict[str, Any], job_id: str):
        """Change a job's status

        queued → running | cancelled | failed | paused; running → succeeded | failed |
        cancelled | queued | paused; paused → queued | cancelled. succeeded, failed and
        cancelled are final. Asking for the current status
        again is a 200 that changes nothing. Send `If-Match` to make the change conditional.

        Roles: a `worker` (an external executor) may make any legal change to any job
        (with the built-in executor, all but `running`: only a worker's claim starts a
        run); an `admin` too, except that with the built-in executor only cancelling is
        left to clients; a `user` may only cancel its own jobs (other targets: 403).
        """
        principal = current_principal()
        message = status_changes.check_status_change(
            principal, job_id, body["status"], body["error_message"],
            builtin_executor=builtin_executor(get_settings()),
            visible_job=lambda: _visible_job(job_id))
        job_id = _checked_id(job_id)
        expected = _expected_revision(job_id)
        job, _changed = get_jobs().transition(job_id, body["status"], error_message=message,
                                              expected=expected, actor=principal.actor,
                                              owner=owner_scope())
        return _with_etag(job)


def _expected_revision(job_id: str) -> Revision | None:
    """Turn If-Match into the revision the compare-and-set must still find."""
    if_match = request.if_match
    if not if_match or if_match.star_tag:
        return None
    tags = if_match.as_set()
    if len(tags) == 1:
        revision = Revision.from_etag(next(iter(tags)))
        if revision is None:
            raise PreconditionFailed(job_id, _visible_job(job_id).etag)
        return revision
    current = _visible_job(job_id)
    if current.etag not in tags:
        raise PreconditionFailed(job_id, current.etag)
    return current.revision


@blp.route("/<job_id>/cancel")
class JobCancel(MethodView):
    @blp.response(200, JobSchema, headers=_ETAG_HEADER,
                  description="The job, now `cancelled` (or already final: unchanged).")
    @blp.error(404, "No such job.")
    def post(self, job_id: str):
        """Cancel a job

        A queued job never runs; a running job's worker kills its process group within
        about two seconds. Cancelling a finished job changes nothing.
        """
        principal = current_principal()
        checked = _checked_id(job_id)
        job = status_changes.cancel(get_jobs(), checked, principal, owner=owner_scope(),
                                    visible_job=lambda: _visible_job(job_id))
        return _with_etag(job)


@blp.route("/<job_id>/pause")
class JobPause(MethodView):
    @blp.response(200, JobSchema, headers=_ETAG_HEADER,
                  description="The job, now `paused` (it was queued, or, without the built-in "
                  "executor, running); or unchanged when it was paused already or its pause "
                  "is pending.")
    @blp.alt_response(202, schema=JobSchema, headers=_ETAG_HEADER,
                      description="A running job: the pause is requested "
                      "(`pause_requested_at` is set) and its worker checkpoints and stops "
                      "the run within a heartbeat or so, then the job reads `paused`.")
    @blp.error(404, "No such job.")
    @blp.alt_response(409, schema=TransitionErrorSchema, description="The job is final "
                      "(succeeded, failed or cancelled): nothing is left to pause.")
    def post(self, job_id: str):
        """Pause a job

        A queued job stops being claimable. A running job's worker stops the trainer
        after it writes a checkpoint, freeing the worker's slot; the attempt is not
        counted. `POST /jobs/{id}/resume` queues it again, and its next run continues
        from that checkpoint exactly. A paused job counts against the queued-jobs quota.
        """
        principal = current_principal()
        outcome = pausing.pause_job(get_jobs(), _checked_id(job_id), actor=principal.actor,
                                    owner=owner_scope(),
                                    workers_stop_runs=builtin_executor(get_settings()))
        job = outcome.job
        return _with_etag(job, 202 if job.status is JobStatus.RUNNING else 200)


@blp.route("/<job_id>/resume")
class JobResume(MethodView):
    @blp.response(200, JobSchema, headers=_ETAG_HEADER,
                  description="The job, `queued` again (it was paused); or, for a running "
                  "job whose pause was pending, still running with the request withdrawn; "
                  "or unchanged (it was queued, or running with no pause pending).")
    @blp.error(404, "No such job.")
    @blp.alt_response(409, schema=TransitionErrorSchema, description="The job is final "
                      "(succeeded, failed or cancelled): it cannot run again.")
    def post(self, job_id: str):
        """Resume a paused job

        The job goes back to the queue under its priority; the worker that claims it
        continues from the checkpoint written when it paused, with the same data order
        and random state, so its losses are those of an uninterrupted run.
        """
        principal = current_principal()
        outcome = pausing.resume_job(get_jobs(), _checked_id(job_id), actor=principal.actor,
                                     owner=owner_scope())
        return _with_etag(outcome.job)


@blp.route("/<job_id>/events")
class JobEvents(MethodView):
    @blp.arguments(PageQuerySchema(), location="query", unknown=RAISE)
    @blp.response(200, JobEventSchema(many=True), description="The job's timeline, oldest "
                  "first; more pages through the `Link: rel=\"next\"` header.")
    @blp.error(400, "Invalid cursor.")
    @blp.error(404, "No such job.")
    def get(self, args: dict[str, Any], job_id: str):
        """A job's events: creation, claims, status changes, requeues, with attempt and actor"""
        after = decode_seq_cursor(args["cursor"]) if "cursor" in args else 0
        events, more = get_jobs().job_events(_readable_id(job_id), after_seq=after,
                                              limit=args["limit"])
        headers = {}
        if more:
            headers["Link"] = _next_link(cursor=encode_seq_cursor(events[-1].seq))
        return events, 200, headers


@blp.route("/<job_id>/metrics")
class JobMetrics(MethodView):
    @blp.arguments(MetricsQuerySchema(), location="query", unknown=RAISE)
    @blp.response(200, MetricPointSchema(many=True),
                  description="The loss curve, one point per logged step, ascending. When "
                  "more remain, a `Link: <url>; rel=\"next\"` header gives the next page.",
                  headers={"Link": {"description": 'The next page, `<url>; rel="next"`.',
                                    "schema": {"type": "string"}}})
    @blp.error(404, "No such job.")
    def get(self, args: dict[str, Any], job_id: str):
        """A job's metrics; poll with `?after_step=` for what is new"""
        points, more = get_jobs().job_metrics(_readable_id(job_id),
                                               after_step=args["after_step"],
                                               limit=args["limit"])
        headers = {}
        if more:
            headers["Link"] = _next_link(after_step=str(points[-1]["step"]))
        return points, 200, headers


def _next_link(**position: str) -> str:
    """This URL with its other query parameters kept and the page position replaced."""
    params = request.args.to_dict(flat=False)
    params.update({name: [value] for name, value in position.items()})
    return f'<{public_url(quote(request.path))}?{urlencode(params, doseq=True)}>; rel="next"'
