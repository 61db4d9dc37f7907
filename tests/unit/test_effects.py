"""effects.collect: which records each lifecycle transition produces.

States are never written by hand: every step folds a real event (built by the same command
functions the producers, workers, timer service and operators use) with `core.fold.apply`, then
asks `collect` what the processor must write for it.

A running attempt's lease, re-publishing a pending job's ready record and retention are no timer
records: they are the lane's housekeeping timers (`core.housekeeping`), which follow from the
state alone. Where a transition starts or ends one, the tests check what the new state calls for
(`Job.housekeeping`).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventjobs.core.refused import Refused
from eventjobs.testing import commands
from eventjobs.core.clock import add_seconds
from eventjobs.core.events import (
    CancelledEvent,
    CompletedEvent,
    DeadLetteredEvent,
    DuplicateRejectedEvent,
    FailedEvent,
    JobEvent,
    LeaseExpiredEvent,
    RetentionPassedEvent,
    RetryScheduledEvent,
    ScheduledEvent,
)
from eventjobs.core.fold import Decision, apply
from eventjobs.core.options import ConstantBackoff, JobOptions, Priority
from eventjobs.core.outcome import Cancel, outcome_event
from eventjobs.core.state import JobState, JobStatus
from eventjobs.core.effects import Effects, collect, dead_letter_record, ready_record
from eventjobs.core.housekeeping import (
    DEFAULT_DEAD_LETTER_RETENTION_S,
    DEFAULT_RETAIN_COMPLETED_S,
    READY_REPUBLISH_CAP_S,
    READY_REPUBLISH_FIRST_S,
    HousekeepingTimer,
    ReadyRepublish,
    Retention,
    housekeeping_timer,
)
from eventjobs.core.records import HOUSEKEEPING_KINDS, DeadLetterRecord, ReadyRecord, TimerRecord, timer_key
from eventjobs.core.timer_index import admit_timer

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
S = JobStatus


def key(kind: str, job_id: str = "job-1", attempt: int | None = None) -> bytes:
    return timer_key(job_id, kind, attempt)  # type: ignore[arg-type]


def republish_timer(
    at: datetime, attempt: int = 0, sequence: int = 0, republish: ReadyRepublish = ReadyRepublish(),
    job_id: str = "job-1",
) -> HousekeepingTimer:
    """The `republish` housekeeping timer of a job whose ready record of `attempt` was published at
    `at` (for the `sequence`-th time after the first): it is published again `republish.delay_s(sequence)` later."""
    return HousekeepingTimer(job_id, "republish", add_seconds(at, republish.delay_s(sequence)), attempt, sequence)


def lease_timer(deadline: datetime | None, attempt: int = 0, job_id: str = "job-1") -> HousekeepingTimer:
    """The `lease` housekeeping timer of a claimed or running attempt whose lease ends at `deadline`."""
    assert deadline is not None
    return HousekeepingTimer(job_id, "lease", deadline, attempt)


def retain(
    at: datetime, attempt: int = 0, after_s: float = DEFAULT_RETAIN_COMPLETED_S, job_id: str = "job-1"
) -> HousekeepingTimer:
    """The `retain` housekeeping timer of a job that finished at `at`: it is forgotten `after_s` later."""
    return HousekeepingTimer(job_id, "retain", add_seconds(at, after_s), attempt)


def dead_letter_timer(
    at: datetime, attempt: int = 0, after_s: float = DEFAULT_DEAD_LETTER_RETENTION_S, job_id: str = "job-1"
) -> HousekeepingTimer:
    """The `dead_letter` housekeeping timer of a job dead-lettered at `at`: it is discarded `after_s` later."""
    return HousekeepingTimer(job_id, "dead_letter", add_seconds(at, after_s), attempt)


class Job:
    """One job driven through real events; `step` applies one and returns what `collect` produced.

    `retention` and `republish` are the processor's settings: `housekeeping` is the housekeeping
    timer the job's current state calls for under them.
    """

    def __init__(
        self, job_id: str = "job-1", retention: Retention = Retention(), republish: ReadyRepublish = ReadyRepublish()
    ) -> None:
        self.job_id = job_id
        self.retention = retention
        self.republish = republish
        self.now = T0
        self.state: JobState | None = None
        self.n = 0
        self.events: list[JobEvent] = []
        self.decision: Decision | None = None

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now = add_seconds(self.now, seconds)
        return self.now

    def eid(self) -> str:
        self.n += 1
        return f"{self.job_id}-e{self.n:03d}"

    def step(self, event: JobEvent) -> Effects:
        before = self.state
        self.decision = apply(before, event, actor="processor:0")
        effects = Effects()
        collect(effects, before, self.decision, event)
        if self.decision.state is not None:
            self.state = self.decision.state
        elif self.decision.rejected is None:
            self.state = None  # forgotten: its retention passed
        self.events.append(event)
        return effects

    @property
    def s(self) -> JobState:
        assert self.state is not None
        return self.state

    @property
    def housekeeping(self) -> HousekeepingTimer | None:
        """The housekeeping timer (lease, republish, retain or dead_letter) the current state calls for;
        None when it calls for none, or the job is forgotten."""
        return None if self.state is None else housekeeping_timer(self.state, self.retention, self.republish)

    # writers ------------------------------------------------------------------------------------
    def enqueue(self, **options: Any) -> Effects:
        options.setdefault("max_attempts", 3)
        options.setdefault("backoff", ConstantBackoff(delay_s=10))
        parent = options.pop("parent", None)
        event = commands.enqueue(
            "send_email", {"to": "a@example.com"}, JobOptions(**options), now=self.now, actor="producer:t:1",
            job_id=self.job_id, event_id=self.eid(), parent_job_id=parent,
        )
        return self.step(event)

    def claim(self, lease_s: float = 60.0, worker: str = "w1") -> Effects:
        return self.step(commands.claim(self.s, worker_id=worker, now=self.tick(), actor=f"worker:{worker}",
                                        lease_s=lease_s, event_id=self.eid()))

    def claim_start(self, lease_s: float = 60.0, worker: str = "w1") -> Effects:
        """The claim that is also the start (one `attempt_started` carrying the lease)."""
        return self.step(commands.claim_and_start(self.s, worker_id=worker, now=self.tick(), actor=f"worker:{worker}",
                                                  lease_s=lease_s, event_id=self.eid()))

    def start(self) -> Effects:
        return self.step(commands.attempt_started(self.s, now=self.tick(), actor="worker:w1", event_id=self.eid()))

    def run(self, lease_s: float = 60.0) -> None:
        self.claim(lease_s)
        self.start()

    def heartbeat(self, lease_s: float = 120.0) -> Effects:
        return self.step(commands.heartbeat(self.s, now=self.tick(), actor="worker:w1", lease_s=lease_s,
                                            event_id=self.eid()))

    def progress(self, percent: float = 50.0) -> Effects:
        return self.step(commands.progress(self.s, percent, "half", now=self.tick(), actor="worker:w1",
                                           event_id=self.eid()))

    def outcome(self, outcome: Any) -> Effects:
        return self.step(outcome_event(outcome, job_id=self.job_id, attempt=self.s.attempt, retry_on=("Exception",),
                                       occurred_at=self.tick(), actor="worker:w1", event_id=self.eid()))

    def succeed(self, result: dict[str, Any] | None = None) -> Effects:
        return self.outcome(result)

    def fail(self, retryable: bool = True) -> Effects:
        return self.outcome(ConnectionError("reset") if retryable else Cancel("bad input"))

    def timed_out(self) -> Effects:
        return self.step(commands.timed_out(self.s, now=self.tick(), actor="worker:w1", event_id=self.eid()))

    def due(self) -> Effects:
        return self.step(commands.due(self.s, now=self.tick(), actor="timer:0", event_id=self.eid()))

    def lease_expired(self, deadline: datetime | None = None, attempt: int | None = None) -> Effects:
        event = LeaseExpiredEvent(
            event_id=self.eid(), job_id=self.job_id, occurred_at=self.tick(), actor="timer:0",
            attempt=self.s.attempt if attempt is None else attempt,
            lease_deadline=self.s.lease_deadline if deadline is None else deadline,
        )
        return self.step(event)

    def retention_passed(self, scope: str, due_at: datetime, attempt: int | None = None) -> Effects:
        """The timer service fires a retention timer due at `due_at` (the clock moves there)."""
        self.now = max(self.now, due_at)
        return self.step(RetentionPassedEvent(
            event_id=self.eid(), job_id=self.job_id, occurred_at=self.now, actor="timer:0",
            attempt=self.s.attempt if attempt is None else attempt, scope=scope, due_at=due_at,  # type: ignore[arg-type]
        ))

    def expire(self) -> Effects:
        return self.step(commands.expire(self.s, now=self.tick(), actor="timer:0", event_id=self.eid()))

    def cancel(self) -> Effects:
        return self.step(commands.cancel_request(self.s, "not needed", now=self.tick(), actor="operator:ann",
                                                 event_id=self.eid()))

    def dlq_retry(self) -> Effects:
        return self.step(commands.dead_letter_retry(self.s, "fixed", now=self.tick(), actor="operator:ann",
                                                    event_id=self.eid()))

    def discard(self) -> Effects:
        return self.step(commands.discard(self.s, "obsolete", now=self.tick(), actor="operator:ann",
                                          event_id=self.eid()))


def armed(effects: Effects) -> dict[bytes, TimerRecord]:
    return {k: v for k, v in effects.timers.items() if v is not None}


def no_housekeeping_records(effects: Effects) -> None:
    """Nothing written under a lease, republish, retain or dead_letter timer key (armed or tombstone)."""
    assert not any(k.split(b":")[1] in (b"lease", b"republish", b"retain", b"dead_letter") for k in effects.timers)


def nothing_but_state(effects: Effects, job: Job) -> None:
    assert effects.states == {job.job_id: job.s}
    assert effects.events == [] and effects.ready == [] and effects.revoked == []
    assert effects.timers == {} and effects.dead_letters == {}


def nothing_at_all(effects: Effects) -> None:
    assert effects.states == {} and effects.events == [] and effects.ready == [] and effects.revoked == []
    assert effects.timers == {} and effects.dead_letters == {}
    assert len(effects) == 0


# -- becoming pending: a ready record ---------------------------------------------------------


def test_enqueued_job_gets_a_ready_record_with_everything_a_worker_needs() -> None:
    job = Job()
    effects = job.enqueue(priority="high", queue="emails", capabilities=["smtp"])
    assert job.s.status is S.PENDING
    assert effects.states == {"job-1": job.s}
    assert effects.ready == [
        ReadyRecord(
            job_id="job-1", attempt=0, name="send_email", queue="emails", priority=Priority.HIGH,
            args={"to": "a@example.com"}, options=job.s.options, enqueued_at=T0, ready_at=T0, parent_job_id=None,
        )
    ]
    assert effects.ready[0].options.capabilities == ("smtp",)
    assert effects.timers == {}  # no timer record: the lane's housekeeping re-publishes it
    assert job.housekeeping == republish_timer(T0)  # published again in an hour if still pending then
    assert effects.events == [] and effects.revoked == [] and effects.dead_letters == {}
    assert len(effects) == 2  # the state and the ready record


def test_ready_record_carries_the_parent_job() -> None:
    job = Job("child")
    effects = job.enqueue(parent="parent-9")
    assert effects.ready[0].parent_job_id == "parent-9"


def test_scheduled_job_arms_run_at_and_gets_ready_when_due() -> None:
    job = Job()
    effects = job.enqueue(delay=60)
    assert job.s.status is S.SCHEDULED
    assert effects.ready == []
    assert effects.timers == {key("run_at"): TimerRecord(job_id="job-1", kind="run_at", attempt=0,
                                                          due_at=add_seconds(T0, 60))}
    assert [type(e) for e in effects.events] == [ScheduledEvent]
    assert effects.events == list(job.decision.derived)  # type: ignore[union-attr]
    assert job.housekeeping is None  # nothing to re-publish yet

    job.tick(59)
    effects = job.due()
    assert job.s.status is S.PENDING
    assert [(r.job_id, r.attempt, r.ready_at) for r in effects.ready] == [("job-1", 0, job.now)]
    # the timer service already tombstoned the fired run_at timer; the ready record's republish follows
    assert effects.timers == {}
    assert job.housekeeping == republish_timer(job.now)
    assert effects.revoked == [] and effects.dead_letters == {}


def test_run_at_in_the_past_is_pending_at_once() -> None:
    job = Job()
    effects = job.enqueue(run_at=add_seconds(T0, -5))
    assert job.s.status is S.PENDING
    assert len(effects.ready) == 1 and effects.timers == {}
    assert job.housekeeping == republish_timer(T0)


# -- TTL ----------------------------------------------------------------------------------------


def test_ttl_is_armed_on_enqueue_and_tombstoned_when_claimed() -> None:
    job = Job()
    effects = job.enqueue(ttl=300)
    assert effects.timers == {
        key("ttl"): TimerRecord(job_id="job-1", kind="ttl", attempt=0, due_at=add_seconds(T0, 300)),
    }
    assert job.housekeeping == republish_timer(T0)
    assert len(effects.ready) == 1

    effects = job.claim(lease_s=45)
    assert effects.timers == {key("ttl"): None}
    assert job.housekeeping == lease_timer(add_seconds(job.now, 45))  # claimed: its lease, no re-publish
    assert effects.ready == [] and effects.revoked == []  # a claim consumes the ready record, it is not revoked


def test_ttl_of_a_scheduled_job_counts_from_run_at() -> None:
    job = Job()
    effects = job.enqueue(delay=100, ttl=30)
    assert armed(effects) == {
        key("run_at"): TimerRecord(job_id="job-1", kind="run_at", attempt=0, due_at=add_seconds(T0, 100)),
        key("ttl"): TimerRecord(job_id="job-1", kind="ttl", attempt=0, due_at=add_seconds(T0, 130)),
    }
    effects = job.due()
    assert key("ttl") not in effects.timers  # still armed: becoming due does not touch the TTL
    assert len(effects.ready) == 1


def test_claim_without_ttl_writes_no_ttl_tombstone() -> None:
    job = Job()
    job.enqueue()
    effects = job.claim()
    assert effects.timers == {}
    assert job.housekeeping == lease_timer(job.s.lease_deadline)


def test_expired_pending_job_is_revoked_and_dead_lettered() -> None:
    job = Job()
    job.enqueue(ttl=5)
    pending = job.s
    job.tick(5)
    effects = job.expire()
    assert job.s.status is S.DEAD_LETTERED
    assert effects.revoked == [ready_record(pending, job.now)]
    assert effects.ready == []
    assert effects.timers == {key("ttl"): None}  # the fired TTL timer (tombstoned by the timer service too)
    assert job.housekeeping == dead_letter_timer(job.now)
    (dead,) = job.decision.derived  # type: ignore[union-attr]
    assert isinstance(dead, DeadLetteredEvent)
    assert effects.events == [dead]
    entry = effects.dead_letters["job-1"]
    assert entry == DeadLetterRecord(
        job_id="job-1", name="send_email", queue="default", reason="expired: ttl of 5 s passed before the job started",
        error_type="", message="", traceback="", attempts=0, dead_letter_event_id=dead.event_id,
        dead_lettered_at=job.now,
    )


def test_expired_scheduled_job_tombstones_its_run_at_timer_and_revokes_nothing() -> None:
    job = Job()
    job.enqueue(delay=600, ttl=10)
    effects = job.expire()
    assert job.s.status is S.DEAD_LETTERED
    assert effects.timers == {key("run_at"): None, key("ttl"): None}
    assert job.housekeeping == dead_letter_timer(job.now) and effects.revoked == [] and effects.ready == []
    assert effects.dead_letters["job-1"].reason.startswith("expired")  # type: ignore[union-attr]


def test_expired_after_the_job_started_is_rejected_and_writes_nothing() -> None:
    job = Job()
    job.enqueue(ttl=10)
    job.run()
    state = job.s
    effects = job.expire()
    assert job.decision.rejected is not None  # type: ignore[union-attr]
    assert job.s is state
    nothing_at_all(effects)


# -- leases ----------------------------------------------------------------------------------


def test_claim_calls_for_the_lease_timer_and_writes_only_the_state() -> None:
    job = Job()
    job.enqueue()
    effects = job.claim(lease_s=90)
    nothing_but_state(effects, job)  # no timer record: the lease is the lane's housekeeping timer
    assert job.housekeeping == lease_timer(add_seconds(job.now, 90))  # claimed: its lease, no re-publish
    assert job.housekeeping.key == b"job-1:lease"
    nothing_but_state(job.start(), job)
    nothing_but_state(job.progress(), job)
    assert job.housekeeping == lease_timer(add_seconds(job.now, 90 - 2))  # neither moves the lease


def test_a_claiming_start_calls_for_the_lease_timer_and_writes_only_the_state() -> None:
    job = Job()
    job.enqueue()
    effects = job.claim_start(lease_s=90)
    assert job.s.status is S.RUNNING
    nothing_but_state(effects, job)  # the ready record was taken, not revoked
    assert job.housekeeping == lease_timer(add_seconds(job.now, 90))
    effects = job.succeed()
    assert job.s.status is S.COMPLETED and [type(e) for e in effects.events] == [CompletedEvent]


def test_a_claiming_start_tombstones_the_ttl_and_revokes_nothing() -> None:
    job = Job()
    job.enqueue(ttl=300)
    effects = job.claim_start(lease_s=45)
    assert effects.timers == {key("ttl"): None}
    assert effects.ready == [] and effects.revoked == []


def test_heartbeat_moves_the_lease_timer_to_the_new_deadline() -> None:
    job = Job()
    job.enqueue()
    job.run(lease_s=60)
    effects = job.heartbeat(lease_s=300)
    nothing_but_state(effects, job)
    assert job.s.lease_deadline == add_seconds(job.now, 300)
    assert job.housekeeping == lease_timer(add_seconds(job.now, 300))


def test_heartbeat_that_does_not_extend_the_lease_writes_nothing() -> None:
    job = Job()
    job.enqueue()
    job.run(lease_s=600)
    effects = job.heartbeat(lease_s=1)  # earlier than the current deadline: rejected
    assert job.decision.rejected is not None  # type: ignore[union-attr]
    nothing_at_all(effects)


def test_success_ends_the_lease_and_completes() -> None:
    job = Job()
    job.enqueue()
    job.run()
    effects = job.succeed({"sent": True})
    assert job.s.status is S.COMPLETED
    assert effects.timers == {}
    assert job.housekeeping == retain(job.now)
    assert [type(e) for e in effects.events] == [CompletedEvent]
    assert effects.events[0].result == {"sent": True}  # type: ignore[union-attr]
    assert effects.ready == [] and effects.revoked == [] and effects.dead_letters == {}


def test_success_straight_from_claimed_also_ends_the_lease() -> None:
    job = Job()
    job.enqueue()
    job.claim()
    effects = job.succeed()
    assert effects.timers == {}
    assert job.housekeeping == retain(job.now)


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["fail", "timed_out", "lease_expired"])
def test_retryable_end_of_attempt_arms_the_retry_and_ends_the_lease(how: str) -> None:
    job = Job()
    job.enqueue()
    job.run()
    effects = {"fail": job.fail, "timed_out": job.timed_out, "lease_expired": job.lease_expired}[how]()
    assert job.s.status is S.RETRYING and job.s.attempt == 1
    assert effects.timers == {
        key("retry", attempt=1): TimerRecord(job_id="job-1", kind="retry", attempt=1, due_at=add_seconds(job.now, 10)),
    }
    (scheduled,) = effects.events
    assert isinstance(scheduled, RetryScheduledEvent) and scheduled.due_at == add_seconds(job.now, 10)
    assert effects.ready == [] and effects.revoked == [] and effects.dead_letters == {}
    assert job.housekeeping is None


def test_retry_due_gives_a_ready_record_for_the_next_attempt_whose_claim_arms_its_lease() -> None:
    job = Job()
    job.enqueue()
    job.run()
    job.fail()
    job.tick(10)
    effects = job.due()
    assert [(r.attempt, r.ready_at, r.enqueued_at) for r in effects.ready] == [(1, job.now, T0)]
    assert effects.timers == {}
    assert job.housekeeping == republish_timer(job.now, attempt=1)
    effects = job.claim(lease_s=30)
    assert effects.timers == {}
    assert job.housekeeping == lease_timer(add_seconds(job.now, 30), attempt=1)


# -- dead letters ---------------------------------------------------------------------------


def _dead_lettered(job: Job, **options: Any) -> Effects:
    job.enqueue(max_attempts=1, **options)
    job.run()
    return job.fail()


def test_exhausted_attempts_write_the_dead_letter_entry() -> None:
    job = Job()
    effects = _dead_lettered(job)
    assert job.s.status is S.DEAD_LETTERED
    failed, dead = effects.events
    assert isinstance(failed, FailedEvent) and isinstance(dead, DeadLetteredEvent)
    assert effects.dead_letters == {"job-1": dead_letter_record(job.s)}
    entry = effects.dead_letters["job-1"]
    assert entry is not None
    assert (entry.reason, entry.error_type, entry.message, entry.attempts) == (
        "attempts exhausted: 1 of 1 failed", "ConnectionError", "reset", 1
    )
    assert "ConnectionError: reset" in entry.traceback
    assert entry.dead_letter_event_id == dead.event_id == job.s.dead_letter_event_id
    assert entry.dead_lettered_at == job.now
    assert effects.timers == {}
    assert job.housekeeping == dead_letter_timer(job.now)
    assert effects.ready == [] and effects.revoked == []


def test_not_retryable_failure_dead_letters_even_with_attempts_left() -> None:
    job = Job()
    job.enqueue(max_attempts=5)
    job.run()
    effects = job.fail(retryable=False)
    entry = effects.dead_letters["job-1"]
    assert entry is not None and entry.reason == "not retryable: Cancel"
    assert not any(b":retry:" in k for k in effects.timers)


def test_dead_letter_retry_tombstones_the_entry_and_makes_a_fresh_attempt_ready() -> None:
    job = Job()
    _dead_lettered(job, ttl=100)
    effects = job.dlq_retry()
    assert job.s.status is S.PENDING and job.s.attempt == 1
    assert effects.dead_letters == {"job-1": None}
    assert [(r.attempt, r.ready_at) for r in effects.ready] == [(1, job.now)]
    assert armed(effects) == {}  # no TTL: disarmed by a dead-letter retry
    assert job.housekeeping == republish_timer(job.now, attempt=1)
    assert effects.events == [] and effects.revoked == []


def test_discard_tombstones_the_entry_and_nothing_becomes_ready() -> None:
    job = Job()
    _dead_lettered(job)
    effects = job.discard()
    assert job.s.status is S.DISCARDED
    assert effects.dead_letters == {"job-1": None}
    assert effects.ready == [] and effects.revoked == [] and effects.timers == {}
    assert job.housekeeping == retain(job.now)


def test_operator_action_naming_an_old_entry_writes_nothing() -> None:
    job = Job()
    _dead_lettered(job)
    first_entry = job.s.dead_letter_event_id
    job.dlq_retry()
    job.run()
    job.fail()  # max_attempts=1: dead-lettered again, with a new entry
    assert job.s.status is S.DEAD_LETTERED and job.s.dead_letter_event_id != first_entry
    stale = commands.discard(job.s, now=job.tick(), actor="operator:bob", event_id=job.eid()).model_copy(
        update={"causation_id": first_entry}
    )
    effects = job.step(stale)
    assert job.decision.rejected is not None  # type: ignore[union-attr]
    nothing_at_all(effects)


# -- cancellation ------------------------------------------------------------------------------


def test_cancel_pending_job_revokes_its_ready_record() -> None:
    job = Job()
    job.enqueue(ttl=60)
    pending = job.s
    effects = job.cancel()
    assert job.s.status is S.CANCELLED
    assert effects.revoked == [ready_record(pending, job.now)]
    assert effects.revoked[0].job_id == "job-1" and effects.revoked[0].attempt == 0
    assert effects.ready == []
    assert effects.timers == {key("ttl"): None}
    assert job.housekeeping == retain(job.now)  # no more re-publish: kept for its retention
    assert [type(e) for e in effects.events] == [CancelledEvent]
    assert effects.dead_letters == {}


def test_cancel_pending_retry_revokes_the_ready_record_of_that_attempt() -> None:
    job = Job()
    job.enqueue()
    job.run()
    job.fail()
    job.due()
    effects = job.cancel()
    assert [(r.job_id, r.attempt) for r in effects.revoked] == [("job-1", 1)]


def test_cancel_scheduled_job_tombstones_run_at_and_ttl() -> None:
    job = Job()
    job.enqueue(delay=60, ttl=60)
    effects = job.cancel()
    assert job.s.status is S.CANCELLED
    assert effects.timers == {key("run_at"): None, key("ttl"): None}
    assert job.housekeeping == retain(job.now)
    assert effects.revoked == [] and effects.ready == []


def test_cancel_retrying_job_tombstones_the_retry_timer() -> None:
    job = Job()
    job.enqueue()
    job.run()
    job.fail()
    effects = job.cancel()
    assert job.s.status is S.CANCELLED
    assert effects.timers == {key("retry", attempt=1): None}
    assert job.housekeeping == retain(job.now, attempt=1)
    assert effects.revoked == [] and effects.ready == []


def test_cancel_while_running_is_only_a_flag_until_the_attempt_ends() -> None:
    job = Job()
    job.enqueue()
    job.run()
    nothing_but_state(job.cancel(), job)
    assert job.s.cancel_requested and job.s.status is S.RUNNING
    effects = job.fail()  # retryable, attempts left, but a cancel was requested
    assert job.s.status is S.CANCELLED
    assert effects.timers == {}
    assert job.housekeeping == retain(job.now)
    assert [type(e) for e in effects.events] == [CancelledEvent]
    assert effects.dead_letters == {} and effects.ready == []


# -- retention ---------------------------------------------------------------------------------

HOUR = 3600.0
DAY = 24 * HOUR


def test_default_retention_is_a_day_for_finished_jobs_and_a_week_for_dead_letters() -> None:
    assert Retention() == Retention(finished_s=DAY, dead_letter_s=7 * DAY)
    assert (DEFAULT_RETAIN_COMPLETED_S, DEFAULT_DEAD_LETTER_RETENTION_S) == (DAY, 7 * DAY)


@pytest.mark.parametrize("field", ["finished_s", "dead_letter_s"])
@pytest.mark.parametrize("value", [0, 0.0, -1.0, -DAY, float("nan")])
def test_retention_refuses_non_positive_values(field: str, value: float) -> None:
    with pytest.raises(ValueError, match=f"retention {field} must be > 0 seconds"):
        Retention(**{field: value})


@pytest.mark.parametrize("finish", ["succeed", "cancel", "cancel_running", "discard"])
def test_a_finished_job_calls_for_its_retain_timer_at_finished_at_plus_the_retention(finish: str) -> None:
    job = Job(retention=Retention(finished_s=HOUR, dead_letter_s=DAY))
    if finish == "discard":
        _dead_lettered(job)
        effects = job.discard()
    else:
        job.enqueue()
        if finish != "cancel":
            job.run()
        if finish == "cancel_running":
            job.cancel()
            effects = job.fail()
        else:
            effects = job.succeed() if finish == "succeed" else job.cancel()
    assert job.s.is_terminal and job.s.status is not S.DEAD_LETTERED
    assert job.s.finished_at == job.now
    assert armed(effects) == {}
    no_housekeeping_records(effects)
    assert job.housekeeping == retain(job.now, after_s=HOUR)


def test_retain_timer_names_the_attempt_that_finished() -> None:
    job = Job()
    job.enqueue()
    job.run()
    job.fail()
    job.due()
    job.run()
    effects = job.succeed()
    assert job.s.attempt == 1
    assert effects.timers == {}
    assert job.housekeeping == retain(job.now, attempt=1)
    assert job.housekeeping.key == b"job-1:retain"  # type: ignore[union-attr]  # one key per job, whatever the attempt


def test_a_dead_lettered_job_calls_for_its_dead_letter_timer_at_the_processors_retention() -> None:
    job = Job(retention=Retention(finished_s=HOUR, dead_letter_s=2 * DAY))
    effects = _dead_lettered(job)
    assert job.s.status is S.DEAD_LETTERED and job.s.finished_at == job.now
    assert effects.timers == {}
    assert job.housekeeping == dead_letter_timer(job.now, after_s=2 * DAY)


@pytest.mark.parametrize("option", [90, 90.0, timedelta(seconds=90)])
def test_a_jobs_dead_letter_retention_option_overrides_the_processors(option: Any) -> None:
    job = Job(retention=Retention(dead_letter_s=2 * DAY))
    effects = _dead_lettered(job, dead_letter_retention=option)
    assert job.s.options.dead_letter_retention_s == 90.0
    assert effects.timers == {}
    assert job.housekeeping == dead_letter_timer(job.now, after_s=90)


def test_the_dead_letter_retention_option_does_not_change_the_finished_retention() -> None:
    job = Job(retention=Retention(finished_s=HOUR))
    job.enqueue(dead_letter_retention=90)
    job.run()
    assert armed(job.succeed()) == {}
    assert job.housekeeping == retain(job.now, after_s=HOUR)


def test_expired_job_is_dead_lettered_with_the_option_retention() -> None:
    job = Job()
    job.enqueue(ttl=5, dead_letter_retention=timedelta(hours=3))
    job.tick(5)
    effects = job.expire()
    assert job.s.status is S.DEAD_LETTERED
    assert armed(effects) == {}
    assert job.housekeeping == dead_letter_timer(job.now, after_s=3 * HOUR)


def test_the_dead_letter_timer_of_a_later_attempt_names_it() -> None:
    job = Job()
    _dead_lettered(job)
    job.dlq_retry()
    job.run()
    effects = job.fail()  # max_attempts=1: dead-lettered again, on attempt 1
    assert job.s.status is S.DEAD_LETTERED and job.s.attempt == 1
    assert effects.timers == {}
    assert job.housekeeping == dead_letter_timer(job.now, attempt=1)


def test_dead_letter_retry_ends_the_dead_letter_timer_and_starts_the_republish() -> None:
    job = Job()
    _dead_lettered(job)
    assert job.housekeeping is not None and job.housekeeping.kind == "dead_letter"
    effects = job.dlq_retry()
    assert job.s.status is S.PENDING
    assert effects.timers == {}  # no dead_letter timer record to tombstone
    assert job.housekeeping == republish_timer(job.now, attempt=1)
    assert effects.dead_letters == {"job-1": None}


def test_discard_ends_the_dead_letter_timer_and_starts_the_retain_timer() -> None:
    job = Job(retention=Retention(finished_s=HOUR))
    _dead_lettered(job)
    assert job.housekeeping is not None and job.housekeeping.kind == "dead_letter"
    effects = job.discard()
    assert job.s.status is S.DISCARDED
    assert effects.timers == {}
    assert job.housekeeping == retain(job.now, after_s=HOUR)
    assert effects.dead_letters == {"job-1": None}
    assert effects.states == {"job-1": job.s} and effects.events == []
    assert effects.ready == [] and effects.revoked == []


def test_dead_letter_retention_passing_discards_like_an_operator_would() -> None:
    job = Job(retention=Retention(finished_s=HOUR, dead_letter_s=DAY))
    _dead_lettered(job)
    timer = job.housekeeping  # what the lane's housekeeping holds, and fires
    assert timer == dead_letter_timer(job.now, after_s=DAY)
    effects = job.retention_passed("dead_letter", timer.due_at)
    assert job.s.status is S.DISCARDED and job.s.finished_at == timer.due_at
    assert effects.states == {"job-1": job.s}
    assert effects.dead_letters == {"job-1": None}
    assert effects.timers == {}
    assert job.housekeeping == retain(timer.due_at, after_s=HOUR)
    assert effects.events == [] and effects.ready == [] and effects.revoked == []


@pytest.mark.parametrize("finish", ["succeed", "cancel", "discard"])
def test_forgetting_a_finished_job_tombstones_its_state_and_writes_nothing_else(finish: str) -> None:
    job = Job(retention=Retention(finished_s=HOUR))
    if finish == "discard":
        _dead_lettered(job)
        job.discard()
    elif finish == "succeed":
        job.enqueue()
        job.run()
        job.succeed()
    else:
        job.enqueue()
        job.cancel()
    assert job.s.finished_at is not None
    effects = job.retention_passed("finished", add_seconds(job.s.finished_at, HOUR))
    assert job.decision == Decision(state=None, derived=(), rejected=None, duplicate=False)
    assert job.state is None and job.housekeeping is None
    assert effects.states == {"job-1": None}
    assert effects.events == [] and effects.ready == [] and effects.revoked == []
    assert effects.timers == {} and effects.dead_letters == {}
    assert len(effects) == 1


def test_retention_passed_that_is_rejected_writes_nothing() -> None:
    job = Job()
    job.enqueue()
    job.run()
    nothing_at_all(job.retention_passed("finished", add_seconds(job.now, DAY)))  # still running
    assert job.decision.rejected is not None  # type: ignore[union-attr]
    job.succeed()
    finished = job.s
    nothing_at_all(job.retention_passed("finished", finished.finished_at))  # type: ignore[arg-type]  # not after it
    nothing_at_all(job.retention_passed("finished", add_seconds(job.now, DAY), attempt=1))  # another attempt
    nothing_at_all(job.retention_passed("dead_letter", add_seconds(job.now, DAY)))  # not dead-lettered
    assert job.s is finished


def test_forgotten_job_enqueued_again_starts_afresh() -> None:
    job = Job()
    job.enqueue(idempotency_key="k")
    job.run()
    job.succeed()
    job.retention_passed("finished", add_seconds(job.s.finished_at, DAY))  # type: ignore[arg-type]
    effects = job.enqueue(idempotency_key="k")
    assert job.decision.accepted  # type: ignore[union-attr]
    assert job.s.status is S.PENDING and job.s.version == 1 and job.s.enqueued_event_id == job.events[-1].event_id
    assert effects.states == {"job-1": job.s}
    assert [(r.job_id, r.attempt) for r in effects.ready] == [("job-1", 0)]
    assert effects.events == [] and effects.timers == {}
    assert job.housekeeping == republish_timer(job.now)


def test_retention_shorter_than_a_millisecond_still_calls_for_a_timer_after_the_finish() -> None:
    """A retention due at (not after) finished_at would be refused as stale: keep at least 1 ms."""
    job = Job(retention=Retention(finished_s=0.0004, dead_letter_s=0.0001))
    _dead_lettered(job)
    assert job.housekeeping == dead_letter_timer(job.now, after_s=0.001)
    job.retention_passed("dead_letter", add_seconds(job.now, 0.001))
    assert job.decision.accepted and job.s.status is S.DISCARDED  # type: ignore[union-attr]
    assert job.housekeeping == retain(job.now, after_s=0.001)
    job.retention_passed("finished", add_seconds(job.now, 0.001))
    assert job.decision.accepted and job.state is None  # type: ignore[union-attr]


def test_dead_letter_retention_beyond_the_calendar_calls_for_no_timer() -> None:
    """A retention that ends after the year 9999 never passes: no timer, and no crash of the batch."""
    job = Job()
    effects = _dead_lettered(job, dead_letter_retention=1e12)
    assert job.s.status is S.DEAD_LETTERED
    assert effects.timers == {}
    assert effects.dead_letters == {"job-1": dead_letter_record(job.s)}
    assert job.housekeeping is None
    # likewise a processor retention of inf: the finished job is kept
    job = Job(retention=Retention(finished_s=float("inf")))
    job.enqueue()
    job.run()
    assert job.succeed().timers == {}
    assert job.s.status is S.COMPLETED and job.housekeeping is None


# -- stale lease timers ------------------------------------------------------------------------


def test_stale_lease_expired_while_running_writes_nothing_and_the_current_lease_stays() -> None:
    job = Job()
    job.enqueue()
    job.run(lease_s=60)
    first_deadline = job.s.lease_deadline
    job.heartbeat(lease_s=300)
    running = job.s
    effects = job.lease_expired(deadline=first_deadline)  # fired before the heartbeat was folded
    assert job.decision.rejected == "lease was extended since this timer was set: the worker is still alive"  # type: ignore[union-attr]
    assert job.s is running
    nothing_at_all(effects)  # nothing to re-arm: the lease timer follows the state, which did not change
    assert job.housekeeping == lease_timer(running.lease_deadline)


def test_stale_lease_expired_after_the_job_finished_writes_nothing() -> None:
    job = Job()
    job.enqueue()
    job.run()
    deadline = job.s.lease_deadline
    job.succeed()
    nothing_at_all(job.lease_expired(deadline=deadline, attempt=0))


def test_stale_lease_expired_of_an_earlier_attempt_leaves_the_running_attempts_lease() -> None:
    job = Job()
    job.enqueue(max_attempts=1)
    job.run()
    old_deadline = job.s.lease_deadline
    job.fail(retryable=False)  # dead-lettered, its lease over ...
    job.dlq_retry()
    job.run(lease_s=60)  # ... attempt 1 runs with a new lease
    running = job.s
    effects = job.lease_expired(deadline=old_deadline, attempt=0)  # attempt 0's timer fired late
    assert job.decision.rejected is not None  # type: ignore[union-attr]
    nothing_at_all(effects)
    assert job.housekeeping == lease_timer(running.lease_deadline, attempt=1)


# -- rejected and duplicate events --------------------------------------------------------------


def test_duplicate_enqueue_only_writes_the_duplicate_rejected_event() -> None:
    job = Job()
    job.enqueue()
    state = job.s
    effects = job.enqueue()  # same job id, new event id
    assert job.s is state
    (notice,) = effects.events
    assert isinstance(notice, DuplicateRejectedEvent) and notice.duplicate_event_id == job.events[-1].event_id
    assert effects.states == {} and effects.ready == [] and effects.timers == {} and effects.dead_letters == {}
    assert effects.revoked == []


@pytest.mark.parametrize("position", [0, 1, 2])
def test_redelivered_event_writes_nothing(position: int) -> None:
    job = Job()
    job.enqueue(ttl=60)
    job.claim()
    job.start()
    nothing_at_all(job.step(job.events[position]))
    assert job.decision.duplicate or job.decision.rejected is not None  # type: ignore[union-attr]


def test_echo_of_derived_events_writes_nothing() -> None:
    job = Job()
    job.enqueue(max_attempts=1)
    job.run()
    derived = list(job.fail().events)
    assert len(derived) == 2
    for event in derived:
        nothing_at_all(job.step(event))
        assert job.decision.duplicate  # type: ignore[union-attr]


def test_event_for_an_unknown_job_writes_nothing() -> None:
    job = Job()
    job.enqueue()
    other = Job("job-2")
    claim = commands.claim(job.s, worker_id="w1", now=T0, actor="worker:w1", event_id="x1").model_copy(
        update={"job_id": "job-2"}
    )
    nothing_at_all(other.step(claim))
    assert other.state is None


def test_claim_of_a_non_pending_job_writes_nothing() -> None:
    job = Job()
    job.enqueue()
    pending = job.s
    job.run()
    late = commands.claim(pending, worker_id="w2", now=job.tick(), actor="worker:w2", event_id=job.eid())
    nothing_at_all(job.step(late))


def test_a_refused_claim_that_waits_for_its_verdict_is_answered_with_the_jobs_state() -> None:
    # Given a job whose attempt 0 another worker claimed and started
    job = Job()
    job.enqueue()
    pending = job.s
    job.run()
    running = job.s
    # When a claim of attempt 0 that waits for its verdict (a re-published copy's) is refused
    late = commands.claim(pending, worker_id="w2", now=job.tick(), actor="worker:w2", event_id=job.eid())
    decision = apply(running, late, actor="processor:0")
    effects = Effects()
    collect(effects, running, decision, late, answer_refusal=True)
    # Then the job's state, unchanged, is written again (the refusal its worker reads); nothing else
    assert decision.rejected is not None and decision.state is running
    assert effects.states == {"job-1": running}
    assert effects.events == [] and effects.ready == [] and effects.timers == {} and effects.dead_letters == {}


def test_only_a_refused_claim_is_answered() -> None:
    job = Job()
    job.enqueue()
    # an accepted claim writes its new state as any claim does
    claim = commands.claim(job.s, worker_id="w1", now=job.tick(), actor="worker:w1", event_id=job.eid())
    decision = apply(job.s, claim, actor="processor:0")
    effects = Effects()
    collect(effects, job.s, decision, claim, answer_refusal=True)
    assert decision.accepted and effects.states == {"job-1": decision.state}
    # a duplicate of it (the same claim read again) writes nothing
    again = Effects()
    collect(again, decision.state, apply(decision.state, claim, actor="processor:0"), claim, answer_refusal=True)
    nothing_at_all(again)
    # another refused event is not answered, whatever it asks
    job.step(claim)
    job.start()
    stale = commands.heartbeat_event("job-1", 0, now=job.tick(), actor="worker:w9", event_id=job.eid(),
                                     claim_id="another-claim")
    refused = apply(job.s, stale, actor="processor:0")
    assert refused.rejected is not None
    other = Effects()
    collect(other, job.s, refused, stale, answer_refusal=True)
    nothing_at_all(other)


def test_a_republished_ready_record_is_marked_and_the_first_one_is_not() -> None:
    job = Job()
    effects = job.enqueue()
    assert len(effects.ready) == 1 and effects.republished == set()
    job.tick(HOUR)
    effects = job.due()  # the republish timer fires: the ready record goes out again
    assert len(effects.ready) == 1 and effects.republished == {"job-1"}
    job.run()
    job.fail()
    job.tick(60)
    effects = job.due()  # the retry's ready record: the first of attempt 1
    assert job.s.attempt == 1 and len(effects.ready) == 1 and effects.republished == set()


def test_collect_accumulates_into_one_effects_of_a_batch() -> None:
    """Several events of one job into the same Effects: the last timer write per key wins."""
    job = Job()
    batch = Effects()
    for write in (lambda: job.enqueue(ttl=30), job.claim, job.start, job.heartbeat, job.succeed):
        before = job.state
        write()
        collect(batch, before, job.decision, job.events[-1])  # type: ignore[arg-type]
    assert batch.states == {"job-1": job.s} and job.s.status is S.COMPLETED
    assert batch.timers == {key("ttl"): None}
    assert job.housekeeping == retain(job.now)
    assert len(batch.ready) == 1 and batch.revoked == []
    assert [type(e) for e in batch.events] == [CompletedEvent]


# -- republish: a pending job's ready record is published again -------------------------------------

MINUTE = 60.0


def test_republish_delays_are_an_hour_doubling_capped_at_a_day() -> None:
    assert (READY_REPUBLISH_FIRST_S, READY_REPUBLISH_CAP_S) == (60 * MINUTE, 24 * 60 * MINUTE)
    assert [ReadyRepublish().delay_s(n) for n in range(7)] == [h * 60 * MINUTE for h in (1, 2, 4, 8, 16, 24, 24)]
    assert ReadyRepublish().delay_s(10_000) == 24 * 60 * MINUTE
    assert [ReadyRepublish(first_s=0.5, cap_s=2).delay_s(n) for n in range(4)] == [0.5, 1.0, 2.0, 2.0]
    for first, cap in ((0, 1), (-1, 1), (2, 1), (float("nan"), 1)):
        with pytest.raises(ValueError, match="republish delays need"):
            ReadyRepublish(first_s=first, cap_s=cap)


def test_a_fired_republish_timer_publishes_the_ready_record_again_and_calls_for_the_next_one() -> None:
    # Given a pending job whose ready record nobody claimed
    job = Job()
    job.enqueue()
    for sequence, wait in enumerate((60, 120, 240, 480, 960, 1440)):
        job.tick(wait * MINUTE)
        assert job.housekeeping is not None and job.housekeeping.due_at == job.now  # due now
        # When its republish timer fires
        effects = job.due()
        # Then the ready record goes out again, and the next re-publish follows one longer delay on
        assert job.decision.accepted and job.s.ready_republishes == sequence + 1  # type: ignore[union-attr]
        assert effects.ready == [ready_record(job.s, job.now)]
        assert effects.timers == {}
        assert job.housekeeping == republish_timer(job.now, sequence=sequence + 1)
        assert effects.states == {"job-1": job.s} and effects.events == [] and effects.revoked == []
    assert job.housekeeping is not None and job.housekeeping.due_at == add_seconds(job.now, 24 * 60 * MINUTE)
    assert job.housekeeping.key == b"job-1:republish:0:6"


def test_a_republish_timer_fired_again_writes_nothing() -> None:
    job = Job()
    job.enqueue()
    job.tick(5 * MINUTE)
    job.due()
    fired = job.events[-1]
    nothing_at_all(job.step(fired))  # a duplicate (the timer service crashed before its tombstone)
    stale = commands.due_event("job-1", 0, "republish", sequence=0, now=job.tick(), actor="timer:0", event_id=job.eid())
    nothing_at_all(job.step(stale))  # the same timer, its id forgotten: stale
    assert job.decision.rejected is not None  # type: ignore[union-attr]


@pytest.mark.parametrize(("leave", "then"), [("claim", "lease"), ("cancel", "retain"), ("expire", "dead_letter")])
def test_leaving_pending_ends_the_republish_timer(leave: str, then: str | None) -> None:
    job = Job()
    job.enqueue(ttl=3600)
    job.tick(5 * MINUTE)
    job.due()  # re-published once: the pending timer is the second
    assert job.housekeeping is not None and job.housekeeping.key == b"job-1:republish:0:1"
    effects = {"claim": job.claim, "cancel": job.cancel, "expire": job.expire}[leave]()
    assert job.s.status is not S.PENDING
    no_housekeeping_records(effects)  # nothing to tombstone: the republish timer was never a record
    assert (job.housekeeping.kind if job.housekeeping else None) == then


def test_a_batch_of_enqueue_claim_start_writes_no_timer() -> None:
    """No republish timer is armed at the enqueue, so none is tombstoned at the claim either; the
    claim's lease is the lane's housekeeping timer too."""
    job = Job()
    batch = Effects()
    for write in (job.enqueue, job.claim, job.start):
        before = job.state
        write()
        collect(batch, before, job.decision, job.events[-1])  # type: ignore[arg-type]
    assert batch.timers == {}
    assert job.housekeeping == lease_timer(job.s.lease_deadline)


def test_the_processors_republish_delays_decide_the_republish_timer_not_the_records() -> None:
    fast = ReadyRepublish(first_s=0.5, cap_s=1.0)
    effects = Effects()
    event = commands.enqueue("send_email", {}, JobOptions(), now=T0, actor="p", job_id="job-1", event_id="e1")
    decision = apply(None, event)
    collect(effects, None, decision, event)
    assert effects.timers == {} and len(effects.ready) == 1
    assert decision.state is not None
    assert housekeeping_timer(decision.state, republish=fast) == republish_timer(T0, republish=fast)
    assert republish_timer(T0, republish=fast).due_at == add_seconds(T0, 0.5)
    assert housekeeping_timer(decision.state) == republish_timer(T0) != republish_timer(T0, republish=fast)


@pytest.mark.parametrize("kind", HOUSEKEEPING_KINDS)
def test_a_timer_record_of_a_housekeeping_kind_is_refused_not_fired(kind: Any) -> None:
    """Leases, re-publishes and retentions are a lane's own timers, never records: a timer record
    of such a kind (a foreign producer's) is refused with its reason, so nothing is fired."""
    record = (b'{"job_id":"job-1","kind":"%s","attempt":0,"due_at":"2025-01-01T12:00:00Z","sequence":0}'
              % kind.encode())
    refused = admit_timer(timer_key("job-1", kind, 0, 0), record)
    assert isinstance(refused, Refused) and refused.kind == "kind not fired"
    assert "run_at, retry, ttl" in refused.reason


def test_timer_records_built_without_validation_equal_and_encode_like_validated_ones() -> None:
    job = Job()
    ttl = armed(job.enqueue(ttl=60))[key("ttl")]
    assert TimerRecord.decode(ttl.encode()) == ttl == TimerRecord.model_validate(ttl.model_dump())
    assert b"sequence" not in ttl.encode()


# -- property: the records written always describe the state ------------------------------------

ACTIVE = (S.CLAIMED, S.RUNNING)
FINISHED = (S.COMPLETED, S.CANCELLED, S.DISCARDED)


class Topics:
    """What the processor has written, compacted: timers, dead letters and the live ready record."""

    def __init__(self) -> None:
        self.timers: dict[bytes, TimerRecord] = {}
        self.dead_letters: dict[str, DeadLetterRecord] = {}
        self.ready: dict[str, ReadyRecord] = {}

    def write(self, effects: Effects) -> None:
        for k, timer in effects.timers.items():
            if timer is None:
                self.timers.pop(k, None)
            else:
                self.timers[k] = timer
        for job_id, entry in effects.dead_letters.items():
            if entry is None:
                self.dead_letters.pop(job_id, None)
            else:
                self.dead_letters[job_id] = entry
        for record in effects.revoked:
            assert self.ready.get(record.job_id, record).attempt == record.attempt, "revoked another attempt"
            self.ready.pop(record.job_id, None)
        for record in effects.ready:
            self.ready[record.job_id] = record

    def check(self, state: JobState) -> None:
        """The records written describe `state`, and so does the housekeeping timer it calls for."""
        job_id, status = state.job_id, state.status

        def timer(kind: str) -> tuple[Any, int] | None:
            t = self.timers.get(timer_key(job_id, kind, state.attempt))  # type: ignore[arg-type]
            return None if t is None else (t.due_at, t.attempt)

        assert timer("run_at") == ((state.next_due_at, state.attempt) if status is S.SCHEDULED else None)
        assert timer("retry") == ((state.next_due_at, state.attempt) if status is S.RETRYING else None)
        waiting_for_first_start = status in (S.PENDING, S.SCHEDULED) and state.attempts_started == 0
        expected_ttl = (state.expires_at, state.attempt) if waiting_for_first_start and state.expires_at else None
        assert timer("ttl") == expected_ttl
        # no lease, republish, retain or dead_letter timer record, ever: housekeeping keeps them
        assert not any(t.kind in ("lease", "republish", "retain", "dead_letter") for t in self.timers.values())
        finished_at = state.finished_at
        housekeeping = housekeeping_timer(state)
        if status in ACTIVE:  # a lease per attempt under way, at its current deadline
            assert housekeeping == lease_timer(state.lease_deadline, state.attempt)
        elif status is S.DEAD_LETTERED:
            assert finished_at is not None
            assert housekeeping == dead_letter_timer(finished_at, state.attempt)
        elif status in FINISHED:
            assert finished_at is not None
            assert housekeeping == retain(finished_at, state.attempt)
        elif status is not S.PENDING:
            assert housekeeping is None
        entry = self.dead_letters.get(job_id)
        if status is S.DEAD_LETTERED:
            assert entry is not None and entry.dead_letter_event_id == state.dead_letter_event_id
        else:
            assert entry is None
        ready = self.ready.get(job_id)
        if status is S.PENDING:
            assert ready is not None and ready.attempt == state.attempt
        else:
            assert ready is None
        # while pending, a republish is due one delay after the last publish of the ready record
        if status is S.PENDING:
            assert ready is not None
            assert housekeeping == republish_timer(ready.ready_at, state.attempt, state.ready_republishes)


ACTIONS = [
    "due", "claim", "start", "progress", "heartbeat", "succeed", "fail", "fail_fatal", "timed_out",
    "lease_expired", "stale_lease", "cancel", "expire", "dlq_retry", "discard", "retention", "redeliver",
]
_IN_ATTEMPT = ["heartbeat", "heartbeat", "progress", "succeed", "fail", "fail", "fail_fatal", "timed_out",
               "lease_expired", "stale_lease", "stale_lease", "cancel"]
LIKELY = {  # what the writers would plausibly do next in each status (the rest is drawn too, more rarely)
    S.SCHEDULED: ["due", "cancel", "expire"],
    S.PENDING: ["claim", "claim", "cancel", "expire", "due"],  # due: its republish (housekeeping) timer fires
    S.CLAIMED: ["start", *_IN_ATTEMPT],
    S.RUNNING: _IN_ATTEMPT,
    S.RETRYING: ["due", "due", "cancel", "expire"],
    S.DEAD_LETTERED: ["dlq_retry", "dlq_retry", "discard", "retention"],
    **{status: ["retention"] for status in FINISHED},
}


@settings(max_examples=250, deadline=None)
@given(
    data=st.data(),
    max_attempts=st.integers(1, 3),
    delay=st.none() | st.integers(1, 100),
    ttl=st.none() | st.integers(1, 100),
)
def test_written_records_always_match_the_state(data: Any, max_attempts: int, delay: int | None, ttl: int | None) -> None:
    """Random lifecycles: after every event, the compacted timers, dead letters and ready records
    are exactly what the state needs (a timer per waiting status), and the state calls for the
    housekeeping timer it needs (a lease per active attempt, republish, retain or dead_letter).

    Timer-fired events tombstone their timer first, as the timer service does. A stale lease
    fire (one written before a heartbeat was folded) changes nothing, and the state still calls
    for its current lease.
    """
    job = Job()
    topics = Topics()
    options: dict[str, Any] = {"max_attempts": max_attempts}
    if delay is not None:
        options["delay"] = delay
    if ttl is not None:
        options["ttl"] = ttl
    topics.write(job.enqueue(**options))
    topics.check(job.s)
    deadlines: list[tuple[int, datetime]] = []  # lease deadlines seen: (attempt, deadline)
    for _ in range(data.draw(st.integers(1, 30), label="steps")):
        s = job.s
        if s.status in FINISHED and data.draw(st.booleans(), label="stop"):
            break
        likely = LIKELY.get(s.status, [])
        anything = not likely or data.draw(st.integers(0, 9), label="odd one") == 0
        action = data.draw(st.sampled_from(ACTIONS if anything else likely), label="action")
        job.tick(data.draw(st.integers(0, 30), label="seconds"))
        effects: Effects | None = None
        try:
            if action == "due":
                if s.status is not S.PENDING:  # pending: the republish timer is housekeeping's, not a record
                    topics.timers.pop(key("run_at" if s.status is S.SCHEDULED else "retry", attempt=s.attempt), None)
                effects = job.due()
            elif action == "claim":
                effects = job.claim(lease_s=data.draw(st.integers(1, 90), label="lease"))
            elif action == "start":
                effects = job.start()
            elif action == "progress":
                effects = job.progress(float(data.draw(st.integers(0, 100))))
            elif action == "heartbeat":
                effects = job.heartbeat(lease_s=data.draw(st.integers(1, 200), label="lease"))
            elif action == "succeed":
                effects = job.succeed()
            elif action in ("fail", "fail_fatal"):
                effects = job.fail(retryable=action == "fail")
            elif action == "timed_out":
                effects = job.timed_out()
            elif action == "lease_expired" and s.lease_deadline is not None:
                effects = job.lease_expired()
            elif action == "stale_lease":
                older = [d for a, d in deadlines if a == s.attempt and d != s.lease_deadline]
                if older:  # an old timer of this attempt fires late
                    effects = job.lease_expired(deadline=data.draw(st.sampled_from(older)), attempt=s.attempt)
            elif action == "cancel":
                effects = job.cancel()
            elif action == "expire":
                topics.timers.pop(key("ttl"), None)
                effects = job.expire()
            elif action == "dlq_retry":
                effects = job.dlq_retry()
            elif action == "discard":
                effects = job.discard()
            elif action == "retention":  # the housekeeping retention timer the state calls for fires
                timer = job.housekeeping
                if timer is not None and timer.kind in ("dead_letter", "retain"):
                    scope = "dead_letter" if timer.kind == "dead_letter" else "finished"
                    effects = job.retention_passed(scope, timer.due_at, attempt=timer.attempt)
            elif action == "redeliver":
                effects = job.step(data.draw(st.sampled_from(job.events), label="redelivered"))
        except commands.CommandRefused:
            continue
        if effects is None:
            continue
        if job.state is None:  # forgotten: the changelog record is tombstoned and nothing of the job is left
            assert s.status in FINISHED and action == "retention"
            assert effects.states == {"job-1": None} and len(effects) == 1 and effects.revoked == []
            topics.write(effects)
            assert topics.timers == {} and topics.dead_letters == {} and topics.ready == {}
            break
        if job.decision.state is not None and job.decision.state is not s:  # type: ignore[union-attr]
            assert effects.states == {"job-1": job.s}
        else:
            assert effects.states == {}
            assert effects.ready == [] and effects.revoked == [] and effects.dead_letters == {}
        if action == "claim" and job.decision.accepted:  # type: ignore[union-attr]
            topics.ready.pop("job-1", None)  # the worker consumed the ready record it claimed
        topics.write(effects)
        if job.s.lease_deadline is not None:
            deadlines.append((job.s.attempt, job.s.lease_deadline))
        topics.check(job.s)


# -- installed: a state written into a new layout (`eventjobs partitions grow`) ------------------


def _fired_key(event: JobEvent) -> bytes | None:
    """The timer the timer service tombstones once it fired `event` (None: no timer fired it)."""
    if event.type == "due" and event.timer in ("run_at", "retry"):  # type: ignore[attr-defined]
        return timer_key(event.job_id, event.timer, event.attempt)  # type: ignore[attr-defined]
    if event.type == "expired":
        return timer_key(event.job_id, "ttl")
    return None


@settings(max_examples=60, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_installed_records_are_what_the_history_left_live(seed: int) -> None:
    """At every point of a simulated job's life, `installed(state)` writes exactly the timers and
    the dead-letter entry that processing its history left live (armed by `collect`, not
    cancelled, not yet fired and tombstoned by the timer service), and a ready record exactly
    while the job is pending: a job moved into a new layout waits for the same things."""
    import random

    from eventjobs.core.effects import installed
    from eventjobs.testing.simulation import SimulationProfile, job_lifecycle

    profile = SimulationProfile(scheduled=0.3, lease_loss=0.1, cancel=0.05)
    state: JobState | None = None
    timers: dict[bytes, TimerRecord] = {}
    dead_letters: dict[str, DeadLetterRecord] = {}
    checked = 0
    for event in job_lifecycle(random.Random(seed), profile=profile):
        decision = apply(state, event)
        effects = Effects()
        collect(effects, state, decision, event, partition=3)
        for timer_key_, timer in effects.timers.items():
            if timer is None:
                timers.pop(timer_key_, None)
            else:
                timers[timer_key_] = timer
        fired = _fired_key(event) if decision.accepted else None
        if fired is not None:
            timers.pop(fired, None)
        for job_id, entry in effects.dead_letters.items():
            if entry is None:
                dead_letters.pop(job_id, None)
            else:
                dead_letters[job_id] = entry
        state = decision.state
        if state is None:
            continue
        moved = installed(state, T0, partition=5)
        assert moved.states == {state.job_id: state}
        assert moved.timers == timers, (event.type, state.status)
        assert moved.dead_letters == dead_letters, (event.type, state.status)
        assert [(r.job_id, r.attempt, r.partition) for r in moved.ready] == (
            [(state.job_id, state.attempt, 5)] if state.status is S.PENDING else [])
        checked += 1
    assert checked > 0


def test_a_ready_record_survives_only_events_that_leave_the_job_pending_on_its_attempt() -> None:
    """`ready_survives`: a pending job carried into a new layout gets its ready record only if the
    events still to fold leave it waiting for the same attempt: a worker given a record of a job
    cancelled meanwhile would run it (its claim refused, its handler run all the same)."""
    from eventjobs.core.effects import installed, ready_survives

    job = Job()
    job.enqueue()
    pending = job.s
    assert [r.attempt for r in installed(pending, T0, 2).ready] == [0]
    assert installed(pending, T0, 2, ready=False).ready == [] and installed(pending, T0, 2, ready=False).states
    # the same enqueue again (a producer's retry) and an enqueue with its idempotency key: still waiting
    assert ready_survives(pending, job.events[0]) is not None
    again = commands.enqueue("send_email", {"to": "b@example.com"}, JobOptions(max_attempts=3), now=T0,
                             actor="producer:t:2", job_id=job.job_id, event_id="another-enqueue")
    assert ready_survives(pending, again) is not None
    # a cancel, a claim, an expiry: the record offers something the job no longer waits for
    for taken in (commands.cancel_request(pending, "no", now=T0, actor="operator:ann", event_id="c"),
                  commands.claim(pending, worker_id="w9", now=T0, actor="worker:w9", lease_s=30, event_id="k")):
        assert ready_survives(pending, taken) is None, taken.type
    expiring = Job("job-2")
    expiring.enqueue(ttl=5)
    assert ready_survives(expiring.s, commands.expire(expiring.s, now=T0, actor="timer:0", event_id="x")) is None
    # not pending at all: nothing to keep
    job.run()
    assert ready_survives(job.s, commands.heartbeat(job.s, now=T0, actor="worker:w1", lease_s=60, event_id="h")) is None
