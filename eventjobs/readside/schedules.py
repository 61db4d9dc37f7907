"""The `schedules` projection: the schedules topic folded into one ClickHouse row per schedule.

Why apart from the event-log projector: schedules live on their own compacted topic
(`<ns>.schedules`), small enough to read whole. So this projection keeps no offsets: on every
start it reads the topic from the beginning, folds it with the core's `apply_schedule`, and
writes a row for every schedule a batch changed; rows replace by `version`, which never shrinks
as a schedule's state changes (a change that keeps the same times, such as a tie broken by event
id, keeps the same version), so writing one again is harmless. A record it cannot use is skipped,
counted (`skipped_records`) and logged once per kind; a schedule whose stored rule gives no tick
to compute (`0 0 30 2 *`, written by an older version or a foreign producer) gets its row with
no next tick, and is counted (`set_aside`) and logged. Nothing on the topic stops it.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from datetime import datetime
from typing import Any

import orjson
from aiokafka import TopicPartition

from eventjobs.core.refused import Refused
from eventjobs.clickhouse.backend import Backend
from eventjobs.clickhouse.backoff import Backoff
from eventjobs.clickhouse.errors import ClickHouseUnavailable
from eventjobs.core.schedules import (
    ScheduleNotComputable,
    ScheduleState,
    admit_schedule_record,
    apply_schedule,
    upcoming_tick,
)
from eventjobs.kafka.clients import consumer as kafka_consumer
from eventjobs.kafka.clients import partitions_of
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.settings import Settings

log = logging.getLogger(__name__)

COLUMNS = ("schedule_id", "job", "rule", "args", "queue", "catch_up", "paused", "declared", "last_tick",
           "last_job_id", "next_tick", "last_triggered", "updated_at", "deleted", "version")
TOPIC_WAIT_S = 5.0  # how often to look again for a schedules topic that does not exist yet


def _ms(value: datetime | None) -> int:
    return int(value.timestamp() * 1000) if value is not None else 0


def schedule_row(state: ScheduleState, upcoming: datetime | None) -> tuple[Any, ...] | None:
    """The `schedules` row of a state with its next tick (None while only its ticks are known, not
    its definition)."""
    definition = state.definition
    if definition is None:
        return None
    version = _ms(state.updated_at) + _ms(state.last_tick) + _ms(state.last_triggered)
    return (state.schedule_id, definition.job, definition.describe(), orjson.dumps(definition.args).decode(),
            definition.queue, definition.catch_up, int(definition.paused), int(definition.declared), state.last_tick,
            state.last_job_id or "", upcoming, state.last_triggered, state.updated_at, int(state.deleted), version)


class SchedulesProjection:
    """Follows `<ns>.schedules` into the `schedules` table until `stop` is set."""

    def __init__(self, backend: Backend, settings: Settings, database: str | None = None) -> None:
        self.backend = backend
        self.settings = settings
        self.database = database
        self.topic = TopicNames(settings.namespace, load_specs(settings.topics_dir)).schedules
        self.states: dict[str, ScheduleState] = {}
        self.skipped: Counter[str] = Counter()
        self.set_aside: dict[str, str] = {}  # schedule id -> why no next tick can be computed

    @property
    def skipped_records(self) -> int:
        return sum(self.skipped.values())

    def fold(self, records: list[Any]) -> list[tuple[Any, ...]]:
        """Apply records; the rows of the schedules they changed."""
        changed: dict[str, ScheduleState] = {}
        for record in records:
            admitted = admit_schedule_record(record.key, record.value)
            if isinstance(admitted, Refused):
                self.skipped[admitted.kind] += 1
                if self.skipped[admitted.kind] == 1:
                    log.error("schedules projection skipped a bad record (%s) at %s/%d@%d: %s; further records of "
                              "this kind are counted", admitted.kind, record.topic, record.partition, record.offset,
                              admitted.reason)
                continue
            if admitted is None:
                continue
            before = self.states.get(admitted.schedule_id)
            after = apply_schedule(before, admitted)
            if after != before:
                self.states[admitted.schedule_id] = changed[admitted.schedule_id] = after
        return [row for row in map(self._row, changed.values()) if row is not None]

    def _row(self, state: ScheduleState) -> tuple[Any, ...] | None:
        """Its row; a schedule whose next tick cannot be computed is noted in `set_aside` (the first
        and every power of ten logged) and its row shows none."""
        try:
            upcoming = upcoming_tick(state)
        except ScheduleNotComputable as error:
            upcoming = None
            if state.schedule_id not in self.set_aside:
                self.set_aside[state.schedule_id] = str(error)
                count = len(self.set_aside)
                if str(count).rstrip("0") == "1":
                    log.error("schedules projection: %s; its row shows no next tick (%d such schedules)", error, count)
        else:
            self.set_aside.pop(state.schedule_id, None)
        return schedule_row(state, upcoming)

    def write(self, rows: list[tuple[Any, ...]]) -> None:
        if rows:
            self.backend.insert("schedules", COLUMNS, [list(column) for column in zip(*rows, strict=True)], database=self.database)

    async def run(self, stop: asyncio.Event) -> None:
        partitions = await self._partitions(stop)
        if not partitions:
            return
        reader = kafka_consumer(self.settings, group_id=None, enable_auto_commit=False)
        try:
            await reader.start()
            reader.assign(partitions)
            await reader.seek_to_beginning(*partitions)
            while not stop.is_set():
                fetched = await reader.getmany(timeout_ms=500, max_records=10_000)
                rows = self.fold([record for batch in fetched.values() for record in batch])
                await self._write_retrying(rows, stop)
        finally:
            await reader.stop()

    async def _partitions(self, stop: asyncio.Event) -> list[TopicPartition]:
        """The topic's partitions, waiting while it does not exist (a schedule service creates it)."""
        while not stop.is_set():
            partitions = await partitions_of(self.settings, self.topic)
            if partitions:
                return partitions
            try:
                await asyncio.wait_for(stop.wait(), TOPIC_WAIT_S)
            except TimeoutError:
                pass
        return []

    async def _write_retrying(self, rows: list[tuple[Any, ...]], stop: asyncio.Event) -> None:
        backoff = Backoff()
        while rows and not stop.is_set():
            try:
                await asyncio.to_thread(self.write, rows)
                return
            except ClickHouseUnavailable as error:
                delay = backoff.next_delay_s()
                log.warning("ClickHouse unavailable (%s); schedules are written again in %.1f s", error, delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                except TimeoutError:
                    pass
