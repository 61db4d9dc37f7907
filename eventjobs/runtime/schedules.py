"""The schedule service: enqueues the job of each periodic tick once, on time.

Design (docs/architecture.md, "Schedules"): the compacted topic `<ns>.schedules` is the truth
(`core/schedules.py`). Schedule services (one per processor process) share its partitions
through the consumer group `<ns>.schedules`; each rebuilds the schedules of the partitions it
is given by reading them from the beginning, then follows new records. For every tick due
(`core.schedules.ticks_due`, time from the injected clock) it appends the tick's `enqueued`
event through `App.append` and, once that is acknowledged, a `fired` record. A crash between
the two fires the tick again after the restart: the job id follows from the tick
(`<schedule id>@<tick>` is the idempotency key), so the processor refuses the second enqueue
as a duplicate (while the first is retained, `retain_completed`: far longer than a restart), and
exactly one job runs per tick.

At start, given the app (`eventjobs processor --app`), it writes the schedules declared on
`@app.job(every=/cron=)` (`core.schedules.declared_changes`): creates or updates them, and
deletes with a logged reason those the code no longer declares.

Bad input: a record nobody can use is skipped, counted (`skipped_records`) and logged once per
kind; a schedule whose job cannot be built (its args over the size limit, say) is reported the
same way and left alone until its definition changes. No record stops the service. Failures: a
send that fails transiently is retried after a backoff (1 s doubling to 30 s); one that cannot
be retried, or keeps failing for `GIVE_UP_S`, stops the service, and with it the process.
"""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from pydantic import ValidationError

from eventjobs.app import App, PayloadTooLarge
from eventjobs.core.clock import Clock, SystemClock
from eventjobs.core.options import InvalidJobOptions
from eventjobs.core.partitioning import job_partition
from eventjobs.core.schedules import (
    RefusedScheduleRecord,
    ScheduleDefinition,
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
from eventjobs.kafka.admin import ensure_single_topics
from eventjobs.kafka.clients import OwnershipListener, consumer, partitions_of, read_to_end
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.runtime.bad_records import BadRecords, describe_key, origin
from eventjobs.runtime.timers import transient
from eventjobs.settings import Settings

log = logging.getLogger("eventjobs.runtime.schedules")

MAX_WAIT_MS = 200  # longest sleep between two passes (new records wake the loop sooner)
FIRE_CONCURRENCY = 200  # schedules fired at once in one pass
RETRY_FIRST_S = 1.0  # backoff after a failed send of a schedule's tick: 1 s, doubling ...
RETRY_MAX_S = 30.0  # ... up to 30 s
GIVE_UP_S = 120.0  # a schedule whose sends fail this long stops the service
MAX_REPORTED = 10_000  # bad records remembered so that a re-read does not count them again


async def read_schedule_states(settings: Settings, names: TopicNames, *,
                               schedule_id: str | None = None) -> tuple[dict[str, ScheduleState], BadRecords]:
    """Every schedule's state from the schedules topic (only the partition of `schedule_id` if given)."""
    bad = BadRecords(log, f"schedules of namespace {settings.namespace!r}")
    partitions = await partitions_of(settings, names.schedules)
    if schedule_id is not None and partitions:
        partitions = [partitions[job_partition(schedule_id, len(partitions))]]
    states: dict[str, ScheduleState] = {}
    async for record in read_to_end(settings, partitions):
        admitted = admit_schedule_record(record.key, record.value)
        if isinstance(admitted, RefusedScheduleRecord):
            bad.report(admitted.kind, f"{origin(record)} ({describe_key(record.key)})", admitted.reason)
        elif admitted is not None:
            states[admitted.schedule_id] = apply_schedule(states.get(admitted.schedule_id), admitted)
    return states, bad


def declared_definitions(app: App, now: datetime) -> dict[str, ScheduleDefinition]:
    """The schedules declared on `@app.job(every=/cron=)`, by schedule id."""
    found = {}
    for name, definition in app.jobs.items():
        if definition.schedule is not None:
            schedule = app.build_schedule(name, declared=True, now=now, **definition.schedule)
            found[schedule.schedule_id] = schedule
    return found


class ScheduleService:
    """Owns schedule partitions (group `<ns>.schedules`) and fires their due ticks.

    `run_once(now)` fires what is due at `now`, so tests drive it with chosen times.
    """

    def __init__(self, settings: Settings, *, app: App | None = None, clock: Clock | None = None) -> None:
        self.settings = settings
        self.names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
        self.clock = clock or SystemClock()
        self.declaring_app = app  # the app whose declared schedules are written at start (None: none)
        self.app = app or App(settings.namespace, settings=settings, clock=self.clock)
        self.states: dict[int, dict[str, ScheduleState]] = {}  # partition -> schedule id -> state
        self.loading: dict[int, int] = {}  # partition -> end offset to reach before firing
        self.lock = asyncio.Lock()
        self.failure: BaseException | None = None
        self.bad = BadRecords(log, "schedule service")
        self.fired = 0  # ticks fired (enqueued and recorded) by this instance
        self._next: dict[str, datetime] = {}  # schedule id -> its next tick (a cache; dropped on any record)
        self._unusable: dict[str, str] = {}  # schedule id -> the definition event id whose job cannot be built
        self._retry: dict[str, tuple[int, float, float]] = {}  # schedule id -> (failures, since, next try), loop time
        self._reported: set[tuple[int, int]] = set()  # (partition, offset) of bad records counted already
        self._source: AIOKafkaConsumer | None = None
        self.actor = "schedules:" + self.app.actor.removeprefix("producer:")  # schedules:host:pid, in fired records

    @property
    def skipped_records(self) -> int:
        return self.bad.total

    # -- ownership -------------------------------------------------------------------------
    async def _take(self, assigned: list[TopicPartition]) -> None:
        async with self.lock:
            assert self._source is not None
            ends = await self._source.end_offsets(assigned)
            for tp in assigned:
                if tp.partition in self.states:
                    continue
                self.states[tp.partition] = {}
                self.loading[tp.partition] = ends[tp]
                await self._source.seek_to_beginning(tp)

    async def _release(self, revoked: list[TopicPartition]) -> None:
        async with self.lock:
            for tp in revoked:
                for schedule_id in self.states.pop(tp.partition, {}):
                    self._next.pop(schedule_id, None)
                    self._retry.pop(schedule_id, None)
                    self._unusable.pop(schedule_id, None)
                self.loading.pop(tp.partition, None)

    def _fail(self, error: BaseException) -> None:
        if self.failure is None:
            log.error("schedule service stops: %s", error)
            self.failure = error

    # -- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        self._source = source = consumer(
            self.settings, group_id=self.names.schedules_group, fetch_max_wait_ms=MAX_WAIT_MS,
            session_timeout_ms=10_000, heartbeat_interval_ms=2_000,
        )
        try:
            await ensure_single_topics(self.settings, ["schedules"])
            if self.declaring_app is not None:
                await self.write_declared()
            await source.start()
            source.subscribe([self.names.schedules], listener=OwnershipListener(self._take, self._release, self._fail))
            while not stop.is_set() and self.failure is None:
                batch = await source.getmany(timeout_ms=self.wait_ms(self.clock.now()), max_records=10_000)
                async with self.lock:
                    for tp, records in batch.items():
                        self.apply_records(tp.partition, records)
                    await self._check_loaded(source)
                    await self.run_once(self.clock.now())
            if self.failure is not None:
                raise self.failure
        finally:
            await source.stop()
            if self.declaring_app is None:
                await self.app.close()

    async def write_declared(self) -> None:
        """Make the log hold the app's declared schedules (create, update, delete the orphans)."""
        assert self.declaring_app is not None
        now = self.clock.now()
        current, _ = await read_schedule_states(self.settings, self.names)
        changes = declared_changes(declared_definitions(self.declaring_app, now), current, now=now,
                                   actor=self.actor)
        for event in changes:
            if event.type == "deleted":
                log.warning("schedule %r is deleted: %s", event.schedule_id, event.reason)
            else:
                log.info("schedule %r declared on job %r is %s", event.schedule_id, event.definition.job, event.type)
        await self.app.append_schedule_records(changes)

    def apply_records(self, partition: int, records: list[Any]) -> None:
        """Fold records read from `partition` into its schedules; skip (and count) what cannot be used."""
        states = self.states.get(partition)
        if states is None:
            return
        for record in records:
            admitted = admit_schedule_record(record.key, record.value)
            if isinstance(admitted, RefusedScheduleRecord):
                if (partition, record.offset) not in self._reported:  # read again after a rebalance: counted once
                    if len(self._reported) >= MAX_REPORTED:
                        self._reported.clear()
                    self._reported.add((partition, record.offset))
                    self.bad.report(admitted.kind, f"{origin(record)} ({describe_key(record.key)})", admitted.reason)
                continue
            if admitted is None:  # a tombstone: nothing writes them, but an operator may
                continue
            states[admitted.schedule_id] = apply_schedule(states.get(admitted.schedule_id), admitted)
            self._next.pop(admitted.schedule_id, None)
            if admitted.schedule_id in self._unusable and admitted.type not in ("fired", "triggered"):
                del self._unusable[admitted.schedule_id]  # a new definition: try it

    async def _check_loaded(self, source: AIOKafkaConsumer) -> None:
        for partition, end in list(self.loading.items()):
            if await source.position(TopicPartition(self.names.schedules, partition)) >= end:
                del self.loading[partition]
                log.info("schedule partition %d loaded: %d schedules", partition, len(self.states[partition]))

    def wait_ms(self, now: datetime) -> int:
        upcoming = [tick for tick in self._next.values() if tick > now]  # past ones: fired, or backing off
        if not upcoming:
            return MAX_WAIT_MS
        return int(max(1, min(MAX_WAIT_MS, (min(upcoming) - now).total_seconds() * 1000)))

    # -- firing ----------------------------------------------------------------------------
    def take_due(self, now: datetime) -> list[tuple[int, ScheduleDefinition, list[datetime]]]:
        """(partition, definition, ticks) of every loaded schedule with ticks due at `now`. No I/O."""
        due = []
        loop_now = asyncio.get_running_loop().time()
        for partition, states in self.states.items():
            if partition in self.loading:
                continue
            for schedule_id, state in states.items():
                definition = state.definition
                if definition is None or state.deleted or definition.paused:
                    continue
                if self._unusable.get(schedule_id) == state.updated_by:
                    continue
                retry = self._retry.get(schedule_id)
                if retry is not None and retry[2] > loop_now:
                    continue
                upcoming = self._next.get(schedule_id)
                if upcoming is None:
                    upcoming = self._next[schedule_id] = upcoming_tick(state)  # type: ignore[assignment]
                if upcoming > now:
                    continue
                ticks = ticks_due(definition, state.last_tick, now)
                if ticks:
                    due.append((partition, definition, ticks))
                else:  # only missed ticks that catch_up drops: wait for the next one
                    self._next[schedule_id] = next_tick(definition, now)
                if len(due) >= FIRE_CONCURRENCY:
                    return due
        return due

    async def run_once(self, now: datetime) -> int:
        """Fire every tick due at `now` (one task per schedule, its ticks in order); the ticks fired."""
        due = self.take_due(now)
        results = await asyncio.gather(*(self._fire(p, d, ticks) for p, d, ticks in due))
        return sum(results)

    async def _fire(self, partition: int, definition: ScheduleDefinition, ticks: list[datetime]) -> int:
        schedule_id = definition.schedule_id
        fired = 0
        for tick in ticks:
            try:
                job = tick_job(definition, tick, now=self.clock.now())
                await self.app.append([job])
            except (PayloadTooLarge, InvalidJobOptions, ValidationError) as error:  # retrying cannot help
                state = self.states.get(partition, {}).get(schedule_id)
                self._unusable[schedule_id] = (state.updated_by or "") if state is not None else ""
                self.bad.report("job cannot be built", f"schedule {schedule_id!r}", str(error))
                return fired
            except Exception as error:  # noqa: BLE001 - a send: transient ones are retried, others stop the service
                self._send_failed(schedule_id, error)
                return fired
            record = schedule_fired_event(schedule_id, tick, job.job_id, now=self.clock.now(),
                                          actor=self.actor)
            try:
                await self.app.append_schedule_records([record])
            except Exception as error:  # noqa: BLE001 - as above; the tick fires again, refused as a duplicate
                self._send_failed(schedule_id, error)
                return fired
            states = self.states.get(partition)
            if states is not None and schedule_id in states:
                states[schedule_id] = apply_schedule(states[schedule_id], record)
            self._next.pop(schedule_id, None)
            fired += 1
            self.fired += 1
        if self._retry.pop(schedule_id, None) is not None:
            log.warning("schedule %r fires again", schedule_id)
        return fired

    def _send_failed(self, schedule_id: str, error: BaseException) -> None:
        now = asyncio.get_running_loop().time()
        failures, since, _ = self._retry.get(schedule_id, (0, now, now))
        failures += 1
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** min(failures - 1, 10))
        self._retry[schedule_id] = (failures, since, now + delay)
        if not transient(error):
            self._fail(RuntimeError(f"firing schedule {schedule_id!r} failed: {error!r}"))
        elif now - since >= GIVE_UP_S:
            self._fail(RuntimeError(f"firing schedule {schedule_id!r} has failed for {now - since:.0f} s: {error!r}"))
        elif failures & (failures - 1) == 0:
            log.warning("firing schedule %r failed (%r, %d in a row); next try in %.0f s",
                        schedule_id, error, failures, delay)
