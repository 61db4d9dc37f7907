"""The schedule service: enqueues the job of each periodic tick once, on time.

Design (docs/architecture.md, "Schedules"): the compacted topic `<ns>.schedules` is the truth
(`core/schedules.py`). Schedule services (one per processor process) share its partitions
through the consumer group `<ns>.schedules`; each rebuilds the schedules of the partitions it
is given by reading them from the beginning, then follows new records. For every tick due
(`core.schedules.ticks_due`, time from the injected clock) it appends the tick's `enqueued`
event through its `LogWriter` and, once that is acknowledged, a `fired` record. A crash between
the two fires the tick again after the restart: the job id follows from the tick
(`<schedule id>@<tick>` is the idempotency key), so the processor refuses the second enqueue
as a duplicate (while the first is retained, `retain_completed`: far longer than a restart), and
exactly one job runs per tick.

At start, given the app's jobs (`eventjobs processor --app`), it writes the schedules declared on
`@app.job(every=/cron=)` (`core.schedules.declared_changes`): creates or updates them, and
deletes with a logged reason those the code no longer declares.

Scale: the service shares its event loop with the lifecycle processor and its heartbeats, so no
step may hold the loop long. Each loaded partition keeps a due-time index (`TimerIndex`) of when
to look at each schedule next, so a pass pops only the schedules that are due. A schedule's next
tick is computed when its records change (or its partition finished loading, or it fired) and
put on a queue; passes work through that queue, and through the records they fold, in slices
of `SLICE_S` that yield to the loop in between. From a partition's take until every owned
partition is loaded and computed the cyclic collector is paused, and what the load made is then
frozen (`runtime.gc_pause.LoadPause`): its scans of the growing heap were the longest stalls left.

Bad input: a record nobody can use is skipped, counted (`skipped_records`) and logged once per
kind. A schedule is set aside, reported the same way and counted in the metric
`eventjobs_schedules_set_aside{reason}`, until its definition changes: one whose ticks cannot be
computed (a stored rule such as `0 0 30 2 *`, `SET_ASIDE_UNCOMPUTABLE`), or whose job cannot be
built (its args over the size limit, `SET_ASIDE_UNBUILDABLE`). No record stops the service.
Failures: a send that fails transiently is retried after a backoff (1 s doubling to 30 s); one
that cannot be retried, or keeps failing for `GIVE_UP_S`, stops the service, and with it the
process.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Iterator, Mapping
from datetime import datetime
from functools import partial
from time import perf_counter
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from eventjobs.core.refused import Refused
from eventjobs.core.clock import Clock, SystemClock, epoch_ms
from eventjobs.runtime.gc_pause import LoadPause
from eventjobs.core.options import InvalidJobOptions
from eventjobs.core.schedules import (
    ScheduleDefinition,
    ScheduleNotComputable,
    ScheduleState,
    admit_schedule_record,
    apply_schedule,
    declared_changes,
    next_tick,
    schedule_fired_event,
    ticks_due,
    tick_job,
    upcoming_tick,
)
from eventjobs.core.timer_index import TimerIndex
from eventjobs.kafka.admin import ensure_single_topics
from eventjobs.kafka.clients import OwnershipListener, consumer
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.log.bad_records import BadRecords, describe_key, origin
from eventjobs.log.readers import SLICE_S, Slices, read_schedule_states
from eventjobs.log.writer import LogWriter, PayloadTooLarge, producer_actor
from eventjobs.metrics import Metrics
from eventjobs.runtime.supervisor import Supervised
from eventjobs.registry import JobDefinition, build_schedule
from eventjobs.runtime.timers import transient
from eventjobs.settings import Settings

log = logging.getLogger("eventjobs.runtime.schedules")

MAX_WAIT_MS = 200  # longest sleep between two passes (new records wake the loop sooner)
FIRE_CONCURRENCY = 200  # schedules fired at once in one pass
PASS_SETTLE_S = 0.25  # most time a pass spends computing next ticks before it fires what is due
RETRY_FIRST_S = 1.0  # backoff after a failed send of a schedule's tick: 1 s, doubling ...
RETRY_MAX_S = 30.0  # ... up to 30 s
GIVE_UP_S = 120.0  # a schedule whose sends fail this long stops the service
MAX_REPORTED = 10_000  # bad records remembered so that a re-read does not count them again
#: Why a schedule is set aside (the `reason` label of `eventjobs_schedules_set_aside`: these two only).
SET_ASIDE_UNCOMPUTABLE = "ticks cannot be computed"
SET_ASIDE_UNBUILDABLE = "job cannot be built"
SET_ASIDE_REASONS = (SET_ASIDE_UNCOMPUTABLE, SET_ASIDE_UNBUILDABLE)


def declared_definitions(jobs: Mapping[str, JobDefinition], now: datetime,
                         actor: str) -> dict[str, ScheduleDefinition]:
    """The schedules declared on `@app.job(every=/cron=)`, by schedule id."""
    found = {}
    for definition in jobs.values():
        if definition.schedule is not None:
            schedule = build_schedule(definition, None, declared=True, now=now, actor=actor, **definition.schedule)
            found[schedule.schedule_id] = schedule
    return found


class ScheduleService(Supervised):
    """Owns schedule partitions (group `<ns>.schedules`) and fires their due ticks.

    `run_once(now)` fires what is due at `now`, so tests drive it with chosen times.
    """

    def __init__(self, settings: Settings, *, jobs: Mapping[str, JobDefinition] | None = None,
                 writer: LogWriter | None = None, clock: Clock | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
        self.clock = clock or SystemClock()
        self.declared_jobs = jobs  # the app's jobs, whose declared schedules are written at start (None: none)
        self.own_writer = writer is None  # a writer of its own is closed when the service stops
        self.writer = writer or LogWriter(settings, self.names, owner="schedule service")
        self.states: dict[int, dict[str, ScheduleState]] = {}  # partition -> schedule id -> state
        self.loading: dict[int, int] = {}  # partition -> end offset to reach before firing
        self.due: dict[int, TimerIndex] = {}  # partition -> when to look at each schedule next (ms)
        self.lock = asyncio.Lock()
        self._supervise_as("schedule service", log)
        self.bad = BadRecords(log, "schedule service", count=metrics.skipped if metrics is not None else None)
        self.fired = 0  # ticks fired (enqueued and recorded) by this instance
        self._unsettled: deque[tuple[int, Iterator[str]]] = deque()  # schedules whose next look is to be computed
        self._set_aside: dict[str, tuple[str, str]] = {}  # schedule id -> (its definition event id, reason)
        self._retry: dict[str, tuple[int, int, int]] = {}  # schedule id -> (failures, since ms, next try ms)
        self._reported: set[tuple[int, int]] = set()  # (partition, offset) of bad records counted already
        self._source: AIOKafkaConsumer | None = None
        self._load_pause = LoadPause()  # the collector, off from a take until it is loaded and computed
        self.actor = "schedules:" + producer_actor().removeprefix("producer:")  # schedules:host:pid, in fired records
        if metrics is not None:
            for reason in SET_ASIDE_REASONS:
                metrics.gauge_from(metrics.schedules_set_aside.labels(reason), partial(self.set_aside, reason))

    @property
    def skipped_records(self) -> int:
        return self.bad.total

    def set_aside(self, reason: str | None = None) -> int:
        """Schedules set aside now (for `reason`, or for any)."""
        return sum(1 for _, why in list(self._set_aside.values()) if reason is None or why == reason)

    # -- ownership -------------------------------------------------------------------------
    async def _take(self, assigned: list[TopicPartition]) -> None:
        async with self.lock:
            assert self._source is not None
            ends = await self._source.end_offsets(assigned)
            for tp in assigned:
                if tp.partition in self.states:
                    continue
                self._load_pause.start()
                self.states[tp.partition] = {}
                self.due[tp.partition] = TimerIndex()
                self.loading[tp.partition] = ends[tp]
                await self._source.seek_to_beginning(tp)

    async def _release(self, revoked: list[TopicPartition]) -> None:
        async with self.lock:
            for tp in revoked:
                for schedule_id in self.states.pop(tp.partition, {}):
                    self._retry.pop(schedule_id, None)
                    self._set_aside.pop(schedule_id, None)
                self.due.pop(tp.partition, None)
                self.loading.pop(tp.partition, None)

    # -- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._source = source = consumer(
            self.settings, group_id=self.names.schedules_group, fetch_max_wait_ms=MAX_WAIT_MS,
            session_timeout_ms=10_000, heartbeat_interval_ms=2_000,
        )
        try:
            await ensure_single_topics(self.settings, ["schedules"])
            if self.declared_jobs is not None:
                await self.write_declared()
            await source.start()
            source.subscribe([self.names.schedules], listener=OwnershipListener(self._take, self._release, self._fail))
            while not stop.is_set() and self.failure is None:
                batch = await source.getmany(timeout_ms=self.wait_ms(self.clock.now()), max_records=10_000)
                async with self.lock:
                    for tp, records in batch.items():
                        await self.apply_records(tp.partition, records)
                    await self._check_loaded(source)
                    await self.run_once(self.clock.now())
            if self.failure is not None:
                raise self.failure
        finally:
            self._load_pause.end()
            await source.stop()
            if self.own_writer:
                await self.writer.close()

    async def write_declared(self) -> None:
        """Make the log hold the app's declared schedules (create, update, delete the orphans)."""
        assert self.declared_jobs is not None
        now = self.clock.now()
        current = await read_schedule_states(self.settings, self.names,
                                              BadRecords(log, f"schedules of namespace {self.settings.namespace!r}"))
        changes = declared_changes(declared_definitions(self.declared_jobs, now, self.actor), current, now=now,
                                   actor=self.actor)
        for event in changes:
            if event.type == "deleted":
                log.warning("schedule %r is deleted: %s", event.schedule_id, event.reason)
            else:
                log.info("schedule %r declared on job %r is %s", event.schedule_id, event.definition.job, event.type)
        await self.writer.append_schedule_records(changes)

    async def apply_records(self, partition: int, records: list[Any]) -> None:
        """Fold records read from `partition` into its schedules; skip (and count) what cannot be used.

        A changed schedule leaves the due index at once (a pause stops it firing) and waits for
        its next tick to be computed; while the partition is still loading nothing is computed.
        """
        states = self.states.get(partition)
        index = self.due.get(partition)
        if states is None or index is None:
            return
        changed: list[str] = []
        slices = Slices()
        for record in records:
            await slices.pause()
            admitted = admit_schedule_record(record.key, record.value)
            if isinstance(admitted, Refused):
                if (partition, record.offset) not in self._reported:  # read again after a rebalance: counted once
                    if len(self._reported) >= MAX_REPORTED:
                        self._reported.clear()
                    self._reported.add((partition, record.offset))
                    self.bad.report(admitted.kind, f"{origin(record)} ({describe_key(record.key)})", admitted.reason)
                continue
            if admitted is None:  # a tombstone: nothing writes them, but an operator may
                continue
            schedule_id = admitted.schedule_id
            before = states.get(schedule_id)
            after = states[schedule_id] = apply_schedule(before, admitted)
            if after is before:  # e.g. our own `fired` record read back
                continue
            if schedule_id in self._set_aside and admitted.type not in ("fired", "triggered"):
                del self._set_aside[schedule_id]  # a new definition: try it
            if partition not in self.loading:
                index.delete(schedule_id.encode())
                changed.append(schedule_id)
        if changed:
            self._unsettled.append((partition, iter(changed)))

    async def _check_loaded(self, source: AIOKafkaConsumer) -> None:
        for partition, end in list(self.loading.items()):
            if await source.position(TopicPartition(self.names.schedules, partition)) >= end:
                del self.loading[partition]
                states = self.states[partition]
                self._unsettled.append((partition, iter(list(states))))
                log.info("schedule partition %d loaded: %d schedules", partition, len(states))

    def wait_ms(self, now: datetime) -> int:
        """How long the loop may wait for records before the next pass: 0 while next ticks are
        still to be computed, else until the earliest schedule is due (at most `MAX_WAIT_MS`)."""
        if self._unsettled:
            return 0
        due = [ms for partition, index in self.due.items() if partition not in self.loading
               and (ms := index.next_due_ms()) is not None]
        if not due:
            return MAX_WAIT_MS
        return int(max(0, min(MAX_WAIT_MS, min(due) - epoch_ms(now))))

    # -- when each schedule is due -----------------------------------------------------------
    async def settle(self, budget_s: float = PASS_SETTLE_S) -> None:
        """Compute when to look next at the schedules waiting for it (their next tick), `SLICE_S`
        at a time with the loop's turn in between, for at most `budget_s`."""
        started = perf_counter()
        slices = Slices()
        while self._unsettled:
            partition, schedule_ids = self._unsettled[0]
            for schedule_id in schedule_ids:
                self._settle_one(partition, schedule_id)
                await slices.pause()
                if perf_counter() - started >= budget_s:
                    return
            self._unsettled.popleft()
        if not self.loading:
            self._load_pause.end()

    def _settle_one(self, partition: int, schedule_id: str) -> None:
        states = self.states.get(partition)
        index = self.due.get(partition)
        state = states.get(schedule_id) if states is not None else None
        if state is None or index is None or partition in self.loading:
            return  # released (or taken again and loading) since it was queued
        key = schedule_id.encode()
        if not self._firing(schedule_id, state):
            index.delete(key)
            return
        try:
            upcoming = upcoming_tick(state)
        except ScheduleNotComputable as error:
            index.delete(key)
            self._put_aside(schedule_id, state, SET_ASIDE_UNCOMPUTABLE, str(error))
            return
        assert upcoming is not None
        retry = self._retry.get(schedule_id)
        index.set(key, max(epoch_ms(upcoming), retry[2] if retry is not None else 0), 0)

    def _firing(self, schedule_id: str, state: ScheduleState) -> bool:
        """A live, unpaused schedule that is not set aside for its current definition."""
        definition = state.definition
        if definition is None or state.deleted or definition.paused:
            return False
        aside = self._set_aside.get(schedule_id)
        return aside is None or aside[0] != state.updated_by

    def _put_aside(self, schedule_id: str, state: ScheduleState | None, reason: str, details: str) -> None:
        self._set_aside[schedule_id] = ((state.updated_by or "") if state is not None else "", reason)
        self.bad.report(reason, f"schedule {schedule_id!r}", f"{details}; it is set aside until its definition changes")

    # -- firing ----------------------------------------------------------------------------
    def take_due(self, now: datetime) -> list[tuple[int, ScheduleDefinition, list[datetime]]]:
        """(partition, definition, ticks) of the schedules due at `now`, taken from the due
        indexes: at most `FIRE_CONCURRENCY`, and no more than `SLICE_S` of work (the rest stays
        due for the next pass). No I/O."""
        due: list[tuple[int, ScheduleDefinition, list[datetime]]] = []
        now_ms = epoch_ms(now)
        started = perf_counter()
        for partition, index in self.due.items():
            if partition in self.loading:
                continue
            states = self.states[partition]
            while len(due) < FIRE_CONCURRENCY and perf_counter() - started < SLICE_S:
                popped = index.pop_due(now_ms, 1)
                if not popped:
                    break
                schedule_id = popped[0][0].decode()
                state = states.get(schedule_id)
                if state is None or not self._firing(schedule_id, state):
                    continue
                definition = state.definition
                assert definition is not None
                try:
                    ticks = ticks_due(definition, state.last_tick, now)
                    if not ticks:  # only missed ticks that catch_up drops: wait for the next one
                        index.set(popped[0][0], epoch_ms(next_tick(definition, now)), 0)
                        continue
                except ScheduleNotComputable as error:
                    self._put_aside(schedule_id, state, SET_ASIDE_UNCOMPUTABLE, str(error))
                    continue
                due.append((partition, definition, ticks))
        return due

    async def run_once(self, now: datetime) -> int:
        """Compute pending next ticks (within a budget), then fire every tick due at `now` (one
        task per schedule, its ticks in order); the ticks fired."""
        await self.settle()
        due = self.take_due(now)
        results = await asyncio.gather(*(self._fire(p, d, ticks) for p, d, ticks in due))
        return sum(results)

    async def _fire(self, partition: int, definition: ScheduleDefinition, ticks: list[datetime]) -> int:
        schedule_id = definition.schedule_id
        fired = 0
        for tick in ticks:
            try:
                job = tick_job(definition, tick, now=self.clock.now())
                await self.writer.append([job])
            except (PayloadTooLarge, InvalidJobOptions, ValidationError) as error:  # retrying cannot help
                self._put_aside(schedule_id, self.states.get(partition, {}).get(schedule_id), SET_ASIDE_UNBUILDABLE,
                                str(error))
                return fired
            except Exception as error:  # noqa: BLE001 - a send: transient ones are retried, others stop the service
                self._send_failed(partition, schedule_id, error)
                return fired
            record = schedule_fired_event(schedule_id, tick, job.job_id, now=self.clock.now(),
                                          actor=self.actor)
            try:
                await self.writer.append_schedule_records([record])
            except Exception as error:  # noqa: BLE001 - as above; the tick fires again, refused as a duplicate
                self._send_failed(partition, schedule_id, error)
                return fired
            states = self.states.get(partition)
            if states is not None and schedule_id in states:
                states[schedule_id] = apply_schedule(states[schedule_id], record)
            fired += 1
            self.fired += 1
        if self._retry.pop(schedule_id, None) is not None:
            log.warning("schedule %r fires again", schedule_id)
        self._unsettled.append((partition, iter((schedule_id,))))
        return fired

    def _send_failed(self, partition: int, schedule_id: str, error: BaseException) -> None:
        now = epoch_ms(self.clock.now())
        failures, since, _ = self._retry.get(schedule_id, (0, now, now))
        failures += 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(failures - 1, 10))
        self._retry[schedule_id] = (failures, since, now + int(delay * 1000))
        index = self.due.get(partition)
        if index is not None:
            index.set(schedule_id.encode(), now + int(delay * 1000), 0)
        if not transient(error):
            self._fail(RuntimeError(f"firing schedule {schedule_id!r} failed: {error!r}"))
        elif now - since >= GIVE_UP_S * 1000:
            self._fail(RuntimeError(f"firing schedule {schedule_id!r} has failed for {(now - since) / 1000:.0f} s: "
                                    f"{error!r}"))
        elif failures & (failures - 1) == 0:
            log.warning("firing schedule %r failed (%r, %d in a row); next try in %.0f s",
                        schedule_id, error, failures, delay)
