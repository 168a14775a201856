"""Command line of the built-in trainer; the worker runs it as a subprocess.

Usage::

    python -m llm_train_api.training run --job-dir DIR [--spec SPEC.json]
    python -m llm_train_api.training run --job-dir DIR --model gpt-nano \\
        --dataset builtin:tinytext [--hp '{"max_steps": 100}'] [--data-dir PATH]
    python -m llm_train_api.training sample --checkpoint DIR/ckpt_best.pt \\
        [--prompt TEXT] [--max-new-tokens N] [--temperature T] [--top-k K] [--seed S]
    python -m llm_train_api.training models      # catalog + schemas as JSON
    python -m llm_train_api.training prepare --dataset NAME [--data-dir PATH]

``run``: the spec is a JSON object ``{"job_id", "model_name", "dataset",
"hyperparameters", "data_dir"}``. Without ``--spec`` or ``--model``, ``DIR/spec.json`` is
used, so rerunning the bare command resumes a preempted job. ``data_dir`` falls back to
``$LLM_TRAIN_API_DATA_DIR``, then ``./instance/data``. ``DIR`` may be a local path or an
fsspec URL.

stdout carries the protocol of :mod:`llm_train_api.training.events` (lines starting with
``@@llm_train_api ``) interleaved with human log lines. Under torchrun (``RANK`` set) only
rank 0 prints; other ranks print only their errors, prefixed ``[rank N] ``. Exit codes: 0 succeeded,
1 training error, 2 bad spec/usage, 75 preempted by SIGTERM/SIGINT (checkpoint saved;
run again to resume).
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from typing import Any

from llm_train_api.training.common_cli import (
    ProtocolParser,
    add_run_options,
    parse_hp_option,
    run_job,
)
from llm_train_api.training.events import EXIT_OK, EXIT_USAGE, EventWriter

_RUN_DESCRIPTION = """\
Train a job, or resume it when JOB_DIR holds ckpt_latest.pt. stdout carries one event per
line as '@@llm_train_api {json}' (events: prepare, start, metrics, checkpoint, error, done)
mixed with human log lines; JOB_DIR receives spec.json, metrics.jsonl, ckpt_latest.pt and
ckpt_best.pt. SIGTERM/SIGINT: checkpoint after the current step and exit 75.
"""


def _build_parser() -> argparse.ArgumentParser:
    parser = ProtocolParser(
        prog="python -m llm_train_api.training",
        description="Train, resume and sample byte-level GPT models.",
        epilog="Exit codes: 0 ok, 1 training error, 2 bad spec/usage, 75 preempted.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="train or resume a job", description=_RUN_DESCRIPTION,
                         epilog="Exit codes: 0 ok, 1 training error, 2 bad spec/usage, "
                         "75 preempted (rerun to resume).")
    run.add_argument("--job-dir", required=True, help="job folder (path or fsspec URL)")
    run.add_argument("--spec", help="spec JSON file (default: JOB_DIR/spec.json)")
    run.add_argument("--model", help="model_name (instead of --spec)")
    run.add_argument("--dataset", help="dataset name (instead of --spec)")
    add_run_options(run)

    smp = sub.add_parser("sample", help="generate text from a checkpoint")
    smp.add_argument("--checkpoint", required=True)
    smp.add_argument("--prompt", default="\n")
    smp.add_argument("--max-new-tokens", type=int, default=200)
    smp.add_argument("--temperature", type=float, default=1.0)
    smp.add_argument("--top-k", type=int)
    smp.add_argument("--seed", type=int)
    smp.add_argument("--device", default="cpu")

    sub.add_parser("models", help="print the model catalog with hyperparameter schemas")

    prep = sub.add_parser("prepare", help="tokenise a dataset into the cache")
    prep.add_argument("--dataset", required=True)
    prep.add_argument("--data-dir")
    return parser


def _load_spec(args: argparse.Namespace) -> dict[str, Any]:
    from llm_train_api.training.spec import SpecError
    from llm_train_api.training.storage import open_job_storage

    if args.model or args.dataset:
        if not (args.model and args.dataset) or args.spec:
            raise SpecError("Give --model and --dataset together, or --spec, not both.")
        spec: Any = {"model_name": args.model, "dataset": args.dataset,
                     "hyperparameters": parse_hp_option(args.hp), "job_id": args.job_id}
    else:
        try:
            if args.spec:
                with open(args.spec, encoding="utf-8") as f:
                    text = f.read()
            else:
                text = open_job_storage(args.job_dir).read_text("spec.json")
        except OSError as exc:
            raise SpecError(f"Cannot read the spec: {exc}") from None
        try:
            spec = json.loads(text)
        except ValueError as exc:
            raise SpecError(f"The spec is not valid JSON: {exc}") from None
        if not isinstance(spec, dict):
            raise SpecError("The spec must be a JSON object.")
    if args.data_dir:
        spec["data_dir"] = args.data_dir
    return spec


def _run(args: argparse.Namespace) -> int:
    from llm_train_api.training.catalog import UnknownModel
    from llm_train_api.training.datasets import DatasetError
    from llm_train_api.training.hyperparams import HyperparameterError
    from llm_train_api.training.spec import SpecError, validate_spec

    def load() -> Any:
        # Refuse bad jobs before paying for the torch import.
        spec, _, _ = validate_spec(_load_spec(args))
        return spec

    def train(spec: Any, events: EventWriter, stop: threading.Event) -> int:
        from llm_train_api.training.trainer import execute

        return execute(spec, args.job_dir, events, stop, args.stop_at_step)

    return run_job(load, (SpecError, UnknownModel, HyperparameterError, DatasetError), train)


def main(argv: list[str] | None = None) -> int:
    args = _build_parser().parse_args(argv)
    if args.command == "run":
        return _run(args)
    if args.command == "sample":
        from llm_train_api.training.sample import sample

        text = sample(args.checkpoint, args.prompt, args.max_new_tokens, args.temperature,
                      args.top_k, args.seed, args.device)
        sys.stdout.write(text + "\n")
        return EXIT_OK
    if args.command == "models":
        from llm_train_api.training.catalog import catalog_as_json

        json.dump(catalog_as_json(), sys.stdout, indent=2)
        sys.stdout.write("\n")
        return EXIT_OK
    if args.command == "prepare":
        from llm_train_api.training.data import prepare_tokens, token_cache_root
        from llm_train_api.training.datasets import default_data_dir, resolve_dataset

        data_dir = default_data_dir(args.data_dir)
        prepared = prepare_tokens(resolve_dataset(args.dataset, data_dir),
                                  token_cache_root(data_dir))
        print(json.dumps({"sha256": prepared.sha256, "n_tokens": prepared.n_tokens,
                          "path": str(prepared.path), "cached": prepared.cached}))
        return EXIT_OK
    return EXIT_USAGE  # pragma: no cover - argparse rejects other commands


if __name__ == "__main__":
    sys.exit(main())
