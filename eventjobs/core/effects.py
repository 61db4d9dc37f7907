"""What the processor must write after applying one event: a pure function of before and after.

`apply` decides how a job's state changes; this module turns that change into records for the
other topics: the changelog write, a ready record when an attempt may run, timers to arm or
cancel, and the dead-letter entry. Keeping it pure (no Kafka here) means the processor loop only
moves bytes, and the rules can be tested without a broker.

A running attempt's lease, re-publishing a pending job's ready record (ready records are hints
and may be lost), and letting a finished job go after its retention are the lane's own timers
(``eventjobs.core.housekeeping``), kept in memory from the states this module's caller applies:
they write nothing here. The timer records written here are run_at, retry and ttl, which the
timer service fires.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from eventjobs.core.events import JobEvent
from eventjobs.core.fold import Decision, apply
from eventjobs.core.state import ACTIVE_STATUSES, JobState, JobStatus
from eventjobs.core.records import DeadLetterRecord, ReadyRecord, TimerKind, TimerRecord, timer_key


@dataclass
class Effects:
    """Everything one batch must write, besides the consumed offsets."""

    states: dict[str, JobState | None] = field(default_factory=dict)  # job id -> latest state (None: forgotten)
    events: list[JobEvent] = field(default_factory=list)  # derived events, back to the event log
    ready: list[ReadyRecord] = field(default_factory=list)
    # jobs whose ready record in `ready` is a re-publish: another copy of the attempt may have been
    # claimed already, so it is marked for the workers (records.REPUBLISHED_HEADER)
    republished: set[str] = field(default_factory=set)
    revoked: list[ReadyRecord] = field(default_factory=list)  # published ready records no longer valid
    timers: dict[bytes, TimerRecord | None] = field(default_factory=dict)  # None: tombstone
    dead_letters: dict[str, DeadLetterRecord | None] = field(default_factory=dict)  # None: tombstone

    def __len__(self) -> int:
        return len(self.states) + len(self.events) + len(self.ready) + len(self.timers) + len(self.dead_letters)


_new = object.__new__
_set = object.__setattr__
_TIMER_FIELDS = frozenset(TimerRecord.model_fields)


def _timer(job_id: str, kind: TimerKind, attempt: int, due_at: datetime) -> TimerRecord:
    """A timer record from values taken from a validated state (built without re-validation, as
    ``fold`` builds states: this runs for nearly every event the processor folds)."""
    record = _new(TimerRecord)
    _set(record, "__dict__", {"job_id": job_id, "kind": kind, "attempt": attempt, "due_at": due_at, "sequence": None})
    _set(record, "__pydantic_fields_set__", _TIMER_FIELDS)
    _set(record, "__pydantic_extra__", None)
    _set(record, "__pydantic_private__", None)
    return record


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
        start_at=state.workflow.slot_start if state.workflow is not None else None,
        rate_reasked=state.workflow.rate_reasked if state.workflow is not None else False,
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
    *, answer_refusal: bool = False,
) -> None:
    """Add to `effects` what applying `event` (giving `decision`) requires beyond the state.

    `partition` is the job's event-log partition, carried in ready records for the worker.
    `answer_refusal`: the event is a claim whose worker waits for the verdict before it starts
    (``records.AWAITS_VERDICT_HEADER``); if it is refused, the job's state is written again (a
    refused claim changes nothing, so nothing else would tell that worker).
    """
    after = decision.state
    effects.events.extend(decision.derived)
    if after is None:
        if before is not None and decision.rejected is None:
            effects.states[before.job_id] = None  # forgotten: tombstone its changelog record
        return
    if decision.rejected is not None or after is before:
        _heal_stale_run_at(effects, after, event, decision)
        if answer_refusal and decision.rejected is not None and event.type == "claimed":
            effects.states[after.job_id] = after
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
        if after.ready_republishes:
            effects.republished.add(after.job_id)
    if (was is JobStatus.PENDING and status is not JobStatus.PENDING and before is not None
            and status not in ACTIVE_STATUSES):  # claimed (or claimed and started): its ready record was taken
        # cancelled or expired while its ready record waits for a worker: tell the workers
        effects.revoked.append(ready_record(before, now, partition))
    if status is JobStatus.SCHEDULED and after.next_due_at is not None and (
        was is not JobStatus.SCHEDULED or (before is not None and before.next_due_at != after.next_due_at)  # debounced
    ):
        _arm(effects, after.job_id, "run_at", after.attempt, after.next_due_at)
    if status is JobStatus.RETRYING and was is not JobStatus.RETRYING and after.next_due_at is not None:
        _arm(effects, after.job_id, "retry", after.attempt, after.next_due_at)
    if after.expires_at is not None and (before is None or before.expires_at != after.expires_at):
        _arm(effects, after.job_id, "ttl", after.attempt, after.expires_at)

    started = status in ACTIVE_STATUSES and was not in ACTIVE_STATUSES
    if started and before is not None and before.expires_at is not None:
        _cancel(effects, after.job_id, "ttl")  # started in time: the TTL no longer applies

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


def installed(state: JobState, now: datetime, partition: int, *, ready: bool = True) -> Effects:
    """What a job's state needs beside itself when it is written into a new layout (a namespace
    with more partitions, `eventjobs partitions grow`), derived from the state alone as `collect`
    derived it when the job got there: the changelog record, the ready record of a pending job
    (ready at `now`; not with `ready=False`, see `ready_survives`), the timers its status waits for
    (run_at, retry; ttl while it has never started), and the dead-letter entry of a
    dead-lettered job. The processor's own lease, re-publish and retention timers follow from
    the state when a lane restores it, as always."""
    effects = Effects()
    effects.states[state.job_id] = state
    status = state.status
    if status is JobStatus.PENDING:
        if ready:
            effects.ready.append(ready_record(state, now, partition))
    elif status is JobStatus.SCHEDULED and state.next_due_at is not None:
        _arm(effects, state.job_id, "run_at", state.attempt, state.next_due_at)
    elif status is JobStatus.RETRYING and state.next_due_at is not None:
        _arm(effects, state.job_id, "retry", state.attempt, state.next_due_at)
    elif status is JobStatus.DEAD_LETTERED:
        effects.dead_letters[state.job_id] = dead_letter_record(state)
    if state.expires_at is not None and status in (JobStatus.WAITING, JobStatus.SCHEDULED, JobStatus.PENDING):
        _arm(effects, state.job_id, "ttl", state.attempt, state.expires_at)  # cleared at the first claim
    return effects


def ready_survives(state: JobState, event: JobEvent) -> JobState | None:
    """The state of a pending job after `event`, if a ready record published for the job before it
    still offers what the job waits for (it stays pending on that attempt and re-publish count);
    None if not, for example after a cancel: a worker given that record would run a job that no
    longer waits (its claim refused, its handler run all the same). `collect` publishes a new
    record when the job is pending again. The grow asks this of the events its new processor
    will fold first, before it publishes a carried-over pending job's ready record."""
    after = apply(state, event).state
    if (after is not None and after.status is JobStatus.PENDING and after.attempt == state.attempt
            and after.ready_republishes == state.ready_republishes):
        return after
    return None


def _heal_stale_run_at(effects: Effects, state: JobState, event: JobEvent, decision: Decision) -> None:
    """A run_at timer that fired before a debounce put the start back: arm that start again.

    The timer service tombstones what it fires, which may have removed the later run_at timer
    written just before; re-arming here keeps a run_at timer for every scheduled job. (A lease
    needs no such repair: it is the lane's own timer, which follows the state.)
    """
    if (
        event.type == "due"
        and decision.rejected is not None
        and state.status is JobStatus.SCHEDULED
        and state.next_due_at is not None
        and state.next_due_at > event.occurred_at
    ):
        _arm(effects, state.job_id, "run_at", state.attempt, state.next_due_at)
