"""Settings: every knob is an `LLM_TRAIN_API_*` environment variable.

`create_app(test_config)` accepts the same names without the prefix, so tests configure the
app exactly the way operators do. Only the standard library is imported: gunicorn's master,
the CLI and the workers load this module without Flask.

Not here, on purpose: the client's LLM_TRAIN_API_URL and LLM_TRAIN_API_TOKEN (read by
`llm_train_api.client`, which imports nothing from the service), and the trainer's
LLM_TRAIN_API_DATA_DIR fallback (`llm_train_api.training` runs alone on GPU nodes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any

PREFIX = "LLM_TRAIN_API_"
# What a lease must keep between two renewals: a local trainer stops itself one second
# before its lease would lapse, and a busy machine delays renewals.
LEASE_FENCE_ROOM_S = 2.0
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
_PUBLIC_URL = re.compile(r"^https?://[A-Za-z0-9.\-\[\]:]+(/[^?#\s]*)?$")


class ConfigError(ValueError):
    """A setting has a value the service cannot start with."""


@dataclass(frozen=True)
class Settings:
    """Every knob of the service, typed and validated once, before anything starts.

    Each field is the variable `LLM_TRAIN_API_<NAME>`; the default written here is the only
    default there is (the API, the workers, gunicorn and the CLI all read it from here).
    """

    # Where things live.
    # Local state: the SQLite default, the bootstrap admin token, Prometheus samples.
    # Empty = Flask's instance folder for this package (see default_instance_path).
    INSTANCE_PATH: str = ""
    # Artifacts: datasets, job folders (logs, metrics, checkpoints). Empty = INSTANCE_PATH/data.
    # A filesystem path (not a URL); several hosts need it on a shared filesystem.
    DATA_DIR: str = ""
    # Read-only folders of Hugging Face-format models, colon-separated like PATH: each
    # model folder under them (or Hugging Face cache entry) is listed as a published model,
    # used in place, never copied or deleted through the API.
    MODEL_ROOTS: str = ""

    # The database.
    # SQLAlchemy URL. Empty = sqlite file in INSTANCE_PATH.
    DATABASE_URL: str = ""
    # "full": a 2xx means the write survives power loss. "relaxed": survives a process
    # crash but may lose the last moments of writes on power loss, for more write throughput.
    DURABILITY: str = "full"
    # Connections per process (PostgreSQL); each gunicorn worker holds its own pool.
    DB_POOL_SIZE: int = 5
    # How long a write waits for another process holding the SQLite write lock.
    DB_BUSY_TIMEOUT_S: float = 10.0

    # The HTTP server (gunicorn, `llm-train-api serve` and `up`).
    # host:port (or unix:/path) gunicorn listens on.
    BIND: str = "127.0.0.1:8000"
    # gunicorn worker processes. 0 = two per core plus one, at most 9 (see gunicorn_workers).
    WORKERS: int = 0
    # Threads per gunicorn worker: requests mostly wait on the database. Followed logs and
    # clients still sending their request do not hold one (see api/gunicorn_worker.py).
    THREADS: int = 4
    # Connections one gunicorn worker holds at once: requests being read, kept-alive
    # idle connections and open log streams.
    WORKER_CONNECTIONS: int = 4096
    # A client must send its whole request head (and a body of up to 1 MiB) within this
    # many seconds of connecting, or of its previous request: else a 408 and the socket
    # is closed. Slow senders wait in the server's event loop, not on a thread.
    REQUEST_HEAD_TIMEOUT_S: float = 10.0
    # Once a request is on a thread, the longest wait for the client's next bytes (a large
    # upload's body) or for it to take the response's bytes.
    REQUEST_READ_TIMEOUT_S: float = 30.0
    # Where gunicorn writes its access log: "-" = stdout, a file path, empty = off.
    ACCESS_LOG: str = "-"
    # Number of reverse proxies in front of the service whose X-Forwarded-* to trust.
    TRUSTED_PROXIES: int = 0
    # The URL clients reach the API at (e.g. https://train.example.com), for the absolute
    # URLs of Location and Link headers. Empty: those URLs are relative, unless
    # TRUSTED_PROXIES is set (then the forwarded host and scheme are used). The request's
    # own Host header is never trusted for them.
    PUBLIC_URL: str = ""
    LOG_LEVEL: str = "INFO"

    # Request limits.
    # Largest accepted JSON request body.
    MAX_JSON_BYTES: int = 1024 * 1024
    # Bounds on the hyperparameters object, serialised size and nesting depth.
    MAX_HYPERPARAMETERS_BYTES: int = 64 * 1024
    MAX_HYPERPARAMETERS_DEPTH: int = 8
    # Largest dataset upload (streamed to disk, separate from MAX_JSON_BYTES).
    MAX_DATASET_BYTES: int = 1024 * 1024 * 1024
    # Largest model import (PUT /models/{name}), in GiB: the archive as sent, and again the
    # files it unpacks to. Counted against the importing user's storage quota too.
    MAX_MODEL_UPLOAD_GB: float = 100.0
    # How long one `logs?follow=true` stream may stay open before the client reconnects.
    LOG_FOLLOW_MAX_S: float = 60.0
    # Open log streams one API process holds, in all and per user (0 = no per-user cap);
    # beyond them a follow request is a 429 with Retry-After.
    LOG_STREAMS_PER_PROCESS: int = 1000
    LOG_STREAMS_PER_USER: int = 20

    # Security.
    # "required": every API call needs `Authorization: Bearer <token>`. "disabled": anyone
    # who reaches the port is an admin; for experiments on loopback only.
    AUTH: str = "required"
    # On the first start, write an admin token to INSTANCE_PATH/admin-token so that the
    # operator can log in. Off for processes that need no API token (workers, `tokens`).
    BOOTSTRAP_TOKEN: bool = True
    # A token that may read /metrics (Prometheus scrapes) and nothing else. Empty = admins only.
    METRICS_TOKEN: str = ""
    # Comma-separated origins allowed to call the API from a browser. Empty = CORS off.
    CORS_ORIGINS: str = ""
    # Per-user caps: queued jobs (429 at creation), running jobs (enforced by the claim),
    # datasets (429 at upload). 0 = no cap.
    MAX_QUEUED_PER_USER: int = 100
    MAX_RUNNING_PER_USER: int = 0
    MAX_DATASETS_PER_USER: int = 100
    # Storage per user, in GiB: their own datasets plus their jobs' folders (checkpoints,
    # logs). An upload that would exceed it is refused (413), and so is a new job once the
    # user is over it (429). 0 = no cap.
    MAX_STORAGE_GB_PER_USER: float = 100.0
    # The highest `priority` a user's job may ask for (422 above it); admins and workers
    # keep the schema's whole range, -1000 to 1000. Users may always lower theirs.
    MAX_USER_PRIORITY: int = 10
    # How workers pick the next job. "fair": the user with the fewest running jobs first,
    # then priority and age inside that user's queue. "priority": priority, then age, over
    # every user's jobs at once (one user's high priorities can take every worker).
    SCHEDULING: str = "fair"

    # Running jobs.
    # "local": built-in workers run jobs, and jobs are validated against the trainer at
    # creation. "none": the seed's pure registry, external systems drive statuses.
    EXECUTOR: str = "local"
    # Memory a job may use on any worker, in GiB; jobs whose estimate exceeds it are
    # refused at creation. 0 = this machine's RAM.
    WORKER_MEMORY_GB: float = 0.0
    # Whether the workers have CUDA GPUs and bitsandbytes, which QLoRA fine-tuning needs:
    # the API cannot see the workers' machines, so the operator says so. Off: qlora jobs
    # are refused at creation (422) instead of failing on a worker.
    QLORA_WORKERS: bool = False
    # How long a dry run of a fine-tuning job may take to plan the run (tokenising the
    # dataset with the model's tokenizer, in a subprocess); past it, a 503.
    PLAN_TIMEOUT_S: float = 120.0
    # How many of those planners one API process runs at once; a dry run beyond it is a
    # 503 with Retry-After.
    PLANS_PER_PROCESS: int = 2

    # Workers (`llm-train-api worker`).
    # Lease length, how often it is renewed, how often queues/cancels are polled.
    LEASE_S: float = 30.0
    HEARTBEAT_S: float = 5.0
    POLL_S: float = 0.5
    # SIGTERM-to-SIGKILL grace for a cancelled job's process group.
    CANCEL_GRACE_S: float = 0.5
    # How often a worker removes the folders of deleted jobs under DATA_DIR/jobs (those of
    # jobs deleted while running, which the API leaves to their worker). 0 = never.
    JOB_DIR_SWEEP_S: float = 300.0
    # Torch CPU threads per trainer (0 = torch's default).
    TRAINER_THREADS: int = 0
    # GPUs a local worker hands out to jobs: "auto" = every GPU torch sees, "" = none,
    # "0,1" = those device indices.
    WORKER_GPUS: str = "auto"
    # What the worker runs jobs with: "local" (trainer child processes on this machine) or
    # "ray" (a dispatcher that submits each job to RAY_ADDRESS).
    WORKER_EXECUTOR: str = "local"

    # Ray.
    # Ray dashboard / Job Submission address, e.g. http://head:8265 (for WORKER_EXECUTOR=ray).
    RAY_ADDRESS: str = ""
    # Interpreter the Ray job entrypoint runs the trainer with, on the Ray node: a python
    # that has llm_train_api[train] installed (the nodes' PATH decides what "python" is).
    RAY_PYTHON: str = "python"
    # "auto": refuse to dispatch to Ray unless DATA_DIR is reachable from the Ray nodes (a
    # network or FUSE filesystem, or a Ray head on loopback). "yes": the operator
    # vouches that DATA_DIR is the same shared folder on every Ray node.
    RAY_DATA_DIR_SHARED: str = "auto"
    # Token for a Ray cluster started with token authentication (RAY_AUTH_MODE=token, Ray
    # 2.52+), sent as a bearer token on every request to its dashboard and Job Submission
    # API. Empty = Ray's own RAY_AUTH_TOKEN / RAY_AUTH_TOKEN_PATH / ~/.ray/auth_token, read
    # as Ray's clients read them (only with RAY_AUTH_MODE=token). A secret: kept out of
    # repr, logs and error messages.
    RAY_TOKEN: str = field(default="", repr=False)

    # Webhooks (docs/webhooks.md).
    # Let webhook URLs reach loopback, private and link-local addresses (never cloud
    # metadata ones): for closed networks. Off: such URLs are refused at registration and
    # at every delivery.
    WEBHOOK_ALLOW_PRIVATE: bool = False
    # Connect and read timeout of one delivery attempt; redirects are never followed.
    WEBHOOK_TIMEOUT_S: float = 5.0
    # The first retry's delay; each further one doubles (plus up to 25% jitter), at most
    # an hour apart.
    WEBHOOK_BACKOFF_S: float = 10.0
    # A delivery still failing this long after its event is given up (`failed`).
    WEBHOOK_MAX_AGE_S: float = 86400.0
    # Whether `llm-train-api worker` (and so `up`) runs a webhook sender thread. Off where
    # `llm-train-api webhooks-sender` processes do the sending.
    WEBHOOK_SENDER: bool = True

    # Monitoring.
    # /metrics: the dispatch latency quantiles cover the last N jobs that started.
    METRICS_DISPATCH_WINDOW: int = 1000

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
        """Settings from `environ` (default: the process environment), with `overrides`
        (create_app's test_config: the same names without the prefix) taking precedence."""
        environ = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for f in fields(cls):
            raw: Any = environ.get(PREFIX + f.name)
            if overrides and f.name in overrides:
                raw = overrides[f.name]
            if raw is None:
                continue
            values[f.name] = _coerce(f.name, raw, type(getattr(cls, f.name)))
        settings = cls(**values)
        settings.validate()
        return settings

    def validate(self) -> None:
        """Refuse values the service cannot start with, naming the variable, so that a typo
        stops every process at once instead of surfacing later in one of them."""
        if self.EXECUTOR not in ("local", "none"):
            raise ConfigError(f"{PREFIX}EXECUTOR must be 'local' or 'none', got {self.EXECUTOR!r}")
        if self.WORKER_EXECUTOR not in ("local", "ray"):
            raise ConfigError(f"{PREFIX}WORKER_EXECUTOR must be 'local' or 'ray', "
                              f"got {self.WORKER_EXECUTOR!r}")
        if self.RAY_DATA_DIR_SHARED not in ("auto", "yes"):
            raise ConfigError(f"{PREFIX}RAY_DATA_DIR_SHARED must be 'auto' or 'yes', "
                              f"got {self.RAY_DATA_DIR_SHARED!r}")
        if self.AUTH not in ("required", "disabled"):
            raise ConfigError(f"{PREFIX}AUTH must be 'required' or 'disabled', got {self.AUTH!r}")
        if self.DURABILITY not in ("full", "relaxed"):
            raise ConfigError(
                f"{PREFIX}DURABILITY must be 'full' or 'relaxed', got {self.DURABILITY!r}"
            )
        if self.SCHEDULING not in ("fair", "priority"):
            raise ConfigError(
                f"{PREFIX}SCHEDULING must be 'fair' or 'priority', got {self.SCHEDULING!r}"
            )
        if not -1000 <= self.MAX_USER_PRIORITY <= 1000:
            raise ConfigError(f"{PREFIX}MAX_USER_PRIORITY must be between -1000 and 1000")
        for name in ("DB_POOL_SIZE", "MAX_JSON_BYTES", "MAX_HYPERPARAMETERS_BYTES",
                     "MAX_HYPERPARAMETERS_DEPTH"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{PREFIX}{name} must be at least 1")
        # Request bodies nest at most 64 levels (api/errors.py), the job's own two included.
        if self.MAX_HYPERPARAMETERS_DEPTH > 32:
            raise ConfigError(f"{PREFIX}MAX_HYPERPARAMETERS_DEPTH must be at most 32")
        if min(self.LEASE_S, self.HEARTBEAT_S, self.POLL_S, self.LOG_FOLLOW_MAX_S) <= 0:
            raise ConfigError("LEASE_S, HEARTBEAT_S, POLL_S and LOG_FOLLOW_MAX_S must be > 0")
        if self.LEASE_S < self.HEARTBEAT_S + LEASE_FENCE_ROOM_S:
            # A local trainer stops itself a second before its lease would lapse
            # (training/lease.py): between two renewals the lease must keep more than that.
            raise ConfigError(f"{PREFIX}LEASE_S must be at least {PREFIX}HEARTBEAT_S + "
                              f"{LEASE_FENCE_ROOM_S:g} seconds")
        if self.HEARTBEAT_S * 2 > self.LEASE_S:
            raise ConfigError(f"{PREFIX}HEARTBEAT_S must be at most half of {PREFIX}LEASE_S")
        if min(self.MAX_QUEUED_PER_USER, self.MAX_RUNNING_PER_USER,
               self.MAX_DATASETS_PER_USER) < 0:
            raise ConfigError("the per-user caps must be 0 (no cap) or positive")
        if self.MAX_STORAGE_GB_PER_USER < 0 or self.JOB_DIR_SWEEP_S < 0:
            raise ConfigError(f"{PREFIX}MAX_STORAGE_GB_PER_USER and {PREFIX}JOB_DIR_SWEEP_S "
                              "must be 0 (off) or positive")
        if (self.MAX_MODEL_UPLOAD_GB <= 0 or self.PLAN_TIMEOUT_S <= 0
                or self.PLANS_PER_PROCESS <= 0):
            raise ConfigError(f"{PREFIX}MAX_MODEL_UPLOAD_GB, {PREFIX}PLAN_TIMEOUT_S and "
                              f"{PREFIX}PLANS_PER_PROCESS must be positive")
        for root in self.MODEL_ROOTS.split(os.pathsep):
            if root.strip() and (_URL_SCHEME.match(root) or not os.path.isabs(root)):
                raise ConfigError(f"{PREFIX}MODEL_ROOTS must be absolute folder paths "
                                  f"separated by '{os.pathsep}', got {root!r}")
        if self.TRUSTED_PROXIES < 0 or self.DB_BUSY_TIMEOUT_S < 0:
            raise ConfigError("negative values are not allowed")
        if self.PUBLIC_URL and not _PUBLIC_URL.match(self.PUBLIC_URL):
            raise ConfigError(f"{PREFIX}PUBLIC_URL must be empty or an http(s) URL with a "
                              "host and no query, such as https://train.example.com, "
                              f"got {self.PUBLIC_URL!r}")
        if not self.BIND.strip():
            raise ConfigError(f"{PREFIX}BIND must be host:port or unix:/path, got {self.BIND!r}")
        if self.WORKERS < 0:
            raise ConfigError(f"{PREFIX}WORKERS must be 0 (two per core plus one) or positive")
        if self.THREADS < 1:
            raise ConfigError(f"{PREFIX}THREADS must be at least 1")
        if self.WORKER_CONNECTIONS < self.THREADS + 1:
            raise ConfigError(f"{PREFIX}WORKER_CONNECTIONS must be more than THREADS")
        if min(self.REQUEST_HEAD_TIMEOUT_S, self.REQUEST_READ_TIMEOUT_S) <= 0:
            raise ConfigError("REQUEST_HEAD_TIMEOUT_S and REQUEST_READ_TIMEOUT_S must be > 0")
        if self.LOG_STREAMS_PER_PROCESS < 1 or self.LOG_STREAMS_PER_USER < 0:
            raise ConfigError("LOG_STREAMS_PER_PROCESS must be at least 1 and "
                              "LOG_STREAMS_PER_USER at least 0")
        if min(self.WEBHOOK_TIMEOUT_S, self.WEBHOOK_BACKOFF_S, self.WEBHOOK_MAX_AGE_S) <= 0:
            raise ConfigError(f"{PREFIX}WEBHOOK_TIMEOUT_S, {PREFIX}WEBHOOK_BACKOFF_S and "
                              f"{PREFIX}WEBHOOK_MAX_AGE_S must be > 0")
        if self.METRICS_DISPATCH_WINDOW < 1:
            raise ConfigError(f"{PREFIX}METRICS_DISPATCH_WINDOW must be at least 1")
        if self.WORKER_GPUS.strip() != "auto":
            gpu_indices(self.WORKER_GPUS)
        if _URL_SCHEME.match(self.DATA_DIR):
            # Taken as a path, "s3://bucket" would quietly become a local folder named "s3:".
            raise ConfigError(
                f"{PREFIX}DATA_DIR must be a filesystem path, got the URL {self.DATA_DIR!r}. "
                "The API and the workers read and write job folders and datasets as files: "
                "mount object storage as a filesystem (s3fs, gcsfuse, blobfuse2...) or use "
                "a shared filesystem, and give its path.")


    def gunicorn_workers(self) -> int:
        """WORKERS, with 0 resolved for this machine.

        Requests are short and mostly wait on the database, so each process serves a few at
        once on threads; processes: two per core plus one, capped so that a big host does not
        open hundreds of database connections (each process has its own pool).
        """
        return self.WORKERS or min(2 * (os.cpu_count() or 1) + 1, 9)

    def worker_gpus(self) -> list[int] | None:
        """WORKER_GPUS as device indices; None for "auto" (the caller asks torch)."""
        if self.WORKER_GPUS.strip() == "auto":
            return None
        return gpu_indices(self.WORKER_GPUS)


def gpu_indices(value: str) -> list[int]:
    """Device indices from "0,1" ([0, 1]) or "" ([], no GPU); anything else is refused."""
    try:
        indices = [int(part) for part in value.replace(" ", "").split(",") if part]
    except ValueError:
        indices = [-1]
    if any(i < 0 for i in indices):
        raise ConfigError(f"{PREFIX}WORKER_GPUS must be 'auto', empty, or device indices "
                          f"such as '0,1', got {value!r}")
    return indices


_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _coerce(name: str, raw: Any, kind: type) -> Any:
    """`raw` (a string from the environment, or a typed override) as the field's type."""
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        text = str(raw).strip().lower()
        if text in _TRUE or text in _FALSE:
            return text in _TRUE
        raise ConfigError(f"{PREFIX}{name} must be true or false (1/0, yes/no, on/off), "
                          f"got {raw!r}")
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    try:
        if kind is int:
            return int(str(raw).strip())
        if kind is float:
            return float(str(raw).strip())
        return str(raw)
    except ValueError:
        raise ConfigError(f"{PREFIX}{name} must be a {kind.__name__}, got {raw!r}") from None


def default_instance_path() -> str:
    """Where local state lives when LLM_TRAIN_API_INSTANCE_PATH is unset, without Flask.

    The folder Flask's own rule gives this package: `instance/` beside the package in a
    checkout, `<prefix>/var/llm_train_api.app-instance` when it is installed into an
    environment. The worker and `tokens` commands, which build no Flask app, must find the
    same SQLite file and admin token as the API.
    """
    import sys

    package_path = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    prefix = os.path.abspath(sys.prefix)
    installed_prefix: str | None = None
    if os.path.commonpath([prefix, package_path]) == prefix:
        installed_prefix = prefix
    else:
        site_parent, site_folder = os.path.split(package_path)
        if site_folder.lower() == "site-packages":
            parent, folder = os.path.split(site_parent)
            if folder.lower() == "lib":
                installed_prefix = parent
            elif os.path.basename(parent).lower() == "lib":
                installed_prefix = os.path.dirname(parent)
            else:
                installed_prefix = site_parent
    if installed_prefix is None:
        return os.path.join(package_path, "instance")
    return os.path.join(installed_prefix, "var", "llm_train_api.app-instance")
