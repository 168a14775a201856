"""gunicorn's configuration for the service, from Settings (LLM_TRAIN_API_BIND, _WORKERS,
_THREADS, _ACCESS_LOG).

Inside the package so that `llm-train-api serve` (``gunicorn -c
python:llm_train_api.api.gunicorn_conf``) runs the same server from an installed wheel as
from a checkout; the checkout's gunicorn.conf.py imports this module, so `gunicorn wsgi:app`
gets exactly this too. Options given on gunicorn's command line still win.
"""

from __future__ import annotations

from typing import Any

from llm_train_api.config import Settings

__all__ = [
    "accesslog", "bind", "child_exit", "errorlog", "graceful_timeout", "keepalive",
    "limit_request_fields", "limit_request_line", "logger_class", "on_starting", "preload_app",
    "threads", "timeout", "worker_class", "worker_connections", "workers",
]

_settings = Settings.load()

bind = _settings.BIND
# Requests are short and mostly wait on the database (a commit's fsync, a round trip), so
# each worker process serves a few requests at once on threads: the CPU does other requests'
# work during those waits.
workers = _settings.gunicorn_workers()
# gunicorn's gthread worker, changed so that slow clients and log streams hold no thread,
# and so that its own error answers are the service's JSON error shape (see the module).
worker_class = "llm_train_api.api.gunicorn_worker.ServiceWorker"
threads = _settings.THREADS
worker_connections = _settings.WORKER_CONNECTIONS
timeout = 60
graceful_timeout = 30
keepalive = 5
# Each worker builds its own app (and database pool) after fork: never share connections.
preload_app = False
accesslog = _settings.ACCESS_LOG or None
# The access log never shows an API token, even one sent in a query string.
logger_class = "llm_train_api.api.gunicorn_logging.RedactingLogger"
errorlog = "-"
# Drop absurd request lines and headers before Flask sees them.
limit_request_line = 8190
limit_request_fields = 100


# Prometheus multiprocess mode (llm_train_api.api.metrics): every worker writes its request
# metrics to files in one directory and any of them can answer a scrape with the sum. The
# master empties the directory and exports PROMETHEUS_MULTIPROC_DIR before it forks, because
# prometheus_client picks its storage when a worker first imports it.
def on_starting(server: Any) -> None:
    from llm_train_api.api.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir()


def child_exit(server: Any, worker: Any) -> None:
    from llm_train_api.api.metrics import process_exited

    process_exited(worker.pid)
