"""The lean dump path is an optimisation, not a second definition: it must produce exactly
what marshmallow's own dump produces from the same schema."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

from marshmallow import Schema

from llm_train_api.api.schemas import JobEventSchema, JobSchema
from llm_train_api.domain import Job, JobEvent, JobStatus

T0 = datetime(2026, 1, 2, 3, 4, 5, 0, tzinfo=timezone.utc)


def jobs() -> list[Job]:
    out = []
    for i, status in enumerate(JobStatus):
        out.append(Job(
            id=f"j{i}", model_name="模型" if i % 2 else "gpt-nano", dataset="d",
            hyperparameters={"lr": 0.001, "nested": {"a": [1, None, "x"]}} if i else {},
            status=status, created_at=T0, updated_at=T0 + timedelta(microseconds=i),
            error_message="boom" if status is JobStatus.FAILED else None,
            started_at=T0 if i else None, finished_at=T0 + timedelta(days=i) if i > 1 else None,
            version=i + 1,
        ))
    return out


def test_job_dump_matches_marshmallow():
    schema = JobSchema()
    for job in jobs():
        assert schema.dump(job) == Schema.dump(schema, job)
    many = JobSchema(many=True)
    assert many.dump(jobs()) == Schema.dump(many, jobs())


def test_event_dump_matches_marshmallow():
    event = JobEvent(job_id="j", at=T0, kind="status", from_status=JobStatus.QUEUED,
                     to_status=JobStatus.RUNNING, actor="w1", message=None)
    created = JobEvent(job_id="j", at=T0, kind="created", from_status=None,
                       to_status=JobStatus.QUEUED, actor=None, message=None)
    schema = JobEventSchema(many=True)
    assert schema.dump([event, created]) == Schema.dump(schema, [event, created])


def test_timestamps_always_have_microseconds_and_offset():
    dumped = JobSchema().dump(jobs()[0])
    assert dumped["created_at"] == "2026-01-02T03:04:05.000000+00:00"
