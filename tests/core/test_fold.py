"""apply(state, event): every transition, every rejection, derived events, duplicates."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import pytest

from eventjobs.core.clock import add_seconds, format_utc_ms
from eventjobs.core.codec import decode, encode
from eventjobs.core.events import (
    DERIVED_TYPES,
    EVENT_TYPES,
    CompletedEvent,
    DeadLetteredEvent,
    RetryScheduledEvent,
)
from eventjobs.core.fold import Decision, apply, fold, replay
from eventjobs.core.ids import derived_event_id
from eventjobs.core.options import ConstantBackoff, ExponentialBackoff, JobOptions, Limit, NoBackoff, backoff_delay_s
from eventjobs.core.state import ACCEPTING_STATUSES, RECENT_EVENT_IDS, TRANSITIONS, JobState, JobStatus, Transition
from tests.core.builders import T0, TRACEBACK, JobLog, Run, awaited_answer, reach

S = JobStatus


# --------------------------------------------------------------------------------------------
# The transition table is what apply does
# --------------------------------------------------------------------------------------------


LIMITED = JobOptions(max_attempts=3, backoff=ConstantBackoff(delay_s=10), concurrency=Limit(key="t-1", max=1))


def _limited(status: JobStatus, log: JobLog) -> JobState:
    """A job with a concurrency limit in ``status`` (waiting: for its slot)."""
    run = Run()
    state = run.all(log.enqueued(LIMITED, run_in=60 if status is S.SCHEDULED else None))
    if status in (S.WAITING, S.SCHEDULED):
        return state
    state = run.all(log.granted(state))
    if status is S.PENDING:
        return state
    log.tick()
    state = run.all(log.claimed(state.attempt))
    if status is S.CLAIMED:
        return state
    state = run.all(log.started(state.attempt))
    if status is S.RUNNING:
        return state
    log.tick()
    return run.all(log.failed(state.attempt))  # retrying


def _slot_scenario(row: Transition, log: JobLog) -> tuple[JobState | None, Any] | None:
    if row.event == "enqueued" and row.source is None and "concurrency" in row.when:
        return None, log.enqueued(LIMITED)
    if row.event == "due" and row.target is S.WAITING:
        state = _limited(row.source, log)  # type: ignore[arg-type]
        log.tick(60)
        return state, log.due(state.attempt, "run_at" if row.source is S.SCHEDULED else "retry")
    if row.event.startswith("slot_"):
        state = _limited(row.source, log)  # type: ignore[arg-type]
        log.tick()
        make = {"slot_granted": log.granted, "slot_refused": log.slot_refused, "slot_revoked": log.slot_revoked}
        return state, make[row.event](state)
    return None


def _scenario(row: Transition) -> tuple[JobState | None, Any]:
    """A state in ``row.source`` and an event that satisfies ``row.when``."""
    log = JobLog()
    limited = _slot_scenario(row, log)
    if limited is not None:
        return limited
    if row.event == "enqueued" and row.source is not None:  # debounce: a later enqueue of the job's window
        options = JobOptions(debounce=30, idempotency_key="k")
        state = Run().all(log.enqueued(options, run_in=30 if row.source is S.SCHEDULED else None))
        log.tick()
        return state, log.enqueued(options, args={"to": "b@example.com"})
    if row.event == "enqueued":
        if row.target is S.WAITING:
            return None, log.enqueued(depends_on=["dep-a"])
        return None, log.enqueued(run_in=60 if row.target is S.SCHEDULED else None)
    if row.event == "dependency_resolved" and row.source in (S.DEAD_LETTERED, S.CANCELLED):
        return _resolved_while_ended(row, log)
    if row.event in _WORKFLOW_SCENARIOS:
        return _WORKFLOW_SCENARIOS[row.event](row, log)  # type: ignore[no-any-return]
    if row.event == "dependency_resolved":  # waiting for dep-a and dep-b
        run = Run()
        state = run.all(log.enqueued(run_in=60 if row.target is S.SCHEDULED else None, depends_on=["dep-a", "dep-b"]))
        if row.target is S.CANCELLED:
            return state, log.resolved(state, "dep-a", "dead_lettered")
        if row.target is not S.WAITING:
            state = run.all(log.resolved(state, "dep-a", "completed", {"n": 1}))
        return state, log.resolved(state, "dep-b", "completed", {"n": 2})
    if row.event == "attempt_snoozed":
        max_attempts = 1 if row.target is S.DEAD_LETTERED else 3
        max_snoozes = 5 if row.target is S.SCHEDULED else 0
        state, log, _ = reach(row.source, log=log, options=JobOptions(max_attempts=max_attempts, max_snoozes=max_snoozes))  # type: ignore[arg-type]
        log.tick()
        return state, log.snoozed(state.attempt, 5)
    if row.event == "expired":
        state, log, _ = reach(row.source, log=log, options=JobOptions(max_attempts=3, ttl=60, backoff=NoBackoff()))
        return state, log.expired()
    if row.event in ("attempt_failed", "attempt_timed_out", "lease_expired"):
        max_attempts = 1 if row.target is S.DEAD_LETTERED else 3
        state, log, run = reach(row.source, log=log, options=JobOptions(max_attempts=max_attempts))
        if row.target is S.CANCELLED:
            state = run.all(log.cancel())
        log.tick()
        if row.event == "attempt_failed":
            return state, log.failed(state.attempt)
        if row.event == "attempt_timed_out":
            return state, log.timed_out(state.attempt)
        assert state.lease_deadline is not None
        return state, log.lease_expired(state.attempt, state.lease_deadline)
    state, log, _ = reach(row.source, log=log)  # type: ignore[arg-type]
    log.tick()
    make = {
        "due": lambda: _due_for(state, log),
        "claimed": lambda: log.claimed(state.attempt),
        "attempt_started": lambda: (log.claim_started(state.attempt) if state.status is S.PENDING  # claim and start
                                    else log.started(state.attempt)),
        "progress": lambda: log.progress(state.attempt),
        "heartbeat": lambda: log.heartbeat(state.attempt, lease_s=120),
        "attempt_succeeded": lambda: log.succeeded(state.attempt, {"ok": 1}),
        "cancel_requested": lambda: log.cancel(),
        "dead_letter_retried": lambda: log.dlq_retry(state.dead_letter_event_id),
        "discarded": lambda: log.discard(state.dead_letter_event_id),
        "retention_passed": lambda: log.retention_passed(
            state.attempt, "dead_letter" if state.status is S.DEAD_LETTERED else "finished"
        ),
    }
    return state, make[row.event]()


def _expired_waiting(log: JobLog, depends_on: list[str], **enqueue: Any) -> tuple[JobState, Run]:
    """A job that waited for ``depends_on`` and expired (ttl 60 s) before any answered: dead-lettered."""
    run = Run()
    run.apply(log.enqueued(JobOptions(ttl=60), depends_on=depends_on, **enqueue))
    log.tick(61)
    return run.all(log.expired()), run


def _cancelled_by(log: JobLog, failing: str, depends_on: list[str]) -> tuple[JobState, Run]:
    """A job that waited for ``depends_on`` and was cancelled by ``failing``'s dead-lettering."""
    run = Run()
    state = run.all(log.enqueued(depends_on=depends_on))
    return run.all(log.resolved(state, failing, "dead_lettered")), run


def _resolved_while_ended(row: Transition, log: JobLog) -> tuple[JobState, Any]:
    if row.source is S.DEAD_LETTERED:
        state, _ = _expired_waiting(log, ["dep-a", "dep-b"])
    else:
        state, _ = _cancelled_by(log, "dep-b", ["dep-a", "dep-b"])
    return state, log.resolved(state, "dep-a", "completed", {"n": 1})


def _requested_while_waiting(row: Transition, log: JobLog) -> tuple[JobState, Any]:
    if row.source is not S.WAITING:
        state, log, _ = reach(row.source, log=log)  # type: ignore[arg-type]
        return state, log.requested("job-2")
    state = Run().all(log.enqueued(depends_on=["dep-a"]))
    return state, log.requested("job-2")


def _reopened(row: Transition, log: JobLog) -> tuple[JobState, Any]:
    if row.source is S.DEAD_LETTERED:
        state, run = _expired_waiting(log, ["dep-a"])
        state = run.all(log.resolved(state, "dep-a", "dead_lettered"))
        return state, log.reopened(state, "dep-a")
    state, run = _cancelled_by(log, "dep-b", ["dep-a", "dep-b"])
    # dep-a's answer comes while it is cancelled: a completion (it waits again), or a failure (it stays cancelled)
    state = run.all(log.resolved(state, "dep-a", "completed" if row.target is S.WAITING else "cancelled"))
    return state, log.reopened(state, "dep-b")


def _probed(row: Transition, log: JobLog) -> tuple[JobState, Any]:
    run = Run()
    state = run.all(log.enqueued(depends_on=["dep-a"]))
    if row.target is S.CANCELLED:  # dep-a waits for job-1 too: a probe of job-1's own wait comes back through dep-a
        request = log.requested("dep-a")
        state = run.all(request)
        return state, log.probe(["job-1", "dep-a"], awaited_answer(state, "dep-a"), derived_event_id(request.event_id, "dependency_resolved", 0))
    request = log.requested("job-2")  # job-2 waits for job-1: a probe of x's wait, forwarded by job-2
    state = run.all(request)
    return state, log.probe(["x", "job-2"], "origin", derived_event_id(request.event_id, "dependency_resolved", 0))


def _retried_from_the_dead_letters(row: Transition, log: JobLog) -> tuple[JobState, Any]:
    if row.target is S.PENDING:
        state, log, _ = reach(S.DEAD_LETTERED, log=log)
        log.tick()
        return state, log.dlq_retry(state.dead_letter_event_id)
    state, run = _expired_waiting(log, ["dep-a"], run_in=3600 if row.target is S.SCHEDULED else None)
    if row.target is not S.WAITING:
        state = run.all(log.resolved(state, "dep-a", "completed" if row.target is S.SCHEDULED else "dead_lettered"))
    log.tick()
    return state, log.dlq_retry(state.dead_letter_event_id)


_WORKFLOW_SCENARIOS = {
    "dependency_requested": _requested_while_waiting,
    "dependency_reopened": _reopened,
    "dependency_probe": _probed,
    "dead_letter_retried": _retried_from_the_dead_letters,
}


def _due_for(state: JobState, log: JobLog) -> Any:
    """The timer a job in ``state`` waits for: run_at, retry, or (pending) its next republish."""
    if state.status is S.PENDING:
        return log.republish(state.attempt, state.ready_republishes)
    return log.due(state.attempt, "run_at" if state.status is S.SCHEDULED else "retry")


@pytest.mark.parametrize("row", TRANSITIONS, ids=lambda r: f"{r.source and r.source.value}-{r.event}-{r.target and r.target.value}")
def test_every_row_of_the_transition_table_is_what_apply_does(row: Transition) -> None:
    # Given a job in the row's source status and an event meeting the row's condition
    state, event = _scenario(row)
    assert (state.status if state else None) is row.source
    # When it is applied
    decision = apply(state, event)
    # Then the job moves to the row's target and derives exactly the row's events
    assert decision.rejected is None
    assert not decision.duplicate
    if row.target is None:
        assert decision.state is None  # forgotten
    else:
        assert decision.state is not None and decision.state.status is row.target
    assert tuple(d.type for d in decision.derived) == row.derives


def _any_event_of_type(type_: str, state: JobState, log: JobLog) -> Any:
    """A plausible event of ``type_`` for ``state`` (right attempt, right lease, right entry)."""
    attempt = state.attempt
    makers = {
        "enqueued": lambda: log.enqueued(),
        "due": lambda: _due_for(state, log),
        "claimed": lambda: log.claimed(attempt),
        "attempt_started": lambda: log.started(attempt),
        "progress": lambda: log.progress(attempt),
        "heartbeat": lambda: log.heartbeat(attempt, lease_s=500),
        "attempt_succeeded": lambda: log.succeeded(attempt),
        "attempt_failed": lambda: log.failed(attempt),
        "attempt_timed_out": lambda: log.timed_out(attempt),
        "lease_expired": lambda: log.lease_expired(attempt, state.lease_deadline or log.now),
        "cancel_requested": lambda: log.cancel(),
        "expired": lambda: log.expired(),
        "dead_letter_retried": lambda: log.dlq_retry(state.dead_letter_event_id),
        "discarded": lambda: log.discard(state.dead_letter_event_id),
        "retention_passed": lambda: log.retention_passed(attempt, "finished"),
        "dependency_requested": lambda: log.requested("job-2"),
        "dependency_resolved": lambda: log.resolved(state, "dep-a"),
        "dependency_reopened": lambda: log.reopened(state, "dep-a"),
        "dependency_probe": lambda: log.probe(["job-2"], "origin", "via"),
        "attempt_snoozed": lambda: log.snoozed(attempt),
        "slot_requested": lambda: log.slot_requested(job_id=state.job_id),
        "slot_released": lambda: log.slot_released(job_id=state.job_id),
        "slot_granted": lambda: log.granted(state),
        "slot_refused": lambda: log.slot_refused(state),
        "slot_revoked": lambda: log.slot_revoked(state),
        "limit_changed": lambda: log.limit_changed(job_id=state.job_id),
    }
    return makers[type_]()


_NOT_IN_TABLE = [
    (status, type_)
    for type_ in EVENT_TYPES
    if type_ not in DERIVED_TYPES and type_ != "enqueued"
    for status in JobStatus
    if status not in ACCEPTING_STATUSES.get(type_, ())
]


@pytest.mark.parametrize(("status", "type_"), _NOT_IN_TABLE, ids=lambda v: getattr(v, "value", v))
def test_event_types_outside_the_table_are_rejected_with_the_state_unchanged(status: JobStatus, type_: str) -> None:    # Given a job in `status` (with a ttl, so that `expired` is not refused for lack of one)
    state, log, _ = reach(status, options=JobOptions(max_attempts=3, ttl=600, backoff=ConstantBackoff(delay_s=10)))
    log.tick()
    # When an event the table does not allow from there arrives
    decision = apply(state, _any_event_of_type(type_, state, log))
    # Then it is rejected with a reason, and nothing changes
    assert decision.rejected
    assert decision.state is state
    assert decision.derived == ()
    assert not decision.duplicate


# --------------------------------------------------------------------------------------------
# enqueued
# --------------------------------------------------------------------------------------------


def test_enqueued_creates_a_pending_job_from_the_event() -> None:
    log = JobLog()
    options = JobOptions(queue="mail", max_attempts=5, priority="high", ttl=90)
    event = log.enqueued(options, args={"to": "x@example.com"})
    decision = apply(None, event)
    state = decision.state
    assert decision == Decision(state, (), None, False)
    assert state is not None
    assert (state.job_id, state.name, state.queue, state.priority.value) == ("job-1", "send_email", "mail", "high")
    assert state.args == {"to": "x@example.com"}
    assert state.status is S.PENDING
    assert (state.attempt, state.attempts_started, state.max_attempts, state.version) == (0, 0, 5, 1)
    assert state.enqueued_at == T0 and state.updated_at == T0
    assert state.expires_at == T0 + timedelta(seconds=90)
    assert state.enqueued_event_id == event.event_id
    assert state.recent_event_ids == (event.event_id,)


def test_enqueued_state_has_every_field_in_declaration_order() -> None:
    state = apply(None, JobLog().enqueued()).state
    assert state is not None
    assert list(state.__dict__) == list(JobState.model_fields)
    assert JobState.model_validate(state.model_dump()) == state


def test_enqueued_with_a_future_run_at_is_scheduled_and_derives_scheduled() -> None:
    log = JobLog()
    event = log.enqueued(JobOptions(ttl=30), run_in=3600)
    decision = apply(None, event, actor="processor:2")
    state = decision.state
    assert state is not None and state.status is S.SCHEDULED
    assert state.next_due_at == T0 + timedelta(hours=1)
    assert state.expires_at == T0 + timedelta(hours=1, seconds=30)  # the ttl counts from run_at
    (scheduled,) = decision.derived
    assert scheduled.type == "scheduled"
    assert scheduled.run_at == T0 + timedelta(hours=1)
    assert scheduled.event_id == derived_event_id(event.event_id, "scheduled", 0)
    assert (scheduled.occurred_at, scheduled.causation_id, scheduled.actor) == (T0, event.event_id, "processor:2")
    assert state.recent_event_ids == (event.event_id, scheduled.event_id)


def test_enqueued_with_run_at_not_in_the_future_is_pending() -> None:
    log = JobLog()
    event = log.enqueued(run_in=0)
    assert apply(None, event).state.status is S.PENDING  # type: ignore[union-attr]


def test_the_same_enqueued_event_again_is_a_duplicate() -> None:
    log = JobLog()
    event = log.enqueued()
    state = apply(None, event).state
    decision = apply(state, event)
    assert decision == Decision(state, (), None, True)


def test_a_second_enqueued_for_the_same_job_is_refused_and_reported() -> None:
    # Given a job enqueued with an idempotency key
    log = JobLog()
    first = log.enqueued(JobOptions(idempotency_key="order-42"))
    state = apply(None, first).state
    # When another enqueue with the same key (so the same job id) arrives
    second = log.enqueued(JobOptions(idempotency_key="order-42"))
    decision = apply(state, second, actor="processor:1")
    # Then it is rejected, the state is unchanged, and duplicate_rejected is derived
    assert decision.state is state
    assert decision.rejected == (
        f"job job-1 already exists (idempotency key 'order-42'), enqueued by event {first.event_id}; duplicate refused"
    )
    (notice,) = decision.derived
    assert notice.type == "duplicate_rejected"
    assert (notice.idempotency_key, notice.duplicate_event_id) == ("order-42", second.event_id)
    assert notice.event_id == derived_event_id(second.event_id, "duplicate_rejected", 0)


def test_events_of_an_unknown_job_are_rejected() -> None:
    decision = apply(None, JobLog("ghost").claimed())
    assert decision == Decision(None, (), "unknown job 'ghost': no enqueued event seen for it", False)


def test_an_event_of_another_job_is_rejected() -> None:
    state, _, _ = reach(S.PENDING)
    decision = apply(state, JobLog("job-2").claimed())
    assert decision.rejected == "event for job 'job-2' applied to the state of job 'job-1'"
    assert decision.state is state


# --------------------------------------------------------------------------------------------
# due, claimed, attempt_started, progress, heartbeat
# --------------------------------------------------------------------------------------------


def test_due_run_at_makes_a_scheduled_job_pending() -> None:
    state, log, _ = reach(S.SCHEDULED)
    log.tick(60)
    new = apply(state, log.due(0, "run_at")).state
    assert new is not None and new.status is S.PENDING and new.next_due_at is None and new.version == 2


def test_due_with_the_wrong_timer_kind_is_rejected() -> None:
    state, log, _ = reach(S.SCHEDULED)
    decision = apply(state, log.due(0, "retry"))
    assert decision.rejected == "a 'retry' timer does not apply to a scheduled job (expects 'run_at')"


def test_due_for_another_attempt_is_stale() -> None:
    state, log, _ = reach(S.RETRYING)
    decision = apply(state, log.due(0, "retry"))
    assert decision.rejected == "stale attempt 0: job is on attempt 1 (retrying); recorded, no effect"


def test_claimed_takes_the_lease_for_the_current_attempt() -> None:
    state, log, _ = reach(S.PENDING)
    log.tick(2)
    event = log.claimed(0, worker="w7", lease_s=45)
    new = apply(state, event).state
    assert new is not None
    assert (new.status, new.worker_id, new.attempts_started) == (S.CLAIMED, "w7", 1)
    assert new.lease_deadline == T0 + timedelta(seconds=47)
    assert new.updated_at == T0 + timedelta(seconds=2)


def test_claim_of_a_claimed_attempt_is_rejected() -> None:
    state, log, _ = reach(S.CLAIMED)
    decision = apply(state, log.claimed(0, worker="w2"))
    assert decision.rejected == "attempt 0 is already claimed by w1"


def test_claim_of_a_wrong_attempt_is_stale() -> None:
    state, log, _ = reach(S.PENDING)
    decision = apply(state, log.claimed(3))
    assert decision.rejected == "stale attempt 3: job is on attempt 0 (pending); recorded, no effect"


def test_claim_with_a_lease_already_over_is_rejected() -> None:
    state, log, _ = reach(S.PENDING)
    decision = apply(state, log.claimed(0, lease_s=0))
    assert decision.rejected == "lease_deadline is not after occurred_at: the lease would already be over"


def test_a_start_that_is_also_the_claim_takes_the_lease_and_runs_the_job() -> None:
    state, log, _ = reach(S.PENDING)
    log.tick(2)
    event = log.claim_started(0, worker="w7", lease_s=45)
    new = apply(state, event).state
    assert new is not None
    assert (new.status, new.worker_id, new.claim_id, new.attempts_started) == (S.RUNNING, "w7", event.event_id, 1)
    assert new.lease_deadline == T0 + timedelta(seconds=47)
    assert new.started_at == new.updated_at == T0 + timedelta(seconds=2)


@pytest.mark.parametrize("own_claim", [True, False], ids=["claim_id is its own id", "no claim_id"])
def test_a_claiming_start_equals_a_claim_and_its_start_at_the_same_moment(own_claim: bool) -> None:
    state, log, _ = reach(S.PENDING)
    log.tick(2)
    both = log.claim_started(0, worker="w7", lease_s=45, own_claim=own_claim)
    claim = log.claimed(0, worker="w7", lease_s=45, event_id=both.event_id)
    start = log.started(0, worker="w7", claim_id=claim.event_id)
    one = apply(state, both).state
    claimed = apply(state, claim).state
    two = apply(claimed, start).state
    assert one is not None and two is not None
    assert one.version == state.version + 1 and two.version == state.version + 2
    ignored = {"version", "recent_event_ids"}
    assert one.model_dump(exclude=ignored) == two.model_dump(exclude=ignored)


def test_a_claiming_start_of_a_claimed_or_running_attempt_is_rejected() -> None:
    for status in (S.CLAIMED, S.RUNNING):
        state, log, _ = reach(status)
        decision = apply(state, log.claim_started(0, worker="w2"))
        assert decision.rejected == "attempt 0 is already claimed by w1"
        assert decision.state is state


def test_a_claiming_start_after_another_claiming_start_is_rejected() -> None:
    state, log, _ = reach(S.PENDING)
    first = apply(state, log.claim_started(0, worker="w1")).state
    decision = apply(first, log.claim_started(0, worker="w2"))
    assert decision.rejected == "attempt 0 is already claimed by w1"
    assert decision.state is first


def test_a_claiming_start_of_a_wrong_attempt_is_stale() -> None:
    state, log, _ = reach(S.PENDING)
    decision = apply(state, log.claim_started(3))
    assert decision.rejected == "stale attempt 3: job is on attempt 0 (pending); recorded, no effect"


def test_a_claiming_start_with_a_lease_already_over_is_rejected() -> None:
    state, log, _ = reach(S.PENDING)
    decision = apply(state, log.claim_started(0, lease_s=0))
    assert decision.rejected == "lease_deadline is not after occurred_at: the lease would already be over"


def test_a_claiming_start_naming_another_claim_is_rejected() -> None:
    state, log, _ = reach(S.PENDING)
    decision = apply(state, log.claim_started(0, claim_id="job-1-e999"))
    assert decision.rejected == "a start that is also the claim names itself as the claim, not job-1-e999"
    assert decision.state is state


def test_a_start_without_lease_of_a_pending_job_is_rejected() -> None:
    state, log, _ = reach(S.PENDING)
    decision = apply(state, log.started(0))
    assert decision.rejected == "attempt 0 is not claimed: a start without lease_deadline follows an accepted claimed"


def test_a_claiming_start_of_a_scheduled_or_ended_job_is_not_accepted() -> None:
    state, log, _ = reach(S.RETRYING)
    decision = apply(state, log.claim_started(1))
    assert decision.rejected == "'attempt_started' is not accepted while the job is retrying (only when: claimed, pending)"
    state, log, _ = reach(S.COMPLETED)
    assert apply(state, log.claim_started(0)).rejected is not None


def test_the_claiming_starts_attempt_events_decide_and_a_refused_claims_do_not() -> None:
    state, log, _ = reach(S.PENDING)
    both = log.claim_started(0, worker="w1")
    running = apply(state, both).state
    assert running is not None
    other = log.claimed(0, worker="w2")
    assert apply(running, other).rejected == "attempt 0 is already claimed by w1"
    refused = apply(running, log.succeeded(0, claim_id=other.event_id))
    assert refused.rejected is not None and refused.state is running
    done = apply(running, log.succeeded(0, claim_id=both.event_id)).state
    assert done is not None and done.status is S.COMPLETED


def test_a_claiming_start_disarms_the_ttl() -> None:
    state, log, _ = reach(S.PENDING, options=JobOptions(max_attempts=3, ttl=60))
    assert state.expires_at is not None
    new = apply(state, log.claim_started(0)).state
    assert new is not None and new.expires_at is None


def test_attempt_started_runs_the_job() -> None:
    state, log, _ = reach(S.CLAIMED)
    log.tick(3)
    new = apply(state, log.started(0)).state
    assert new is not None and new.status is S.RUNNING and new.started_at == log.now


def test_attempt_started_by_another_worker_is_rejected() -> None:
    state, log, _ = reach(S.CLAIMED)
    decision = apply(state, log.started(0, worker="w9"))
    assert decision.rejected == "attempt 0 is claimed by w1, not w9"


def test_progress_is_recorded_and_older_progress_is_refused() -> None:
    state, log, _ = reach(S.RUNNING)
    log.tick()
    first = log.progress(0, 30, "a third")
    state = apply(state, first).state
    assert state is not None and (state.progress_percent, state.progress_message, state.progress_at) == (30, "a third", log.now)
    older = log.progress(0, 10, "old", occurred_at=log.now - timedelta(seconds=5))
    assert apply(state, older).rejected == "progress older than the last recorded one"


def test_heartbeat_extends_the_lease_and_only_a_later_deadline_counts() -> None:
    state, log, _ = reach(S.RUNNING)
    log.tick(10)
    state = apply(state, log.heartbeat(0, lease_s=60)).state
    assert state is not None and state.lease_deadline == log.now + timedelta(seconds=60)
    decision = apply(state, log.heartbeat(0, lease_s=30))
    assert decision.rejected == "heartbeat does not extend the lease (deadline not later than the current one)"


def test_heartbeat_and_progress_of_an_old_attempt_are_stale() -> None:
    state, log, run = reach(S.RETRYING)
    log.tick(10)
    state = run.all(log.due(1), log.claimed(1), log.started(1))
    for event in (log.heartbeat(0), log.progress(0)):
        decision = apply(state, event)
        assert decision.rejected == "stale attempt 0: job is on attempt 1 (running); recorded, no effect"
        assert decision.state is state


# --------------------------------------------------------------------------------------------
# outcomes of an attempt
# --------------------------------------------------------------------------------------------


def test_success_completes_the_job_and_derives_completed() -> None:
    state, log, _ = reach(S.RUNNING)
    log.tick(5)
    event = log.succeeded(0, {"sent": 3})
    decision = apply(state, event)
    new = decision.state
    assert new is not None
    assert (new.status, new.result, new.finished_at, new.lease_deadline) == (S.COMPLETED, {"sent": 3}, log.now, None)
    assert decision.derived == (
        CompletedEvent(
            event_id=derived_event_id(event.event_id, "completed", 0),
            job_id="job-1",
            occurred_at=log.now,
            causation_id=event.event_id,
            actor="processor",
            attempt=0,
            result={"sent": 3},
        ),
    )


def test_a_retryable_failure_schedules_a_retry_with_the_backoff() -> None:
    # Given a running job with exponential backoff 2 s, 4 s, ...
    options = JobOptions(max_attempts=3, backoff=ExponentialBackoff(base_s=2))
    state, log, _ = reach(S.RUNNING, options=options)
    log.tick(1)
    # When attempt 0 fails with a retryable error
    event = log.failed(0, retryable=True, message="reset by peer")
    decision = apply(state, event)
    # Then the job retries attempt 1 after 2 s, keeping the error and its traceback
    new = decision.state
    assert new is not None
    assert (new.status, new.attempt, new.next_due_at) == (S.RETRYING, 1, log.now + timedelta(seconds=2))
    assert new.last_error is not None
    assert (new.last_error.error_type, new.last_error.message, new.last_error.traceback) == (
        "ConnectionError",
        "reset by peer",
        TRACEBACK,
    )
    assert new.lease_deadline is None
    assert decision.derived == (
        RetryScheduledEvent(
            event_id=derived_event_id(event.event_id, "retry_scheduled", 0),
            job_id="job-1",
            occurred_at=log.now,
            causation_id=event.event_id,
            actor="processor",
            attempt=1,
            due_at=log.now + timedelta(seconds=2),
            delay_s=2.0,
        ),
    )


def test_the_workers_retry_delay_overrides_the_backoff() -> None:
    state, log, _ = reach(S.RUNNING)
    decision = apply(state, log.failed(0, delay=0.25))
    assert decision.derived[0].delay_s == 0.25
    assert decision.state.next_due_at == log.now + timedelta(milliseconds=250)  # type: ignore[union-attr]


def test_jittered_backoff_is_the_same_on_every_replay() -> None:
    options = JobOptions(max_attempts=5, backoff=ExponentialBackoff(base_s=10, jitter=0.5, seed=7))
    state, log, _ = reach(S.RUNNING, options=options)
    event = log.failed(0)
    first, second = apply(state, event), apply(state, event)
    expected = round(backoff_delay_s(options.backoff_spec(), 0, "job-1"), 3)
    assert first.derived == second.derived
    assert first.derived[0].delay_s == expected
    assert 5.0 <= expected <= 10.0


def test_the_last_attempt_failing_dead_letters_the_job() -> None:
    # Given a job allowed 2 attempts, whose attempt 0 already failed
    options = JobOptions(max_attempts=2, backoff=ConstantBackoff(delay_s=1))
    state, log, run = reach(S.RETRYING, options=options)
    log.tick(5)
    run.all(log.due(1), log.claimed(1), log.started(1))
    log.tick(1)
    # When attempt 1 fails too
    event = log.failed(1, message="still down")
    decision = run.apply(event)
    # Then it fails for good: failed + dead_lettered, with the last error and traceback
    new = decision.state
    assert new is not None
    assert new.status is S.DEAD_LETTERED
    assert new.attempt == 1 and new.attempts_started == 2
    assert new.reason == "attempts exhausted: 2 of 2 failed"
    failed, dead = decision.derived
    assert (failed.type, failed.attempt, failed.reason) == ("failed", 1, "attempts exhausted: 2 of 2 failed")
    assert (failed.error_type, failed.message, failed.traceback) == ("ConnectionError", "still down", TRACEBACK)
    assert dead == DeadLetteredEvent(
        event_id=derived_event_id(event.event_id, "dead_lettered", 1),
        job_id="job-1",
        occurred_at=log.now,
        causation_id=event.event_id,
        actor="processor",
        reason="attempts exhausted: 2 of 2 failed",
        error_type="ConnectionError",
        message="still down",
        traceback=TRACEBACK,
    )
    assert new.dead_letter_event_id == dead.event_id
    assert new.finished_at == log.now


def test_a_non_retryable_failure_dead_letters_at_once() -> None:
    state, log, _ = reach(S.RUNNING, options=JobOptions(max_attempts=10))
    decision = apply(state, log.failed(0, retryable=False, error_type="ValueError"))
    assert decision.state.status is S.DEAD_LETTERED  # type: ignore[union-attr]
    assert decision.state.reason == "not retryable: ValueError"  # type: ignore[union-attr]
    assert [d.type for d in decision.derived] == ["failed", "dead_lettered"]


def test_a_timeout_is_a_retryable_failure() -> None:
    state, log, _ = reach(S.RUNNING)
    decision = apply(state, log.timed_out(0, timeout_s=30))
    new = decision.state
    assert new is not None and new.status is S.RETRYING and new.attempt == 1
    assert new.last_error is not None
    assert (new.last_error.error_type, new.last_error.message) == ("TimeoutError", "attempt 0 timed out after 30 s")


def test_a_lost_lease_is_a_retryable_failure() -> None:
    state, log, _ = reach(S.CLAIMED)
    assert state.lease_deadline is not None
    log.tick(61)
    decision = apply(state, log.lease_expired(0, state.lease_deadline))
    new = decision.state
    assert new is not None and new.status is S.RETRYING
    assert new.last_error is not None and new.last_error.error_type == "LeaseExpired"
    assert new.last_error.message == "lease of worker w1 on attempt 0 expired at 2025-01-01T12:01:01.000Z"


def test_a_lease_timer_that_was_overtaken_by_a_heartbeat_is_rejected() -> None:
    state, log, run = reach(S.RUNNING)
    old_deadline = state.lease_deadline
    assert old_deadline is not None
    log.tick(30)
    state = run.all(log.heartbeat(0, lease_s=60))
    decision = apply(state, log.lease_expired(0, old_deadline))
    assert decision.rejected == "lease was extended since this timer was set: the worker is still alive"
    assert decision.state is state


def test_a_late_result_of_a_stale_attempt_cannot_change_the_outcome() -> None:
    # Given attempt 0 lost its lease and attempt 1 succeeded
    state, log, run = reach(S.RUNNING)
    assert state.lease_deadline is not None
    log.tick(61)
    run.all(log.lease_expired(0, state.lease_deadline))
    log.tick(10)
    done = run.all(log.due(1), log.claimed(1, worker="w2"), log.started(1, worker="w2"), log.succeeded(1, {"by": "w2"}))
    # When the zombie worker of attempt 0 reports a failure, then a success
    for late in (log.failed(0), log.succeeded(0, {"by": "w1"})):
        decision = apply(done, late)
        # Then it is recorded as rejected, and the outcome stays attempt 1's
        assert decision.rejected == "stale attempt 0: job is on attempt 1 (completed); recorded, no effect"
        assert decision.state is done
    assert done.result == {"by": "w2"}


def test_outcomes_of_the_current_attempt_after_the_end_are_refused() -> None:
    state, log, _ = reach(S.COMPLETED)
    decision = apply(state, log.failed(0))
    assert decision.rejected == "job is completed (terminal): 'attempt_failed' changes nothing"


# --------------------------------------------------------------------------------------------
# cancel, expire
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [S.PENDING, S.SCHEDULED, S.RETRYING])
def test_cancel_of_a_waiting_job_cancels_it_at_once(status: JobStatus) -> None:
    state, log, _ = reach(status)
    log.tick()
    event = log.cancel("customer left")
    decision = apply(state, event)
    new = decision.state
    assert new is not None
    assert (new.status, new.reason, new.finished_at, new.next_due_at) == (S.CANCELLED, "customer left", log.now, None)
    (cancelled,) = decision.derived
    assert (cancelled.type, cancelled.reason, cancelled.causation_id) == ("cancelled", "customer left", event.event_id)


def test_cancel_of_a_running_job_waits_for_the_attempt_then_wins_over_a_retry() -> None:
    # Given a running job that is asked to cancel
    state, log, run = reach(S.RUNNING)
    state = run.all(log.cancel("stop"))
    assert (state.status, state.cancel_requested, state.reason) == (S.RUNNING, True, "stop")
    # When the attempt then fails (retryable, with attempts left)
    decision = run.apply(log.failed(0, retryable=True))
    # Then the job ends cancelled instead of retrying
    assert decision.state.status is S.CANCELLED  # type: ignore[union-attr]
    assert [(d.type, d.reason) for d in decision.derived] == [("cancelled", "stop")]


def test_cancel_of_a_running_job_that_then_succeeds_completes_it() -> None:
    state, log, run = reach(S.RUNNING)
    run.all(log.cancel())
    assert run.apply(log.succeeded(0)).state.status is S.COMPLETED  # type: ignore[union-attr]


def test_a_second_cancel_request_of_a_running_job_is_rejected() -> None:
    state, log, run = reach(S.RUNNING)
    state = run.all(log.cancel())
    decision = apply(state, log.cancel("again"))
    assert decision.rejected == "cancel already requested; the running attempt decides when it ends"


@pytest.mark.parametrize("status", [S.COMPLETED, S.CANCELLED, S.DISCARDED])
def test_cancel_of_a_finished_job_is_rejected(status: JobStatus) -> None:
    state, log, _ = reach(status)
    decision = apply(state, log.cancel())
    assert decision.rejected == f"job is {status.value} (terminal): 'cancel_requested' changes nothing"


def test_expired_dead_letters_a_job_that_never_started() -> None:
    state, log, _ = reach(S.PENDING, options=JobOptions(ttl=60))
    log.tick(61)
    decision = apply(state, log.expired())
    new = decision.state
    assert new is not None and new.status is S.DEAD_LETTERED
    assert new.reason == "expired: ttl of 60 s passed before the job started"
    (dead,) = decision.derived
    assert (dead.type, dead.reason, dead.error_type) == ("dead_lettered", new.reason, "")
    assert new.dead_letter_event_id == dead.event_id


def test_a_claim_disarms_the_ttl() -> None:
    state, log, _ = reach(S.PENDING, options=JobOptions(ttl=60))
    assert state.expires_at is not None
    new = apply(state, log.claimed(0)).state
    assert new is not None and new.expires_at is None


def test_expired_does_not_touch_a_retrying_job_that_started_and_failed() -> None:
    # A ttl timer that fires late (after the first start, racing its tombstone) must not
    # dead-letter a job that did start: the ttl only limits the wait for the first start.
    state, log, _ = reach(S.RETRYING, options=JobOptions(ttl=60, max_attempts=3))
    decision = apply(state, log.expired())
    assert decision.rejected is not None
    assert decision.state is state and decision.derived == ()


def test_expired_is_rejected_once_an_attempt_started() -> None:
    state, log, run = reach(S.RETRYING, options=JobOptions(ttl=60, max_attempts=3, backoff=NoBackoff()))
    state = run.all(log.due(1))  # pending again, but attempt 0 ran
    decision = apply(state, log.expired())
    assert decision.rejected == "no ttl is armed for this job (none set, already started, or retried from the dead-letter queue)"


def test_expired_is_rejected_without_a_ttl() -> None:
    state, log, _ = reach(S.PENDING, options=JobOptions())
    decision = apply(state, log.expired())
    assert decision.rejected == "no ttl is armed for this job (none set, already started, or retried from the dead-letter queue)"


# --------------------------------------------------------------------------------------------
# dead-letter queue: retry and discard
# --------------------------------------------------------------------------------------------


def test_dead_letter_retry_gives_a_fresh_budget_and_keeps_counting_attempts() -> None:
    # Given a job that used its 2 attempts and was dead-lettered
    options = JobOptions(max_attempts=2, backoff=NoBackoff(), ttl=600)
    state, log, run = reach(S.RETRYING, options=options)
    run.all(log.due(1), log.claimed(1), log.started(1), log.failed(1))
    dead = run.state
    assert dead is not None and dead.status is S.DEAD_LETTERED
    # When an operator retries it
    log.tick(3600)
    state = run.all(log.dlq_retry(dead.dead_letter_event_id))
    # Then it is pending on attempt 2 with 2 more attempts allowed; history is kept
    assert (state.status, state.attempt, state.max_attempts, state.attempts_started) == (S.PENDING, 2, 4, 2)
    assert state.budget_start == 2
    assert (state.lease_deadline, state.worker_id, state.finished_at, state.dead_letter_event_id) == (None, None, None, None)
    assert state.expires_at is None  # the ttl does not apply to an operator's retry
    assert state.last_error is not None and state.last_error.message == "reset"
    # And the new budget is exactly max_attempts attempts
    run.all(log.claimed(2), log.started(2), log.failed(2))
    assert run.state.status is S.RETRYING  # type: ignore[union-attr]
    run.all(log.due(3), log.claimed(3), log.started(3))
    decision = run.apply(log.failed(3))
    assert decision.state.status is S.DEAD_LETTERED  # type: ignore[union-attr]
    assert decision.state.reason == "attempts exhausted: 2 of 2 failed"  # type: ignore[union-attr]


def test_dead_letter_retry_must_name_the_current_entry() -> None:
    state, log, _ = reach(S.DEAD_LETTERED)
    decision = apply(state, log.dlq_retry("some-other-entry"))
    assert decision.rejected == (
        "'dead_letter_retried' must name the dead-letter entry it acts on: causation_id is 'some-other-entry', "
        f"the job's dead_lettered event is {state.dead_letter_event_id!r}"
    )
    assert apply(state, log.dlq_retry(None)).rejected is not None


def test_a_stale_dead_letter_retry_cannot_revive_a_later_dead_letter() -> None:
    # Given a job retried from the dead-letter queue, which then failed again
    state, log, run = reach(S.DEAD_LETTERED, options=JobOptions(max_attempts=1))
    first_retry = log.dlq_retry(state.dead_letter_event_id)
    run.all(first_retry, log.claimed(1), log.started(1), log.failed(1))
    assert run.state.status is S.DEAD_LETTERED  # type: ignore[union-attr]
    # When the first retry is delivered again, soon: it is a recognised duplicate
    soon = apply(run.state, first_retry)
    assert soon.duplicate and soon.state is run.state
    # And long after (its id no longer among the recent ones): it is refused, since it named
    # the previous dead-letter entry
    assert run.state is not None
    forgetful = JobState.model_validate({**run.state.model_dump(), "recent_event_ids": ()})
    late = apply(forgetful, first_retry)
    assert late.rejected is not None and late.rejected.startswith("'dead_letter_retried' must name the dead-letter entry")
    assert late.state is forgetful


def test_discard_drops_a_dead_lettered_job() -> None:
    state, log, _ = reach(S.DEAD_LETTERED)
    log.tick(10)
    new = apply(state, log.discard(state.dead_letter_event_id)).state
    assert new is not None and (new.status, new.reason, new.finished_at) == (S.DISCARDED, "obsolete", log.now)
    assert apply(state, log.discard("wrong")).rejected is not None


def test_terminal_states_stay_terminal() -> None:
    for status in (S.COMPLETED, S.CANCELLED, S.DISCARDED):
        state, log, _ = reach(status)
        for event in (log.claimed(state.attempt), log.due(state.attempt), log.dlq_retry(state.dead_letter_event_id), log.expired()):
            decision = apply(state, event)
            assert decision.rejected == f"job is {status.value} (terminal): '{event.type}' changes nothing"
            assert decision.state is state


def test_dead_lettered_accepts_only_operator_actions() -> None:
    state, log, _ = reach(S.DEAD_LETTERED)
    decision = apply(state, log.cancel())
    assert decision.rejected == "job is dead_lettered: 'cancel_requested' changes nothing (only dead_letter_retried or discarded do)"


# --------------------------------------------------------------------------------------------
# retention
# --------------------------------------------------------------------------------------------

DAY = 24 * 3600.0
_FORGOTTEN = Decision(state=None, derived=(), rejected=None, duplicate=False)


def test_dead_letter_retention_passing_discards_the_dead_lettered_job() -> None:
    # Given a dead-lettered job nobody retried
    state, log, _ = reach(S.DEAD_LETTERED)
    # When its dead-letter retention passes
    log.tick(7 * DAY)
    event = log.retention_passed(state.attempt, "dead_letter")
    decision = apply(state, event)
    # Then it is discarded, as an operator's discard would, and nothing is derived
    assert decision.rejected is None and not decision.duplicate and decision.derived == ()
    new = decision.state
    assert new is not None
    assert (new.status, new.finished_at, new.updated_at, new.version) == (S.DISCARDED, log.now, log.now, state.version + 1)
    assert new.reason == "discarded: its dead-letter retention passed without a retry"
    assert new.last_error == state.last_error and new.attempt == state.attempt
    assert new.recent_event_ids[-1] == event.event_id
    # And the same event delivered again is a duplicate
    assert apply(new, event) == Decision(new, (), None, True)


def test_dead_letter_retention_discards_a_job_dead_lettered_again_after_a_retry() -> None:
    state, log, run = reach(S.DEAD_LETTERED, options=JobOptions(max_attempts=1))
    run.all(log.dlq_retry(state.dead_letter_event_id), log.claimed(1), log.started(1), log.failed(1))
    log.tick(DAY)
    new = run.all(log.retention_passed(1, "dead_letter"))
    assert (new.status, new.attempt) == (S.DISCARDED, 1)


def test_retention_of_a_stale_attempt_is_rejected() -> None:
    # Given a job dead-lettered on attempt 0, retried, and dead-lettered again on attempt 1
    state, log, run = reach(S.DEAD_LETTERED, options=JobOptions(max_attempts=1))
    run.all(log.dlq_retry(state.dead_letter_event_id), log.claimed(1), log.started(1), log.failed(1))
    again = run.state
    assert again is not None and again.status is S.DEAD_LETTERED
    log.tick(DAY)
    # When the dead-letter retention armed for attempt 0 fires
    for scope in ("dead_letter", "finished"):
        decision = apply(again, log.retention_passed(0, scope))
        # Then it is rejected as stale, and nothing changes
        assert decision.rejected == "stale attempt 0: job is on attempt 1 (dead_lettered); recorded, no effect"
        assert decision.state is again and decision.derived == ()
    # Likewise for a completed job
    done, log, _ = reach(S.COMPLETED)
    log.tick(DAY)
    decision = apply(done, log.retention_passed(1, "finished"))
    assert decision.rejected == "stale attempt 1: job is on attempt 0 (completed); recorded, no effect"
    assert decision.state is done


@pytest.mark.parametrize(("status", "scope"), [(S.DEAD_LETTERED, "dead_letter"), (S.COMPLETED, "finished"),
                                               (S.CANCELLED, "finished"), (S.DISCARDED, "finished")])
@pytest.mark.parametrize("before_s", [0.0, 0.001, 60.0])
def test_retention_due_not_after_the_finish_is_rejected(status: JobStatus, scope: str, before_s: float) -> None:
    # Given a finished (or dead-lettered) job
    state, log, _ = reach(status)
    assert state.finished_at is not None
    log.tick(DAY)
    # When a retention due at or before its finish arrives (armed for an earlier finish)
    due = add_seconds(state.finished_at, -before_s)
    event = log.retention_passed(state.attempt, scope).model_copy(update={"due_at": due})
    decision = apply(state, event)
    # Then it is rejected, and nothing changes
    assert decision.rejected == f"retention due at {format_utc_ms(due)} was armed before the job last finished"
    assert decision.state is state and decision.derived == ()
    # While one due a millisecond after the finish is accepted
    later_event = log.retention_passed(state.attempt, scope).model_copy(
        update={"due_at": add_seconds(state.finished_at, 0.001)}
    )
    assert apply(state, later_event).rejected is None


@pytest.mark.parametrize("status", [S.COMPLETED, S.CANCELLED, S.DISCARDED])
def test_finished_retention_forgets_a_finished_job(status: JobStatus) -> None:
    # Given a completed, cancelled or discarded job
    state, log, _ = reach(status)
    # When its finished retention passes
    log.tick(DAY)
    decision = apply(state, log.retention_passed(state.attempt, "finished"))
    # Then the job is forgotten: no state, nothing rejected, nothing derived
    assert decision == _FORGOTTEN
    assert decision.accepted


@pytest.mark.parametrize("status", [S.SCHEDULED, S.PENDING, S.CLAIMED, S.RUNNING, S.RETRYING, S.DEAD_LETTERED])
def test_finished_retention_of_a_job_that_is_not_finished_is_rejected(status: JobStatus) -> None:
    state, log, _ = reach(status)
    log.tick(DAY)
    decision = apply(state, log.retention_passed(state.attempt, "finished"))
    assert decision.rejected == f"job is {status.value}: only a completed, cancelled or discarded job is forgotten"
    assert decision.state is state and decision.derived == () and not decision.duplicate


@pytest.mark.parametrize("status", [s for s in JobStatus if s is not S.DEAD_LETTERED])
def test_dead_letter_retention_of_a_job_that_is_not_dead_lettered_is_rejected(status: JobStatus) -> None:
    state, log, _ = reach(status)
    log.tick(DAY)
    decision = apply(state, log.retention_passed(state.attempt, "dead_letter"))
    assert decision.rejected
    assert decision.state is state and decision.derived == () and not decision.duplicate


def test_dead_letter_retention_after_a_dead_letter_retry_changes_nothing() -> None:
    # Given a dead-lettered job an operator retried (its dead-letter timer may still fire)
    state, log, run = reach(S.DEAD_LETTERED)
    retried = run.all(log.dlq_retry(state.dead_letter_event_id))
    log.tick(DAY)
    decision = apply(retried, log.retention_passed(0, "dead_letter"))
    assert decision.rejected == "stale attempt 0: job is on attempt 1 (pending); recorded, no effect"
    assert decision.state is retried


def test_fold_and_replay_drop_a_forgotten_job() -> None:
    # Given a log in which job a completes and its retention passes, while job b runs on
    a, b = JobLog("a"), JobLog("b")
    events = [a.enqueued(), b.enqueued(), a.claimed(), a.started(), a.succeeded(0, {"n": 1}), b.claimed()]
    a.tick(DAY)
    forget = a.retention_passed(0, "finished")
    events.append(forget)
    # Then the folded states no longer hold job a
    states = fold(events)
    assert list(states) == ["b"] and states["b"].status is S.CLAIMED
    # And replay says so for the last event, and drops it from the table it updates
    table: dict[str, JobState] = {}
    decisions = list(replay(events, table))
    assert decisions[-1] == (forget, _FORGOTTEN)
    assert table == states
    # And folding on from states that hold it drops it, without changing those states
    start = fold(events[:-1])
    assert fold([forget], start) == {"b": start["b"]}
    assert set(start) == {"a", "b"} and start["a"].status is S.COMPLETED
    # And the same retention delivered again is rejected (the job is unknown now), changing nothing
    assert fold([forget, forget], start) == {"b": start["b"]}
    assert apply(None, forget).rejected == "unknown job 'a': no enqueued event seen for it"


def test_an_enqueued_after_the_job_was_forgotten_creates_it_afresh() -> None:
    # Given a job enqueued with an idempotency key, completed, and forgotten after its retention
    log = JobLog()
    options = JobOptions(max_attempts=3, idempotency_key="order-42")
    first = log.enqueued(options)
    events = [first, log.claimed(), log.started(), log.succeeded(0, {"sent": True})]
    while_kept = log.enqueued(options)  # the idempotency window: a second enqueue is refused ...
    assert apply(fold(events)["job-1"], while_kept).rejected is not None
    log.tick(DAY)
    events.append(log.retention_passed(0, "finished"))
    # When the same job id is enqueued again (same key, a new enqueued event)
    log.tick()
    again = log.enqueued(options, args={"to": "b@example.com"})
    states = fold([*events, again])
    # Then a new job is created, with nothing of the old one
    new = states["job-1"]
    assert new == apply(None, again).state
    assert (new.status, new.attempt, new.attempts_started, new.version) == (S.PENDING, 0, 0, 1)
    assert (new.enqueued_event_id, new.enqueued_at, new.args) == (again.event_id, log.now, {"to": "b@example.com"})
    assert (new.result, new.finished_at, new.idempotency_key) == (None, None, "order-42")
    # And a late copy of the first incarnation's retention cannot forget the new job once it finishes
    forget = events[-1]
    later = fold([log.claimed(), log.started(), log.succeeded()], states)["job-1"]
    assert later.status is S.COMPLETED and forget.event_id not in later.recent_event_ids
    decision = apply(later, forget)
    assert decision.rejected is not None and decision.rejected.endswith("was armed before the job last finished")
    assert decision.state is later


# --------------------------------------------------------------------------------------------
# duplicates and echoes of derived events
# --------------------------------------------------------------------------------------------


def test_applying_the_same_event_twice_is_a_no_op() -> None:
    state, log, _ = reach(S.CLAIMED)
    event = log.started(0)
    once = apply(state, event).state
    twice = apply(once, event)
    assert twice == Decision(once, (), None, True)


def test_derived_events_coming_back_change_nothing() -> None:
    # Given a failure that derived failed + dead_lettered
    state, log, run = reach(S.RUNNING, options=JobOptions(max_attempts=1))
    decision = run.apply(log.failed(0))
    after = decision.state
    # When the derived events come back through the log
    for derived in decision.derived:
        echo = apply(after, derived)
        # Then they are recognised as already applied
        assert echo == Decision(after, (), None, True)


def test_a_derived_event_is_recognised_even_long_after() -> None:
    state, log, run = reach(S.RUNNING)
    decision = run.apply(log.succeeded(0))
    completed = decision.derived[0]
    # Given a state that no longer remembers the derived event's id (it left the recent-ids window)
    state = decision.state
    assert state is not None
    state = JobState.model_validate({**state.model_dump(), "recent_event_ids": ("x",) * RECENT_EVENT_IDS})
    assert completed.event_id not in state.recent_event_ids
    # Then the echo is still recognised, from its id being the derivation of its cause
    assert apply(state, completed) == Decision(state, (), None, True)


def test_a_forged_derived_event_is_rejected() -> None:
    state, log, _ = reach(S.RUNNING)
    forged = CompletedEvent(
        event_id="forged-1", job_id="job-1", occurred_at=log.now, causation_id="job-1-e003", actor="mallory", attempt=0
    )
    decision = apply(state, forged)
    assert decision.rejected == (
        "'completed' is written only by the processor as a consequence of another event; "
        "event forged-1 is not such a derivation"
    )
    assert decision.state is state


def test_apply_never_raises() -> None:
    state, _, _ = reach(S.RUNNING)
    decision = apply(state, object())  # type: ignore[arg-type]
    assert decision.state is state
    assert decision.rejected is not None and decision.rejected.startswith("internal error applying '?'")


# --------------------------------------------------------------------------------------------
# derived events are real events; fold and replay
# --------------------------------------------------------------------------------------------


def test_derived_events_equal_validated_events_and_survive_the_codec() -> None:
    _, _, run = reach(S.DEAD_LETTERED)
    _, _, run2 = reach(S.SCHEDULED)
    _, _, run3 = reach(S.RETRYING)
    _, _, run4 = reach(S.CANCELLED)
    derived = [e for r in (run, run2, run3, run4) for d in r.decisions for e in d.derived]
    assert {e.type for e in derived} == {"dead_lettered", "failed", "scheduled", "retry_scheduled", "cancelled"}
    for event in derived:
        assert type(event).model_validate(event.model_dump()) == event
        assert decode(encode(event)) == event
        assert encode(event) == event.model_dump_json().encode()


def test_fold_gives_the_state_of_every_job() -> None:
    a, b = JobLog("a"), JobLog("b")
    events = [a.enqueued(), b.enqueued(), a.claimed(), b.cancel(), a.started(), a.succeeded(0, {"n": 1})]
    states = fold(events)
    assert {k: v.status for k, v in states.items()} == {"a": S.COMPLETED, "b": S.CANCELLED}
    assert states["a"].version == 4 and states["b"].version == 2


def test_fold_continues_from_given_states_without_changing_them() -> None:
    a = JobLog("a")
    start = fold([a.enqueued()])
    later = fold([a.claimed()], start)
    assert start["a"].status is S.PENDING and later["a"].status is S.CLAIMED


def test_replay_yields_each_decision() -> None:
    a = JobLog("a")
    events = [a.enqueued(), a.claimed(5), a.claimed(0)]
    states: dict[str, JobState] = {}
    decisions = [d for _, d in replay(events, states)]
    assert [d.rejected is None for d in decisions] == [True, False, True]
    assert states["a"].status is S.CLAIMED


def test_derived_times_are_whole_milliseconds() -> None:
    state, log, _ = reach(S.RUNNING, options=JobOptions(backoff=ConstantBackoff(delay_s=1.23456)))
    decision = apply(state, log.failed(0))
    (retry,) = decision.derived
    assert retry.delay_s == 1.235
    assert retry.due_at == add_seconds(log.now, 1.235)
    assert retry.due_at.microsecond % 1000 == 0


def test_jobs_with_equal_options_share_one_options_object() -> None:
    first = apply(None, JobLog("a").enqueued(JobOptions(max_attempts=7))).state
    second = apply(None, decode(encode(JobLog("b").enqueued(JobOptions(max_attempts=7))))).state
    other = apply(None, JobLog("c").enqueued(JobOptions(max_attempts=8))).state
    assert first is not None and second is not None and other is not None
    assert first.options is second.options
    assert other.options is not first.options and other.options.max_attempts == 8


# --------------------------------------------------------------------------------------------
# fenced attempts: only the accepted claim decides
# --------------------------------------------------------------------------------------------


def _two_claims(worker_b: str = "w2") -> tuple[JobState, JobLog, Run, str, str]:
    """A pending job claimed twice for attempt 0 (e.g. its ready record was delivered twice):
    w1's claim is accepted and its attempt runs; the second claim (by ``worker_b``) is refused."""
    state, log, run = reach(S.PENDING)
    log.tick()
    first = log.claimed(0, worker="w1")
    second = log.claimed(0, worker=worker_b)
    run.apply(first)
    refused = run.apply(second, accepted=False)
    assert refused.rejected == "attempt 0 is already claimed by w1"
    state = run.all(log.started(0, worker="w1", claim_id=first.event_id))
    return state, log, run, first.event_id, second.event_id


def test_the_accepted_claim_is_recorded_in_the_state() -> None:
    state, log, _ = reach(S.PENDING)
    claim = log.claimed(0, worker="w7")
    new = apply(state, claim).state
    assert new is not None and (new.claim_id, new.worker_id) == (claim.event_id, "w7")


@pytest.mark.parametrize("worker_b", ["w2", "w1"])  # w1: the same worker process claiming the attempt twice
def test_the_refused_claims_attempt_events_are_rejected_and_decide_nothing(worker_b: str) -> None:
    # Given attempt 0 running under w1's accepted claim, and a second claim that was refused
    state, log, run, accepted, refused = _two_claims(worker_b)
    assert (state.status, state.claim_id) == (S.RUNNING, accepted)
    reason = (f"claim {refused} is not the accepted claim of attempt 0 (claim {accepted} of worker w1); "
              "recorded, no effect")
    # When the refused claim's worker reports anyway (it ran the handler: it cannot know)
    log.tick()
    late_start = apply(state, log.started(0, worker=worker_b, claim_id=refused))
    assert late_start.rejected == "'attempt_started' is not accepted while the job is running (only when: claimed, pending)"
    for event in (
        log.progress(0, 90, "almost", claim_id=refused),
        log.heartbeat(0, lease_s=600, claim_id=refused),
        log.succeeded(0, {"by": "refused"}, claim_id=refused),
        log.failed(0, retryable=False, claim_id=refused),
        log.timed_out(0, claim_id=refused),
    ):
        decision = apply(state, event)
        # Then each is rejected with the reason, and changes nothing
        assert decision.rejected == reason
        assert decision.state is state and decision.derived == ()
    # And the accepted claim's outcome decides the attempt
    done = run.all(log.succeeded(0, {"by": "w1"}, claim_id=accepted))
    assert (done.status, done.result) == (S.COMPLETED, {"by": "w1"})


def test_the_refused_claims_outcome_is_rejected_even_before_the_accepted_worker_reports() -> None:
    # Given the refused claim's worker finishes first, while the accepted attempt still runs
    state, log, run, accepted, refused = _two_claims()
    log.tick()
    decision = run.apply(log.succeeded(0, {"by": "refused"}, claim_id=refused), accepted=False)
    assert decision.rejected is not None and decision.rejected.startswith(f"claim {refused} is not the accepted claim")
    assert run.state is state and state.status is S.RUNNING
    # Then the accepted one's failure still retries the job
    retrying = run.all(log.failed(0, claim_id=accepted))
    assert (retrying.status, retrying.attempt) == (S.RETRYING, 1)


def test_attempt_started_of_a_refused_claim_by_the_same_worker_id_is_rejected() -> None:
    # Given the job claimed (not started yet) by w1, and a second claim by w1 itself refused
    state, log, run = reach(S.PENDING)
    first, second = log.claimed(0, worker="w1"), log.claimed(0, worker="w1")
    run.apply(first)
    run.apply(second, accepted=False)
    claimed = run.state
    assert claimed is not None
    # When the second claim's attempt_started arrives (same worker id, so worker_id cannot tell)
    decision = apply(claimed, log.started(0, worker="w1", claim_id=second.event_id))
    # Then the claim id tells: rejected
    assert decision.rejected == (
        f"claim {second.event_id} is not the accepted claim of attempt 0 (claim {first.event_id} of worker w1); "
        "recorded, no effect"
    )
    assert apply(claimed, log.started(0, worker="w1", claim_id=first.event_id)).state.status is S.RUNNING  # type: ignore[union-attr]


def test_a_late_claim_of_an_earlier_attempt_cannot_report_into_the_next_one() -> None:
    # Given attempt 0 lost its lease and attempt 1 runs under a new claim
    state, log, run = reach(S.PENDING)
    old = log.claimed(0)
    run.all(old)
    log.tick(61)
    run.all(log.lease_expired(0, run.state.lease_deadline), log.due(1))  # type: ignore[union-attr]
    new = log.claimed(1, worker="w2")
    running = run.all(new, log.started(1, worker="w2", claim_id=new.event_id))
    # When an event naming attempt 1 but the old claim arrives (a confused or forged writer)
    decision = apply(running, log.succeeded(1, claim_id=old.event_id))
    # Then it is rejected: attempt 1 belongs to its own claim
    assert decision.rejected is not None and decision.rejected.startswith(f"claim {old.event_id} is not")
    assert decision.state is running


def test_attempt_events_without_a_claim_id_are_checked_as_before() -> None:
    """Events written before claim ids existed carry none: attempt and status decide, as they did."""
    # Given a job claimed and started by events without claim ids (an old log)
    state, log, run = reach(S.RUNNING)
    assert state.claim_id is not None  # the fold records the claim even for an old log
    # Then progress, heartbeats and the outcome without claim ids are accepted
    log.tick()
    run.all(log.progress(0), log.heartbeat(0, lease_s=120))
    assert run.all(log.succeeded(0, {"old": True})).status is S.COMPLETED
    # And attempt_started without a claim id is still checked by worker id
    claimed, log, _ = reach(S.CLAIMED)
    assert apply(claimed, log.started(0, worker="w9")).rejected == "attempt 0 is claimed by w1, not w9"


def test_a_state_without_a_claim_id_accepts_events_that_name_one() -> None:
    """A state restored from a changelog written before claim ids: it holds no claim to compare."""
    state, log, _ = reach(S.RUNNING)
    legacy = JobState.model_validate({k: v for k, v in state.model_dump().items() if k != "claim_id"})
    assert legacy.claim_id is None
    assert apply(legacy, log.succeeded(0, claim_id="from-a-new-worker")).state.status is S.COMPLETED  # type: ignore[union-attr]


def test_a_dead_letter_retry_clears_the_claim() -> None:
    state, log, run = reach(S.DEAD_LETTERED)
    assert state.claim_id is not None
    retried = run.all(log.dlq_retry(state.dead_letter_event_id))
    assert (retried.claim_id, retried.worker_id) == (None, None)


# --------------------------------------------------------------------------------------------
# republish: a pending job's ready record is published again
# --------------------------------------------------------------------------------------------


def test_a_republish_of_a_pending_job_counts_and_keeps_it_pending() -> None:
    state, log, run = reach(S.PENDING)
    assert state.ready_republishes == 0
    log.tick(300)
    first = run.all(log.republish(0, 0))
    assert (first.status, first.attempt, first.ready_republishes, first.version) == (S.PENDING, 0, 1, state.version + 1)
    second = run.all(log.republish(0, 1))
    assert second.ready_republishes == 2
    assert run.decisions[-1].derived == ()


def test_a_republish_timer_fired_twice_republishes_once() -> None:
    # Given a pending job whose first republish timer fired and was recorded
    state, log, run = reach(S.PENDING)
    fired = log.republish(0, 0)
    once = run.all(fired)
    # When the same timer fires again (the timer service crashed before its tombstone): a duplicate
    assert apply(once, fired) == Decision(once, (), None, True)
    # And long after (its id forgotten), a fire with the same sequence is refused as stale
    forgetful = JobState.model_validate({**once.model_dump(), "recent_event_ids": ()})
    decision = apply(forgetful, log.republish(0, 0))
    assert decision.rejected == (
        "republish timer 0 of attempt 0 is stale: its ready record was re-published 1 time(s); recorded, no effect"
    )
    assert decision.state is forgetful


@pytest.mark.parametrize("status", [S.CLAIMED, S.RUNNING, S.RETRYING, S.COMPLETED, S.CANCELLED, S.DEAD_LETTERED])
def test_a_republish_of_a_job_that_is_no_longer_pending_is_rejected(status: JobStatus) -> None:
    state, log, _ = reach(status)
    decision = apply(state, log.republish(state.attempt, 0))
    assert decision.rejected is not None and decision.state is state and decision.derived == ()


def test_a_republish_of_an_earlier_attempt_or_of_another_timer_kind_is_rejected() -> None:
    state, log, run = reach(S.RETRYING)
    pending = run.all(log.due(1))
    assert apply(pending, log.republish(0, 0)).rejected == (
        "stale attempt 0: job is on attempt 1 (pending); recorded, no effect"
    )
    assert apply(pending, log.due(1, "retry")).rejected == "a 'retry' timer does not apply to a pending job (expects 'republish')"
    assert apply(pending, log.due(1, "republish", None)).rejected is not None  # a republish must name its sequence


def test_becoming_pending_again_counts_republishes_afresh() -> None:
    state, log, run = reach(S.PENDING, options=JobOptions(max_attempts=3, backoff=NoBackoff()))
    run.all(log.republish(0, 0), log.republish(0, 1))
    run.all(log.claimed(0), log.failed(0))
    assert run.state.ready_republishes == 2  # type: ignore[union-attr]  # kept while not pending: the record of attempt 0
    pending = run.all(log.due(1))
    assert (pending.status, pending.attempt, pending.ready_republishes) == (S.PENDING, 1, 0)
    # likewise after a dead-letter retry
    state, log, run = reach(S.PENDING, options=JobOptions(max_attempts=1))
    run.all(log.republish(0, 0), log.claimed(0), log.failed(0))
    dead = run.state
    assert dead is not None and (dead.status, dead.ready_republishes) == (S.DEAD_LETTERED, 1)
    assert run.all(log.dlq_retry(dead.dead_letter_event_id)).ready_republishes == 0
