"""Property-based tests of the job life cycle against the real store (SQLite and PostgreSQL).

Two angles:

- a hypothesis state machine drives one store single-threaded with random creates,
  PATCH-style transitions (with no, the current or a stale revision), cancels, worker
  claims, finishes and lease expiries, deletes and re-creates, and compares every answer and
  the stored job with a plain-Python model of the transition table;
- a `@given` test fans random operation lists over a thread pool against the same jobs at
  once, then audits what the database recorded: every job_events row is an allowed edge of
  the table and continues the previous one, terminal states are never left, the final
  status is the last event's target, each incarnation's revisions run 1, 2, 3, ... with no
  gap or duplicate, and the events of each kind are exactly as many as the calls that said
  they changed something (nothing lost, nothing applied twice).

Each example starts from empty tables (claims take any queued job, so examples must not
see each other's jobs).
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)
from sqlalchemy import delete, select

from llm_train_api.domain import (
    ALLOWED_TRANSITIONS,
    FINAL_STATUSES,
    IllegalTransition,
    JobIdConflict,
    JobNotFound,
    JobStatus,
    NewJob,
    PreconditionFailed,
    Revision,
    sources_of,
)
from llm_train_api.store.database import build_engine
from llm_train_api.store.tables import job_events, job_metrics, jobs
from tests.helpers.properties import example_count

ALLOWED_EDGES = {(src.value, dst.value) for src, dsts in ALLOWED_TRANSITIONS.items()
                 for dst in dsts}
FINAL = {s.value for s in FINAL_STATUSES}
JOB_IDS = ("j0", "j1", "j2")
WORKERS = ("w0", "w1", "w2")
LONG_LEASE_S = 3600.0
EXPIRED_LEASE_S = -1.0  # a claim whose lease has already run out: the reaper may take it
# Event kinds that change a job's status (or its existence).
STATUS_KINDS = ("created", "status", "claimed", "requeued", "lease_expired", "deleted")

# Jobs belong to someone (auth); no call below may change that.
OWNER = "alice"

PROPERTY_SETTINGS = dict(
    deadline=None,
    derandomize=True,  # the same examples on every run, so CI is repeatable
    database=None,
    # `queue` is function-scoped on purpose: each example clears the tables itself.
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow,
                           HealthCheck.data_too_large],
)


@pytest.fixture
def audit(db_url, queue):
    """A second engine on the store's database, for clearing tables and reading raw rows."""
    engine = build_engine(db_url)
    yield engine
    engine.dispose()


def clear_tables(engine) -> None:
    with engine.begin() as conn:
        for table in (job_events, job_metrics, jobs):
            conn.execute(delete(table))


def raw_events(engine) -> dict[str, list[Any]]:
    stmt = select(job_events.c.seq, job_events.c.job_id, job_events.c.kind,
                  job_events.c.from_status, job_events.c.to_status).order_by(job_events.c.seq)
    by_job: dict[str, list[Any]] = defaultdict(list)
    with engine.connect() as conn:
        for row in conn.execute(stmt):
            by_job[row.job_id].append(row)
    return by_job


def raw_statuses(engine) -> dict[str, str]:
    with engine.connect() as conn:
        return {r.id: r.status for r in conn.execute(select(jobs.c.id, jobs.c.status))}


def check_event_streams(engine) -> Counter:
    """Walk every job's recorded events in commit order and check each against the table.

    Returns the number of events of each kind."""
    kinds: Counter = Counter()
    statuses = raw_statuses(engine)
    streams = raw_events(engine)
    for job_id, events in streams.items():
        current: str | None = None  # None: no such job at this point of the timeline
        for ev in events:
            where = f"job {job_id!r}, event #{ev.seq} {ev.kind} {ev.from_status}->{ev.to_status}"
            kinds[ev.kind] += 1
            if ev.kind == "created":
                assert current is None, f"{where}: created while the job exists ({current})"
                assert (ev.from_status, ev.to_status) == (None, "queued"), where
                current = "queued"
            elif ev.kind == "deleted":
                assert current is not None, f"{where}: deleted a job that does not exist"
                assert ev.from_status == current and ev.to_status is None, where
                current = None
            elif ev.from_status is None and ev.to_status == current:
                continue  # a lease hand-over (detach/attach): no status change
            else:
                assert current is not None, f"{where}: a change of a job that does not exist"
                assert ev.from_status == current, f"{where}: the job was {current!r}"
                assert current not in FINAL, f"{where}: left the final status {current!r}"
                assert (ev.from_status, ev.to_status) in ALLOWED_EDGES, \
                    f"{where}: not an edge of the transition table"
                current = ev.to_status
        assert statuses.get(job_id) == current, (
            f"job {job_id!r} is {statuses.get(job_id)!r} but its last event says {current!r}")
    for job_id in statuses:
        assert job_id in streams, f"job {job_id!r} has no events"
    return kinds


def _new_job(job_id: str, priority: int = 0) -> NewJob:
    extra = {"owner": OWNER} if "owner" in NewJob.__dataclass_fields__ else {}
    return NewJob(job_id=job_id, model_name="m", dataset="d", priority=priority,
                  max_attempts=2, **extra)


def _owner_of(job) -> str:
    return getattr(job, "owner", OWNER)


# ------------------------------------------------------------------ the model check


@dataclass
class ModelJob:
    priority: int
    created_us: int
    seq: int
    status: JobStatus = JobStatus.QUEUED
    version: int = 1
    attempts: int = 0
    max_attempts: int = 2
    lease_owner: str | None = None
    lease_expired: bool = False  # lease_expires_us is set and in the past
    # This incarnation's timeline as GET /jobs/{id}/events should show it: (kind, from, to).
    timeline: list[tuple[str, str | None, str | None]] = field(
        default_factory=lambda: [("created", None, "queued")])

    def move(self, kind: str, target: JobStatus) -> None:
        self.timeline.append((kind, self.status.value, target.value))
        self.status = target
        self.version += 1

    @property
    def revision(self) -> Revision:
        return Revision(self.created_us, self.version)


class JobLifecycle(RuleBasedStateMachine):
    """The store against a model of the transition table, one call at a time."""

    def __init__(self, queue, engine) -> None:
        super().__init__()
        self.queue = queue
        self.engine = engine
        self.model: dict[str, ModelJob] = {}
        self.kinds: Counter = Counter()  # events the model expects, by kind
        self.seq = 0
        self.old_revisions: list[tuple[str, Revision]] = []

    @initialize()
    def start(self) -> None:
        clear_tables(self.engine)
        for index, job_id in enumerate(JOB_IDS):
            self.create(job_id, priority=5 * (index % 2))

    # ------------------------------------------------------------ rules
    @rule(job_id=st.sampled_from(JOB_IDS), priority=st.sampled_from([0, 5]))
    def create(self, job_id: str, priority: int) -> None:
        new = _new_job(job_id, priority=priority)
        known = self.model.get(job_id)
        if known is not None and known.priority != priority:
            with pytest.raises(JobIdConflict):
                self.queue.jobs.create_job(new)
            return
        job, created = self.queue.jobs.create_job(new)
        assert created is (known is None)
        if known is None:
            self.seq += 1
            self.model[job_id] = ModelJob(priority, job.revision.created_us, self.seq)
            self.kinds["created"] += 1
        self.compare(job)

    @rule(job_id=st.sampled_from(JOB_IDS))
    def delete(self, job_id: str) -> None:
        known = self.model.pop(job_id, None)
        if known is None:
            with pytest.raises(JobNotFound):
                self.queue.jobs.delete_job(job_id)
            return
        self.old_revisions.append((job_id, known.revision))
        self.queue.jobs.delete_job(job_id)
        self.kinds["deleted"] += 1

    @rule(job_id=st.sampled_from(JOB_IDS), to=st.sampled_from(list(JobStatus)),
          message=st.sampled_from([None, "why"]))
    def patch(self, job_id: str, to: JobStatus, message: str | None) -> None:
        self.transition(job_id, to, "none", message)

    @rule(job_id=st.sampled_from(JOB_IDS), to=st.sampled_from(list(JobStatus)),
          precondition_kind=st.sampled_from(["current", "stale", "namesake"]))
    def patch_if_match(self, job_id: str, to: JobStatus, precondition_kind: str) -> None:
        self.transition(job_id, to, precondition_kind, None)

    @rule(job_id=st.sampled_from(JOB_IDS))
    def cancel(self, job_id: str) -> None:
        self.transition(job_id, JobStatus.CANCELLED, "none", "cancelled by request")

    def transition(self, job_id: str, target: JobStatus, precondition_kind: str,
                   message: str | None) -> None:
        known = self.model.get(job_id)
        expected = None
        if known is not None and precondition_kind == "current":
            expected = known.revision
        elif known is not None and precondition_kind == "stale":
            expected = Revision(known.created_us, known.version - 1)
        elif precondition_kind == "namesake":
            olds = [rev for jid, rev in self.old_revisions if jid == job_id]
            expected = olds[-1] if olds else None
        call = lambda: self.queue.jobs.transition(job_id, target, error_message=message,  # noqa: E731
                                             expected=expected)
        if known is None:
            with pytest.raises(JobNotFound):
                call()
            return
        matches = expected is None or expected == known.revision
        if matches and known.status in sources_of(target):
            job, changed = call()
            assert changed
            self.kinds["status"] += 1
            known.move("status", target)
            # A status set from outside ends any worker's lease.
            known.lease_owner = None
            known.lease_expired = False
        elif not matches:
            with pytest.raises(PreconditionFailed):
                call()
            return
        elif known.status is target:
            job, changed = call()
            assert not changed
        else:
            with pytest.raises(IllegalTransition) as info:
                call()
            assert info.value.current is known.status
            return
        self.compare(job)

    @rule(worker=st.sampled_from(WORKERS), lease_s=st.sampled_from([LONG_LEASE_S,
                                                                  EXPIRED_LEASE_S]))
    def claim(self, worker: str, lease_s: float) -> None:
        queued = [(-m.priority, m.created_us, m.seq, jid) for jid, m in self.model.items()
                  if m.status is JobStatus.QUEUED]
        job = self.queue.claim(worker, lease_s)
        if not queued:
            assert job is None
            return
        expected_id = min(queued)[-1]
        assert job is not None and job.id == expected_id, (job, queued)
        known = self.model[expected_id]
        known.move("claimed", JobStatus.RUNNING)
        known.attempts += 1
        known.lease_owner = worker
        known.lease_expired = lease_s < 0
        self.kinds["claimed"] += 1
        self.compare(job)

    @rule(job_id=st.sampled_from(JOB_IDS), worker=st.sampled_from(WORKERS),
          to=st.sampled_from([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED]),
          refund=st.booleans())
    def finish(self, job_id: str, worker: str, to: JobStatus, refund: bool) -> None:
        target = to
        refund = refund and target is JobStatus.QUEUED
        known = self.model.get(job_id)
        job = self.queue.finish(job_id, worker, target, error_message="boom",
                                refund_attempt=refund)
        holds = (known is not None and known.status is JobStatus.RUNNING
                 and known.lease_owner == worker)
        if not holds:
            assert job is None, (job_id, worker, known)
            return
        assert job is not None
        known.move("requeued" if target is JobStatus.QUEUED else "status", target)
        known.lease_owner = None
        known.lease_expired = False
        if refund:
            known.attempts -= 1
        self.kinds["requeued" if target is JobStatus.QUEUED else "status"] += 1
        self.compare(job)

    @rule()
    def reap(self) -> None:
        due = {jid for jid, m in self.model.items()
               if m.status is JobStatus.RUNNING and m.lease_expired}
        reaped = self.queue.requeue_expired()
        assert {j.id for j in reaped} == due
        for job in reaped:
            known = self.model[job.id]
            known.move("lease_expired", JobStatus.FAILED if known.attempts >= known.max_attempts
                       else JobStatus.QUEUED)
            known.lease_owner = None
            known.lease_expired = False
            self.kinds["lease_expired"] += 1
            self.compare(job)

    # ------------------------------------------------------------ checks
    def compare(self, job) -> None:
        known = self.model[job.id]
        got = (job.status, job.version, job.attempts, job.worker, job.revision)
        want = (known.status, known.version, known.attempts, known.lease_owner, known.revision)
        assert got == want, f"store {got} != model {want} for {job.id}"
        assert (job.finished_at is not None) == job.status.is_final, job
        assert _owner_of(job) == OWNER, f"{job.id}: owner changed to {_owner_of(job)!r}"

    @invariant()
    def store_matches_model(self) -> None:
        for job_id in JOB_IDS:
            known = self.model.get(job_id)
            if known is None:
                with pytest.raises(JobNotFound):
                    self.queue.jobs.get_job(job_id)
            else:
                self.compare(self.queue.jobs.get_job(job_id))
                events, _ = self.queue.jobs.job_events(job_id)
                timeline = [(e.kind, e.from_status and e.from_status.value,
                             e.to_status and e.to_status.value)
                            for e in events if e.kind in STATUS_KINDS]
                assert timeline == known.timeline, f"timeline of {job_id}"

    @invariant()
    def events_follow_the_table(self) -> None:
        kinds = check_event_streams(self.engine)
        assert {k: kinds[k] for k in STATUS_KINDS} == {k: self.kinds[k] for k in STATUS_KINDS}


def test_store_follows_the_transition_table(queue, audit):
    run_state_machine_as_test(
        lambda: JobLifecycle(queue, audit),
        settings=settings(max_examples=example_count(40), stateful_step_count=40,
                          **PROPERTY_SETTINGS),
    )


# ------------------------------------------------------------------ concurrency

_op = st.one_of(
    st.tuples(st.just("transition"), st.sampled_from(JOB_IDS), st.sampled_from(list(JobStatus)),
              st.sampled_from(["none", "fresh", "stale"])),
    st.tuples(st.just("cancel"), st.sampled_from(JOB_IDS)),
    st.tuples(st.just("claim"), st.sampled_from(WORKERS),
              st.sampled_from([LONG_LEASE_S, EXPIRED_LEASE_S])),
    st.tuples(st.just("finish"), st.sampled_from(JOB_IDS), st.sampled_from(WORKERS),
              st.sampled_from([JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.QUEUED])),
    st.tuples(st.just("reap")),
    st.tuples(st.just("delete"), st.sampled_from(JOB_IDS)),
    st.tuples(st.just("create"), st.sampled_from(JOB_IDS)),
)
_plans = st.lists(st.lists(_op, min_size=1, max_size=12), min_size=4, max_size=8)
_EXPECTED_ERRORS = (JobNotFound, IllegalTransition, PreconditionFailed)


class Ledger:
    """What the calls said they did, from all threads."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.kinds: Counter = Counter()
        self.versions: dict[tuple[str, int], list[tuple[int, str]]] = defaultdict(list)
        self.unexpected: list[str] = []
        self.stale_successes: list[str] = []

    def changed(self, kind: str, job) -> None:
        with self.lock:
            self.kinds[kind] += 1
            self.versions[(job.id, job.revision.created_us)].append(
                (job.version, job.status.value))
            if _owner_of(job) != OWNER:
                self.unexpected.append(f"{kind} changed the owner of {job.id}: {job}")

    def deleted(self) -> None:
        with self.lock:
            self.kinds["deleted"] += 1


def _run_op(queue, ledger: Ledger, op: tuple) -> None:
    name = op[0]
    try:
        if name == "transition":
            _, job_id, target, pre = op
            expected = None
            if pre != "none":
                current = queue.jobs.get_job(job_id)
                expected = current.revision
                if pre == "stale":
                    expected = Revision(expected.created_us, expected.version - 1)
            job, changed = queue.jobs.transition(job_id, target, expected=expected,
                                            error_message="why")
            if changed:
                ledger.changed("status", job)
                if pre == "stale":
                    ledger.stale_successes.append(f"{op} -> {job}")
        elif name == "cancel":
            job, changed = queue.jobs.transition(op[1], JobStatus.CANCELLED,
                                            error_message="cancelled by request")
            if changed:
                ledger.changed("status", job)
        elif name == "claim":
            job = queue.claim(op[1], op[2])
            if job is not None:
                ledger.changed("claimed", job)
        elif name == "finish":
            _, job_id, worker, target = op
            job = queue.finish(job_id, worker, target, error_message="boom")
            if job is not None:
                ledger.changed("requeued" if target is JobStatus.QUEUED else "status", job)
        elif name == "reap":
            for job in queue.requeue_expired():
                ledger.changed("lease_expired", job)
        elif name == "delete":
            queue.jobs.delete_job(op[1])
            ledger.deleted()
        elif name == "create":
            job, created = queue.jobs.create_job(_new_job(op[1]))
            if created:
                ledger.changed("created", job)
    except _EXPECTED_ERRORS:
        pass
    except Exception as exc:  # noqa: BLE001 - every other error is a finding
        with ledger.lock:
            ledger.unexpected.append(f"{op}: {type(exc).__name__}: {exc}")


def _check_revisions(ledger: Ledger, queue) -> None:
    """Per incarnation: versions 1..n each reported once, each step an allowed edge, and
    the live incarnation ends where the last reported change left it.

    Which incarnation is live is read from the store, not guessed from creation times: a
    create's timestamp is taken before its INSERT commits, so under load a create that
    started earlier can commit after a later one was deleted."""
    for (job_id, created_us), seen in ledger.versions.items():
        seen.sort()
        versions = [v for v, _ in seen]
        assert versions == list(range(1, len(versions) + 1)), (
            f"job {job_id!r} (created {created_us}): versions {versions} have gaps or "
            f"duplicates (a lost or double-applied change), statuses {seen}")
        assert seen[0][1] == "queued", seen
        for (_, src), (_, dst) in zip(seen, seen[1:], strict=False):
            assert (src, dst) in ALLOWED_EDGES, f"job {job_id!r}: {src}->{dst} in {seen}"
    for job_id in JOB_IDS:
        try:
            job = queue.jobs.get_job(job_id)
            timeline, _ = queue.jobs.job_events(job_id)
        except JobNotFound:
            continue
        seen = ledger.versions.get((job_id, job.revision.created_us))
        assert seen is not None, f"job {job_id!r}: stored {job}, an incarnation no call made"
        assert (job.version, job.status.value) == seen[-1], (
            f"job {job_id!r}: stored {job}, but the last reported change made {seen[-1]}")
        # The API's timeline of this incarnation: its own changes, all of them, in order.
        changes = [(e.kind, e.from_status and e.from_status.value,
                    e.to_status and e.to_status.value) for e in timeline
                   if e.kind in STATUS_KINDS]
        expected = [("created", None, "queued")] + [
            (None, src, dst) for (_, src), (_, dst) in zip(seen, seen[1:], strict=False)]
        assert [c[1:] for c in changes] == [e[1:] for e in expected], (
            f"job {job_id!r}: GET /jobs/{job_id}/events shows {changes}, "
            f"but the calls on this incarnation made {expected}")


def _run_plans(queue, audit, plans: list[list[tuple]]) -> None:
    """One example: the jobs exist, every thread runs its plan at once, then the audit."""
    clear_tables(audit)
    ledger = Ledger()
    for job_id in JOB_IDS:
        job, _ = queue.jobs.create_job(_new_job(job_id))
        ledger.changed("created", job)
    barrier = threading.Barrier(len(plans))

    def worker(plan: list[tuple]) -> None:
        barrier.wait(timeout=30)
        for op in plan:
            _run_op(queue, ledger, op)

    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        for future in [pool.submit(worker, plan) for plan in plans]:
            future.result(timeout=120)

    assert not ledger.unexpected, "\n".join(ledger.unexpected)
    assert not ledger.stale_successes, "\n".join(ledger.stale_successes)
    kinds = check_event_streams(audit)
    assert {k: kinds[k] for k in STATUS_KINDS} == {k: ledger.kinds[k] for k in STATUS_KINDS}, (
        "events recorded != changes the calls reported")
    _check_revisions(ledger, queue)


def test_concurrent_transitions_never_break_the_table(queue, audit):
    # Races do not replay deterministically, so hypothesis must not shrink or replay a
    # failing example (it would call it flaky): each example's failure is collected here
    # and the test fails at the end with every distinct one and the plans that hit it.
    failures: dict[str, tuple[int, list]] = {}
    examples = 0

    @given(plans=_plans)
    @settings(max_examples=example_count(80), phases=[Phase.explicit, Phase.generate],
              **PROPERTY_SETTINGS)
    def explore(plans):
        nonlocal examples
        examples += 1
        try:
            _run_plans(queue, audit, plans)
        except AssertionError as exc:
            message = str(exc).split("\n")[0]
            count, first_plans = failures.get(message, (0, plans))
            failures[message] = (count + 1, first_plans)

    explore()
    assert not failures, f"{sum(n for n, _ in failures.values())} of {examples} examples " \
        "broke an invariant:\n" + "\n".join(
            f"- {message[:600]} (x{n})\n  first seen with plans={plans!r:.400}..."
            for message, (n, plans) in failures.items())
