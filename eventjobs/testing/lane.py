"""An in-memory event log with the processor's fold and timers: the kit's stand-in for Kafka.

Why this module exists: a user's test must see what production would do with the events its
handlers cause, without a broker. ``MemoryLane`` does what the lifecycle processor and the timer
service do for one partition, with the same core functions and nothing of its own: every event
written is folded by ``apply``, ``effects.collect`` says what the new state calls for (a ready
attempt, timers to arm or cancel, a dead-letter entry), timers fire through
``timer_fired_event`` (the timer service's builder) and the lane's ``Housekeeping`` (lease,
re-publish and retention). Events the processor derives for another job (``LINKED_TYPES``: dependency
requests and answers, slot grants) are applied to that job at once, and a concurrency limit's slot
requests and releases to its key's slot table (``slots.apply_slot``); the other derived events follow their
cause in the log (the processor applied them already, so folding them again changes nothing).

Synchronous and pure but for its own tables: the caller says what time it is.
"""

from __future__ import annotations

from collections import deque
from datetime import datetime

from eventjobs.core.clock import epoch_ms
from eventjobs.core.commands import timer_fired_event
from eventjobs.core.effects import Effects, collect
from eventjobs.core.events import LINKED_TYPES, SLOT_OWNER_TYPES, JobEvent
from eventjobs.core.fold import apply
from eventjobs.core.housekeeping import Housekeeping, Retention
from eventjobs.core.records import DeadLetterRecord, ReadyRecord
from eventjobs.core.slots import SlotTable, apply_slot
from eventjobs.core.state import JobState, JobStatus
from eventjobs.core.timer_index import TimerIndex

PROCESSOR_ACTOR = "processor:testing"
TIMER_ACTOR = "timers:testing"


class MemoryLane:
    """One in-memory log and everything the processor and the timer service keep about it."""

    def __init__(self, retention: Retention = Retention()) -> None:
        self.events: list[JobEvent] = []  # the log, in order: written events and derived ones
        self.rejected: list[tuple[JobEvent, str]] = []  # events the fold refused, with its reason
        self.states: dict[str, JobState] = {}  # the processor's table (forgotten jobs leave it)
        self.last_states: dict[str, JobState] = {}  # every job's latest state, forgotten ones too
        self.dead_letters: dict[str, DeadLetterRecord] = {}  # the dead-letter topic, by job id
        self._ready: list[ReadyRecord] = []  # ready records not yet taken, in publish order
        self._timers = TimerIndex()  # the timer topic: run_at, retry and ttl timers
        self._housekeeping = Housekeeping(retention)  # the lane's lease, re-publish and retention timers
        self.slot_tables: dict[str, SlotTable] = {}  # concurrency limits: each key owner's table

    def write(self, event: JobEvent) -> None:
        """Append ``event`` to the log and fold it (and what it makes the processor derive)."""
        linked: deque[JobEvent] = deque([event])
        while linked:
            self._fold(linked.popleft(), linked)

    def _fold(self, event: JobEvent, linked: deque[JobEvent]) -> None:
        if event.type in SLOT_OWNER_TYPES:  # to a concurrency limit's owner: its slot table decides
            slot = apply_slot(self.slot_tables.get(event.job_id), event, actor=PROCESSOR_ACTOR)
            self.events.append(event)
            if slot.table is not None:
                self.slot_tables[event.job_id] = slot.table
            linked.extend(slot.derived)
            return
        before = self.states.get(event.job_id)
        decision = apply(before, event, actor=PROCESSOR_ACTOR)
        self.events.append(event)
        if decision.rejected is not None and not decision.duplicate:
            self.rejected.append((event, decision.rejected))
        effects = Effects()
        collect(effects, before, decision, event)
        for derived in effects.events:
            if derived.type in LINKED_TYPES:
                linked.append(derived)  # another job's event: its lane applies it
            else:
                self.events.append(derived)
        for job_id, state in effects.states.items():
            if state is None:
                self.states.pop(job_id, None)
            else:
                self.states[job_id] = self.last_states[job_id] = state
            self._housekeeping.track(job_id, state, before if job_id == event.job_id else None)
        for key, timer in effects.timers.items():
            if timer is None:
                self._timers.delete(key)
            else:
                self._timers.set(key, epoch_ms(timer.due_at), timer.attempt)
        for job_id, entry in effects.dead_letters.items():
            if entry is None:
                self.dead_letters.pop(job_id, None)
            else:
                self.dead_letters[job_id] = entry
        revoked = {(ready.job_id, ready.attempt) for ready in effects.revoked}
        if revoked:
            self._ready = [ready for ready in self._ready if (ready.job_id, ready.attempt) not in revoked]
        self._ready.extend(effects.ready)

    def fire_due(self, now: datetime) -> list[JobEvent]:
        """Fire every timer due at ``now``, as the timer service and the lane's housekeeping
        would; returns the events they wrote."""
        fired: list[JobEvent] = []
        while True:
            due = self._timers.pop_due(epoch_ms(now))
            events: list[JobEvent] = [
                timer_fired_event(key, due_ms, attempt, now=now, actor=TIMER_ACTOR) for key, due_ms, attempt in due]
            events += self._housekeeping.due(self.states, now, actor=PROCESSOR_ACTOR)
            if not events:
                return fired
            for event in events:
                self.write(event)
            fired += events

    def next_due_ms(self, *, housekeeping: bool = True) -> int | None:
        """When the next timer is due (epoch ms; the lane's lease, re-publish and retention timers
        only if ``housekeeping``), or None."""
        times = [self._timers.next_due_ms()]
        if housekeeping:
            times.append(self._housekeeping.next_due_ms())
        pending = [ms for ms in times if ms is not None]
        return min(pending) if pending else None

    def take_ready(self, job_id: str | None = None) -> ReadyRecord | None:
        """The most urgent ready attempt (of ``job_id`` only, if given), removed from the ready
        records; records of attempts that may no longer run are dropped on the way, as a
        worker's claim of them would be refused."""
        self._ready = [ready for ready in self._ready if self._runnable(ready)]
        candidates = [ready for ready in self._ready if job_id is None or ready.job_id == job_id]
        if not candidates:
            return None
        chosen = min(candidates, key=lambda ready: ready.priority.rank)  # the first of the most urgent
        self._ready.remove(chosen)
        self._ready = [ready for ready in self._ready if (ready.job_id, ready.attempt) != (chosen.job_id, chosen.attempt)]
        return chosen

    def _runnable(self, ready: ReadyRecord) -> bool:
        state = self.states.get(ready.job_id)
        return state is not None and state.status is JobStatus.PENDING and state.attempt == ready.attempt
