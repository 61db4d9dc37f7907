"""Building the events writers append."""

from __future__ import annotations

from datetime import timedelta

import pytest

from eventjobs.testing.commands import (
    DEFAULT_LEASE_S,
    MIN_LEASE_S,
    CommandRefused,
    attempt_started,
    attempt_started_event,
    attempt_timed_out_event,
    cancel_request,
    cancel_requested_event,
    claim,
    claimed_event,
    dead_letter_retried_event,
    dead_letter_retry,
    discard,
    discarded_event,
    due,
    enqueue,
    expire,
    heartbeat,
    heartbeat_event,
    lease_deadline,
    lease_expired,
    progress,
    progress_event,
    timed_out,
    timer_fired_event,
)
from eventjobs.core.events import ClaimedEvent
from eventjobs.core.fold import apply
from eventjobs.core.ids import job_id_for_key
from eventjobs.core.options import InvalidJobOptions, JobOptions, Priority
from eventjobs.core.state import JobStatus
from tests.core.builders import T0, reach

S = JobStatus


def test_enqueue_builds_a_valid_enqueued_event() -> None:
    event = enqueue("send_email", {"to": "a@b.c"}, JobOptions(queue="mail", priority="high", delay=30), now=T0, actor="producer:h:1")
    assert (event.name, event.queue, event.priority, event.args) == ("send_email", "mail", Priority.HIGH, {"to": "a@b.c"})
    assert event.run_at == T0 + timedelta(seconds=30)
    assert event.options == JobOptions(queue="mail", priority="high", delay=30).to_spec()
    assert len(event.job_id) == 36 and len(event.event_id) == 36
    assert apply(None, event).state.status is S.SCHEDULED  # type: ignore[union-attr]


def test_enqueue_with_an_idempotency_key_derives_the_job_id() -> None:
    options = JobOptions(idempotency_key=lambda args: str(args["order"]))
    first = enqueue("charge", {"order": 42}, options, now=T0, actor="p")
    second = enqueue("charge", {"order": 42}, options, now=T0, actor="p")
    assert first.job_id == second.job_id == job_id_for_key("charge", "42")
    assert first.event_id != second.event_id
    assert first.idempotency_key == "42"
    assert enqueue("charge", {"order": 42}, options, now=T0, actor="p", key_namespace="shop").job_id == job_id_for_key("shop", "42")


def test_enqueue_rejects_bad_input() -> None:
    with pytest.raises(InvalidJobOptions):
        enqueue("x", {}, JobOptions(idempotency_key=lambda args: ""), now=T0, actor="p")
    with pytest.raises(ValueError):
        enqueue("bad name", {}, now=T0, actor="p")


def test_worker_and_timer_commands_follow_a_job_through_its_life() -> None:
    state, _, _ = reach(S.PENDING)
    now = T0 + timedelta(seconds=1)
    steps = [
        lambda s: claim(s, worker_id="w1", now=now, actor="worker:w1"),
        lambda s: attempt_started(s, now=now, actor="worker:w1"),
        lambda s: progress(s, 40, "copying", now=now, actor="worker:w1"),
        lambda s: heartbeat(s, now=now + timedelta(seconds=5), actor="worker:w1"),
        lambda s: timed_out(s, now=now + timedelta(seconds=31), actor="worker:w1"),
        lambda s: due(s, now=now + timedelta(seconds=60), actor="timer:0"),
        lambda s: claim(s, worker_id="w2", now=now + timedelta(seconds=61), actor="worker:w2", lease_s=10),
        lambda s: lease_expired(s, now=now + timedelta(seconds=71), actor="timer:0"),
    ]
    statuses = []
    for make in steps:
        decision = apply(state, make(state))
        assert decision.rejected is None, decision.rejected
        state = decision.state
        statuses.append(state.status)
    assert statuses == [S.CLAIMED, S.RUNNING, S.RUNNING, S.RUNNING, S.RETRYING, S.PENDING, S.CLAIMED, S.RETRYING]
    assert state.attempt == 2


def test_the_lease_is_the_workers_not_the_jobs_timeout() -> None:
    state, _, _ = reach(S.PENDING, options=JobOptions(timeout=120))
    assert claim(state, worker_id="w", now=T0, actor="w").lease_deadline == T0 + timedelta(seconds=DEFAULT_LEASE_S)
    assert claim(state, worker_id="w", now=T0, actor="w", lease_s=5).lease_deadline == T0 + timedelta(seconds=5)
    running = apply(state, claim(state, worker_id="w", now=T0, actor="w")).state
    assert heartbeat(running, now=T0, actor="w", lease_s=9).lease_deadline == lease_deadline(T0, 9) == T0 + timedelta(seconds=9)


def test_a_lease_is_never_shorter_than_the_minimum() -> None:
    assert lease_deadline(T0, 0) == lease_deadline(T0, MIN_LEASE_S) == T0 + timedelta(seconds=MIN_LEASE_S)
    assert claimed_event("j", 0, worker_id="w", now=T0, actor="w", lease_s=0.1).lease_deadline == lease_deadline(T0, 0.1)
    assert heartbeat_event("j", 0, now=T0, actor="w", lease_s=0.1).lease_deadline == lease_deadline(T0, 0.1)


def test_builders_need_only_what_their_writer_knows() -> None:
    worker = {"now": T0, "actor": "worker:w1"}
    assert claimed_event("j", 2, worker_id="w1", event_id="e1", **worker) == ClaimedEvent(
        event_id="e1", job_id="j", occurred_at=T0, actor="worker:w1", attempt=2, worker_id="w1",
        lease_deadline=T0 + timedelta(seconds=DEFAULT_LEASE_S),
    )
    assert attempt_started_event("j", 2, worker_id="w1", **worker).worker_id == "w1"
    assert progress_event("j", 2, 40, "copying", **worker).percent == 40.0
    assert attempt_timed_out_event("j", 2, timeout_s=3, **worker).timeout_s == 3
    cancel = cancel_requested_event("j", "no longer needed", now=T0, actor="operator:ann")
    assert (cancel.job_id, cancel.reason) == ("j", "no longer needed")
    retry = dead_letter_retried_event("j", "dl-1", "fixed", now=T0, actor="operator:ann")
    drop = discarded_event("j", "dl-1", "obsolete", now=T0, actor="operator:ann")
    assert retry.causation_id == drop.causation_id == "dl-1"


@pytest.mark.parametrize(
    ("key", "attempt", "expected"),
    [
        (b"job:7:run_at", 0, ("due", {"attempt": 0, "timer": "run_at"})),
        (b"job:7:retry:3", 3, ("due", {"attempt": 3, "timer": "retry", "sequence": None})),
        (b"job:7:republish:3:2", 3, ("due", {"attempt": 3, "timer": "republish", "sequence": 2})),
        (b"job:7:lease", 1, ("lease_expired", {"attempt": 1, "lease_deadline": T0})),
        (b"job:7:ttl", 0, ("expired", {"reason": "ttl passed at 2025-01-01T12:00:00.000+00:00 before the job started"})),
    ],
)
def test_a_fired_timer_becomes_its_event_with_an_id_derived_from_the_timer(
    key: bytes, attempt: int, expected: tuple[str, dict[str, object]]
) -> None:
    due_ms = int(T0.timestamp() * 1000)
    event = timer_fired_event(key, due_ms, attempt, now=T0 + timedelta(seconds=1), actor="timer:3")
    again = timer_fired_event(key, due_ms, attempt, now=T0 + timedelta(seconds=9), actor="timer:4")
    kind, fields = expected
    assert (event.type, event.job_id, event.actor) == (kind, "job:7", "timer:3")
    assert {name: getattr(event, name) for name in fields} == fields
    assert event.event_id == again.event_id  # a re-fire is a duplicate
    assert timer_fired_event(key, due_ms + 1, attempt, now=T0, actor="timer:3").event_id != event.event_id


def test_an_unknown_timer_kind_is_an_error() -> None:
    with pytest.raises(ValueError, match="unknown timer kind 'snooze'"):
        timer_fired_event(b"job:snooze", 0, 0, now=T0, actor="timer:0")


def test_operator_commands_name_the_dead_letter_entry() -> None:
    state, _, _ = reach(S.DEAD_LETTERED)
    retry = dead_letter_retry(state, "fixed the bug", now=T0, actor="operator:ann")
    drop = discard(state, now=T0, actor="operator:ann")
    assert retry.causation_id == drop.causation_id == state.dead_letter_event_id
    assert apply(state, retry).state.status is S.PENDING  # type: ignore[union-attr]
    assert apply(state, drop).state.status is S.DISCARDED  # type: ignore[union-attr]


def test_expire_and_cancel() -> None:
    state, _, _ = reach(S.PENDING, options=JobOptions(ttl=60))
    assert apply(state, expire(state, now=T0, actor="timer:0")).state.status is S.DEAD_LETTERED  # type: ignore[union-attr]
    assert apply(state, cancel_request(state, "no", now=T0, actor="op")).state.status is S.CANCELLED  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("status", "command", "message"),
    [
        (S.RUNNING, lambda s: claim(s, worker_id="w", now=T0, actor="w"), "job job-1 is running, only a pending job can be claimed"),
        (S.PENDING, lambda s: attempt_started(s, now=T0, actor="w"), "job job-1 is pending, not claimed"),
        (S.RUNNING, lambda s: due(s, now=T0, actor="t"), "job job-1 is running: no run_at, retry or republish timer is pending"),
        (S.PENDING, lambda s: lease_expired(s, now=T0, actor="t"), "job job-1 is pending: it holds no lease"),
        (S.COMPLETED, lambda s: cancel_request(s, now=T0, actor="o"), "job job-1 is completed: nothing to cancel"),
        (S.PENDING, lambda s: dead_letter_retry(s, now=T0, actor="o"), "job job-1 is pending, not dead_lettered"),
        (S.COMPLETED, lambda s: discard(s, now=T0, actor="o"), "job job-1 is completed, not dead_lettered"),
    ],
)
def test_commands_that_make_no_sense_are_refused(status: JobStatus, command: object, message: str) -> None:
    state, _, _ = reach(status)
    with pytest.raises(CommandRefused) as info:
        command(state)  # type: ignore[operator]
    assert str(info.value) == message
