"""What a worker makes of the trainer's checkpoint events: a corrupt checkpoint skipped on
resume becomes an event of the job's timeline (only while the worker holds the lease), and
the run's result lands in the job."""

from __future__ import annotations

from llm_train_api.domain import JobStatus, NewJob
from llm_train_api.worker.progress import ProgressTracker


def test_the_tracker_turns_a_corrupt_checkpoint_into_a_note_and_keeps_the_result():
    tracker = ProgressTracker()
    tracker.apply({"event": "checkpoint_corrupt", "step": 30, "reason": "bad bytes",
                   "fallback_step": 20})
    tracker.apply({"event": "checkpoint_corrupt", "step": 20, "reason": "gone",
                   "fallback_step": None})
    assert [kind for kind, _ in tracker.pending_notes] == ["checkpoint_corrupt"] * 2
    assert tracker.pending_notes[0][1] == ("checkpoint of step 30 is corrupt (bad bytes); "
                                           "resumed from step 20")
    assert "started over" in tracker.pending_notes[1][1]
    result = {"final": {"val_loss": 1.0}, "best": {"val_loss": 0.9}, "best_checkpoint": 20}
    tracker.apply({"event": "done", "outcome": "succeeded", "result": result})
    assert tracker.take()[0]["result"] == result


def test_notes_are_job_events_while_the_lease_is_held(jobs, queue):
    jobs.create_job(NewJob("j", "gpt-nano", "builtin:tinytext", {}))
    job = queue.claim("w1", 30)
    assert job is not None
    note = ("checkpoint_corrupt", "checkpoint of step 30 is corrupt; resumed from step 20")
    progress = {"phase": "training", "result": {"best_checkpoint": 20}}
    assert queue.record_progress("j", "w1", progress, notes=[note])
    assert not queue.record_progress("j", "intruder", {}, notes=[note])  # not its lease
    timeline, _more = jobs.job_events("j")
    corrupt = [e for e in timeline if e.kind == "checkpoint_corrupt"]
    assert len(corrupt) == 1
    assert (corrupt[0].message, corrupt[0].actor, corrupt[0].attempt) == (note[1], "w1", 1)
    assert (corrupt[0].from_status, corrupt[0].to_status) == (None, None)
    queue.finish("j", "w1", JobStatus.SUCCEEDED)
    assert jobs.get_job("j").result == {"best_checkpoint": 20}
