"""effects.collect: which records each lifecycle transition produces.

States are never written by hand: every step folds a real event (built by the same command
functions the producers, workers, timer service and operators use) with `core.fold.apply`, then
asks `collect` what the processor must write for it.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventjobs.core import commands
from eventjobs.core.clock import add_seconds
from eventjobs.core.events import (
    CancelledEvent,
    CompletedEvent,
    DeadLetteredEvent,
    DuplicateRejectedEvent,
    FailedEvent,
    JobEvent,
    LeaseExpiredEvent,
    RetryScheduledEvent,
    ScheduledEvent,
)
from eventjobs.core.fold import Decision, apply
from eventjobs.core.options import ConstantBackoff, JobOptions, Priority
from eventjobs.core.outcome import Cancel, outcome_event
from eventjobs.core.state import JobState, JobStatus
from eventjobs.effects import Effects, collect, dead_letter_record, ready_record
from eventjobs.records import DeadLetterRecord, ReadyRecord, TimerRecord, timer_key

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
S = JobStatus


def key(kind: str, job_id: str = "job-1", attempt: int | None = None) -> bytes:
    return timer_key(job_id, kind, attempt)  # type: ignore[arg-type]


class Job:
    """One job driven through real events; `step` applies one and returns what `collect` produced."""

    def __init__(self, job_id: str = "job-1") -> None:
        self.job_id = job_id
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
        self.events.append(event)
        return effects

    @property
    def s(self) -> JobState:
        assert self.state is not None
        return self.state

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


def tombstones(effects: Effects) -> set[bytes]:
    return {k for k, v in effects.timers.items() if v is None}


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
    assert effects.timers == {} and effects.events == [] and effects.revoked == [] and effects.dead_letters == {}
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

    job.tick(59)
    effects = job.due()
    assert job.s.status is S.PENDING
    assert [(r.job_id, r.attempt, r.ready_at) for r in effects.ready] == [("job-1", 0, job.now)]
    assert effects.timers == {}  # the timer service already tombstoned the fired run_at timer
    assert effects.revoked == [] and effects.dead_letters == {}


def test_run_at_in_the_past_is_pending_at_once() -> None:
    job = Job()
    effects = job.enqueue(run_at=add_seconds(T0, -5))
    assert job.s.status is S.PENDING
    assert len(effects.ready) == 1 and effects.timers == {}


# -- TTL ----------------------------------------------------------------------------------------


def test_ttl_is_armed_on_enqueue_and_tombstoned_when_claimed() -> None:
    job = Job()
    effects = job.enqueue(ttl=300)
    assert effects.timers == {key("ttl"): TimerRecord(job_id="job-1", kind="ttl", attempt=0, due_at=add_seconds(T0, 300))}
    assert len(effects.ready) == 1

    effects = job.claim(lease_s=45)
    assert effects.timers == {
        key("lease"): TimerRecord(job_id="job-1", kind="lease", attempt=0, due_at=add_seconds(job.now, 45)),
        key("ttl"): None,
    }
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
    assert set(effects.timers) == {key("lease")}


def test_expired_pending_job_is_revoked_and_dead_lettered() -> None:
    job = Job()
    job.enqueue(ttl=5)
    pending = job.s
    job.tick(5)
    effects = job.expire()
    assert job.s.status is S.DEAD_LETTERED
    assert effects.revoked == [ready_record(pending, job.now)]
    assert effects.ready == []
    assert armed(effects) == {}
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
    assert key("run_at") in tombstones(effects)
    assert armed(effects) == {} and effects.revoked == [] and effects.ready == []
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


def test_claim_arms_the_lease_and_start_writes_only_the_state() -> None:
    job = Job()
    job.enqueue()
    effects = job.claim(lease_s=90)
    assert effects.timers == {key("lease"): TimerRecord(job_id="job-1", kind="lease", attempt=0,
                                                        due_at=add_seconds(job.now, 90))}
    assert effects.states == {"job-1": job.s} and effects.ready == [] and effects.events == []
    nothing_but_state(job.start(), job)
    nothing_but_state(job.progress(), job)


def test_heartbeat_rearms_the_lease_at_the_new_deadline() -> None:
    job = Job()
    job.enqueue()
    job.run(lease_s=60)
    effects = job.heartbeat(lease_s=300)
    assert effects.timers == {key("lease"): TimerRecord(job_id="job-1", kind="lease", attempt=0,
                                                        due_at=add_seconds(job.now, 300))}
    assert job.s.lease_deadline == add_seconds(job.now, 300)


def test_heartbeat_that_does_not_extend_the_lease_writes_nothing() -> None:
    job = Job()
    job.enqueue()
    job.run(lease_s=600)
    effects = job.heartbeat(lease_s=1)  # earlier than the current deadline: rejected
    assert job.decision.rejected is not None  # type: ignore[union-attr]
    nothing_at_all(effects)


def test_success_tombstones_the_lease_and_completes() -> None:
    job = Job()
    job.enqueue()
    job.run()
    effects = job.succeed({"sent": True})
    assert job.s.status is S.COMPLETED
    assert effects.timers == {key("lease"): None}
    assert [type(e) for e in effects.events] == [CompletedEvent]
    assert effects.events[0].result == {"sent": True}  # type: ignore[union-attr]
    assert effects.ready == [] and effects.revoked == [] and effects.dead_letters == {}


def test_success_straight_from_claimed_also_tombstones_the_lease() -> None:
    job = Job()
    job.enqueue()
    job.claim()
    effects = job.succeed()
    assert effects.timers == {key("lease"): None}


# -- retries ---------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["fail", "timed_out", "lease_expired"])
def test_retryable_end_of_attempt_arms_the_retry_and_tombstones_the_lease(how: str) -> None:
    job = Job()
    job.enqueue()
    job.run()
    effects = {"fail": job.fail, "timed_out": job.timed_out, "lease_expired": job.lease_expired}[how]()
    assert job.s.status is S.RETRYING and job.s.attempt == 1
    assert effects.timers == {
        key("lease"): None,
        key("retry", attempt=1): TimerRecord(job_id="job-1", kind="retry", attempt=1, due_at=add_seconds(job.now, 10)),
    }
    (scheduled,) = effects.events
    assert isinstance(scheduled, RetryScheduledEvent) and scheduled.due_at == add_seconds(job.now, 10)
    assert effects.ready == [] and effects.revoked == [] and effects.dead_letters == {}


def test_retry_due_gives_a_ready_record_for_the_next_attempt_whose_claim_arms_its_lease() -> None:
    job = Job()
    job.enqueue()
    job.run()
    job.fail()
    job.tick(10)
    effects = job.due()
    assert [(r.attempt, r.ready_at, r.enqueued_at) for r in effects.ready] == [(1, job.now, T0)]
    assert effects.timers == {}
    effects = job.claim(lease_s=30)
    assert effects.timers == {key("lease"): TimerRecord(job_id="job-1", kind="lease", attempt=1,
                                                        due_at=add_seconds(job.now, 30))}


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
    assert effects.timers == {key("lease"): None}
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
    assert armed(effects) == {}  # the TTL is disarmed by a dead-letter retry
    assert effects.events == [] and effects.revoked == []


def test_discard_tombstones_the_entry_and_nothing_becomes_ready() -> None:
    job = Job()
    _dead_lettered(job)
    effects = job.discard()
    assert job.s.status is S.DISCARDED
    assert effects.dead_letters == {"job-1": None}
    assert effects.ready == [] and effects.revoked == [] and armed(effects) == {}


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
    assert effects.revoked == [] and effects.ready == []


def test_cancel_retrying_job_tombstones_the_retry_timer() -> None:
    job = Job()
    job.enqueue()
    job.run()
    job.fail()
    effects = job.cancel()
    assert job.s.status is S.CANCELLED
    assert key("retry", attempt=1) in tombstones(effects) and armed(effects) == {}
    assert effects.revoked == [] and effects.ready == []


def test_cancel_while_running_is_only_a_flag_until_the_attempt_ends() -> None:
    job = Job()
    job.enqueue()
    job.run()
    nothing_but_state(job.cancel(), job)
    assert job.s.cancel_requested and job.s.status is S.RUNNING
    effects = job.fail()  # retryable, attempts left, but a cancel was requested
    assert job.s.status is S.CANCELLED
    assert effects.timers == {key("lease"): None}
    assert [type(e) for e in effects.events] == [CancelledEvent]
    assert effects.dead_letters == {} and effects.ready == []


# -- stale lease timers ------------------------------------------------------------------------


def test_stale_lease_expired_while_running_rearms_the_current_lease() -> None:
    job = Job()
    job.enqueue()
    job.run(lease_s=60)
    first_deadline = job.s.lease_deadline
    job.heartbeat(lease_s=300)
    running = job.s
    effects = job.lease_expired(deadline=first_deadline)  # the old timer fired after the heartbeat
    assert job.decision.rejected == "lease was extended since this timer was set: the worker is still alive"  # type: ignore[union-attr]
    assert job.s is running
    assert effects.timers == {key("lease"): TimerRecord(job_id="job-1", kind="lease", attempt=0,
                                                        due_at=running.lease_deadline)}
    assert effects.states == {} and effects.events == [] and effects.ready == [] and effects.dead_letters == {}


def test_stale_lease_expired_after_the_job_finished_writes_nothing() -> None:
    job = Job()
    job.enqueue()
    job.run()
    deadline = job.s.lease_deadline
    job.succeed()
    nothing_at_all(job.lease_expired(deadline=deadline, attempt=0))


def test_stale_lease_expired_of_an_earlier_attempt_rearms_the_running_attempts_lease() -> None:
    job = Job()
    job.enqueue(max_attempts=1)
    job.run()
    old_deadline = job.s.lease_deadline
    job.fail(retryable=False)  # dead-lettered, lease tombstoned ...
    job.dlq_retry()
    job.run(lease_s=60)  # ... attempt 1 runs with a new lease timer under the same key
    running = job.s
    effects = job.lease_expired(deadline=old_deadline, attempt=0)  # attempt 0's timer fired late
    assert job.decision.rejected is not None  # type: ignore[union-attr]
    assert effects.timers == {key("lease"): TimerRecord(job_id="job-1", kind="lease", attempt=1,
                                                        due_at=running.lease_deadline)}


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


def test_collect_accumulates_into_one_effects_of_a_batch() -> None:
    """Several events of one job into the same Effects: the last timer write per key wins."""
    job = Job()
    batch = Effects()
    for write in (lambda: job.enqueue(ttl=30), job.claim, job.start, job.heartbeat, job.succeed):
        before = job.state
        write()
        collect(batch, before, job.decision, job.events[-1])  # type: ignore[arg-type]
    assert batch.states == {"job-1": job.s} and job.s.status is S.COMPLETED
    assert batch.timers == {key("ttl"): None, key("lease"): None}
    assert len(batch.ready) == 1 and batch.revoked == []
    assert [type(e) for e in batch.events] == [CompletedEvent]


# -- property: the records written always describe the state ------------------------------------

ACTIVE = (S.CLAIMED, S.RUNNING)


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
        job_id, status = state.job_id, state.status

        def timer(kind: str) -> tuple[Any, int] | None:
            t = self.timers.get(timer_key(job_id, kind, state.attempt))  # type: ignore[arg-type]
            return None if t is None else (t.due_at, t.attempt)

        assert timer("run_at") == ((state.next_due_at, state.attempt) if status is S.SCHEDULED else None)
        assert timer("retry") == ((state.next_due_at, state.attempt) if status is S.RETRYING else None)
        assert timer("lease") == ((state.lease_deadline, state.attempt) if status in ACTIVE else None)
        waiting_for_first_start = status in (S.PENDING, S.SCHEDULED) and state.attempts_started == 0
        expected_ttl = (state.expires_at, state.attempt) if waiting_for_first_start and state.expires_at else None
        assert timer("ttl") == expected_ttl
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


ACTIONS = [
    "due", "claim", "start", "progress", "heartbeat", "succeed", "fail", "fail_fatal", "timed_out",
    "lease_expired", "stale_lease", "cancel", "expire", "dlq_retry", "discard", "redeliver",
]
_IN_ATTEMPT = ["heartbeat", "heartbeat", "progress", "succeed", "fail", "fail", "fail_fatal", "timed_out",
               "lease_expired", "stale_lease", "stale_lease", "cancel"]
LIKELY = {  # what the writers would plausibly do next in each status (the rest is drawn too, more rarely)
    S.SCHEDULED: ["due", "cancel", "expire"],
    S.PENDING: ["claim", "claim", "cancel", "expire"],
    S.CLAIMED: ["start", *_IN_ATTEMPT],
    S.RUNNING: _IN_ATTEMPT,
    S.RETRYING: ["due", "due", "cancel", "expire"],
    S.DEAD_LETTERED: ["dlq_retry", "dlq_retry", "discard"],
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
    are exactly what the state needs (a timer per waiting status, a lease per active attempt...).

    Timer-fired events tombstone their timer first, as the timer service does, so a stale lease
    fire removes the current lease timer and `collect` must re-arm it.
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
        if s.status in (S.COMPLETED, S.CANCELLED, S.DISCARDED) and data.draw(st.booleans(), label="stop"):
            break
        likely = LIKELY.get(s.status, [])
        anything = not likely or data.draw(st.integers(0, 9), label="odd one") == 0
        action = data.draw(st.sampled_from(ACTIONS if anything else likely), label="action")
        job.tick(data.draw(st.integers(0, 30), label="seconds"))
        effects: Effects | None = None
        try:
            if action == "due":
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
                topics.timers.pop(key("lease"), None)
                effects = job.lease_expired()
            elif action == "stale_lease":
                older = [d for a, d in deadlines if a == s.attempt and d != s.lease_deadline]
                if older:  # an old timer of this attempt fires late, and its tombstone removes the current one
                    topics.timers.pop(key("lease"), None)
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
            elif action == "redeliver":
                effects = job.step(data.draw(st.sampled_from(job.events), label="redelivered"))
        except commands.CommandRefused:
            continue
        if effects is None:
            continue
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
