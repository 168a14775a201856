"""services.status_changes: who may ask for which status, without HTTP or a database."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from llm_train_api.domain import (
    IllegalTransition,
    InvalidRequest,
    Job,
    JobNotFound,
    JobStatus,
    Principal,
    Role,
    StatusChangeForbidden,
    StatusManagedByWorkers,
)
from llm_train_api.services.status_changes import cancel, check_status_change, error_message_for

ADMIN = Principal("root", Role.ADMIN, 1)
USER = Principal("alice", Role.USER, 2)
WORKER = Principal("ext", Role.WORKER, 3)
NOW = datetime(2024, 1, 1, tzinfo=timezone.utc)


def job(status: JobStatus) -> Job:
    return Job("j", "gpt-nano", "d", {}, status, NOW, NOW, None, None, None, 1)


class Reads:
    """A `visible_job` that counts its calls."""

    def __init__(self, status: JobStatus | None = JobStatus.QUEUED) -> None:
        self.status = status
        self.calls = 0

    def __call__(self) -> Job:
        self.calls += 1
        if self.status is None:
            raise JobNotFound("j")
        return job(self.status)


def check(principal, target, message=None, *, builtin=True, reads=None):
    return check_status_change(principal, "j", target, message, builtin_executor=builtin,
                               visible_job=reads or Reads())


@pytest.mark.parametrize("builtin", [True, False])
def test_a_user_may_only_cancel(builtin):
    assert check(USER, JobStatus.CANCELLED, builtin=builtin) is None
    with pytest.raises(StatusChangeForbidden, match="users may only cancel"):
        check(USER, JobStatus.FAILED, builtin=builtin)


def test_a_user_asking_about_someone_elses_job_gets_not_found_not_forbidden():
    with pytest.raises(JobNotFound):
        check(USER, JobStatus.RUNNING, reads=Reads(None))


def test_with_the_builtin_executor_admins_may_only_cancel_or_repeat_the_status():
    with pytest.raises(StatusManagedByWorkers, match="POST /jobs/j/cancel"):
        check(ADMIN, JobStatus.RUNNING)
    assert check(ADMIN, JobStatus.QUEUED, reads=Reads(JobStatus.QUEUED)) is None
    reads = Reads()
    assert check(ADMIN, JobStatus.CANCELLED, "why", reads=reads) == "why"
    assert reads.calls == 0  # cancelling needs no read


def test_workers_and_external_executors_make_any_change_without_a_read():
    reads = Reads()
    assert check(WORKER, JobStatus.FAILED, "oom", reads=reads) == "oom"
    assert check(ADMIN, JobStatus.RUNNING, builtin=False, reads=reads) is None
    assert reads.calls == 0


def test_with_the_builtin_executor_no_one_sets_running_without_a_claim():
    with pytest.raises(StatusManagedByWorkers, match="claim"):
        check(WORKER, JobStatus.RUNNING, reads=Reads(JobStatus.QUEUED))
    # Already running (a retry of the same request): no change, no refusal.
    assert check(WORKER, JobStatus.RUNNING, reads=Reads(JobStatus.RUNNING)) is None
    # An external executor owns the statuses.
    assert check(WORKER, JobStatus.RUNNING, builtin=False) is None


def test_error_message_only_with_failed_or_cancelled():
    assert error_message_for(JobStatus.FAILED, "  ") is None
    assert error_message_for(JobStatus.SUCCEEDED, "") is None
    with pytest.raises(InvalidRequest) as info:
        error_message_for(JobStatus.SUCCEEDED, "boom")
    assert info.value.errors == {"json": {"error_message": [
        "Not allowed with status 'succeeded'."]}}


class Jobs:
    """The repository's `transition`, answering with `answer(target)` and recording calls."""

    def __init__(self, answer) -> None:
        self.answer, self.calls = answer, []

    def transition(self, job_id, target, *, error_message, actor, owner):
        self.calls.append((job_id, target, error_message, actor, owner))
        return self.answer(target), None


def test_cancel_records_who_and_tolerates_a_job_that_already_ended():
    jobs = Jobs(job)
    assert cancel(jobs, "j", USER, owner="alice", visible_job=Reads()).status \
        is JobStatus.CANCELLED
    assert jobs.calls == [("j", JobStatus.CANCELLED, "cancelled by user:alice",
                           "user:alice", "alice")]

    def ended(target):
        raise IllegalTransition("j", JobStatus.SUCCEEDED, target)

    assert cancel(Jobs(ended), "j", USER, owner="alice",
                  visible_job=Reads(JobStatus.SUCCEEDED)).status is JobStatus.SUCCEEDED


def test_cancel_reraises_when_the_job_is_not_final():
    def racing(target):
        raise IllegalTransition("j", JobStatus.QUEUED, target)

    with pytest.raises(IllegalTransition):
        cancel(Jobs(racing), "j", ADMIN, owner=None, visible_job=Reads(JobStatus.QUEUED))
