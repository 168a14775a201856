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
import sys
import threading
from pathlib import Path
from typing import Any

from llm_train_api.training.common_cli import (
    ProtocolParser,
    add_run_options,
    parse_hp_option,
    run_job,
)
from llm_train_api.training.events import EXIT_OK, EventWriter


def _build_parser() -> argparse.ArgumentParser:
    parser = ProtocolParser(prog="python -m llm_train_api.training.hf",
                            description="Fine-tune a pretrained Hugging Face-format model "
                                        "(LoRA or full) on chat, instruction or text data.",
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
    add_run_options(run)
    sub.add_parser("schema", help="print the hyperparameter schema as JSON")
    return parser


def _load_spec(args: argparse.Namespace) -> dict[str, Any]:
    from llm_train_api.training.spec import SpecError

    if args.model_path or args.dataset:
        if not (args.model_path and args.dataset) or args.spec:
            raise SpecError("Give --model-path and --dataset together, or --spec, not both.")
        spec: Any = {"model_path": args.model_path, "model_name": args.model_name,
                     "dataset": args.dataset, "validation_dataset": args.validation_dataset,
                     "hyperparameters": parse_hp_option(args.hp), "job_id": args.job_id}
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
    from llm_train_api.training.spec import SpecError

    def train(spec: Any, events: EventWriter, stop: threading.Event) -> int:
        from llm_train_api.training.hf.trainer import execute

        return execute(spec, args.job_dir, events, stop, args.stop_at_step)

    return run_job(lambda: validate_spec(_load_spec(args)).spec,
                   (SpecError, HyperparameterError, DatasetError), train)


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
