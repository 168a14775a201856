"""What the Ray cluster's nodes can hold, for admission (API hosts) and dispatch (Ray
dispatchers). Ray leaves a request that no node can satisfy PENDING forever, so a job too big
for every node is refused instead: with a 422 at creation when the API host knows the cluster
(LLM_TRAIN_API_RAY_ADDRESS is set there), else `failed` at dispatch.

Plain HTTP to the dashboard's state API (`/api/v0/nodes`), standard library only: API hosts
need neither ray nor torch installed. With token authentication on the cluster, the request
carries the token (ray_auth.py). Answers are cached per process for `TTL_S`, failures too,
so a slow or unreachable dashboard costs one short timeout per TTL, never every POST; a
refused token is logged (naming the setting, never the token) once per TTL.
"""

from __future__ import annotations

import json
import logging
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from typing import Any

from llm_train_api.config import ConfigError
from llm_train_api.domain import GIB
from llm_train_api.services import ray_auth

log = logging.getLogger("llm_train_api.ray")

TTL_S = 30.0
TIMEOUT_S = 2.0

_cache: dict[tuple[str, str], tuple[float, list[dict[str, float]]]] = {}
_lock = threading.Lock()


def node_capacities(address: str, token: str = "") -> list[dict[str, float]]:
    """`resources_total` of every ALIVE node ({"CPU", "GPU", "memory", ...}); [] if unknown.

    `token` is LLM_TRAIN_API_RAY_TOKEN (empty: Ray's own token variables, if any)."""
    now = time.monotonic()
    key = (address, token)
    with _lock:
        hit = _cache.get(key)
    if hit is not None and now - hit[0] < TTL_S:
        return hit[1]
    nodes = _fetch(address, token)
    with _lock:
        _cache[key] = (now, nodes)
    return nodes


def _fetch(address: str, token: str) -> list[dict[str, float]]:
    base = address if "://" in address else f"http://{address}"
    try:
        resolved = ray_auth.resolve(token)
    except ConfigError as exc:
        log.warning("Ray cluster capacity unknown: %s", exc)
        return []
    request = urllib.request.Request(
        f"{base.rstrip('/')}/api/v0/nodes?detail=1&limit=10000", headers=resolved.headers())
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as resp:
            body = json.load(resp)
        rows = body["data"]["result"]["result"]
        return [{k: float(v) for k, v in (row.get("resources_total") or {}).items()}
                for row in rows if row.get("state") == "ALIVE"]
    except urllib.error.HTTPError as exc:
        if exc.code in (401, 403):
            log.warning("Ray cluster capacity unknown: %s",
                        ray_auth.refusal(address, exc.code, resolved))
        return []
    except (OSError, ValueError, KeyError, TypeError):
        return []


def capacity_problem(resources: Mapping[str, Any] | None,
                     nodes: list[dict[str, float]]) -> str | None:
    """A message when no single node has the CPUs, GPUs and memory the job asks for."""
    if not nodes:
        return None  # the cluster is unknown: let the dispatcher (or Ray) decide
    resources = resources or {}
    cpus = float(resources.get("cpus", 1))
    gpus = float(resources.get("gpus", 0))
    memory = float(resources.get("memory_gb") or 0) * GIB
    for node in nodes:
        if (node.get("CPU", 0) >= cpus and node.get("GPU", 0) >= gpus
                and node.get("memory", 0) >= memory):
            return None
    most = {key: max(node.get(key, 0) for node in nodes) for key in ("CPU", "GPU", "memory")}
    return (f"no node of the Ray cluster can run this job: it asks for {cpus:g} CPU(s), "
            f"{gpus:g} GPU(s) and {memory / GIB:g} GiB; the largest node has "
            f"{most['CPU']:g} CPU(s), {most['GPU']:g} GPU(s) and {most['memory'] / GIB:.1f} GiB")


def admission_problem(resources: Mapping[str, Any] | None, address: str,
                      token: str = "") -> str | None:
    """For admission.admit: the refusal, when this API host knows a Ray cluster (`address`
    is LLM_TRAIN_API_RAY_ADDRESS, empty when it does not; `token` LLM_TRAIN_API_RAY_TOKEN)."""
    return capacity_problem(resources, node_capacities(address, token)) if address else None
