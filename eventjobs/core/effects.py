"""What the processor must write after applying one event: a pure function of before and after.

`apply` decides how a job's state changes; this module turns that change into records for the
other topics: the changelog write, a ready record when an attempt may run, timers to arm or
cancel, and the dead-letter entry. Keeping it pure (no Kafka here) means the processor loop only
moves bytes, and the rules can be tested without a broker.

Ready records are hints and may be lost (published before the transaction that folded them, a
ready topic's retention, a record skipped by a worker). So while a job stays pending its ready
record is published again: becoming pending arms a ``republish`` timer (``ReadyRepublish``:
5 minutes, doubling, at most hourly); when it fires, ``apply`` records the re-publish (a
``due`` with timer ``republish``) and this module publishes the ready record again and arms the
next one; a claim, cancel or expiry tombstones it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from eventjobs.core.clock import add_seconds

from eventjobs.core.events import JobEvent
from eventjobs.core.fold import Decision
from eventjobs.core.state import ACTIVE_STATUSES, JobState, JobStatus
from eventjobs.core.records import DeadLetterRecord, ReadyRecord, TimerKind, TimerRecord, timer_key



DEFAULT_RETAIN_COMPLETED_S = 24 * 3600.0
DEFAULT_DEAD_LETTER_RETENTION_S = 7 * 24 * 3600.0
#: A pending job's ready record is published again after this long, then after twice as long
#: each time, but never waiting longer than ``READY_REPUBLISH_CAP_S`` (1, 2, 4, 8, 16, 24, 24 ... h).
#: A re-published record of a job still waiting in a backlog (not lost) makes a second worker
#: run it (its claim is refused, its outcome ignored), so the first delay is long: only a
#: backlog older than an hour sees duplicates, while a lost record is still found the same day.
READY_REPUBLISH_FIRST_S = 3600.0
READY_REPUBLISH_CAP_S = 24 * 3600.0


@dataclass(frozen=True)
class Retention:
    """How long finished jobs stay in the processor's table (the processor's settings).

    ``finished_s``: a completed, cancelled or discarded job is forgotten this long after it
    finished (its idempotency key holds until then). ``dead_letter_s``: a dead-lettered job is
    discarded this long after it was dead-lettered, unless its options say otherwise.
    """

    finished_s: float = DEFAULT_RETAIN_COMPLETED_S
    dead_letter_s: float = DEFAULT_DEAD_LETTER_RETENTION_S

    def __post_init__(self) -> None:
        for name in ("finished_s", "dead_letter_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"retention {name} must be > 0 seconds, got {getattr(self, name)}")


@dataclass(frozen=True)
class ReadyRepublish:
    """When the processor publishes the ready record of a job that stays pending again (its settings).

    The ``sequence``-th re-publish of an attempt's ready record comes ``delay_s(sequence)`` after
    the previous publish. Only where the timer is armed reads this, never ``apply``: the state
    counts re-publishes (``ready_republishes``) but holds no delay, so replay does not depend on it.
    """

    first_s: float = READY_REPUBLISH_FIRST_S
    cap_s: float = READY_REPUBLISH_CAP_S

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.cap_s:
            raise ValueError(f"republish delays need 0 < first_s <= cap_s, got {self.first_s} and {self.cap_s}")

    def delay_s(self, sequence: int) -> float:
        return min(self.first_s * 2.0 ** min(sequence, 64), self.cap_s)


@dataclass
class Effects:
    """Everything one batch must write, besides the consumed offsets."""

    states: dict[str, JobState | None] = field(default_factory=dict)  # job id -> latest state (None: forgotten)
    events: list[JobEvent] = field(default_factory=list)  # derived events, back to the event log
    ready: list[ReadyRecord] = field(default_factory=list)
    revoked: list[ReadyRecord] = field(default_factory=list)  # published ready records no longer valid
    timers: dict[bytes, TimerRecord | None] = field(default_factory=dict)  # None: tombstone
    dead_letters: dict[str, DeadLetterRecord | None] = field(default_factory=dict)  # None: tombstone

    def __len__(self) -> int:
        return len(self.states) + len(self.events) + len(self.ready) + len(self.timers) + len(self.dead_letters)


_new = object.__new__
_set = object.__setattr__
_TIMER_FIELDS = frozenset(TimerRecord.model_fields)


def _timer(job_id: str, kind: TimerKind, attempt: int, due_at: datetime, sequence: int | None = None) -> TimerRecord:
    """A timer record from values taken from a validated state (built without re-validation, as
    ``fold`` builds states: this runs for nearly every event the processor folds)."""
    record = _new(TimerRecord)
    _set(record, "__dict__", {"job_id": job_id, "kind": kind, "attempt": attempt, "due_at": due_at, "sequence": sequence})
    _set(record, "__pydantic_fields_set__", _TIMER_FIELDS)
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record  # type: ignore[no-any-return]


def _arm(effects: Effects, job_id: str, kind: TimerKind, attempt: int, due_at: datetime) -> None:
    effects.timers[timer_key(job_id, kind, attempt)] = _timer(job_id, kind, attempt, due_at)


def _cancel(effects: Effects, job_id: str, kind: TimerKind, attempt: int | None = None) -> None:
    effects.timers[timer_key(job_id, kind, attempt)] = None


def ready_record(state: JobState, now: datetime, partition: int | None = None) -> ReadyRecord:
    return ReadyRecord(
        job_id=state.job_id,
        attempt=state.attempt,
        name=state.name,
        queue=state.queue,
        priority=state.priority,
        args=state.args,
        options=state.options,
        enqueued_at=state.enqueued_at,
        ready_at=now,
        parent_job_id=state.parent_job_id,
        partition=partition,
        dependencies=state.workflow.dependencies or None if state.workflow is not None else None,
    )


def dead_letter_record(state: JobState) -> DeadLetterRecord:
    error = state.last_error
    return DeadLetterRecord(
        job_id=state.job_id,
        name=state.name,
        queue=state.queue,
        reason=state.reason or "",
        error_type=error.error_type if error else "",
        message=error.message if error else "",
        traceback=error.traceback if error else "",
        attempts=state.attempts_started,
        dead_letter_event_id=state.dead_letter_event_id or "",
        dead_lettered_at=state.finished_at or state.updated_at,
    )


def collect(
    effects: Effects, before: JobState | None, decision: Decision, event: JobEvent, partition: int | None = None,
    retention: Retention = Retention(), republish: ReadyRepublish = ReadyRepublish(),
) -> None:
    """Add to `effects` what applying `event` (giving `decision`) requires beyond the state.

    `partition` is the job's event-log partition, carried in ready records for the worker.
    """
    after = decision.state
    effects.events.extend(decision.derived)
    if after is None:
        if before is not None and decision.rejected is None:
            effects.states[before.job_id] = None  # forgotten: tombstone its changelog record
        return
    if decision.rejected is not None or after is before:
        _heal_stale_lease(effects, after, event, decision)
        return
    effects.states[after.job_id] = after
    now = event.occurred_at
    was = before.status if before is not None else None
    status = after.status

    if status is JobStatus.PENDING and (
        was is not JobStatus.PENDING
        or before is None
        or before.attempt != after.attempt
        or before.ready_republishes != after.ready_republishes  # its republish timer fired
    ):
        effects.ready.append(ready_record(after, now, partition))
        due_at = _add_seconds_or_none(now, republish.delay_s(after.ready_republishes))
        if due_at is not None:
            _arm_republish(effects, after, due_at)
    if was is JobStatus.PENDING and status is not JobStatus.PENDING and before is not None:
        _cancel_republish(effects, before)
        if event.type != "claimed":
            # cancelled or expired while its ready record waits for a worker: tell the workers
            effects.revoked.append(ready_record(before, now, partition))
    if status is JobStatus.SCHEDULED and was is not JobStatus.SCHEDULED and after.next_due_at is not None:
        _arm(effects, after.job_id, "run_at", after.attempt, after.next_due_at)
    if status is JobStatus.RETRYING and was is not JobStatus.RETRYING and after.next_due_at is not None:
        _arm(effects, after.job_id, "retry", after.attempt, after.next_due_at)
    if after.expires_at is not None and (before is None or before.expires_at != after.expires_at):
        _arm(effects, after.job_id, "ttl", after.attempt, after.expires_at)

    if status in ACTIVE_STATUSES:
        if after.lease_deadline is not None and (before is None or before.lease_deadline != after.lease_deadline):
            _arm(effects, after.job_id, "lease", after.attempt, after.lease_deadline)
        if was not in ACTIVE_STATUSES and before is not None and before.expires_at is not None:
            _cancel(effects, after.job_id, "ttl")  # started in time: the TTL no longer applies
    elif was in ACTIVE_STATUSES:
        _cancel(effects, after.job_id, "lease")

    if after.is_terminal and was is not None and was is not status:
        if was is JobStatus.SCHEDULED:
            _cancel(effects, after.job_id, "run_at", before.attempt if before is not None else after.attempt)
        elif was is JobStatus.RETRYING:
            _cancel(effects, after.job_id, "retry", before.attempt if before is not None else after.attempt)
        if before is not None and before.expires_at is not None and was not in ACTIVE_STATUSES:
            _cancel(effects, after.job_id, "ttl")

    if status is JobStatus.DEAD_LETTERED and was is not JobStatus.DEAD_LETTERED:
        effects.dead_letters[after.job_id] = dead_letter_record(after)
    elif was is JobStatus.DEAD_LETTERED and status is not JobStatus.DEAD_LETTERED:
        effects.dead_letters[after.job_id] = None
        _cancel(effects, after.job_id, "dead_letter")
    if after.is_terminal and was is not status:
        _arm_retention(effects, after, retention)


def _add_seconds_or_none(at: datetime, seconds: float) -> datetime | None:
    try:
        return add_seconds(at, seconds)
    except OverflowError:  # after the year 9999: never
        return None


def _arm_republish(effects: Effects, state: JobState, due_at: datetime) -> None:
    """Arm the next re-publish of the pending attempt's ready record (its key names attempt and sequence)."""
    job_id, attempt, sequence = state.job_id, state.attempt, state.ready_republishes
    effects.timers[timer_key(job_id, "republish", attempt, sequence)] = _timer(job_id, "republish", attempt, due_at, sequence)


def _cancel_republish(effects: Effects, state: JobState) -> None:
    """The job is no longer pending: its armed republish timer goes. A key names one arming only,
    so a timer armed within this batch was never written: dropping it writes nothing at all."""
    key = timer_key(state.job_id, "republish", state.attempt, state.ready_republishes)
    if effects.timers.get(key) is not None:
        del effects.timers[key]
    else:
        effects.timers[key] = None


def _arm_retention(effects: Effects, state: JobState, retention: Retention) -> None:
    """A job that just finished (or was just dead-lettered) is kept for its retention, then let go."""
    finished_at = state.finished_at or state.updated_at
    if state.status is JobStatus.DEAD_LETTERED:
        kind: TimerKind = "dead_letter"
        keep_s = state.options.dead_letter_retention_s or retention.dead_letter_s
    else:
        kind, keep_s = "retain", retention.finished_s
    try:
        # at least 1 ms: `apply` refuses a retention due at (not after) finished_at as stale
        due_at = add_seconds(finished_at, max(keep_s, 0.001))
    except OverflowError:
        return  # due after the year 9999 (or never, inf): no timer, the job is kept
    _arm(effects, state.job_id, kind, state.attempt, due_at)


def _heal_stale_lease(effects: Effects, state: JobState, event: JobEvent, decision: Decision) -> None:
    """A lease timer that fired after a heartbeat extended the lease: arm the current deadline again.

    The timer service tombstones what it fires, which may have removed the extended lease timer
    written just before; re-arming here keeps a lease timer for every running attempt.
    """
    if (
        event.type == "lease_expired"
        and decision.rejected is not None
        and state.status in ACTIVE_STATUSES
        and state.lease_deadline is not None
    ):
        _arm(effects, state.job_id, "lease", state.attempt, state.lease_deadline)
