"""artifacts.logs: the log tail and the SSE follower, on a temporary file with a fake
status and a fake clock (no Flask, no database, no sleeping)."""

from __future__ import annotations

from datetime import datetime, timezone

from llm_train_api.artifacts import logs
from llm_train_api.domain import Job, JobNotFound, JobStatus

NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)


def job(status=JobStatus.RUNNING, created=NOW) -> Job:
    return Job("j", "gpt-nano", "d", {}, status, created, created, None, None, None, 1)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.now += seconds


def run(path, statuses, *, offset=0, max_s=60.0, keepalive_s=5.0):
    """Follow until the stream ends; `statuses` are what final_status() says, one per poll."""
    answers = iter(statuses)
    clock = Clock()
    return b"".join(logs.follow(path, offset, final_status=lambda: next(answers, None),
                                max_s=max_s,
                                keepalive_s=keepalive_s, clock=clock, sleep=clock.sleep))


def test_tail_offset_counts_lines_from_the_end(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"".join(b"line %d\n" % i for i in range(10_000)))
    snap = logs.snapshot(path, 2)
    assert b"".join(snap.chunks()) == b"line 9998\nline 9999\n"
    assert snap.size == len(b"line 9998\nline 9999\n")
    path.write_bytes(b"a\nb")  # no final newline: the last line still counts
    assert b"".join(logs.snapshot(path, 1).chunks()) == b"b"
    assert b"".join(logs.snapshot(path, 5).chunks()) == b"a\nb"
    assert b"".join(logs.snapshot(path).chunks()) == b"a\nb"
    assert logs.snapshot(tmp_path / "missing") is None


def test_resume_offset_prefers_last_event_id_then_tail(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"a\nb\nc\n")
    assert logs.resume_offset(path, "4", 1) == 4
    assert logs.resume_offset(path, "x" , 1) == 4  # not an offset: the tail decides
    assert logs.resume_offset(path, "9" * 20, None) == 0  # too long to be an offset
    assert logs.resume_offset(path, None, None) == 0
    assert logs.resume_offset(tmp_path / "missing", None, 3) == 0


def test_follow_sends_complete_lines_then_the_last_partial_one_and_the_end(tmp_path):
    path = tmp_path / "log"
    path.write_bytes(b"one\ntwo\nthr")
    out = run(path, [None, "succeeded"])
    assert out == (b"retry: 1000\n\n"
                   b"id: 4\ndata: one\n\nid: 8\ndata: two\n\n"
                   b"id: 11\ndata: thr\n\n"
                   b"event: end\ndata: succeeded\n\n")


def test_follow_resumes_at_an_offset_and_waits_for_the_file(tmp_path):
    path = tmp_path / "log"
    assert run(path, ["deleted"]).endswith(b"event: end\ndata: deleted\n\n")
    path.write_bytes(b"one\ntwo\n")
    assert b"data: one" not in run(path, ["failed"], offset=4)


def test_follow_times_out_and_keeps_idle_connections_alive(tmp_path):
    out = run(tmp_path / "log", [], max_s=12.0, keepalive_s=5.0)
    assert out.count(b": keepalive\n\n") == 2
    assert out.endswith(b"event: timeout\ndata: reconnect\n\n")


def test_follow_reports_its_end_also_when_the_client_leaves(tmp_path):
    closed = []
    stream = logs.follow(tmp_path / "log", 0, final_status=lambda: None, max_s=60,
                         sleep=lambda s: None, on_close=lambda: closed.append(True))
    assert next(stream).startswith(b"retry:")
    assert closed == []
    stream.close()  # GeneratorExit, as when the socket breaks
    assert closed == [True]


def test_a_follower_sends_a_large_backlog_in_bounded_steps(tmp_path, monkeypatch):
    monkeypatch.setattr(logs, "STEP_BYTES", 64 * 1024)
    path = tmp_path / "log"
    lines = [b"x" * 99 for _ in range(3000)]  # 300 kB: five steps' worth
    path.write_bytes(b"\n".join(lines) + b"\n")
    follower = logs.LogFollower(path, 0, max_s=60)
    pieces = []
    while True:
        out = follower.step("succeeded")  # the job has ended: all lines, then the end
        pieces.append(out)
        if follower.done:
            break
        assert follower.more  # stopped at the budget, not at the end of the file
    follower.close()
    assert len(pieces) >= 5 and all(len(p) <= 64 * 1024 * 2 for p in pieces)
    events = b"".join(pieces)
    assert events.count(b"data: " + b"x" * 99) == 3000
    assert events.endswith(b"event: end\ndata: succeeded\n\n")


def test_final_status_from_a_job_state():
    assert logs.final_status(("running", 5), 5) is None
    assert logs.final_status(("succeeded", 5), 5) == "succeeded"
    assert logs.final_status(None, 5) == "deleted"
    assert logs.final_status(("queued", 6), 5) == "deleted"  # re-created under its id


def test_final_status_of_reports_end_deletion_and_recreation():
    current = {"job": job()}

    def get_job(job_id):
        if current["job"] is None:
            raise JobNotFound(job_id)
        return current["job"]

    final = logs.final_status_of(get_job, job())
    assert final() is None
    current["job"] = job(JobStatus.CANCELLED)
    assert final() == "cancelled"
    current["job"] = job(created=datetime(2025, 1, 1, tzinfo=timezone.utc))
    assert final() == "deleted"  # a namesake: another log
    current["job"] = None
    assert final() == "deleted"


def test_sse_event_splits_carriage_returns_into_data_fields():
    assert logs.sse_event(b"10%\r20%", 7) == b"id: 7\ndata: 10%\ndata: 20%\n\n"
