"""Supervise a torchrun launch so that N ranks behave like one trainer process.

Usage (what :func:`~.spec.run_command` builds for ``processes > 1``)::

    python -m llm_train_api.training.launch -- \\
        python -m torch.distributed.run --standalone --nproc-per-node 2 \\
        -m llm_train_api.training run --job-dir DIR

Executors (the local worker, the Ray dispatcher) rely on the trainer's contract: exit 0,
1 or 2 with an ``error`` line saying why, 75 when preempted by SIGTERM; a SIGKILLed process
group leaves nothing running. torchrun alone breaks each part of it:

* it exits 1 whenever a rank exits non-zero or when it is itself signalled, so a
  preempted job (every rank exits 75 after rank 0 saved a checkpoint) would look failed;
* when one rank fails, the others die of broken collectives and rank 0, the one that
  prints the protocol, reports *that* ("Connection closed by peer") instead of the cause;
* it starts every rank in a session of its own and does not tie their lives to its own,
  so the worker's ``killpg(SIGKILL)`` on a cancel would leave the ranks training;
* a rank killed by a signal (the OOM killer) is an exit 1 too, where a single trainer's
  death by signal tells the worker to retry the job.

This supervisor is the process the executor sees. It runs the torchrun command given
after ``--`` in a new session tied to its own life (PR_SET_PDEATHSIG; the ranks do the
same with torchrun, see ``__main__``), forwards SIGTERM/SIGINT/SIGHUP to torchrun once
(torchrun forwards them to the ranks), copies the output through, and holds back the
``error`` and ``done`` lines: at the end it prints one ``error`` (the first any rank
reported; other ranks print theirs prefixed ``[rank N]``) and one ``done``, and exits with
the exit code they name. When torchrun's failure report shows a rank killed by a signal it
did not forward, it kills itself with that signal instead, so the executor sees what a
single trainer's death would have shown. Torch-free and small: one more process per job.
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
from typing import Any

from llm_train_api.training.events import (
    EXIT_FAILED,
    EXIT_PREEMPTED,
    EXIT_USAGE,
    OUTCOME_FAILED,
    OUTCOME_PREEMPTED,
    EventWriter,
    parse_line,
    parse_rank_line,
)

_PR_SET_PDEATHSIG = 1
try:  # loaded before any fork: the child must not allocate between fork and exec
    _prctl = ctypes.CDLL(None, use_errno=True).prctl
except (OSError, AttributeError):  # pragma: no cover - not Linux
    _prctl = None

FORWARDED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# A line of torchrun's failure report (torch.distributed.elastic's ChildFailedError).
_SIGNAL_DEATH = re.compile(r"^\s*exitcode\s*:\s*-(\d+)\b")
_SHUTDOWN_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_META = ("event", "v", "ts")


def die_with_parent() -> None:
    """Linux: SIGKILL this process when its parent dies (a torchrun rank when torchrun
    dies, torchrun when this supervisor dies). If the parent is already gone (re-parented
    to init), die now rather than train as an orphan."""
    if _prctl is None:  # pragma: no cover - not Linux
        return
    parent = os.getppid()
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    if parent == 1 or os.getppid() != parent:
        os.kill(os.getpid(), signal.SIGKILL)


def _fields(event: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in event.items() if k not in _META}


def _exit_code(value: Any, default: int) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else default


def supervise(command: list[str], out: Any = None) -> int:
    """Run ``command`` (a torchrun launch), relay its output to ``out`` (stdout's binary
    buffer), and return the exit code the single-process trainer would have had."""
    out = out if out is not None else sys.stdout.buffer
    writer = EventWriter()
    proc = subprocess.Popen(
        command, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        start_new_session=True, preexec_fn=die_with_parent, close_fds=True,
    )
    signalled: list[int] = []

    def forward(signum: int, frame: object) -> None:
        signalled.append(signum)
        try:
            proc.send_signal(signum)
        except ProcessLookupError:  # pragma: no cover - already gone
            pass

    for sig in FORWARDED_SIGNALS:
        signal.signal(sig, forward)

    first_error: dict[str, Any] | None = None
    error_rank = 0
    done: dict[str, Any] | None = None
    last_line = ""
    killed_by: int | None = None  # a rank's death by signal, from torchrun's report
    assert proc.stdout is not None
    for raw in proc.stdout:
        line = raw.decode("utf-8", "replace").rstrip("\r\n")
        event, rank = parse_line(line), 0
        if event is None:
            ranked = parse_rank_line(line)
            if ranked is not None:
                rank, event = ranked
        kind = event.get("event") if event is not None else None
        if kind == "error":
            if first_error is None:
                first_error, error_rank = event, rank
            continue
        if kind == "done" and rank == 0:
            done = event
            continue
        out.write(raw)
        out.flush()
        stripped = line.strip()
        if event is None and stripped and stripped.strip("=-*") != "":
            last_line = stripped
            death = _SIGNAL_DEATH.match(line)
            # SIGTERM/SIGINT deaths are torchrun's own shutdown of the survivors.
            if death and killed_by is None and int(death.group(1)) not in _SHUTDOWN_SIGNALS:
                killed_by = int(death.group(1))
    rc = proc.wait()

    succeeded_or_preempted = done is not None and done.get("outcome") != OUTCOME_FAILED
    if killed_by is not None and not signalled and not succeeded_or_preempted:
        # Not a training error (the other ranks' errors are its consequences): die the
        # same death so the executor retries the job, as for a single trainer.
        name = signal.Signals(killed_by).name if killed_by in signal.valid_signals() \
            else str(killed_by)
        writer.log(f"a rank was killed by {name}; passing it on")
        sys.stdout.flush()
        if killed_by != signal.SIGKILL:
            signal.signal(killed_by, signal.SIG_DFL)
        os.kill(os.getpid(), killed_by)  # a signal whose default is to go on falls through

    if first_error is not None:
        code = _exit_code(first_error.get("exit_code"), EXIT_FAILED)
        if code not in (EXIT_FAILED, EXIT_USAGE):
            code = EXIT_FAILED
        message = str(first_error.get("message") or "the trainer failed")
        if error_rank:
            message = f"rank {error_rank}: {message}"
        writer.log(f"error: {message}")
        writer.emit("error", message=message,
                    error_type=first_error.get("error_type", "Error"), exit_code=code)
        writer.emit("done", outcome=OUTCOME_FAILED, exit_code=code,
                    step=done.get("step") if done else None, best_val_loss=None)
        return code
    if done is not None:
        writer.emit("done", **_fields(done))
        return _exit_code(done.get("exit_code"), EXIT_FAILED)
    if signalled:  # stopped before rank 0 could start training: nothing to lose
        writer.log("stopped before training started; rerun to continue")
        writer.emit("done", outcome=OUTCOME_PREEMPTED, exit_code=EXIT_PREEMPTED, step=None,
                    best_val_loss=None)
        return EXIT_PREEMPTED
    message = (f"torchrun exited with code {rc} before the trainer reported an outcome"
               + (f": {last_line}" if last_line else ""))
    writer.log(f"error: {message}")
    writer.emit("error", message=message, error_type="LaunchError", exit_code=EXIT_FAILED)
    writer.emit("done", outcome=OUTCOME_FAILED, exit_code=EXIT_FAILED, step=None,
                best_val_loss=None)
    return EXIT_FAILED


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if args[:1] == ["--"]:
        args = args[1:]
    if not args:
        sys.stderr.write("usage: python -m llm_train_api.training.launch -- COMMAND...\n")
        return EXIT_USAGE
    try:
        return supervise(args)
    except OSError as exc:
        writer = EventWriter()
        message = f"could not start torchrun: {exc}"
        writer.log(f"error: {message}")
        writer.emit("error", message=message, error_type=type(exc).__name__,
                    exit_code=EXIT_FAILED)
        writer.emit("done", outcome=OUTCOME_FAILED, exit_code=EXIT_FAILED, step=None,
                    best_val_loss=None)
        return EXIT_FAILED


if __name__ == "__main__":
    sys.exit(main())
