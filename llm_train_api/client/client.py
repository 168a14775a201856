"""The Python client of the llm_train_api service.

Only `requests` is needed (``pip install 'llm-train-api[client]'``): nothing here imports
Flask or torch, so a laptop can drive a GPU cluster's service.

Timeouts and retries (the defaults, see :data:`DEFAULT_TIMEOUT` and :class:`RetryPolicy`):

* every request has a connect timeout of 5 s and a read timeout of 30 s (the longest the
  client waits for the next bytes, not for the whole body, so big downloads and followed
  logs are fine);
* a request is retried only when retrying cannot do something twice: on a connection
  error, a timeout, or a 502/503/504, at most 4 tries in all, with exponential backoff
  (0.25 s, 0.5 s, 1 s, with jitter, or the server's ``Retry-After`` up to 10 s);
* GET, DELETE, cancel, dataset uploads and model imports (PUT, re-read from the files)
  are retried;
  a job creation is retried because it always carries a ``job_id`` (the client makes one
  when the caller gives none) and the server answers an identical retry with the job it
  already created (200); a status change (PATCH) is retried only with ``if_match``, so a
  retry can never apply a change on top of someone else's;
* when a first try got no answer, a retried DELETE that finds the job (or dataset) gone,
  and a retried conditional PATCH that finds the job already in the requested status,
  count as success: the first try did it.
"""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from datetime import datetime
from pathlib import Path
from typing import Any, BinaryIO, TypeVar
from urllib.parse import parse_qs, urlparse

import requests

from llm_train_api.client import model_archive
from llm_train_api.client.downloads import CHUNK as _CHUNK
from llm_train_api.client.downloads import Downloads
from llm_train_api.client.downloads import seg as _seg
from llm_train_api.client.errors import (
    ApiConnectionError,
    ApiError,
    ApiTimeout,
    NotFound,
    PreconditionFailed,
    TooManyRequests,
    UnexpectedResponse,
    error_for,
)
from llm_train_api.client.logs import LogFollower
from llm_train_api.client.models import (
    Artifact,
    Checkpoint,
    Dataset,
    Health,
    Identity,
    Job,
    JobEvent,
    MetricPoint,
    Model,
    Page,
    parse,
)
from llm_train_api.client.retry import NO_RETRY, TRANSIENT, RetryPolicy, failure_reason, retry_after
from llm_train_api.client.webhooks import Webhooks

__all__ = ["Client", "RetryPolicy", "DEFAULT_URL", "DEFAULT_TIMEOUT", "new_job_id"]

T = TypeVar("T")

DEFAULT_URL = "http://127.0.0.1:8000"
#: (connect, read) seconds. The read timeout bounds each wait for bytes; a followed log
#: receives a keep-alive comment every 5 s, well within it.
DEFAULT_TIMEOUT: tuple[float, float] = (5.0, 30.0)
URL_ENV = "LLM_TRAIN_API_URL"
TOKEN_ENV = "LLM_TRAIN_API_TOKEN"
def new_job_id() -> str:
    """A job id in the server's own style (``job-`` + 16 hex digits), made by the client so
    that a retried creation is recognised by the server as the same request."""
    return f"job-{secrets.token_hex(8)}"


def _error(resp: requests.Response) -> ApiError:
    try:
        body = resp.json()
    except ValueError:
        body = None
    fallback = resp.reason or ""
    if body is None and resp.text.strip():
        fallback = resp.text.strip().splitlines()[0][:200]
    return error_for(resp.status_code, body, fallback_message=fallback,
                     retry_after=retry_after(resp))


def _decode(resp: requests.Response) -> Any:
    """The JSON body; a body that is not JSON (a proxy's HTML page) is a typed error."""
    try:
        return resp.json()
    except ValueError:
        req = resp.request
        raise UnexpectedResponse(f"{req.method} {req.url}: the {resp.status_code} answer is "
                                 "not JSON", status=resp.status_code) from None


def _cursor_of(resp: requests.Response, param: str = "cursor") -> str | None:
    """The `cursor` (or `param`) of the `Link: rel="next"` URL. Only that value is used: the
    link's host may be an internal one when the server sits behind a proxy it does not
    trust."""
    nxt = resp.links.get("next")
    if not nxt:
        return None
    values = parse_qs(urlparse(nxt["url"]).query).get(param)
    return values[0] if values else None


def _if_match_header(etag: str | None) -> dict[str, str] | None:
    if not etag:
        return None
    return {"If-Match": etag if etag.startswith(('"', "W/")) else f'"{etag}"'}


def _iso(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return value.isoformat()


class Client(Downloads, Webhooks):
    """A session with one llm_train_api service.

    >>> api = Client("http://127.0.0.1:8000", token="...")
    >>> job = api.create_job("gpt-nano", "builtin:tinytext", {"max_steps": 100})
    >>> for line in api.follow_logs(job.id):
    ...     print(line.text)

    Every method raises an :class:`~llm_train_api.client.errors.ApiError` subclass on
    failure. Use it as a context manager, or call :meth:`close`, to release connections.
    """

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        timeout: float | tuple[float, float] = DEFAULT_TIMEOUT,
        retry: RetryPolicy | None = None,
        session: requests.Session | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.retry = retry or RetryPolicy()
        self.session = session or requests.Session()
        self.session.headers.setdefault("User-Agent", "llm-train-api-client/0.1")
        if token:
            self.session.headers["Authorization"] = f"Bearer {token}"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None, **kwargs: Any) -> Client:
        """A client for LLM_TRAIN_API_URL (default http://127.0.0.1:8000) with the token in
        LLM_TRAIN_API_TOKEN (if set); `kwargs` go to the constructor."""
        env = os.environ if env is None else env
        return cls(env.get(URL_ENV) or DEFAULT_URL, token=env.get(TOKEN_ENV) or None, **kwargs)

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return f"Client({self.url!r})"

    # ------------------------------------------------------------------ transport

    def _request(
        self,
        method: str,
        path: str,
        *,
        retry: bool,
        params: Any = None,
        json: Any = None,
        headers: dict[str, str] | None = None,
        body: Callable[[], Any] | None = None,
        stream: bool = False,
        accept: Iterable[int] = (),
        unanswered: list[int] | None = None,
    ) -> requests.Response:
        """Send one request, retried under the policy when `retry` says it is safe.

        `body` makes a fresh request body for each try (a file re-opened). Statuses in
        `accept` are returned rather than raised. Any other non-2xx raises its ApiError.
        Each try that got no answer (so may have been carried out) is appended to
        `unanswered`: a caller can then read a retry's 404 or 412 as its own success.
        """
        policy = self.retry if retry else NO_RETRY
        url = self.url + path
        tries = 0
        while True:
            tries += 1
            data = body() if body is not None else None
            try:
                resp = self.session.request(method, url, params=params, json=json, data=data,
                                            headers=headers, stream=stream,
                                            timeout=self.timeout)
            except TRANSIENT as exc:
                if unanswered is not None:
                    unanswered.append(tries)
                if tries < policy.attempts:
                    time.sleep(policy.delay(tries))
                    continue
                kind = ApiTimeout if isinstance(exc, requests.ReadTimeout) else \
                    ApiConnectionError
                raise kind(f"{method} {url}: {failure_reason(exc)}") from None
            except requests.RequestException as exc:  # a bad URL, too many redirects...
                raise ApiConnectionError(f"{method} {url}: {failure_reason(exc)}") from None
            finally:
                if data is not None and hasattr(data, "close"):
                    data.close()
            if resp.status_code in accept or resp.ok:
                return resp
            if resp.status_code in policy.statuses and tries < policy.attempts:
                wait = policy.delay(tries, retry_after(resp))
                resp.close()
                time.sleep(wait)
                continue
            try:
                raise _error(resp)
            finally:
                resp.close()

    def _json(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> Any:
        return _decode(self._request(method, path, retry=retry, **kwargs))

    def _job(self, method: str, path: str, *, retry: bool, **kwargs: Any) -> Job:
        resp = self._request(method, path, retry=retry, **kwargs)
        job = parse(Job, _decode(resp))
        job.etag = resp.headers.get("ETag")
        return job

    def _list(self, cls: type[T], path: str, params: Any = None) -> list[T]:
        data = self._json("GET", path, retry=True, params=params)
        if not isinstance(data, list):
            raise UnexpectedResponse(f"GET {self.url}{path}: expected a JSON array")
        return [parse(cls, item) for item in data]

    def _page(self, cls: type[T], path: str, params: dict[str, Any]) -> Page[T]:
        resp = self._request("GET", path, retry=True, params=params)
        data = _decode(resp)
        if not isinstance(data, list):
            raise UnexpectedResponse(f"GET {self.url}{path}: expected a JSON array")
        return Page([parse(cls, item) for item in data], _cursor_of(resp))

    # ------------------------------------------------------------------ health

    def healthz(self) -> Health:
        """Liveness: the API process answers."""
        return parse(Health, self._json("GET", "/healthz", retry=True))

    def readyz(self) -> Health:
        """Readiness: the database answers with the current schema. A 503 is returned as
        ``Health(ok=False)`` (not retried, not raised): being unready is the answer."""
        resp = self._request("GET", "/readyz", retry=False, accept=(503,))
        health = parse(Health, _decode(resp))
        health.ok = resp.status_code == 200
        return health

    def whoami(self) -> Identity:
        """The token's name and role (admin, user, worker) as the server sees them; a quick
        check that the URL and the token are right."""
        return parse(Identity, self._json("GET", "/whoami", retry=True))

    # ------------------------------------------------------------------ jobs

    def create_job(
        self,
        model_name: str,
        dataset: str,
        hyperparameters: Mapping[str, Any] | None = None,
        *,
        job_id: str | None = None,
        priority: int | None = None,
        max_attempts: int | None = None,
        max_runtime_seconds: int | None = None,
        resources: Mapping[str, Any] | None = None,
        dry_run: bool = False,
        validation_dataset: str | None = None,
        output_model: str | None = None,
        from_checkpoint: str | None = None,
    ) -> Job:
        """Submit a job (queued at once; without `job_id` the client makes one, so a retry
        is safe). 409 :class:`Conflict`: the id holds another job, or `output_model` is
        taken. `dry_run` returns the would-be job (a fine-tuning job's with its `plan`).
        `from_checkpoint` (``"JOB"`` or ``"JOB:STEP"``) branches from another job's
        checkpoint: 404 :class:`NotFound` when that job is not yours to see."""
        payload: dict[str, Any] = {
            "job_id": job_id or new_job_id(),
            "model_name": model_name,
            "dataset": dataset,
            "hyperparameters": dict(hyperparameters or {}),
        }
        optional = {"priority": priority, "max_attempts": max_attempts,
                    "max_runtime_seconds": max_runtime_seconds,
                    "resources": dict(resources) if resources is not None else None,
                    "validation_dataset": validation_dataset, "output_model": output_model,
                    "from_checkpoint": from_checkpoint}
        payload.update({k: v for k, v in optional.items() if v is not None})
        params = {"dry_run": "true"} if dry_run else None
        unanswered: list[int] = []
        try:
            return self._job("POST", "/jobs", retry=True, json=payload, params=params,
                             unanswered=unanswered)
        except TooManyRequests as quota:
            # After an unanswered try, the retry may be counted against a quota that our
            # own first try filled: if the job is there, as we sent it, it is ours.
            if not unanswered or dry_run:
                raise
            try:
                job = self.get_job(payload["job_id"])
            except NotFound:
                raise quota from None
            if (job.model_name, job.dataset, job.hyperparameters) != (
                    model_name, dataset, payload["hyperparameters"]):
                raise
            return job

    def list_jobs_page(
        self,
        *,
        status: str | Iterable[str] | None = None,
        model_name: str | None = None,
        dataset: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        limit: int | None = None,
        cursor: str | None = None,
    ) -> Page[Job]:
        """One page of jobs, newest first; pass its `next_cursor` for the next one."""
        statuses = [status] if isinstance(status, str) else list(status or [])
        params = {"status": statuses or None, "model_name": model_name, "dataset": dataset,
                  "created_after": _iso(created_after),
                  "created_before": _iso(created_before), "limit": limit, "cursor": cursor}
        return self._page(Job, "/jobs", {k: v for k, v in params.items() if v is not None})

    def list_jobs(
        self,
        *,
        status: str | Iterable[str] | None = None,
        model_name: str | None = None,
        dataset: str | None = None,
        created_after: datetime | str | None = None,
        created_before: datetime | str | None = None,
        page_size: int | None = None,
    ) -> Iterator[Job]:
        """Every matching job, newest first, fetching pages as the iteration needs them
        (keyset pages: nothing is skipped or repeated while others create jobs)."""
        statuses = [status] if isinstance(status, str) else list(status or [])
        cursor: str | None = None
        while True:
            page = self.list_jobs_page(status=statuses, model_name=model_name,
                                       dataset=dataset, created_after=created_after,
                                       created_before=created_before, limit=page_size,
                                       cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def get_job(self, job_id: str) -> Job:
        return self._job("GET", f"/jobs/{_seg(job_id)}", retry=True)

    def update_status(
        self,
        job_id: str,
        status: str,
        error_message: str | None = None,
        *,
        if_match: str | Job | None = None,
    ) -> Job:
        """Change a job's status (registry mode; with the built-in executor clients may only
        cancel). `if_match` (an ETag, or a Job whose ETag to use) makes the change
        conditional: :class:`PreconditionFailed` if the job changed meanwhile. Only a
        conditional change is retried: a blind retry could undo someone else's change."""
        etag = if_match.etag if isinstance(if_match, Job) else if_match
        headers = _if_match_header(etag)
        body: dict[str, Any] = {"status": status}
        if error_message is not None:
            body["error_message"] = error_message
        unanswered: list[int] = []
        try:
            return self._job("PATCH", f"/jobs/{_seg(job_id)}/status", retry=bool(etag),
                             json=body, headers=headers, unanswered=unanswered)
        except PreconditionFailed:
            # After an unanswered try, a 412 may mean that try made the change: success
            # if the job now has the status we asked for.
            if unanswered:
                job = self.get_job(job_id)
                if job.status == status:
                    return job
            raise

    def cancel_job(self, job_id: str) -> Job:
        """Cancel (a no-op 200 for a job that already ended, hence safe to retry)."""
        return self._job("POST", f"/jobs/{_seg(job_id)}/cancel", retry=True)

    def pause_job(self, job_id: str) -> Job:
        """Pause a job: a queued one at once; a running one's worker checkpoints and stops
        it (the answer is still ``running``, with ``pause_requested_at`` set, until it
        has). Pausing a paused job changes nothing, hence safe to retry; a final job is
        :class:`Conflict`."""
        return self._job("POST", f"/jobs/{_seg(job_id)}/pause", retry=True)

    def resume_job(self, job_id: str) -> Job:
        """Queue a paused job again (its next run continues from its checkpoint), or
        withdraw a pending pause. Resuming a queued job changes nothing, hence safe to
        retry; a final job is :class:`Conflict`."""
        return self._job("POST", f"/jobs/{_seg(job_id)}/resume", retry=True)

    def delete_job(self, job_id: str, *, if_match: str | Job | None = None) -> None:
        """Delete a job, whatever its status (a running one is stopped). `if_match` (an
        ETag, or a Job) deletes only that state: :class:`PreconditionFailed` if the job
        changed meanwhile. A retry that finds the job gone after an unanswered first try
        counts as success."""
        etag = if_match.etag if isinstance(if_match, Job) else if_match
        self._delete(f"/jobs/{_seg(job_id)}", headers=_if_match_header(etag))

    def _delete(self, path: str, headers: dict[str, str] | None = None) -> None:
        unanswered: list[int] = []
        try:
            self._request("DELETE", path, retry=True, headers=headers, unanswered=unanswered)
        except NotFound:
            if not unanswered:
                raise
            # An earlier try got no answer and did the deletion: that is our success.

    def job_events_page(self, job_id: str, *, limit: int | None = None,
                        cursor: str | None = None) -> Page[JobEvent]:
        params = {k: v for k, v in {"limit": limit, "cursor": cursor}.items() if v is not None}
        return self._page(JobEvent, f"/jobs/{_seg(job_id)}/events", params)

    def job_events(self, job_id: str, *, page_size: int | None = None) -> Iterator[JobEvent]:
        """The job's whole timeline, oldest first, across pages."""
        cursor: str | None = None
        while True:
            page = self.job_events_page(job_id, limit=page_size, cursor=cursor)
            yield from page.items
            if page.next_cursor is None:
                return
            cursor = page.next_cursor

    def job_metrics(self, job_id: str, *, after_step: int | None = None) -> list[MetricPoint]:
        """The whole loss curve, ascending, however many pages it takes; `after_step`
        returns only what is newer (for polling)."""
        points: list[MetricPoint] = []
        position = None if after_step is None else str(after_step)
        while True:
            params = None if position is None else {"after_step": position}
            resp = self._request("GET", f"/jobs/{_seg(job_id)}/metrics", retry=True,
                                 params=params)
            data = _decode(resp)
            if not isinstance(data, list):
                raise UnexpectedResponse(f"GET {self.url}/jobs/{job_id}/metrics: expected a "
                                         "JSON array")
            points.extend(parse(MetricPoint, item) for item in data)
            position = _cursor_of(resp, "after_step")
            if position is None or not data:
                return points

    def job_logs(self, job_id: str, *, tail: int | None = None) -> str:
        """The log as it is now (or its last `tail` lines)."""
        params = {"tail": tail} if tail is not None else None
        resp = self._request("GET", f"/jobs/{_seg(job_id)}/logs", retry=True, params=params)
        return resp.content.decode("utf-8", errors="replace")

    def follow_logs(self, job_id: str, *, tail: int | None = None,
                    last_event_id: int | None = None) -> LogFollower:
        """Iterate over the log's lines live until the job ends (Server-Sent Events).

        Reconnects by itself with ``Last-Event-ID`` when the server ends a stream after its
        time limit or the connection drops, so no line is lost or repeated. After the
        iteration, the follower's `final_status` says how the job ended (or `deleted`).
        """
        return LogFollower(self, job_id, tail=tail, offset=last_event_id)

    def list_artifacts(self, job_id: str) -> list[Artifact]:
        return self._list(Artifact, f"/jobs/{_seg(job_id)}/artifacts")

    def list_checkpoints(self, job_id: str) -> list[Checkpoint]:
        """The checkpoints the job keeps, oldest first, with metrics, size and sha256."""
        return self._list(Checkpoint, f"/jobs/{_seg(job_id)}/checkpoints")

    # ------------------------------------------------------------------ models

    def list_models(self) -> list[Model]:
        return self._list(Model, "/models")

    def get_model(self, name: str, *, owner: str | None = None) -> Model:
        """One model; `owner` (admins): that user's own import of that name."""
        params = {"owner": owner} if owner else None
        return parse(Model, self._json("GET", f"/models/{_seg(name)}", retry=True,
                                       params=params))

    def import_model(self, name: str, folder: str | os.PathLike[str], *, gzip: bool = False,
                     progress: Callable[[int], None] | None = None) -> Model:
        """Import (or replace) the Hugging Face-format model in `folder` as `name`: packed
        into a tar stream as it is sent (gzip-compressed with `gzip`), re-packed on a retry.
        `progress(n)` is told each n bytes of file data sent. ValueError, before sending
        anything, for pickle weights or a folder without config.json."""
        files = model_archive.model_files(folder)
        ctype = "application/gzip" if gzip else "application/x-tar"
        data = self._json("PUT", f"/models/{_seg(name)}", retry=True,
                          body=lambda: model_archive.pack(files, compress=gzip,
                                                          progress=progress),
                          headers={"Content-Type": ctype})
        return parse(Model, data)

    def delete_model(self, name: str, *, owner: str | None = None) -> None:
        """Delete an imported model (409 :class:`Conflict` while queued or running jobs
        name it, or for built-in and MODEL_ROOTS models)."""
        self._delete(f"/models/{_seg(name)}" + (f"?owner={_seg(owner)}" if owner else ""))

    # ------------------------------------------------------------------ datasets

    def upload_dataset(self, name: str, source: str | os.PathLike[str] | BinaryIO,
                       *, format: str | None = None) -> Dataset:
        """Upload (or replace) dataset `name` from a file, streamed (never read whole).

        `format` is ``txt`` or ``jsonl``; by default it comes from the source's suffix
        (``.jsonl``/``.ndjson`` → jsonl, anything else → txt). A path is re-read on a
        retry; an open file object is sent once (it cannot be rewound in general).
        """
        fmt = format
        if fmt is None:
            suffix = Path(getattr(source, "name", str(source))).suffix.lower()
            fmt = "jsonl" if suffix in (".jsonl", ".ndjson") else "txt"
        if fmt not in ("txt", "jsonl"):
            raise ValueError(f"format must be 'txt' or 'jsonl', not {fmt!r}")
        ctype = "application/jsonl" if fmt == "jsonl" else "text/plain; charset=utf-8"
        if hasattr(source, "read"):
            opener: Callable[[], Any] = lambda: _Unclosable(source)  # noqa: E731
            retry = False
        else:
            opener = lambda: open(source, "rb")  # noqa: E731, SIM115 - closed by _request
            retry = True
        data = self._json("PUT", f"/datasets/{_seg(name)}", retry=retry, body=opener,
                          headers={"Content-Type": ctype})
        return parse(Dataset, data)

    def list_datasets(self) -> list[Dataset]:
        return self._list(Dataset, "/datasets")

    def get_dataset(self, name: str) -> Dataset:
        return parse(Dataset, self._json("GET", f"/datasets/{_seg(name)}", retry=True))

    def delete_dataset(self, name: str) -> None:
        """Delete a dataset (409 :class:`Conflict` while queued or running jobs use it)."""
        self._delete(f"/datasets/{_seg(name)}")


class _Unclosable:
    """A caller's file handed to requests without letting the transport close it."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f

    def read(self, size: int = -1) -> bytes:
        return self._f.read(size)

    def __iter__(self) -> Iterator[bytes]:
        while block := self._f.read(_CHUNK):
            yield block
