"""The processor's own timers: lease expiry, re-publishing a lost ready record, and letting a finished job go.

Three timers follow from a job's state alone, and only the lane that holds that state acts on them:

- **lease**: a claimed or running attempt's lease ends at its ``lease_deadline`` (set by the
  claim, moved later by each heartbeat); if no heartbeat moved it by then, ``lease_expired``
  ends the attempt (the worker is gone: the job runs again);
- **republish**: ready records are hints and may be lost (a ready topic's retention, a record
  a worker's group committed past without a claim that stands). While a job stays pending, its
  ready record is looked at ``ReadyRepublish.delay_s(ready_republishes)`` after the last
  publish (1 hour, doubling, at most daily): if it still waits in its topic for the worker group
  (a paused queue, a backlog; `ready_record_waits`, `records_since_wait`), the timer is armed
  again (`Housekeeping.defer`); only a record that is gone, or may be, is published again;
- **retention**: a completed, cancelled or discarded job is forgotten ``Retention.finished_s``
  after it finished; a dead-lettered one is discarded after its dead-letter retention.

Since the lane's table (restored from the changelog) already holds everything these timers need,
the lane keeps them in memory (`Housekeeping`) and rebuilds them from the table when it takes a
partition, instead of writing timer records: that would be four records per job on the timer
topic (a lease armed at the claim and tombstoned at the attempt's end, a re-publish armed at the
enqueue and tombstoned at the claim, a retention armed at the finish), each read back by the
timer service. Each event is built by `timer_fired_event` from the timer's key (`job:lease`,
`timer_key(job, "republish", attempt, sequence)`, `job:retain`, `job:dead_letter`), as the timer
service builds its own, so its id depends only on the timer (a lease's on its attempt and
deadline), and a repeat (after a restart) is a duplicate or a stale fire that `apply` ignores.

Whether a ready record still waits is the shell's question to the broker (the worker group's
committed offset on the record's partition, the partition's log start and end); the answer's
rule is here. The lane knows the record's offset from the send's metadata (`Housekeeping.published`,
in memory only); for a record its predecessor published (after a restart) it knows only a
lower bound of the publish time (`earliest_publish`), and asks where the records since then begin.

Pure: the lane passes "now" in; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from eventjobs.core.clock import add_seconds, epoch_ms, from_epoch_ms
from eventjobs.core.commands import timer_fired_event
from eventjobs.core.events import JobEvent
from eventjobs.core.flow import window_end
from eventjobs.core.records import HousekeepingKind, timer_key
from eventjobs.core.state import ACTIVE_STATUSES, TERMINAL_STATUSES, JobState, JobStatus
from eventjobs.core.timer_index import TimerIndex

DEFAULT_RETAIN_COMPLETED_S = 24 * 3600.0
DEFAULT_DEAD_LETTER_RETENTION_S = 7 * 24 * 3600.0
#: A pending job's ready record is looked at (and published again if it is lost) after this
#: long, then after twice as long each time it was re-published, but never waiting longer than
#: ``READY_REPUBLISH_CAP_S`` (1, 2, 4, 8, 16, 24, 24 ... h); a record still waiting is looked at
#: again after the same delay. Each look is a few offset requests for a whole pass of jobs, so
#: the delay only bounds how late a lost record is found.
READY_REPUBLISH_FIRST_S = 3600.0
READY_REPUBLISH_CAP_S = 24 * 3600.0
#: At most this many housekeeping events per lane and pass (the rest follow in the next pass).
FIRE_BATCH = 2000
#: How far the clock of an event's writer may be ahead of the processor's, whose producer stamps
#: a ready record's time: only a record whose offset is not known is looked for by time, from
#: this long before the earliest moment it can have been published.
PUBLISH_CLOCK_MARGIN_S = 30.0
_PARTITION_BITS = 24  # a ready record's place, packed: offset << 24 | partition
_IN_FLIGHT = -1  # a ready record sent, its place not acknowledged yet


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
    the previous publish. Only the lane's housekeeping reads this, never ``apply``: the state
    counts re-publishes (``ready_republishes``) but holds no delay, so replay does not depend on it.
    """

    first_s: float = READY_REPUBLISH_FIRST_S
    cap_s: float = READY_REPUBLISH_CAP_S

    def __post_init__(self) -> None:
        if not 0 < self.first_s <= self.cap_s:
            raise ValueError(f"republish delays need 0 < first_s <= cap_s, got {self.first_s} and {self.cap_s}")

    def delay_s(self, sequence: int) -> float:
        return min(self.first_s * 2.0 ** min(sequence, 64), self.cap_s)

    @classmethod
    def after(cls, first_s: float) -> ReadyRepublish:
        """The delays starting at `first_s` (``EVENTJOBS_REPUBLISH_AFTER``), capped at a day or at `first_s`."""
        return cls(first_s, max(READY_REPUBLISH_CAP_S, first_s))


@dataclass(frozen=True)
class ReadyPartition:
    """One ready partition as the broker saw it in a pass: where its log starts and ends, and the
    offset the worker group of its route committed there (None: none, it starts at the log start)."""

    log_start: int
    end: int
    committed: int | None

    @property
    def next_read(self) -> int:
        """The first offset the worker group reads next (a committed offset below the log start,
        whose records retention deleted, resets to the start: the consumers read ``earliest``)."""
        return self.log_start if self.committed is None else max(self.committed, self.log_start)


def ready_record_waits(offset: int, where: ReadyPartition) -> bool:
    """Whether the ready record at `offset` of the partition is still to be read by its worker
    group: still in the log (not deleted by the retention, not beyond the end of a topic made
    anew) and not before the group's next read. A record the group committed past (claimed, or
    skipped) is not waiting, whatever became of its claim."""
    return where.next_read <= offset < where.end


def records_since_wait(earliest_ms: int, found: Mapping[int, int | None],
                       where: Mapping[int, ReadyPartition], *, now_ms: int, retention_ms: int | None) -> bool:
    """Whether a ready record whose offset is not known, published at or after `earliest_ms`
    (by the record times the producer stamps), is still to be read by its worker group.

    `found` holds, for every partition of the record's topic, the first offset whose record time
    is at or after a probe time at or before `earliest_ms` (None: no such record), as the
    broker's offset-for-time lookup gives it. The record is waiting if on every partition the
    group's next read is at or before that offset (nothing published since the probe was read,
    whichever partition the record is on, even after partitions were added), some record was
    published since (the record itself), and the record is younger than the topic's retention
    with `PUBLISH_CLOCK_MARGIN_S` to spare (a record deleted by it cannot be told from one read;
    `retention_ms` None: kept forever). Anything else: not known to wait.
    """
    if retention_ms is not None and now_ms - earliest_ms >= retention_ms - PUBLISH_CLOCK_MARGIN_S * 1000:
        return False
    if not where or set(found) != set(where) or all(offset is None for offset in found.values()):
        return False
    return all(offset is None or where[p].next_read <= offset for p, offset in found.items())


def earliest_publish(state: JobState) -> datetime:
    """The earliest moment the current attempt's ready record can have been published, by any
    clock within `PUBLISH_CLOCK_MARGIN_S`: not before the enqueue, the run_at, or the start of
    the previous attempt (a retry, a snooze, a dead-letter retry is published after it)."""
    times = [state.enqueued_at, *(t for t in (state.run_at, state.started_at) if t is not None)]
    return add_seconds(max(times), -PUBLISH_CLOCK_MARGIN_S)


@dataclass(frozen=True)
class HousekeepingTimer:
    """The one housekeeping timer a job's state calls for: what it fires, when, and its timer key."""

    job_id: str
    kind: HousekeepingKind
    due_at: datetime
    attempt: int
    sequence: int | None = None  # republish: which re-publish of the attempt's ready record

    @property
    def key(self) -> bytes:
        """The timer's key (`timer_key`): it indexes the lane's timers, and the fired event's id derives from it."""
        return timer_key(self.job_id, self.kind, self.attempt, self.sequence)


def housekeeping_timer(
    state: JobState, retention: Retention = Retention(), republish: ReadyRepublish = ReadyRepublish()
) -> HousekeepingTimer | None:
    """The housekeeping timer `state` calls for, or None (neither under way with a lease, nor
    pending, nor finished; or due after the year 9999: never).

    A claimed or running attempt's lease is due at its ``lease_deadline``: the timer follows the
    state, so a heartbeat that moves the deadline moves it, and the attempt's end drops it.

    A pending job's ready record was last published when it became pending or was re-published,
    which is its ``updated_at`` unless a change that published nothing (a new dependent, say)
    came later: `Housekeeping` then keeps the earlier due time it already had, so such changes
    never put the re-publish off (after a restart, the wait counts from the latest change). A
    finished job's retention runs from ``finished_at``, at least 1 ms, and at least until its window
    ends for a windowed job (``flow.window_end``: else its id could be taken again inside the window) (``apply`` refuses a
    retention due at, not after, ``finished_at`` as armed for an earlier finish).
    """
    status = state.status
    try:
        if status in ACTIVE_STATUSES:
            if state.lease_deadline is None:
                return None
            return HousekeepingTimer(state.job_id, "lease", state.lease_deadline, state.attempt)
        if status is JobStatus.PENDING:
            sequence = state.ready_republishes
            due_at = add_seconds(state.updated_at, republish.delay_s(sequence))
            return HousekeepingTimer(state.job_id, "republish", due_at, state.attempt, sequence)
        if status not in TERMINAL_STATUSES:
            return None
        finished_at = state.finished_at or state.updated_at
        if status is JobStatus.DEAD_LETTERED:
            keep_s = state.options.dead_letter_retention_s or retention.dead_letter_s
            due_at = add_seconds(finished_at, max(keep_s, 0.001))
            return HousekeepingTimer(state.job_id, "dead_letter", due_at, state.attempt)
        due_at = add_seconds(finished_at, max(retention.finished_s, 0.001))
        window_ends = window_end(state)
        if window_ends is not None and window_ends > due_at:  # its id holds its key's window till the end
            due_at = window_ends
        return HousekeepingTimer(state.job_id, "retain", due_at, state.attempt)
    except OverflowError:  # due after the year 9999 (or never, inf): the job is kept
        return None


class Housekeeping:
    """A lane's housekeeping timers: one per job of its table that holds a lease, is pending or finished.

    `track` is told every new state of the lane (None: forgotten); `due_timers` pops what is due
    (`due`: and fires all of it). An entry is only a reminder: when it comes due, the job's
    current state is asked again, so a job that changed meanwhile fires what its state now calls
    for, or nothing. One exception keeps a re-publish from being put off: a change to a pending
    job that published nothing (same attempt and re-publish count as the state it replaces)
    keeps the entry's earlier due time, and that time is the one fired.

    It also keeps where each pending job's latest ready record went (`published`, from the
    send's metadata), so that a due re-publish can ask whether that record still waits; a
    record that does is not published again, its timer is armed again (`defer`).
    """

    __slots__ = ("retention", "republish", "_index", "_ready")

    def __init__(self, retention: Retention = Retention(), republish: ReadyRepublish = ReadyRepublish()) -> None:
        self.retention = retention
        self.republish = republish
        self._index = TimerIndex()  # job id bytes -> (due ms, attempt)
        self._ready: dict[bytes, int] = {}  # pending job id bytes -> its ready record's offset << 24 | partition

    def __len__(self) -> int:
        return len(self._index)

    def track(self, job_id: str, state: JobState | None, before: JobState | None = None) -> None:
        """Follow the job's new `state` (None: forgotten); `before` is the state it replaces, if known."""
        key = job_id.encode()
        timer = None if state is None else housekeeping_timer(state, self.retention, self.republish)
        if timer is None or timer.kind != "republish":
            self._ready.pop(key, None)  # not pending: its ready record, if any, was claimed or revoked
        if timer is None:
            self._index.delete(key)
            return
        due_ms = epoch_ms(timer.due_at)
        held = self._index.get(key)
        if held == (due_ms, timer.attempt):
            return  # the same timer (a running job's progress leaves its lease where it was)
        if (timer.kind == "republish" and before is not None and before.status is JobStatus.PENDING
                and before.attempt == timer.attempt and before.ready_republishes == timer.sequence
                and held is not None and held[0] <= due_ms):
            return  # the same publish: a change that published nothing does not put the re-publish off
        self._index.set(key, due_ms, timer.attempt)

    def track_all(self, states: Mapping[str, JobState | None], before: Mapping[str, JobState] | None = None) -> None:
        """`track` every job of `states`; `before`: the table they replace (not yet updated)."""
        if before is None:
            for job_id, state in states.items():
                self.track(job_id, state)
        else:
            for job_id, state in states.items():
                self.track(job_id, state, before.get(job_id))

    def publishing(self, job_id: str) -> None:
        """The pending job's ready record (of its current attempt, as the caller checked) is being
        sent: until `published` says where it went, it is known to wait (it was only just sent)."""
        self._ready[job_id.encode()] = _IN_FLIGHT

    def published(self, job_id: str, partition: int, offset: int) -> None:
        """The pending job's ready record (of its current attempt, as the caller checked) is at
        `offset` of `partition` of its ready topic (a later one replaces an earlier one)."""
        self._ready[job_id.encode()] = offset << _PARTITION_BITS | partition

    def ready_place(self, job_id: str) -> tuple[int, int] | None:
        """(partition, offset) of the pending job's latest ready record, if this lane published it
        and the broker acknowledged it."""
        packed = self._ready.get(job_id.encode())
        if packed is None or packed == _IN_FLIGHT:
            return None
        return packed & ((1 << _PARTITION_BITS) - 1), packed >> _PARTITION_BITS

    def ready_in_flight(self, job_id: str) -> bool:
        """Whether the pending job's latest ready record is being sent (not acknowledged yet)."""
        return self._ready.get(job_id.encode()) == _IN_FLIGHT

    @property
    def places_known(self) -> int:
        """Pending jobs whose ready record's place is known (at most one entry per pending job)."""
        return len(self._ready)

    def next_due_ms(self) -> int | None:
        return self._index.next_due_ms()

    def due_timers(self, table: Mapping[str, JobState], now: datetime, *,
                   limit: int = FIRE_BATCH) -> list[HousekeepingTimer]:
        """The timers due at `now`, for the jobs' current states in `table` (popped: each is
        fired, or for a re-publish whose record still waits, armed again with `defer`).

        A popped entry whose job is gone, or whose state now calls for a later timer (or none),
        gives nothing (the later timer is tracked again); a pending job's re-publish is due at its
        entry's time even if a change since then (one that published nothing) is more recent.
        """
        now_ms = epoch_ms(now)
        timers: list[HousekeepingTimer] = []
        for key, held_ms, attempt in self._index.pop_due(now_ms, limit=limit):
            job_id = key.decode()
            state = table.get(job_id)
            if state is None:
                continue
            timer = housekeeping_timer(state, self.retention, self.republish)
            if timer is None:
                continue
            due_ms = epoch_ms(timer.due_at)
            if timer.kind == "republish" and timer.attempt == attempt:
                due_ms = min(due_ms, held_ms)  # the wait began with the entry (see `track`)
            if due_ms > now_ms:
                self._index.set(key, due_ms, timer.attempt)
                continue
            timers.append(HousekeepingTimer(timer.job_id, timer.kind, from_epoch_ms(due_ms), timer.attempt,
                                            timer.sequence))
        return timers

    @staticmethod
    def fire(timer: HousekeepingTimer, now: datetime, *, actor: str) -> JobEvent:
        """The event a due timer writes. Its id depends only on the timer, so firing one again
        after a restart writes a duplicate; a re-publish fired again at another time is refused
        by its sequence."""
        return timer_fired_event(timer.key, epoch_ms(timer.due_at), timer.attempt, now=now, actor=actor)

    def defer(self, timer: HousekeepingTimer, table: Mapping[str, JobState], now: datetime) -> None:
        """A due re-publish whose ready record still waits: look again `delay_s(sequence)` after
        `now`, if the job is still pending on that attempt and nothing was tracked for it since
        it was popped. When that comes, the re-publish it then fires keeps the due time it has
        now (the state's), so its event is the one it would have been."""
        state = table.get(timer.job_id)
        key = timer.job_id.encode()
        if (state is None or state.status is not JobStatus.PENDING or state.attempt != timer.attempt
                or state.ready_republishes != timer.sequence or self._index.get(key) is not None):
            return
        until = add_seconds(now, self.republish.delay_s(timer.sequence or 0))
        self._index.set(key, epoch_ms(until), timer.attempt)

    def due(self, table: Mapping[str, JobState], now: datetime, *, actor: str,
            limit: int = FIRE_BATCH) -> list[JobEvent]:
        """The events of every timer due at `now` (`due_timers`, all fired: no ready record is
        asked after; the processor asks, and defers the re-publishes whose record still waits)."""
        return [self.fire(timer, now, actor=actor) for timer in self.due_timers(table, now, limit=limit)]
