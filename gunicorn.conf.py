"""gunicorn defaults for `gunicorn wsgi:app`; every value can be overridden on the command
line, or with LLM_TRAIN_API_BIND / LLM_TRAIN_API_WORKERS / LLM_TRAIN_API_ACCESS_LOG.
"""

import multiprocessing
import os

bind = os.environ.get("LLM_TRAIN_API_BIND", "127.0.0.1:8000")
# Requests are short and mostly wait on the database (a commit's fsync, a round trip), so
# each worker process serves a few requests at once on threads: the CPU does other requests'
# work during those waits. Processes: two per core plus one, capped so a big host does not
# open hundreds of database connections (each process has its own pool).
workers = int(os.environ.get("LLM_TRAIN_API_WORKERS", min(2 * multiprocessing.cpu_count() + 1, 9)))
worker_class = "gthread"
threads = int(os.environ.get("LLM_TRAIN_API_THREADS", 4))
timeout = 60
graceful_timeout = 30
keepalive = 5
# Each worker builds its own app (and database pool) after fork: never share connections.
preload_app = False
accesslog = os.environ.get("LLM_TRAIN_API_ACCESS_LOG", "-") or None
errorlog = "-"
# Drop absurd request lines and headers before Flask sees them.
limit_request_line = 8190
limit_request_fields = 100


# Prometheus multiprocess mode (llm_train_api.api.metrics): every worker writes its request
# metrics to files in one directory and any of them can answer a scrape with the sum. The
# master empties the directory and exports PROMETHEUS_MULTIPROC_DIR before it forks, because
# prometheus_client picks its storage when a worker first imports it.
def on_starting(server):
    from llm_train_api.api.metrics import prepare_multiprocess_dir

    prepare_multiprocess_dir()


def child_exit(server, worker):
    from llm_train_api.api.metrics import process_exited

    process_exited(worker.pid)
