"""`jobs wait` and `jobs submit --wait`: follow a job to its end with a progress display.

On a terminal, one line redrawn in place (a bar, step/total, loss, tokens/s, ETA); when the
output is a file or a pipe (CI logs), plain lines, one each time the job moves on, so the
log stays readable and greppable. The figures are the job's `progress` field, which the
worker keeps current from the trainer's events (see llm_train_api/worker/progress.py).
"""

from __future__ import annotations

import time
from typing import TextIO

from llm_train_api.cli.common import EXIT_CANCELLED, EXIT_FAILED, EXIT_OK
from llm_train_api.client import ApiConnectionError, Client, Job, Progress, ServerError

BAR_WIDTH = 24
# How long `wait` keeps polling through connection errors and 5xx (each poll already
# retried by the client) before it gives up with exit code 1.
MAX_OUTAGE_S = 60.0


def duration(seconds: float | None) -> str:
    """``1:02:03`` / ``2:03``: what an ETA needs (no sub-second noise)."""
    if seconds is None:
        return "?"
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def rate(value: float | None) -> str:
    if value is None:
        return "?"
    for limit, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if value >= limit:
            return f"{value / limit:.1f}{suffix}"
    return f"{value:.0f}"


def progress_text(p: Progress | None, *, bar: bool) -> str | None:
    """step/total, percentage, loss, tokens/s and ETA (with `bar`, a text bar in front);
    None before the trainer has reported a step."""
    if p is None or p.step is None:
        return None
    fraction = p.fraction
    if fraction is None and p.total_steps:
        fraction = p.step / p.total_steps
    parts = []
    if bar:
        filled = int(round(min(max(fraction or 0, 0), 1) * BAR_WIDTH))
        parts.append("[" + "#" * filled + "-" * (BAR_WIDTH - filled) + "]")
    parts.append(f"step {p.step}/{p.total_steps if p.total_steps else '?'}")
    if fraction is not None:
        parts.append(f"{fraction * 100:.0f}%")
    if p.train_loss is not None:
        parts.append(f"loss {p.train_loss:.4f}")
    if p.val_loss is not None:
        parts.append(f"val {p.val_loss:.4f}")
    parts.append(f"{rate(p.tokens_per_s)} tok/s")
    parts.append(f"ETA {duration(p.eta_s)}")
    return "  ".join(parts)


def describe(job: Job, *, bar: bool) -> str:
    """One line about where the job is: while it trains, its progress; otherwise its
    status (and phase, or the error that ended it)."""
    p = job.progress_info
    text = progress_text(p, bar=bar) if job.status == "running" else None
    if text is not None:
        return f"{job.id}: {text}"
    phase = f" ({p.phase})" if job.status == "running" and p and p.phase else ""
    line = f"{job.id}: {job.status}{phase}"
    if job.is_terminal and job.error_message:
        line += f": {job.error_message}"
    return line


def exit_code(job: Job) -> int:
    """0 only for `succeeded`: a script's `&&` must not go on after a failed training."""
    if job.status == "succeeded":
        return EXIT_OK
    return EXIT_FAILED if job.status == "failed" else EXIT_CANCELLED


def wait(api: Client, job_id: str, *, out: TextIO, tty: bool, timeout: float | None,
         interval: float) -> tuple[Job, bool]:
    """Poll the job until it ends or `timeout` seconds pass, showing progress on `out`.
    Returns the last state seen and whether it is final."""
    deadline = None if not timeout else time.monotonic() + timeout
    last_key: tuple[object, ...] | None = None
    shown = False
    last_answer: float | None = None  # a wrong URL or token fails at once, not later
    try:
        while True:
            try:
                job = api.get_job(job_id)
                last_answer = time.monotonic()
            except (ApiConnectionError, ServerError):
                # A long wait outlives a server restart: keep polling for a while.
                now = time.monotonic()
                if (last_answer is None or now - last_answer > MAX_OUTAGE_S
                        or (deadline is not None and now > deadline)):
                    raise
                time.sleep(interval)
                continue
            if job.is_terminal:
                return job, True  # the caller reports the outcome, once
            line = describe(job, bar=tty)
            p = job.progress_info
            key = (job.status, p.phase if p else None, p.step if p else None)
            if tty:
                out.write("\r" + line + "\x1b[K")
                out.flush()
                shown = True
            elif key != last_key:
                out.write(line + "\n")
                out.flush()
            last_key = key
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                return job, False
            time.sleep(interval if remaining is None else min(interval, remaining))
    finally:
        if tty and shown:
            out.write("\n")
            out.flush()
