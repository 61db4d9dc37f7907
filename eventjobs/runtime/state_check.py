"""Check the processor's job-state table against the event log, and correct it (`replay --state`).

The processor keeps every job's state in memory, backed by the compacted changelog
`<ns>.job-state`. Because the log is the source of truth, that table must equal the fold of the
log; this module proves it or shows where it does not. The events topic is folded with the
core's `apply` exactly as the processor folds it (same decoding, same key check), up to the
offsets the processor's group committed, and compared with the changelog. Corrections (the
folded state, or a tombstone for a job the log does not know) are written only for jobs that
differ, and only while the processor's consumer group has no members: a running processor holds
its table in memory and would overwrite or ignore them.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from eventjobs.core.codec import admit
from eventjobs.core.refused import Refused
from eventjobs.core.fold import apply
from eventjobs.core.state import JobState, decode_state, encode_state
from eventjobs.kafka.clients import admin_client, consumer, job_partition, partitions_of, producer, read_to_end
from eventjobs.kafka.offsets import log_offsets
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.settings import Settings

log = logging.getLogger(__name__)

Progress = Callable[[int, int], None]


class ProcessorRunning(RuntimeError):
    """Corrections are refused: the processor's consumer group has members."""


@dataclass
class StateDifference:
    job_id: str
    partition: int
    kind: str  # "missing" (not in the changelog), "extra" (changelog only), "different"
    fields: list[str]
    folded: JobState | None
    changelog: JobState | None


@dataclass
class StateComparison:
    """The fold of the events topic against the processor's compacted changelog."""

    jobs_folded: int
    jobs_in_changelog: int
    events: int
    fold_until: dict[int, int]
    bounded_by_group: bool
    elapsed_s: float
    differences: list[StateDifference] = field(default_factory=list)
    undecodable_changelog_records: int = 0

    @property
    def identical(self) -> bool:
        return not self.differences


def _names(settings: Settings) -> TopicNames:
    return TopicNames(settings.namespace, load_specs(settings.topics_dir))


async def processor_group_members(settings: Settings) -> list[str]:
    """Client ids of the members of the processor's consumer group (empty: none)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([_names(settings).processor_group])
    finally:
        await admin.close()
    members: list[str] = []
    for response in responses:
        for group in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members[, authorized ops])
            for member in group[5]:
                members.append(f"{member[0]} ({member[2]}{member[3]})" if len(member) > 3 else str(member[0]))
    return members


async def processor_committed(settings: Settings, partitions: list[TopicPartition]) -> dict[int, int]:
    """Offsets the processor's group committed on the events topic (partitions without one are left out)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(_names(settings).processor_group, partitions=partitions)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def fold_events(settings: Settings, partitions: list[TopicPartition], begins: dict[int, int],
                      until: dict[int, int], progress: Progress | None = None
                      ) -> tuple[dict[str, tuple[int, JobState]], int]:
    """Fold the events topic up to `until` as the processor does: job id -> (partition, state)."""
    states: dict[str, tuple[int, JobState]] = {}
    total = sum(max(0, until[p] - begins.get(p, 0)) for p in until)
    remaining = [tp for tp in partitions if until.get(tp.partition, 0) > begins.get(tp.partition, 0)]
    events = 0
    reader = consumer(settings, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
    await reader.start()
    try:
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        max_bytes = settings.max_event_bytes
        while remaining:
            batch = await reader.getmany(*remaining, timeout_ms=500, max_records=20_000)
            for tp, records in batch.items():
                end = until[tp.partition]
                for record in records:
                    if record.offset >= end:
                        break
                    events += 1
                    _fold_record(states, record, max_bytes, len(partitions))
            position = {tp.partition: await reader.position(tp) for tp in partitions}
            remaining = [tp for tp in remaining if position[tp.partition] < until[tp.partition]]
            if progress is not None:
                progress(sum(max(0, min(position[p], end) - begins.get(p, 0)) for p, end in until.items()), total)
    finally:
        await reader.stop()
    return states, events


def _fold_record(states: dict[str, tuple[int, JobState]], record: ConsumerRecord[bytes, bytes], max_bytes: int,
                 partition_count: int | None = None) -> None:
    """One record as `processor.fold_batch` takes it: tombstones, undecodable and mis-keyed ones are skipped,
    and so is an event of a job not held on the record's partition that belongs on another one
    (`job_partition`): the processor moved it there, and the copy is folded where it was written."""
    event = admit(record.value, record.key, max_bytes=max_bytes)  # the processor's admission rules, size budgets included
    if isinstance(event, Refused):
        return
    before = states.get(event.job_id)
    if (partition_count and (before is None or before[0] != record.partition)
            and job_partition(event.job_id, partition_count) != record.partition):
        return
    decision = apply(before[1] if before else None, event, actor=f"processor:{record.partition}")
    if decision.state is not None and (before is None or decision.state is not before[1]):
        states[event.job_id] = (record.partition, decision.state)


async def read_changelog(settings: Settings) -> tuple[dict[str, tuple[int, JobState]], int]:
    """The compacted changelog's latest state per job (and how many records did not decode)."""
    partitions = await partitions_of(settings, _names(settings).job_state)
    table: dict[str, tuple[int, JobState]] = {}
    bad = 0
    async for record in read_to_end(settings, partitions, stall_timeout_s=600):
        if record.key is None:
            continue
        key = record.key.decode()
        if record.value is None:
            table.pop(key, None)
            continue
        try:
            table[key] = (record.partition, decode_state(record.value))
        except ValueError:
            bad += 1
    return table, bad


def _differing_fields(a: JobState, b: JobState) -> list[str]:
    return [name for name in type(a).model_fields if getattr(a, name) != getattr(b, name)]


async def compare_state(settings: Settings, *, progress: Progress | None = None) -> StateComparison:
    """Fold the events topic (up to the processor's committed offsets) and compare with the changelog."""
    started = time.perf_counter()
    partitions, begins, ends = await log_offsets(settings, _names(settings).events)
    committed = await processor_committed(settings, partitions)
    until = {p: committed.get(p, end) for p, end in ends.items()}
    folded, events = await fold_events(settings, partitions, begins, until, progress)
    changelog, bad = await read_changelog(settings)
    differences: list[StateDifference] = []
    for job_id in sorted(folded.keys() | changelog.keys()):
        mine, theirs = folded.get(job_id), changelog.get(job_id)
        if theirs is None:
            assert mine is not None
            differences.append(StateDifference(job_id, mine[0], "missing", [], mine[1], None))
        elif mine is None:
            differences.append(StateDifference(job_id, theirs[0], "extra", [], None, theirs[1]))
        elif encode_state(mine[1]) != encode_state(theirs[1]) or mine[0] != theirs[0]:
            fields = _differing_fields(mine[1], theirs[1]) or (["partition"] if mine[0] != theirs[0] else [])
            differences.append(StateDifference(job_id, mine[0], "different", fields, mine[1], theirs[1]))
    return StateComparison(len(folded), len(changelog), events, until, bool(committed),
                           time.perf_counter() - started, differences, bad)


async def ensure_processor_stopped(settings: Settings) -> None:
    """Raise `ProcessorRunning` while the processor's consumer group has members."""
    members = await processor_group_members(settings)
    if members:
        raise ProcessorRunning(
            f"the processor group {_names(settings).processor_group} has {len(members)} member(s) "
            f"({', '.join(members[:3])}): a running processor keeps the job states in memory and would "
            f"overwrite the corrections; stop every processor, then run the replay again"
        )


async def write_state_corrections(settings: Settings, comparison: StateComparison) -> int:
    """Write the folded state (or a tombstone) for every differing job; refuses while the processor runs."""
    await ensure_processor_stopped(settings)
    changelog = _names(settings).job_state
    client = producer(settings, linger_ms=20)
    await client.start()
    try:
        futures = []
        for diff in comparison.differences:
            value = encode_state(diff.folded) if diff.folded is not None else None
            futures.append(await client.send(changelog, value, key=diff.job_id.encode(), partition=diff.partition))
        await asyncio.gather(*futures)
    finally:
        await client.stop()
    if await processor_group_members(settings):
        log.warning("a processor joined while the corrections were written; compare again once it settled")
    return len(comparison.differences)
