"""Prometheus metrics at `/metrics`, through the optional `prometheus_client`.

Two kinds of figures, measured where they are true:

- **From the database, at scrape time** (a custom collector over store/stats.py): jobs by
  status, queue depth, the oldest queued job's age, and the dispatch latency of recent
  jobs. The database is the one place that knows them across gunicorn workers and hosts; a
  counter kept in one process would only know what that process saw. Dispatch latency
  covers the last `METRICS_DISPATCH_WINDOW` jobs that ever started, exposed as quantile
  gauges: a window can shrink, so it cannot honestly be a cumulative histogram.
- **Per request, in the process that served it**: a histogram of request durations by
  endpoint name, method and status class. gunicorn runs several processes, so
  prometheus_client's multiprocess mode is used: each process writes its samples to
  memory-mapped files in `PROMETHEUS_MULTIPROC_DIR` and a scrape, whichever process
  answers it, adds up the files of all of them. gunicorn.conf.py sets that directory up
  in the master before any worker imports prometheus_client (the library chooses its
  storage at import time) via `prepare_multiprocess_dir()`, and `process_exited()` does
  the bookkeeping when a worker dies. Without the variable (the Flask test client, a
  single process), the histogram lives in the app's own registry.

Without prometheus_client installed (`pip install 'llm-train-api[metrics]'`) `/metrics`
is a 404 whose message says so, and everything else works.
"""

from __future__ import annotations

import glob
import importlib.util
import math
import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from flask import Flask, Response, jsonify, request
from sqlalchemy.exc import SQLAlchemyError

from llm_train_api.api import auth
from llm_train_api.config import ConfigError, Settings, default_instance_path
from llm_train_api.domain import JobStatus
from llm_train_api.runtime import Runtime
from llm_train_api.store.stats import JobStats

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
# Under the instance folder unless PROMETHEUS_MULTIPROC_DIR says otherwise.
MULTIPROC_SUBDIR = "prometheus-multiproc"
PREFIX = "llm_train_api_"
REQUEST_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                   10.0, 30.0, 60.0)
DISPATCH_QUANTILES = (0.5, 0.9, 0.99, 1.0)
_START_KEY = "llm_train_api.request_start"
# Label values come from this set only: a client inventing methods must not invent series.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
_MISSING_MESSAGE = ("Metrics are not available: the optional dependency prometheus_client is "
                    "not installed (pip install 'llm-train-api[metrics]').")


# ----------------------------------------------------------------------------- gunicorn


def multiprocess_dir(environ: dict[str, str] | None = None) -> str:
    """The directory the gunicorn workers share their samples through.

    PROMETHEUS_MULTIPROC_DIR when set; else a folder in the instance folder the app will
    use (LLM_TRAIN_API_INSTANCE_PATH, or Flask's default for this package), so that two
    services on one host never mix their samples.
    """
    environ = os.environ if environ is None else environ  # type: ignore[assignment]
    if environ.get(MULTIPROC_ENV):
        return environ[MULTIPROC_ENV]
    instance = Settings.load(environ=environ).INSTANCE_PATH or default_instance_path()
    return str(Path(instance) / MULTIPROC_SUBDIR)


def prepare_multiprocess_dir() -> str | None:
    """In the gunicorn master, before it forks: create and empty the directory, and export
    PROMETHEUS_MULTIPROC_DIR so every worker starts in multiprocess mode.

    Emptied because the files of a previous run belong to processes that are gone: their
    counts would be added to this run's. Returns None (and does nothing) when
    prometheus_client is not installed.
    """
    # Only ask whether it is there: importing it here, before the variable is set, would
    # fix single-process storage in every worker forked from this process.
    if importlib.util.find_spec("prometheus_client") is None:
        return None
    path = multiprocess_dir()
    os.makedirs(path, exist_ok=True)
    for stale in glob.glob(os.path.join(path, "*.db")):
        os.remove(stale)
    os.environ[MULTIPROC_ENV] = path
    return path


def process_exited(pid: int) -> None:
    """gunicorn's child_exit: drop a dead worker's live gauges (its counters stay summed)."""
    if not os.environ.get(MULTIPROC_ENV):
        return
    try:
        from prometheus_client import multiprocess
    except ImportError:
        return
    multiprocess.mark_process_dead(pid)


# ----------------------------------------------------------------------------- the app


def init_app(app: Flask, runtime: Runtime) -> None:
    """Add `/metrics` and the request timing. One call from create_app()."""
    window = runtime.settings.METRICS_DISPATCH_WINDOW
    if window < 1:
        raise ConfigError("LLM_TRAIN_API_METRICS_DISPATCH_WINDOW must be at least 1")
    try:
        import prometheus_client  # noqa: F401
    except ImportError:
        _add_route(app, None)
        return
    from prometheus_client import CollectorRegistry, Histogram

    registry = CollectorRegistry()
    multiproc_path = os.environ.get(MULTIPROC_ENV)
    if multiproc_path:
        from prometheus_client import multiprocess

        os.makedirs(multiproc_path, exist_ok=True)
        multiprocess.MultiProcessCollector(registry, path=multiproc_path)
    # In multiprocess mode the histogram writes to this process's files and is read back
    # through MultiProcessCollector; registering it too would count it twice.
    requests_histogram = Histogram(
        PREFIX + "http_request_duration_seconds",
        "Time to answer an HTTP request (until the view returned; a streamed body is not "
        "included), by Flask endpoint, method and status class.",
        ["endpoint", "method", "status"],
        buckets=REQUEST_BUCKETS,
        registry=None if multiproc_path else registry,
    )
    registry.register(DatabaseCollector(runtime.stats, window))

    # The histogram's child per label values: `labels()` validates and converts its
    # arguments and takes a lock on every call. Endpoints, methods and status classes are
    # finite, so this stays small.
    children: dict[tuple[str | None, str, int], Any] = {}

    def observe(response: Response) -> Response:
        req = request._get_current_object()  # one proxy lookup, not one per attribute
        started = req.environ.get(_START_KEY)
        if started is not None:
            # Any method outside _METHODS is "other", here too: a client's made-up methods
            # must not grow the dictionary.
            method = req.method if req.method in _METHODS else "other"
            key = (req.endpoint, method, response.status_code // 100)
            child = children.get(key)
            if child is None:
                endpoint, _, status_class = key
                child = children.setdefault(key, requests_histogram.labels(
                    endpoint or "unmatched", method, f"{status_class}xx"))
            child.observe(time.perf_counter() - started)
        return response

    app.wsgi_app = _StampArrival(app.wsgi_app)  # type: ignore[method-assign]
    app.after_request(observe)
    app.extensions["llm_train_api.metrics_registry"] = registry
    _add_route(app, registry)


class _StampArrival:
    """WSGI middleware, outermost: when the request reached the app, for the duration
    histogram. It runs before Flask's own request handling, so a request that a
    before_request hook refuses (401, 415) is timed too, at the cost of a dictionary
    store rather than a signal dispatch per request."""

    def __init__(self, wsgi_app: Any) -> None:
        self.wsgi_app = wsgi_app

    def __call__(self, environ: dict[str, Any], start_response: Any) -> Any:
        environ[_START_KEY] = time.perf_counter()
        return self.wsgi_app(environ, start_response)


def _add_route(app: Flask, registry: Any) -> None:
    @app.get("/metrics")
    @auth.public
    def metrics():
        """The Prometheus exposition (text format). Public as far as the token check goes:
        authorize_scrape() lets admins and the METRICS_TOKEN in."""
        auth.authorize_scrape()
        if registry is None:
            response = jsonify(code=404, status="Not Found", message=_MISSING_MESSAGE)
            response.status_code = 404
            return response
        from prometheus_client.exposition import choose_encoder

        # The text format, or OpenMetrics when the scraper asks for it.
        encode, content_type = choose_encoder(request.headers.get("Accept", ""))
        return Response(encode(registry), headers={"Content-Type": content_type,
                                                   "Cache-Control": "no-store"})


# ----------------------------------------------------------------------------- database


class DatabaseCollector:
    """Reads the job figures from the database on every scrape (a few indexed queries)."""

    def __init__(self, stats: JobStats, window: int) -> None:
        self._stats = stats
        self._window = window

    def describe(self) -> list[Any]:
        return []  # nothing is known before the first query; skip the registry's probe

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        up = GaugeMetricFamily(PREFIX + "database_up", "1 if the job figures below could "
                               "be read from the database during this scrape, else 0.")
        try:
            figures = self._stats.read(self._window)
        except SQLAlchemyError:
            up.add_metric([], 0)
            yield up
            return
        up.add_metric([], 1)
        yield up
        by_status = GaugeMetricFamily(PREFIX + "jobs", "Jobs in the database by status.",
                                      labels=["status"])
        for status in JobStatus:
            by_status.add_metric([status.value], figures.counts.get(status.value, 0))
        yield by_status
        queued = figures.counts.get(JobStatus.QUEUED.value, 0)
        yield GaugeMetricFamily(PREFIX + "queue_depth", "Jobs waiting for a worker "
                                "(status queued).", value=queued)
        yield GaugeMetricFamily(PREFIX + "queue_oldest_age_seconds", "Age of the oldest "
                                "queued job; 0 when the queue is empty.",
                                value=figures.oldest_queued_age_s)
        latency = GaugeMetricFamily(
            PREFIX + "dispatch_latency_seconds",
            f"Creation to first start of the last {self._window} jobs that started (by "
            "creation time), as quantiles over that window; quantile 1 is the maximum.",
            labels=["quantile"])
        delays = figures.dispatch_delays_s
        for q in DISPATCH_QUANTILES:
            latency.add_metric([f"{q:g}"], _quantile(delays, q) if delays else float("nan"))
        yield latency
        yield GaugeMetricFamily(PREFIX + "dispatch_latency_window_jobs", "Jobs behind "
                                f"{PREFIX}dispatch_latency_seconds.", value=len(delays))


def _quantile(ordered: list[float], q: float) -> float:
    """Nearest-rank quantile of a sorted, non-empty list."""
    return ordered[min(len(ordered), max(1, math.ceil(q * len(ordered)))) - 1]
