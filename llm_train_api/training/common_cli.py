"""What the two trainers' command lines share: usage errors as protocol events, the
``run`` command's common options (``--hp`` and the rest) and its frame (:func:`run_job`).

Torch-free: a bad job is refused before the trainer pays for the torch import.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from collections.abc import Callable
from typing import Any, NoReturn

from llm_train_api.training.events import EXIT_USAGE, EventWriter, rank_prefix, report_failure
from llm_train_api.training.lease import start_lease_watchdog
from llm_train_api.training.spec import SpecError


class ProtocolParser(argparse.ArgumentParser):
    """argparse that also reports usage errors as protocol events on stdout."""

    def error(self, message: str) -> NoReturn:
        report_failure(EventWriter(), SystemExit(message), EXIT_USAGE, f"usage: {message}")
        super().error(message)  # prints usage to stderr and exits with 2 (= EXIT_USAGE)


def add_run_options(run: argparse.ArgumentParser) -> None:
    """The options of ``run`` after those that name the model and the data."""
    run.add_argument("--hp", default="{}", help="hyperparameters as a JSON object")
    run.add_argument("--data-dir", help="data dir (overrides the spec's data_dir)")
    run.add_argument("--job-id", help="job id to record")
    run.add_argument("--stop-at-step", type=int,
                     help="checkpoint and exit 75 before this step, as if preempted")


def parse_hp_option(text: str) -> Any:
    """The ``--hp`` option's JSON."""
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SpecError(f"--hp is not valid JSON: {exc}") from None


def run_job(load: Callable[[], Any], usage_errors: tuple[type[Exception], ...],
            execute: Callable[[Any, EventWriter, threading.Event], int]) -> int:
    """The ``run`` command: arm the lease watchdog, set up this rank's event writer and the
    stop flag (SIGTERM/SIGINT), ``load`` the validated spec (``usage_errors`` exit 2 as
    protocol events, before torch is imported), then ``execute`` it."""
    start_lease_watchdog()  # first: a lapsing lease ends the run even during the imports
    rank = int(os.environ.get("RANK", "0") or 0)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun rank
        from llm_train_api.training.launch import die_with_parent

        die_with_parent()
    events = EventWriter(prefix=rank_prefix(rank) if rank else None)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        # Only set a flag: writing to stdout here could re-enter a write in progress.
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        spec = load()
    except usage_errors as exc:
        return report_failure(events, exc, EXIT_USAGE, str(exc))
    return execute(spec, events, stop)
