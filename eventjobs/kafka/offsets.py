"""Positions in a topic's log, read from outside any consumer group.

Where the log begins and ends is where both the projection replay (read side) and the check of
the processor's job-state table (runtime) start and stop; where it stood at a time is where
`replay --since` starts.
"""

from __future__ import annotations

from datetime import datetime

from aiokafka import TopicPartition

from eventjobs.kafka.admin import TopicLayoutError
from eventjobs.kafka.clients import consumer, partitions_of
from eventjobs.settings import Settings


async def log_offsets(settings: Settings, topic: str) -> tuple[list[TopicPartition], dict[int, int], dict[int, int]]:
    """Partitions of `topic`, and per partition the first offset still in the log and the end offset."""
    partitions = await partitions_of(settings, topic)
    if not partitions:
        raise TopicLayoutError(f"the topic {topic} does not exist on {settings.kafka_bootstrap}; "
                               f"create it with `eventjobs topics apply`")
    client = consumer(settings, group_id=None)
    await client.start()
    try:
        begins = await client.beginning_offsets(partitions)
        ends = await client.end_offsets(partitions)
    finally:
        await client.stop()
    return (partitions, {tp.partition: o for tp, o in begins.items()}, {tp.partition: o for tp, o in ends.items()})


async def end_offsets(settings: Settings, topic: str, *, request_timeout_ms: int = 40_000) -> dict[int, int]:
    """Per partition of `topic`, its end offset (nothing for a topic that does not exist)."""
    client = consumer(settings, group_id=None, request_timeout_ms=request_timeout_ms)
    await client.start()
    try:
        partitions = await partitions_of(settings, topic)
        return {tp.partition: offset for tp, offset in (await client.end_offsets(partitions)).items()}
    finally:
        await client.stop()


async def offsets_at(settings: Settings, partitions: list[TopicPartition], at: datetime,
                     ends: dict[int, int]) -> dict[int, int]:
    """Per partition the first offset whose record time is at or after `at` (the end when none is)."""
    client = consumer(settings, group_id=None)
    await client.start()
    try:
        found = await client.offsets_for_times({tp: int(at.timestamp() * 1000) for tp in partitions})
    finally:
        await client.stop()
    return {tp.partition: (found[tp].offset if found.get(tp) is not None else ends[tp.partition]) for tp in partitions}
