"""Test helpers: write a realistic event log to Kafka fast, and fold it the way the core does."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from eventjobs.core.codec import encode
from eventjobs.core.events import JobEvent
from eventjobs.kafka.clients import producer
from eventjobs.readside.projector import events_topic
from eventjobs.settings import Settings


async def produce_events(settings: Settings, events: Sequence[JobEvent | bytes], *, keys: Sequence[bytes] | None = None,
                         chunk: int = 5000) -> None:
    """Append `events` (models, or raw bytes with `keys`) to the event log, keyed by job id, in order."""
    client = producer(settings, linger_ms=20, max_batch_size=1024 * 1024, compression_type=None)
    await client.start()
    topic = events_topic(settings)
    try:
        for start in range(0, len(events), chunk):
            futures = []
            for index in range(start, min(start + chunk, len(events))):
                item = events[index]
                if isinstance(item, bytes):
                    value, key = item, keys[index] if keys else None
                else:
                    value, key = encode(item), item.job_id.encode()
                futures.append(await client.send(topic, value, key=key))
            await asyncio.gather(*futures)
    finally:
        await client.stop()


async def end_offsets(settings: Settings) -> dict[int, int]:
    """Per partition of the event log, the offset after the last record."""
    from eventjobs.kafka.clients import consumer, partitions_of

    client = consumer(settings, group_id=None)
    await client.start()
    try:
        partitions = await partitions_of(settings, events_topic(settings))
        ends = await client.end_offsets(partitions)
        return {tp.partition: offset for tp, offset in ends.items()}
    finally:
        await client.stop()
