"""Turn the trainer's protocol events into the job's progress and metric rows."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

METRIC_FIELDS = ("epoch", "train_loss", "val_loss", "lr", "tokens_per_s", "elapsed_s")


@dataclass
class ProgressTracker:
    # What identifies the run (a local trainer's pid, a Ray submission id), see Execution.
    ident: dict[str, Any] = field(default_factory=dict)
    progress: dict[str, Any] = field(default_factory=dict)
    pending_metrics: list[dict[str, Any]] = field(default_factory=list)
    forget_after: int | None = None  # set by a `start` event: metrics after it are rewritten
    dirty: bool = True
    _first_step: int = 0
    _started: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.progress = {"phase": "starting", **self.ident}

    def note(self, state: dict[str, Any]) -> None:
        """Merge executor-side state (Ray's PENDING/RUNNING) into the progress."""
        if any(self.progress.get(k) != v for k, v in state.items()):
            self.progress.update(state)
            self.dirty = True

    def apply(self, event: dict[str, Any]) -> None:
        kind = event.get("event")
        if kind == "prepare":
            self.progress["phase"] = "preparing data"
        elif kind == "start":
            resumed = int(event.get("resumed_from_step") or 0)
            self._first_step = resumed
            self._started = time.monotonic()
            self.forget_after = resumed
            self.progress.update(phase="training", step=resumed,
                                 total_steps=event.get("total_steps"),
                                 resumed_from_step=resumed, device=event.get("device"))
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
                done = step - self._first_step
                if done > 0:
                    rate = (time.monotonic() - self._started) / done
                    self.progress["eta_s"] = round(rate * (total - step), 1)
        elif kind == "checkpoint":
            self.progress["last_checkpoint_step"] = event.get("step")
        elif kind == "done":
            self.progress["phase"] = event.get("outcome", "done")
        else:
            return
        self.dirty = True

    def take(self) -> tuple[dict[str, Any], list[dict[str, Any]], int | None]:
        metrics, self.pending_metrics = self.pending_metrics, []
        forget, self.forget_after = self.forget_after, None
        self.dirty = False
        return dict(self.progress), metrics, forget
