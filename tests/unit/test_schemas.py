"""The lean dump and load paths are optimisations, not second definitions: they must
produce exactly what marshmallow's own dump and load produce from the same schema, and a
document the lean load would refuse gets marshmallow's own error report."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from marshmallow import Schema, ValidationError

from llm_train_api import create_app
from llm_train_api.api.schemas import (
    CreateQuerySchema,
    JobCreateSchema,
    JobEventSchema,
    JobListQuerySchema,
    JobSchema,
    StatusUpdateSchema,
)
from llm_train_api.domain import Job, JobEvent, JobStatus
from tests.helpers.properties import example_count

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
            version=i + 1, priority=i - 2, attempts=i,
            max_runtime_seconds=60 * i if i % 2 else None,
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


# --------------------------------------------------------------------------- lean load

_CREATE_KEYS = ["job_id", "model_name", "dataset", "hyperparameters", "priority",
                "max_attempts", "max_runtime_seconds", "resources", "validation_dataset",
                "output_model", "from_checkpoint"]
_SCALARS = (st.none() | st.booleans() | st.integers(-2000, 2000) | st.floats(allow_nan=False)
            | st.text(max_size=12) | st.sampled_from(["job-1", "gpt-nano", "d", " ", "a:1"]))
_VALUES = st.recursive(_SCALARS, lambda inner: st.lists(inner, max_size=3)
                       | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)
_RESOURCES = st.dictionaries(st.sampled_from(["cpus", "gpus", "memory_gb", "processes", "x"]),
                             _SCALARS | st.integers(0, 8), max_size=4)
_NAMES = {"model_name": st.sampled_from(["gpt-nano", "", " ", "模型"]) | _SCALARS,
          "dataset": st.sampled_from(["d", "builtin:tinytext"]) | _SCALARS}
_OPTIONAL = {**{key: _VALUES for key in _CREATE_KEYS if key not in _NAMES},
             "resources": _RESOURCES | _VALUES,
             "job_id": st.sampled_from(["job-1", "-bad", "a" * 129]) | _SCALARS,
             "unknown_field": _SCALARS}
# Mostly documents with both required names (each value possibly wrong), some without.
_DOCUMENTS = (st.fixed_dictionaries(_NAMES, optional=_OPTIONAL)
              | st.fixed_dictionaries({}, optional={**_NAMES, **_OPTIONAL}))


@pytest.fixture(scope="module")
def app_context(tmp_path_factory):
    app = create_app({"INSTANCE_PATH": str(tmp_path_factory.mktemp("lean")),
                      "EXECUTOR": "none"})
    with app.app_context():
        yield


def _outcome(load, schema, document):
    try:
        return "ok", load(schema, document)
    except ValidationError as error:
        return "error", error.messages


@settings(max_examples=example_count(150), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_DOCUMENTS | _VALUES)
def test_create_load_matches_marshmallow(app_context, document):
    schema = JobCreateSchema()
    assert _outcome(JobCreateSchema.load, schema, document) == _outcome(
        Schema.load, schema, document)


def test_a_valid_create_takes_the_lean_path(app_context):
    schema = JobCreateSchema()
    document = {"job_id": "job-1", "model_name": "gpt-nano", "dataset": "d",
                "hyperparameters": {"lr": 0.001, "nested": {"a": [1, None, "x"]}},
                "resources": {"cpus": 2}}
    loaded = schema.load(document)
    assert loaded == Schema.load(schema, document)
    # The generated function, not a fallback, produced it: it gives the same on its own.
    assert callable(schema._lean_load) and schema._lean_load(document) == loaded
    assert list(loaded) == list(Schema.load(schema, document))  # same keys, same order


def test_an_unknown_field_gets_marshmallows_report(app_context):
    with pytest.raises(ValidationError) as raised:
        JobCreateSchema().load({"model_name": "m", "dataset": "d", "lr": 1})
    assert raised.value.messages == {"lr": ["Unknown field."]}


_STATUS_DOCUMENTS = st.fixed_dictionaries(
    {}, optional={"status": st.sampled_from([s.value for s in JobStatus]) | _SCALARS,
                  "error_message": _SCALARS | st.text(min_size=4000, max_size=4200),
                  "other": _SCALARS})
_QUERY_DOCUMENTS = st.fixed_dictionaries(
    {}, optional={"dry_run": _SCALARS, "limit": _SCALARS | st.integers(-5, 2000),
                  "cursor": _SCALARS, "created_after": _SCALARS, "status": _VALUES,
                  "model_name": _SCALARS})


@settings(max_examples=example_count(150), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=_STATUS_DOCUMENTS | _QUERY_DOCUMENTS | _VALUES)
def test_other_lean_loads_match_marshmallow(app_context, document):
    for schema in (StatusUpdateSchema(), CreateQuerySchema(), JobListQuerySchema()):
        assert _outcome(type(schema).load, schema, document) == _outcome(
            Schema.load, schema, document)


def test_the_lean_path_runs_the_field_validators(app_context):
    """`@validates` methods run on the lean path too: hyperparameters nested deeper than
    MAX_HYPERPARAMETERS_DEPTH pass every field's own checks and are refused only by the
    schema's validator, with marshmallow's own report."""
    deep: dict = {}
    inner = deep
    for _ in range(12):
        inner["x"] = {}
        inner = inner["x"]
    document = {"model_name": "gpt-nano", "dataset": "d", "hyperparameters": deep}
    schema = JobCreateSchema()
    schema.load({"model_name": "gpt-nano", "dataset": "d"})  # compiles the lean path
    assert schema._lean_load(document)["hyperparameters"] == deep  # the fields accept it
    with pytest.raises(ValidationError) as lean:
        schema.load(document)
    with pytest.raises(ValidationError) as full:
        Schema.load(schema, document)
    assert lean.value.messages == full.value.messages
    assert "hyperparameters" in lean.value.messages
