"""Command line of the fine-tuning trainer; a worker runs it as a subprocess.

Usage::

    python -m llm_train_api.training.hf run --job-dir DIR [--spec SPEC.json]
    python -m llm_train_api.training.hf run --job-dir DIR --model-path MODEL_DIR \\
        --dataset NAME [--validation-dataset NAME] [--hp '{"max_steps": 100}'] \\
        [--data-dir PATH] [--stop-at-step N]
    python -m llm_train_api.training.hf schema    # the hyperparameter schema as JSON

Without ``--spec`` or ``--model-path``, ``DIR/spec.json`` is read, so rerunning the bare
command resumes a preempted job. stdout carries the protocol of
:mod:`llm_train_api.training.events`; exit codes 0 succeeded, 1 training error, 2 bad
spec or data, 75 preempted by SIGTERM/SIGINT (checkpoint saved; run again to resume).
The spec is validated before torch and transformers are imported.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import threading
from pathlib import Path
from typing import Any, NoReturn

from llm_train_api.training.events import EXIT_OK, EXIT_USAGE, EventWriter, rank_prefix
from llm_train_api.training.events import report_failure as _report


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        _report(EventWriter(), SystemExit(message), EXIT_USAGE, f"usage: {message}")
        super().error(message)


def _build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="python -m llm_train_api.training.hf",
                     description="Fine-tune a pretrained Hugging Face-format model (LoRA or "
                                 "full) on chat, instruction or text data.",
                     epilog="Exit codes: 0 ok, 1 training error, 2 bad spec/data, "
                            "75 preempted (rerun to resume).")
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="fine-tune, or resume from JOB_DIR's checkpoint")
    run.add_argument("--job-dir", required=True, help="job folder (local path)")
    run.add_argument("--spec", help="spec JSON file (default: JOB_DIR/spec.json)")
    run.add_argument("--model-path", help="model folder (instead of --spec)")
    run.add_argument("--model-name", help="model name to report")
    run.add_argument("--dataset", help="dataset name (instead of --spec)")
    run.add_argument("--validation-dataset", help="validation dataset name")
    run.add_argument("--hp", default="{}", help="hyperparameters as a JSON object")
    run.add_argument("--data-dir", help="data dir (overrides the spec's data_dir)")
    run.add_argument("--job-id", help="job id to record")
    run.add_argument("--stop-at-step", type=int,
                     help="checkpoint and exit 75 before this step, as if preempted")
    sub.add_parser("schema", help="print the hyperparameter schema as JSON")
    return parser


def _load_spec(args: argparse.Namespace) -> dict[str, Any]:
    from llm_train_api.training.spec import SpecError

    if args.model_path or args.dataset:
        if not (args.model_path and args.dataset) or args.spec:
            raise SpecError("Give --model-path and --dataset together, or --spec, not both.")
        try:
            hp = json.loads(args.hp)
        except ValueError as exc:
            raise SpecError(f"--hp is not valid JSON: {exc}") from None
        spec: Any = {"model_path": args.model_path, "model_name": args.model_name,
                     "dataset": args.dataset, "validation_dataset": args.validation_dataset,
                     "hyperparameters": hp, "job_id": args.job_id}
    else:
        path = Path(args.spec) if args.spec else Path(args.job_dir) / "spec.json"
        try:
            spec = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise SpecError(f"Cannot read the spec: {exc}") from None
        except ValueError as exc:
            raise SpecError(f"The spec is not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise SpecError("The spec must be a JSON object.")
    if args.data_dir:
        spec["data_dir"] = args.data_dir
    return spec


def _run(args: argparse.Namespace) -> int:
    from llm_train_api.training.datasets import DatasetError
    from llm_train_api.training.hf.spec import validate_spec
    from llm_train_api.training.hyperparams import HyperparameterError
    from llm_train_api.training.lease import start_lease_watchdog
    from llm_train_api.training.spec import SpecError

    start_lease_watchdog()  # first: a lapsing lease ends the run even during the imports
    rank = int(os.environ.get("RANK", "0") or 0)
    if "TORCHELASTIC_RUN_ID" in os.environ:  # a torchrun rank
        from llm_train_api.training.launch import die_with_parent

        die_with_parent()
    events = EventWriter(prefix=rank_prefix(rank) if rank else None)
    stop = threading.Event()

    def on_signal(signum: int, frame: object) -> None:
        stop.set()  # only a flag: writing here could re-enter a write in progress

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    try:
        spec = validate_spec(_load_spec(args)).spec
    except (SpecError, HyperparameterError, DatasetError) as exc:
        return _report(events, exc, EXIT_USAGE, str(exc))

    from llm_train_api.training.hf.trainer import execute

    return execute(spec, args.job_dir, events, stop, args.stop_at_step)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    from llm_train_api.training.hf.hyperparams import hyperparameter_schema

    json.dump(hyperparameter_schema(), sys.stdout, indent=2)
    sys.stdout.write("\n")
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())
