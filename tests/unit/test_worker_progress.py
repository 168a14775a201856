"""ProgressTracker: trainer protocol events in, the job's progress and metric rows out.
Time comes from a fake clock, so the ETA is exact."""

from __future__ import annotations

from llm_train_api.worker.progress import ProgressTracker


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def test_starts_dirty_with_the_run_ident():
    tracker = ProgressTracker(ident={"pid": 42})
    assert tracker.dirty
    progress, metrics, forget = tracker.take()
    assert progress == {"phase": "starting", "pid": 42}
    assert metrics == [] and forget is None and not tracker.dirty


def test_phases_follow_prepare_start_and_done():
    tracker = ProgressTracker(clock=FakeClock())
    tracker.apply({"event": "prepare"})
    assert tracker.progress["phase"] == "preparing data"
    tracker.apply({"event": "start", "total_steps": 100, "device": "cpu"})
    assert tracker.progress == {"phase": "training", "step": 0, "total_steps": 100,
                                "resumed_from_step": 0, "device": "cpu"}
    tracker.apply({"event": "checkpoint", "step": 10})
    assert tracker.progress["last_checkpoint_step"] == 10
    tracker.apply({"event": "done", "outcome": "succeeded"})
    assert tracker.progress["phase"] == "succeeded"
    tracker.apply({"event": "done"})
    assert tracker.progress["phase"] == "done"


def test_metrics_queue_rows_and_update_progress_with_an_exact_eta():
    clock = FakeClock()
    tracker = ProgressTracker(clock=clock)
    tracker.apply({"event": "start", "total_steps": 100})
    clock.advance(20.0)  # 10 steps in 20 s: 2 s a step, 90 steps to go
    tracker.apply({"event": "metrics", "step": 10, "train_loss": 2.5, "lr": 0.001,
                   "tokens_per_s": 900.0, "epoch": 0.5, "unknown": "dropped"})
    progress, metrics, _ = tracker.take()
    assert metrics == [{"step": 10, "train_loss": 2.5, "lr": 0.001, "tokens_per_s": 900.0,
                        "epoch": 0.5}]
    assert progress["step"] == 10 and progress["fraction"] == 0.1
    assert progress["eta_s"] == 180.0
    assert progress["train_loss"] == 2.5 and progress["tokens_per_s"] == 900.0
    assert "lr" not in progress  # a metric row field, not a progress field
    clock.advance(5.0)  # the rate halves: 25 s for 20 steps, 80 steps to go
    tracker.apply({"event": "metrics", "step": 20})
    assert tracker.take()[0]["eta_s"] == 100.0


def test_a_resumed_run_forgets_later_metrics_and_times_only_its_own_steps():
    clock = FakeClock()
    tracker = ProgressTracker(clock=clock)
    clock.advance(500.0)  # time spent before `start` (data preparation) is not a step's
    tracker.apply({"event": "start", "resumed_from_step": 40, "total_steps": 100})
    assert tracker.progress["resumed_from_step"] == 40 and tracker.progress["step"] == 40
    clock.advance(10.0)
    tracker.apply({"event": "metrics", "step": 50})
    progress, metrics, forget = tracker.take()
    assert forget == 40 and [m["step"] for m in metrics] == [50]
    assert progress["eta_s"] == 50.0  # 1 s a step over the 10 steps of this run
    assert tracker.take()[2] is None  # the forget point is handed out once


def test_no_eta_before_a_step_or_without_a_total():
    tracker = ProgressTracker(clock=FakeClock())
    tracker.apply({"event": "start", "total_steps": None})
    tracker.apply({"event": "metrics", "step": 5})
    assert "eta_s" not in tracker.progress and "fraction" not in tracker.progress
    tracker = ProgressTracker(clock=FakeClock())
    tracker.apply({"event": "start", "total_steps": 10, "resumed_from_step": 3})
    tracker.apply({"event": "metrics", "step": 3})
    assert tracker.progress["fraction"] == 0.3 and "eta_s" not in tracker.progress


def test_total_steps_from_a_metrics_event_wins():
    tracker = ProgressTracker(clock=FakeClock())
    tracker.apply({"event": "metrics", "step": 4, "total_steps": 8})
    assert tracker.progress["total_steps"] == 8 and tracker.progress["fraction"] == 0.5


def test_unknown_events_change_nothing():
    tracker = ProgressTracker()
    tracker.take()
    tracker.apply({"event": "from-a-newer-trainer", "x": 1})
    tracker.apply({})
    assert not tracker.dirty and tracker.progress == {"phase": "starting"}


def test_note_merges_executor_state_only_when_it_changes():
    tracker = ProgressTracker(ident={"ray_job": "raysubmit_1"})
    tracker.take()
    tracker.note({"ray_status": "PENDING"})
    assert tracker.dirty and tracker.progress["ray_status"] == "PENDING"
    tracker.take()
    tracker.note({"ray_status": "PENDING"})
    tracker.note({})
    assert not tracker.dirty
    tracker.note({"ray_status": "RUNNING"})
    assert tracker.dirty and tracker.take()[0] == {"phase": "starting",
                                                   "ray_job": "raysubmit_1",
                                                   "ray_status": "RUNNING"}
