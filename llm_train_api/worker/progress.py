"""Turn the trainer's protocol events into the job's progress and metric rows.

The tracker is pure bookkeeping: the worker loop feeds it events and executor state, and
takes what changed when it writes to the store. Its only input besides those is a clock
(for the ETA), which tests replace.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from llm_train_api.training.hf.hyperparams import REWARD_METRICS, VAL_REWARD_METRICS

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s",
                 "val_perplexity", "val_token_accuracy", "train_token_accuracy",
                 *REWARD_METRICS, *VAL_REWARD_METRICS)


@dataclass
class ProgressTracker:
    # What identifies the run (a local pid, a Ray submission id); shown in `progress`.
    ident: dict[str, Any] = field(default_factory=dict)
    # Seconds from an arbitrary origin; only differences are used (the ETA's rate).
    clock: Callable[[], float] = time.monotonic
    progress: dict[str, Any] = field(default_factory=dict)
    pending_metrics: list[dict[str, Any]] = field(default_factory=list)
    forget_after: int | None = None  # set by a `start` event: metrics after it are rewritten
    # What the job's timeline should tell (a corrupt checkpoint skipped on resume).
    pending_notes: list[tuple[str, str]] = field(default_factory=list)
    dirty: bool = True
    _first_step: int = 0
    _started: float = 0.0

    def __post_init__(self) -> None:
        self.progress = {"phase": "starting", **self.ident}
        self._started = self.clock()

    def note(self, state: dict[str, Any]) -> None:
        """Merge executor-side state (Ray's PENDING/RUNNING) into the progress."""
        if any(self.progress.get(k) != v for k, v in state.items()):
            self.progress.update(state)
            self.dirty = True

    def apply(self, event: dict[str, Any]) -> None:
        """Fold one protocol event in; unknown kinds are ignored (newer trainers)."""
        kind = event.get("event")
        if kind == "prepare":
            self.progress["phase"] = "preparing data"
        elif kind == "start":
            resumed = int(event.get("resumed_from_step") or 0)
            self._first_step = resumed
            self._started = self.clock()
            self.forget_after = resumed
            self.progress.update(phase="training", step=resumed,
                                 total_steps=event.get("total_steps"),
                                 resumed_from_step=resumed, device=event.get("device"))
            # What a fine-tuning run trains on per epoch: the OpenAI-compatible API's
            # `trained_tokens` is computed from these once the job succeeds.
            for key in ("train_tokens", "steps_per_epoch"):
                if event.get(key) is not None:
                    self.progress[key] = event[key]
        elif kind == "metrics":
            step = int(event.get("step", 0))
            point = {"step": step, **{k: event[k] for k in METRIC_FIELDS if k in event}}
            self.pending_metrics.append(point)
            total = event.get("total_steps") or self.progress.get("total_steps")
            self.progress.update(phase="training", step=step, total_steps=total)
            for key in ("train_loss", "val_loss", "tokens_per_s", "epoch"):
                if event.get(key) is not None:
                    self.progress[key] = event[key]
            if total:
                self.progress["fraction"] = round(step / total, 4)
                # The ETA counts only the steps of this run: a resumed run's rate starts
                # at its `start` event, not at step 0.
                done = step - self._first_step
                if done > 0:
                    rate = (self.clock() - self._started) / done
                    self.progress["eta_s"] = round(rate * (total - step), 1)
        elif kind == "checkpoint":
            self.progress["last_checkpoint_step"] = event.get("step")
        elif kind == "checkpoint_corrupt":
            fallback = event.get("fallback_step")
            self.pending_notes.append(("checkpoint_corrupt", (
                f"checkpoint of step {event.get('step')} is corrupt "
                f"({event.get('reason')}); "
                + (f"resumed from step {fallback}" if fallback is not None
                   else "started over: no good checkpoint left"))))
        elif kind == "done":
            self.progress["phase"] = event.get("outcome", "done")
            if isinstance(event.get("result"), dict):
                self.progress["result"] = event["result"]
        else:
            return
        self.dirty = True

    def take(self) -> tuple[dict[str, Any], list[dict[str, Any]], int | None]:
        """What to write now: the progress, the new metric rows, and the step after which
        stored metrics are to be forgotten (a resumed run); resets the dirty state."""
        metrics, self.pending_metrics = self.pending_metrics, []
        forget, self.forget_after = self.forget_after, None
        self.dirty = False
        return dict(self.progress), metrics, forget
