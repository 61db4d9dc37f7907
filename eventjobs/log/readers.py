"""Readers of the compacted topics: the latest usable record per key, read to the end.

Each admits every record through the core (`admit_*`): one that cannot be used is skipped and
reported to the caller's `BadRecords` (counted, logged once per kind), and the good ones are
kept. The app's operator calls and the schedule service read through these; the processor
restores its changelogs through `read_compacted`, which leaves the reporting to its caller.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from time import perf_counter
from typing import Any, Generic, TypeVar

from aiokafka import ConsumerRecord, TopicPartition

from eventjobs.core.refused import Refused
from eventjobs.core.partitioning import job_partition
from eventjobs.core.records import DeadLetterRecord, admit_dead_letter
from eventjobs.core.schedules import ScheduleState, admit_schedule_record, apply_schedule
from eventjobs.core.state import JobState, StateDecodeError, decode_state
from eventjobs.kafka.clients import partitions_of, read_to_end
from eventjobs.kafka.topics import TopicNames
from eventjobs.log.bad_records import BadRecords, describe_key, origin
from eventjobs.settings import Settings

T = TypeVar("T")

SLICE_S = 0.005  # longest stretch of folding records or computing ticks before the loop gets a turn


class Slices:
    """Gives the event loop a turn whenever `slice_s` of work has gone by since the last one:
    call `pause()` after each unit of work."""

    def __init__(self, slice_s: float = SLICE_S) -> None:
        self.slice_s = slice_s
        self.since = perf_counter()

    async def pause(self) -> None:
        if perf_counter() - self.since >= self.slice_s:
            await asyncio.sleep(0)
            self.since = perf_counter()


async def read_schedule_states(settings: Settings, names: TopicNames, bad: BadRecords, *,
                               schedule_id: str | None = None) -> dict[str, ScheduleState]:
    """Every schedule's state from the schedules topic (only the partition of `schedule_id` if given)."""
    partitions = await partitions_of(settings, names.schedules)
    if schedule_id is not None and partitions:
        partitions = [partitions[job_partition(schedule_id, len(partitions))]]
    states: dict[str, ScheduleState] = {}
    slices = Slices()
    async for record in read_to_end(settings, partitions):
        admitted = admit_schedule_record(record.key, record.value)
        if isinstance(admitted, Refused):
            bad.report(admitted.kind, f"{origin(record)} ({describe_key(record.key)})", admitted.reason)
        elif admitted is not None:
            states[admitted.schedule_id] = apply_schedule(states.get(admitted.schedule_id), admitted)
        await slices.pause()
    return states


async def read_dead_letters(settings: Settings, partitions: list[TopicPartition],
                            bad: BadRecords) -> dict[str, DeadLetterRecord]:
    """The dead-letter entries by job id. An entry that cannot be used (a key that is not UTF-8, a
    value that is not a dead-letter record, or one about another job than its key) is skipped:
    the newest fact of its key is unusable, so that job has no entry."""
    entries: dict[str, DeadLetterRecord | None] = {}
    async for record in read_to_end(settings, partitions):
        if record.key is None:
            continue
        admitted = admit_dead_letter(record.key, record.value)
        if isinstance(admitted, Refused):
            entries.pop(record.key.decode(errors="replace"), None)  # a key not UTF-8 names no entry listed
            bad.report(admitted.kind, f"{origin(record)} ({describe_key(record.key)})", admitted.reason)
            continue
        job_id, entry = admitted
        entries[job_id] = entry
    return {job_id: entry for job_id, entry in entries.items() if entry is not None}


async def read_control(settings: Settings, partitions: list[TopicPartition],
                       admit: Callable[[bytes | None, bytes | None], Any], bad: BadRecords) -> dict[str, Any]:
    """The latest usable record per key of a compacted control topic (a tombstone removes its key)."""
    latest: dict[str, Any] = {}
    async for record in read_to_end(settings, partitions):
        admitted = admit(record.key, record.value)
        if isinstance(admitted, Refused):
            bad.report(admitted.kind, f"{origin(record)} ({describe_key(record.key)})", admitted.reason)
            continue
        key, value = admitted
        if value is None:
            latest.pop(key, None)
        else:
            latest[key] = value
    return latest


async def read_job_states(settings: Settings, partitions: list[TopicPartition], bad: BadRecords,
                          wanted: Callable[[JobState], bool]) -> list[JobState]:
    """The current states of the job-state changelog that `wanted` accepts, oldest enqueue first."""
    found: dict[bytes, JobState] = {}
    async for record in read_to_end(settings, partitions):
        if record.key is None:
            continue
        if record.value is None:
            found.pop(record.key, None)
            continue
        try:
            state = decode_state(record.value)
        except StateDecodeError as error:
            found.pop(record.key, None)
            bad.report("undecodable state", f"{origin(record)} ({describe_key(record.key)})", str(error))
            continue
        if wanted(state):
            found[record.key] = state
        else:
            found.pop(record.key, None)
    return sorted(found.values(), key=lambda s: (s.enqueued_at, s.job_id))


@dataclass
class Compacted(Generic[T]):
    """A compacted topic read to the end by `read_compacted`."""

    latest: dict[str, T] = field(default_factory=dict)  # key (UTF-8, undecodable bytes replaced) -> its value
    # key (as written) -> its latest record and why it does not decode; the key is not in `latest`
    undecodable: dict[bytes, tuple[ConsumerRecord[bytes, bytes], Exception]] = field(default_factory=dict)


async def read_compacted(settings: Settings, partitions: list[TopicPartition], decode: Callable[[bytes], T],
                         errors: type[Exception] | tuple[type[Exception], ...], *,
                         on_undecodable: Callable[[ConsumerRecord[bytes, bytes], Exception], None] | None = None,
                         ) -> Compacted[T]:
    """The latest value per key of a compacted topic, decoded by `decode`; a tombstone removes its key.

    A record `decode` refuses (raises one of `errors`) removes its key too: that key is listed in
    `undecodable` until a later record of it comes, and `on_undecodable` (if given) is told of
    every such record as it is read. Records without a key are skipped.
    """
    read: Compacted[T] = Compacted()
    async for record in read_to_end(settings, partitions):
        if record.key is None:
            continue
        key = record.key.decode("utf-8", errors="replace")
        read.undecodable.pop(record.key, None)
        if record.value is None:
            read.latest.pop(key, None)
            continue
        try:
            read.latest[key] = decode(record.value)
        except errors as error:
            read.latest.pop(key, None)
            read.undecodable[record.key] = (record, error)
            if on_undecodable is not None:
                on_undecodable(record, error)
    return read
