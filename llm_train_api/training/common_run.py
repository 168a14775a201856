"""What the built-in and the fine-tuning trainer's runs share.

The job folder's spec and metrics files (:class:`MetricsLog`), device and dtype choice, the
learning-rate schedule, the step loop's bookkeeping (the stop vote, an injected fault, the
optimizer step, which steps report, evaluate and checkpoint, the metrics line, the end of
the run) and the run contract (:func:`run_contract`: ``error``/``done`` events and exit
codes). What a step computes, evaluation and the checkpoint formats stay with each trainer.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import threading
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import torch

from llm_train_api.training import distributed
from llm_train_api.training.events import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_PREEMPTED,
    EXIT_USAGE,
    OUTCOME_PREEMPTED,
    OUTCOME_SUCCEEDED,
    EventWriter,
    report_failure,
)
from llm_train_api.training.spec import SpecError, TrainerSpecLike, spec_text
from llm_train_api.training.storage import JobStorage

#: ``RANK:STEP``: raise on that rank before that step. For tests of launchers and executors
#: (what a crash on one rank of N looks like from outside); never set in production.
FAULT_ENV = "LLM_TRAIN_API_FAIL_AT"
SPEC_FILE = "spec.json"
METRICS_FILE = "metrics.jsonl"
MIN_LR_RATIO = 0.1


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite."""


@dataclass
class RunResult:
    outcome: str
    exit_code: int
    step: int
    best_val_loss: float | None
    # The job's result (see manifest.summary): final and best metrics, best checkpoint.
    result: dict[str, Any] | None = None


def finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def learning_rate_at(step: int, hp: Mapping[str, Any], total_steps: int) -> float:
    """LR of the update at ``step`` (0-based): linear warmup, then cosine decay to
    ``MIN_LR_RATIO`` of the peak, linear decay to 0, or flat."""
    peak, warmup = hp["learning_rate"], hp["warmup_steps"]
    if step < warmup:
        return peak * (step + 1) / warmup
    if hp["lr_schedule"] == "constant":
        return peak
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    if hp["lr_schedule"] == "linear":
        return peak * (1.0 - progress)
    floor = MIN_LR_RATIO * peak
    return floor + 0.5 * (1.0 + math.cos(math.pi * progress)) * (peak - floor)


def resolve_device(requested: str) -> torch.device:
    if requested == "cuda" and not torch.cuda.is_available():
        raise SpecError("device 'cuda' was requested but CUDA is not available here.")
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(requested)


def resolve_dtype(requested: str, device: torch.device) -> torch.dtype:
    if requested == "auto":
        if device.type != "cuda":
            return torch.float32
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if requested == "float16" and device.type != "cuda":
        raise SpecError("dtype 'float16' needs CUDA; use float32 or bfloat16 on CPU.")
    return {"float32": torch.float32, "bfloat16": torch.bfloat16,
            "float16": torch.float16}[requested]


def autocast_for(device: torch.device, dtype: torch.dtype) -> Any:
    """Mixed precision below float32; float32 runs as it is."""
    return (torch.autocast(device.type, dtype=dtype) if dtype != torch.float32
            else contextlib.nullcontext())


def rank_seed(seed: int, rank: int) -> int:
    """Seed of rank ``rank > 0``'s global RNG (dropout): distinct per rank, reproducible.
    Rank 0 keeps the single-process stream."""
    return (seed * 1_000_003 + 7_919 * rank) % 2**63


def wrap_ddp(model: torch.nn.Module, device: torch.device) -> Any:
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None)


def write_spec_file(storage: JobStorage, spec: TrainerSpecLike) -> None:
    """The spec as the run understood it: rerunning the bare command reads it back."""
    storage.write_text_atomic(SPEC_FILE, spec_text(spec))


class MetricsLog:
    """``metrics.jsonl`` writer; buffered so object stores aren't rewritten every line."""

    def __init__(self, storage: JobStorage, resume_step: int) -> None:
        self.storage = storage
        kept: list[str] = []
        if storage.exists(METRICS_FILE):
            for line in storage.read_text(METRICS_FILE).splitlines():
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # a torn last line from a killed run
                if isinstance(record, dict) and record.get("step", 0) <= resume_step:
                    kept.append(line)
        storage.write_text_atomic(METRICS_FILE, "".join(line + "\n" for line in kept))
        self.pending: list[str] = []

    def add(self, record: Mapping[str, Any]) -> None:
        self.pending.append(json.dumps(record, allow_nan=False))

    def flush(self) -> None:
        self.storage.append_lines(METRICS_FILE, self.pending)
        self.pending = []


def injected_fault() -> tuple[int, int] | None:
    """The ``(rank, step)`` of :data:`FAULT_ENV`, if set."""
    value = os.environ.get(FAULT_ENV)
    if not value:
        return None
    rank, _, step = value.partition(":")
    return int(rank), int(step)


def stop_requested(stop: threading.Event, step: int, stop_at_step: int | None,
                   ddp: distributed.DistContext | None) -> bool:
    """Whether to stop before ``step``; under DDP a vote, so that every rank stops."""
    want_stop = stop.is_set() or step == stop_at_step
    if ddp is not None:
        want_stop = ddp.any(want_stop)
    return want_stop


def raise_injected_fault(fault: tuple[int, int] | None, rank: int, step: int) -> None:
    if fault == (rank, step):
        raise RuntimeError(f"injected failure on rank {rank} at step {step} ({FAULT_ENV})")


def set_learning_rate(optimizer: torch.optim.Optimizer, step: int, hp: Mapping[str, Any],
                      total_steps: int) -> float:
    """Set the schedule's rate for the update at ``step`` and return it."""
    lr = learning_rate_at(step, hp, total_steps)
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def optimizer_step(optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler,
                   params: list[torch.nn.Parameter], grad_clip: float) -> None:
    """Clip (when ``grad_clip > 0``), step through the GradScaler, clear the gradients."""
    if grad_clip > 0:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_norm_(params, grad_clip)
    scaler.step(optimizer)
    scaler.update()
    optimizer.zero_grad(set_to_none=True)


def due_at(step: int, total_steps: int, hp: Mapping[str, Any], can_evaluate: bool = True
           ) -> tuple[bool, bool, bool]:
    """``(evaluate, checkpoint, report)`` after ``step`` updates: evaluation and
    checkpoints every N steps and at the end; a metrics line then or every
    ``log_interval`` steps."""
    last = step == total_steps
    eval_interval, ckpt_interval = hp["eval_interval"], hp["checkpoint_interval"]
    do_eval = can_evaluate and (last or (eval_interval > 0 and step % eval_interval == 0))
    do_ckpt = last or (ckpt_interval > 0 and step % ckpt_interval == 0)
    return do_eval, do_ckpt, do_eval or do_ckpt or step % hp["log_interval"] == 0


def check_diverged(train_loss: float, step: int) -> None:
    if not math.isfinite(train_loss):
        raise TrainingDiverged(f"Training diverged: loss is {train_loss} at step {step}; "
                               "try a lower learning_rate.")


def publish_metrics(events: EventWriter, metrics_log: MetricsLog | None, *, step: int,
                    total_steps: int, steps_per_epoch: int, train: Mapping[str, float],
                    lr: float, tokens_per_s: float, elapsed: float,
                    val: Mapping[str, Any] | None) -> dict[str, Any]:
    """One metrics line: to ``metrics.jsonl`` (rank 0), as an event and as a log line.

    ``train`` starts with ``train_loss``; ``val`` (when evaluated) with ``val_loss``; the
    keys that follow each are the trainer's own."""
    record: dict[str, Any] = {"step": step, "epoch": round(step / steps_per_epoch, 4),
                              **train, "lr": lr, "tokens_per_s": round(tokens_per_s, 1),
                              "elapsed_s": round(elapsed, 6)}
    val_loss = val["val_loss"] if val is not None else None
    if val is not None:
        record.update(val, val_loss=finite(val_loss))
    if metrics_log is not None:
        metrics_log.add(record)
        metrics_log.flush()
    events.emit("metrics", total_steps=total_steps, **record)
    events.log(f"step {step}/{total_steps} loss {train['train_loss']:.4f}"
               + (f" val {val_loss:.4f}" if val_loss is not None else "")
               + f" lr {lr:.2e} {tokens_per_s:,.0f} tok/s")
    return record


def perplexity(loss: float | None) -> float | None:
    """exp(loss), capped where it would overflow; None without a loss."""
    if loss is None or not math.isfinite(loss):
        return None
    return math.exp(min(loss, 80.0))


def end_run(events: EventWriter, preempted: bool, step: int, last_saved: int,
            save_latest: Callable[[], None], best_val_loss: float) -> RunResult:
    """Checkpoint the last step unless it is saved already (a stop, or a resumed run that
    had finished), and say how the run ended."""
    if last_saved != step:
        save_latest()
    best = finite(best_val_loss)
    if preempted:
        events.log(f"preempted at step {step}; rerun the same command to resume")
        return RunResult(OUTCOME_PREEMPTED, EXIT_PREEMPTED, step, best)
    return RunResult(OUTCOME_SUCCEEDED, EXIT_OK, step, best)


def run_contract(run: Callable[[], RunResult], events: EventWriter, *,
                 usage_errors: tuple[type[Exception], ...],
                 reported_errors: tuple[type[Exception], ...] = (),
                 cuda_oom_advice: str, host_oom_message: str) -> int:
    """Run ``run`` under the contract: never raise for training problems, return the exit
    code. On failure the last protocol lines are ``error`` (``message`` suitable for a
    job's ``error_message``) and ``done`` with outcome ``failed``.

    ``usage_errors`` exit 2 with their message, ``reported_errors`` 1 with their message;
    out of memory exits 1 with advice; anything else 1 with its type and a traceback on
    stderr.
    """
    try:
        result = run()
    except usage_errors as exc:
        return report_failure(events, exc, EXIT_USAGE, str(exc))
    except reported_errors as exc:
        return report_failure(events, exc, EXIT_FAILED, str(exc))
    except torch.cuda.OutOfMemoryError as exc:
        return report_failure(events, exc, EXIT_FAILED,
                              f"CUDA out of memory: {str(exc).splitlines()[0]} "
                              + cuda_oom_advice)
    except MemoryError as exc:
        return report_failure(events, exc, EXIT_FAILED, host_oom_message)
    except Exception as exc:  # noqa: BLE001 - the contract is to report, not to crash
        traceback.print_exc()
        return report_failure(events, exc, EXIT_FAILED, f"{type(exc).__name__}: {exc}")
    extra = {"result": result.result} if result.result is not None else {}
    events.emit("done", outcome=result.outcome, exit_code=result.exit_code, step=result.step,
                best_val_loss=result.best_val_loss, **extra)
    return result.exit_code
