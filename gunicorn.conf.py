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
