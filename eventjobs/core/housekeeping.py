"""The processor's own timers: re-publishing a waiting ready record, and letting a finished job go.

Two timers follow from a job's state alone, and only the lane that holds that state acts on them:

- **republish**: ready records are hints and may be lost (published before the transaction that
  folded them, a ready topic's retention, a record skipped by a worker). While a job stays
  pending, its ready record is published again ``ReadyRepublish.delay_s(ready_republishes)``
  after the last publish (1 hour, doubling, at most daily);
- **retention**: a completed, cancelled or discarded job is forgotten ``Retention.finished_s``
  after it finished; a dead-lettered one is discarded after its dead-letter retention.

Since the lane's table (restored from the changelog) already holds everything these timers need,
the lane keeps them in memory (`Housekeeping`) and rebuilds them from the table when it takes a
partition, instead of writing timer records: that would be three records per job on the timer
topic (armed at the enqueue, tombstoned at the claim, armed at the finish), each read back by the
timer service. Firing is the timer service's: the event is built by `timer_fired_event` from the
equivalent timer key (`timer_key(job, "republish", attempt, sequence)`, `job:retain`,
`job:dead_letter`), so its id depends only on the timer, and a repeat (a restart, or a timer
record an older processor wrote) is a duplicate that `apply` ignores.

Pure: the lane passes "now" in; nothing here reads a clock or does I/O.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime

from eventjobs.core.clock import add_seconds, epoch_ms
from eventjobs.core.commands import timer_fired_event
from eventjobs.core.events import JobEvent
from eventjobs.core.records import TimerKind, timer_key
from eventjobs.core.state import TERMINAL_STATUSES, JobState, JobStatus
from eventjobs.core.timer_index import TimerIndex

DEFAULT_RETAIN_COMPLETED_S = 24 * 3600.0
DEFAULT_DEAD_LETTER_RETENTION_S = 7 * 24 * 3600.0
#: A pending job's ready record is published again after this long, then after twice as long
#: each time, but never waiting longer than ``READY_REPUBLISH_CAP_S`` (1, 2, 4, 8, 16, 24, 24 ... h).
#: A re-published record of a job still waiting in a backlog (not lost) makes a second worker
#: run it (its claim is refused, its outcome ignored), so the first delay is long: only a
#: backlog older than an hour sees duplicates, while a lost record is still found the same day.
READY_REPUBLISH_FIRST_S = 3600.0
READY_REPUBLISH_CAP_S = 24 * 3600.0
#: At most this many housekeeping events per lane and pass (the rest follow in the next pass).
FIRE_BATCH = 2000


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


@dataclass(frozen=True)
class HousekeepingTimer:
    """The one housekeeping timer a job's state calls for: what it fires, when, and its timer key."""

    job_id: str
    kind: TimerKind  # "republish", "retain" or "dead_letter"
    due_at: datetime
    attempt: int
    sequence: int | None = None  # republish: which re-publish of the attempt's ready record

    @property
    def key(self) -> bytes:
        """The key a timer record of this timer would have; the fired event's id derives from it."""
        return timer_key(self.job_id, self.kind, self.attempt, self.sequence)


def housekeeping_timer(
    state: JobState, retention: Retention = Retention(), republish: ReadyRepublish = ReadyRepublish()
) -> HousekeepingTimer | None:
    """The housekeeping timer `state` calls for, or None (not pending and not finished, or due
    after the year 9999: never).

    A pending job's ready record was last published when it became pending or was re-published,
    which is its ``updated_at`` unless a change that published nothing (a new dependent, say)
    came later: `Housekeeping` then keeps the earlier due time it already had, so such changes
    never put the re-publish off (after a restart, the wait counts from the latest change). A
    finished job's retention runs from ``finished_at``, at least 1 ms (``apply`` refuses a
    retention due at, not after, ``finished_at`` as armed for an earlier finish).
    """
    status = state.status
    try:
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
        return HousekeepingTimer(state.job_id, "retain", due_at, state.attempt)
    except OverflowError:  # due after the year 9999 (or never, inf): the job is kept
        return None


class Housekeeping:
    """A lane's housekeeping timers: one per job of its table that is pending or finished.

    `track` is told every new state of the lane (None: forgotten); `due` pops what is due and
    returns the events to write. An entry is only a reminder: when it comes due, the job's
    current state is asked again, so a job that changed meanwhile fires what its state now calls
    for, or nothing. One exception keeps a re-publish from being put off: a change to a pending
    job that published nothing (same attempt and re-publish count as the state it replaces)
    keeps the entry's earlier due time, and that time is the one fired.
    """

    __slots__ = ("retention", "republish", "_index")

    def __init__(self, retention: Retention = Retention(), republish: ReadyRepublish = ReadyRepublish()) -> None:
        self.retention = retention
        self.republish = republish
        self._index = TimerIndex()  # job id bytes -> (due ms, attempt)

    def __len__(self) -> int:
        return len(self._index)

    def track(self, job_id: str, state: JobState | None, before: JobState | None = None) -> None:
        """Follow the job's new `state` (None: forgotten); `before` is the state it replaces, if known."""
        key = job_id.encode()
        timer = None if state is None else housekeeping_timer(state, self.retention, self.republish)
        if timer is None:
            self._index.delete(key)
            return
        due_ms = epoch_ms(timer.due_at)
        if (timer.kind == "republish" and before is not None and before.status is JobStatus.PENDING
                and before.attempt == timer.attempt and before.ready_republishes == timer.sequence):
            held = self._index.get(key)
            if held is not None and held[0] <= due_ms:
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

    def next_due_ms(self) -> int | None:
        return self._index.next_due_ms()

    def due(self, table: Mapping[str, JobState], now: datetime, *, actor: str,
            limit: int = FIRE_BATCH) -> list[JobEvent]:
        """The events of the timers due at `now`, for the jobs' current states in `table`.

        A popped entry whose job is gone, or whose state now calls for a later timer (or none),
        fires nothing (the later timer is tracked again); a pending job's re-publish fires at its
        entry's time even if a change since then (one that published nothing) is more recent.
        Each event's id depends only on its timer, so firing one again after a restart writes a
        duplicate; a re-publish fired again at another time is refused by its sequence.
        """
        now_ms = epoch_ms(now)
        events: list[JobEvent] = []
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
            events.append(timer_fired_event(timer.key, due_ms, timer.attempt, now=now, actor=actor))
        return events
