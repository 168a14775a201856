"""A dry run of a fine-tuning job: how many examples, tokens, truncations and steps the run
will have. Counting tokens takes the model's tokenizer and chat template, which the API
process may not load (it never imports transformers or torch), so the trainer's own
planning code (training.hf.plan, the function the trainer itself prepares data with) runs
in a subprocess, under a time limit (LLM_TRAIN_API_PLAN_TIMEOUT_S).

A refusal of the data or the spec by the planner is the client's (422, naming the field);
a planner that cannot run (too slow, the `finetune` extra missing on the API host, a
crash) is the service's (503): the job itself may be fine, so try it without the dry run.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from typing import Any

from llm_train_api.domain import DomainError
from llm_train_api.services.admission import AdmissionError

PLAN_MODULE = "llm_train_api.training.hf.plan"


class PlanUnavailable(DomainError):
    """The run could not be planned for reasons that are not the request's (503)."""


class PlannersBusy(PlanUnavailable):
    """Every planner slot of this process is taken (503 with Retry-After)."""

    retry_after = 5


class PlanSlots:
    """How many planners one API process runs at once (PLANS_PER_PROCESS).

    Each planner is a Python process that loads a tokenizer and tokenises whole datasets:
    hundreds of MB and a core for up to PLAN_TIMEOUT_S. Without a bound, a client sending
    dry runs in a loop would start as many as the request threads allow, in every gunicorn
    worker, and starve the host. A slot is taken without waiting: a dry run beyond the
    bound is answered at once rather than holding a request thread in a queue.
    """

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self._free = threading.BoundedSemaphore(limit)

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._free.acquire(blocking=False):
            raise PlannersBusy(
                f"This server is already planning {self.limit} dry run(s) "
                "(LLM_TRAIN_API_PLANS_PER_PROCESS); retry in a few seconds, or create the "
                "job without dry_run.")
        try:
            yield
        finally:
            self._free.release()


def _public(message: str, spec: dict[str, Any]) -> str:
    """The planner's message, without the server's folders."""
    for path in (spec.get("model_path"), spec.get("data_dir")):
        if path:
            message = message.replace(str(path), "…")
    return re.sub(r" \(looked in [^)]*\)", "", message)


def plan_run(spec: dict[str, Any], *, timeout_s: float, slots: PlanSlots) -> dict[str, Any]:
    """Run the planner on `spec` (a fine-tuning spec.json), in one of `slots`, and return
    its plan."""
    with slots.hold():
        return _plan(spec, timeout_s)


def _plan(spec: dict[str, Any], timeout_s: float) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    try:
        done = subprocess.run([sys.executable, "-m", PLAN_MODULE], input=json.dumps(spec),
                              capture_output=True, text=True, timeout=timeout_s, env=env,
                              check=False)
    except subprocess.TimeoutExpired:
        raise PlanUnavailable(f"Planning the run took longer than {timeout_s:g} s "
                              "(LLM_TRAIN_API_PLAN_TIMEOUT_S); the job may still be fine: "
                              "create it without dry_run.") from None
    lines = done.stdout.strip().splitlines()
    try:
        answer = json.loads(lines[-1]) if lines else None
    except ValueError:
        answer = None
    if done.returncode == 0 and isinstance(answer, dict):
        return answer
    if done.returncode == 2 and isinstance(answer, dict) and answer.get("field"):
        raise AdmissionError({answer["field"]: [_public(str(answer["error"]), spec)]})
    why = (answer or {}).get("error") if isinstance(answer, dict) else None
    why = why or (done.stderr.strip().splitlines() or ["no output"])[-1]
    raise PlanUnavailable(f"The run could not be planned on this server "
                          f"({_public(str(why), spec)}); the job may still be fine: create "
                          "it without dry_run.")
