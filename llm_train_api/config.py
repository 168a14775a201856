"""Settings: every knob is an `LLM_TRAIN_API_*` environment variable.

`create_app(test_config)` accepts the same names without the prefix, so tests configure the
app exactly the way operators do.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

PREFIX = "LLM_TRAIN_API_"
_URL_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


class ConfigError(ValueError):
    """A setting has a value the service cannot start with."""


@dataclass(frozen=True)
class Settings:
    # Where the SQLite default and other local state live. Empty = Flask's instance folder.
    INSTANCE_PATH: str = ""
    # SQLAlchemy URL. Empty = sqlite file in INSTANCE_PATH.
    DATABASE_URL: str = ""
    # "full": a 2xx means the write survives power loss. "relaxed": survives a process
    # crash but may lose the last moments of writes on power loss, for more write throughput.
    DURABILITY: str = "full"
    # Connections per process (PostgreSQL); each gunicorn worker holds its own pool.
    DB_POOL_SIZE: int = 5
    # How long a write waits for another process holding the SQLite write lock.
    DB_BUSY_TIMEOUT_S: float = 10.0
    # Largest accepted JSON request body.
    MAX_JSON_BYTES: int = 1024 * 1024
    # Bounds on the hyperparameters object, serialised size and nesting depth.
    MAX_HYPERPARAMETERS_BYTES: int = 64 * 1024
    MAX_HYPERPARAMETERS_DEPTH: int = 8
    # Artifacts: datasets, job folders (logs, metrics, checkpoints). Empty = INSTANCE_PATH/data.
    # A filesystem path (not a URL); several hosts need it on a shared filesystem.
    DATA_DIR: str = ""
    # "local": built-in workers run jobs, and jobs are validated against the trainer at
    # creation. "none": the seed's pure registry, external systems drive statuses.
    EXECUTOR: str = "local"
    # Largest dataset upload (streamed to disk, separate from MAX_JSON_BYTES).
    MAX_DATASET_BYTES: int = 1024 * 1024 * 1024
    # How long one `logs?follow=true` stream may stay open before the client reconnects.
    LOG_FOLLOW_MAX_S: float = 60.0
    # Worker: lease length, how often it is renewed, how often queues/cancels are polled.
    LEASE_S: float = 30.0
    HEARTBEAT_S: float = 5.0
    POLL_S: float = 0.5
    # Worker: SIGTERM-to-SIGKILL grace for a cancelled job's process group.
    CANCEL_GRACE_S: float = 0.5
    # Worker: torch CPU threads per trainer (0 = torch's default).
    TRAINER_THREADS: int = 0
    # Worker: GPUs the local executor hands out. "auto": every GPU torch sees; "": none;
    # "0,1": those.
    WORKER_GPUS: str = "auto"
    # Memory a job may use on any worker, in GiB; jobs whose estimate exceeds it are
    # refused at creation. 0 = this machine's RAM.
    WORKER_MEMORY_GB: float = 0.0
    # Number of reverse proxies in front of the service whose X-Forwarded-* to trust.
    TRUSTED_PROXIES: int = 0
    LOG_LEVEL: str = "INFO"

    # --- security (issue 5) ---
    # On the very first start, write an admin token to INSTANCE_PATH/admin-token.
    BOOTSTRAP_TOKEN: bool = True
    # "required": every API call needs `Authorization: Bearer <token>`. "disabled": anyone
    # who reaches the port is an admin; for experiments on loopback only.
    AUTH: str = "required"
    # A token that may read /metrics (Prometheus scrapes) and nothing else. Empty = admins only.
    METRICS_TOKEN: str = ""
    # Comma-separated origins allowed to call the API from a browser. Empty = CORS off.
    CORS_ORIGINS: str = ""
    # Per-user caps: queued jobs (429 at creation), running jobs (enforced by the claim),
    # datasets (429 at upload). 0 = no cap.
    MAX_QUEUED_PER_USER: int = 100
    MAX_RUNNING_PER_USER: int = 0
    MAX_DATASETS_PER_USER: int = 100

    # --- executors (issue 6): new settings go in this block ---
    # What `llm-train-api worker` runs jobs with: "local" (trainer child processes on this
    # machine) or "ray" (a dispatcher that submits each job to RAY_ADDRESS).
    WORKER_EXECUTOR: str = "local"
    # Ray dashboard / Job Submission address, e.g. http://head:8265 (for WORKER_EXECUTOR=ray).
    RAY_ADDRESS: str = ""
    # Interpreter the Ray job entrypoint runs the trainer with, on the Ray node: a python
    # that has llm_train_api[train] installed (the nodes' PATH decides what "python" is).
    RAY_PYTHON: str = "python"
    # "auto": refuse to dispatch to Ray unless DATA_DIR is reachable from the Ray nodes (a
    # network or FUSE filesystem, or a Ray head on loopback). "yes": the operator
    # vouches that DATA_DIR is the same shared folder on every Ray node.
    RAY_DATA_DIR_SHARED: str = "auto"

    # --- people-facing tools (issue 7): new settings go in this block ---
    # /metrics: the dispatch latency quantiles cover the last N jobs that started.
    METRICS_DISPATCH_WINDOW: int = 1000

    @classmethod
    def load(
        cls, environ: Mapping[str, str] | None = None, overrides: Mapping[str, Any] | None = None
    ) -> Settings:
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
        for name in ("DB_POOL_SIZE", "MAX_JSON_BYTES", "MAX_HYPERPARAMETERS_BYTES",
                     "MAX_HYPERPARAMETERS_DEPTH"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{PREFIX}{name} must be at least 1")
        if min(self.LEASE_S, self.HEARTBEAT_S, self.POLL_S, self.LOG_FOLLOW_MAX_S) <= 0:
            raise ConfigError("LEASE_S, HEARTBEAT_S, POLL_S and LOG_FOLLOW_MAX_S must be > 0")
        if self.HEARTBEAT_S * 2 > self.LEASE_S:
            raise ConfigError(f"{PREFIX}HEARTBEAT_S must be at most half of {PREFIX}LEASE_S")
        if min(self.MAX_QUEUED_PER_USER, self.MAX_RUNNING_PER_USER,
               self.MAX_DATASETS_PER_USER) < 0:
            raise ConfigError("the per-user caps must be 0 (no cap) or positive")
        if self.TRUSTED_PROXIES < 0 or self.DB_BUSY_TIMEOUT_S < 0:
            raise ConfigError("negative values are not allowed")
        if _URL_SCHEME.match(self.DATA_DIR):
            # Taken as a path, "s3://bucket" would quietly become a local folder named "s3:".
            raise ConfigError(
                f"{PREFIX}DATA_DIR must be a filesystem path, got the URL {self.DATA_DIR!r}. "
                "The API and the workers read and write job folders and datasets as files: "
                "mount object storage as a filesystem (s3fs, gcsfuse, blobfuse2...) or use "
                "a shared filesystem, and give its path.")


def _coerce(name: str, raw: Any, kind: type) -> Any:
    if isinstance(raw, kind) and not (kind is int and isinstance(raw, bool)):
        return raw
    try:
        if kind is bool:
            text = str(raw).strip().lower()
            if text in ("1", "true", "yes", "on"):
                return True
            if text in ("0", "false", "no", "off", ""):
                return False
            raise ValueError(text)
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
