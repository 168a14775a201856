"""The trainer's stdout protocol: the only channel a dispatcher is guaranteed to see.

On Ray (or any remote runner) the dispatcher may only get the process's stdout, so every
fact the worker needs - metrics, progress, the outcome and the last error - is printed as
one line::

    @@llm_train_api {"event": "metrics", "step": 10, ...}

i.e. :data:`EVENT_PREFIX` followed by a single-line JSON object with at least ``event``
(one of :data:`EVENTS`), ``v`` (protocol version) and ``ts`` (unix time). Any other line is
human-readable log output and carries no contract. Non-finite floats are written as
``null`` so every line is strict JSON.

Events and their main fields:

* ``prepare``: dataset tokenisation status (``dataset``, ``sha256``, ``n_tokens``, ``cached``).
* ``start``: ``model_name``, ``n_params``, ``total_steps``, ``steps_per_epoch``,
  ``tokens_per_step``, ``device``, ``dtype``, ``resumed_from_step``, ``train_tokens``,
  ``val_tokens``, ``estimated_memory_bytes``.
* ``metrics``: ``step``, ``total_steps``, ``epoch``, ``train_loss``, ``val_loss`` (only when
  evaluated), ``lr``, ``tokens_per_s``, ``elapsed_s``.
* ``checkpoint``: ``step``, ``path``, ``is_best``, ``val_loss``.
* ``checkpoint_corrupt``: a resume found the checkpoint of ``step`` corrupt (``reason``)
  and continues from ``fallback_step`` instead (null: from the start).
* ``error``: ``message``, ``error_type``, ``exit_code``.
* ``done``: ``outcome`` (``succeeded`` | ``preempted`` | ``failed``), ``exit_code``,
  ``step``, ``best_val_loss``, and ``result`` where the trainer has one (final and best
  metrics, ``best_checkpoint``).

Exit codes: :data:`EXIT_OK` (0) success, :data:`EXIT_FAILED` (1) training error,
:data:`EXIT_USAGE` (2) bad spec/usage (invalid hyperparameters, unknown model or dataset),
:data:`EXIT_PREEMPTED` (75, ``EX_TEMPFAIL``) stopped by SIGTERM with a checkpoint saved;
rerunning the same command resumes.
"""

from __future__ import annotations

import json
import math
import re
import sys
import time
from collections.abc import Callable
from typing import IO, Any

EVENT_PREFIX = "@@llm_train_api "
PROTOCOL_VERSION = 1
EVENTS = ("prepare", "start", "metrics", "checkpoint", "checkpoint_corrupt", "error", "done")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_PREEMPTED = 75

OUTCOME_SUCCEEDED = "succeeded"
OUTCOME_PREEMPTED = "preempted"
OUTCOME_FAILED = "failed"


def _jsonable(value: Any) -> Any:
    # json.dumps would write NaN/Infinity, which strict JSON parsers (and browsers) reject.
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    return value


def format_event(event: str, **fields: Any) -> str:
    """Return the protocol line (without newline) for ``event``."""
    if event not in EVENTS:
        raise ValueError(f"unknown event {event!r}")
    payload = {"event": event, "v": PROTOCOL_VERSION, "ts": round(time.time(), 3)}
    payload.update(_jsonable(fields))
    return EVENT_PREFIX + json.dumps(payload, separators=(",", ":"), allow_nan=False)


def parse_line(line: str | bytes) -> dict[str, Any] | None:
    """Parse one stdout line; return the event dict, or ``None`` for log lines.

    Tolerant by design: the worker feeds it every line, including partial or garbled ones,
    and must never crash on them.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    line = line.rstrip("\r\n")
    if not line.startswith(EVENT_PREFIX):
        return None
    try:
        payload = json.loads(line[len(EVENT_PREFIX) :])
    except ValueError:
        return None
    if not isinstance(payload, dict) or not isinstance(payload.get("event"), str):
        return None
    return payload


def rank_prefix(rank: int) -> str:
    """What a non-zero DDP rank puts before the lines it prints (see :class:`EventWriter`)."""
    return f"[rank {rank}] "


_RANK_LINE = re.compile(r"^\[rank (\d+)\] ")


def parse_rank_line(line: str | bytes) -> tuple[int, dict[str, Any]] | None:
    """``(rank, event)`` for a protocol line printed by a non-zero rank, else ``None``.

    Only the DDP launcher reads these: to everything else they are log lines.
    """
    if isinstance(line, bytes):
        line = line.decode("utf-8", errors="replace")
    match = _RANK_LINE.match(line)
    if match is None:
        return None
    event = parse_line(line[match.end():])
    return None if event is None else (int(match.group(1)), event)


class EventWriter:
    """Writes protocol lines and human log lines to one stream (stdout by default).

    Under DDP rank 0 owns an ordinary writer; every other rank gets ``prefix`` (see
    :func:`rank_prefix`) and then prints nothing but its ``error`` events, prefixed so that
    no executor mistakes them for the job's own protocol: the launcher picks them up to
    report the rank that failed first. ``enabled=False`` silences a writer entirely.
    """

    def __init__(
        self,
        stream: IO[str] | None = None,
        enabled: bool = True,
        listener: Callable[[dict[str, Any]], None] | None = None,
        prefix: str | None = None,
    ) -> None:
        self._stream = stream
        self.enabled = enabled
        self._listener = listener
        self.prefix = prefix

    @property
    def stream(self) -> IO[str]:
        return self._stream if self._stream is not None else sys.stdout

    def emit(self, event: str, **fields: Any) -> None:
        line = format_event(event, **fields)
        if self._listener is not None:
            parsed = parse_line(line)
            assert parsed is not None
            self._listener(parsed)
        if not self.enabled:
            return
        if self.prefix is not None:
            if event != "error":
                return
            line = self.prefix + line
        self.stream.write(line + "\n")
        self.stream.flush()

    def log(self, message: str) -> None:
        if self.enabled and self.prefix is None:
            self.stream.write(message + "\n")
            self.stream.flush()


def report_failure(writer: EventWriter, exc: BaseException, exit_code: int, message: str) -> int:
    """Emit the failure epilogue (log line, ``error``, ``done``) and return ``exit_code``."""
    writer.log(f"error: {message}")
    writer.emit("error", message=message, error_type=type(exc).__name__, exit_code=exit_code)
    writer.emit("done", outcome=OUTCOME_FAILED, exit_code=exit_code, step=None,
                best_val_loss=None)
    return exit_code
