"""The processor's look at its ready topics (`runtime.ready_checks`) against the real broker: which
ready records still wait for their worker group, by their offset and, when that is not known,
by the time since which they can have been published."""

from __future__ import annotations

import asyncio
import time

import pytest
from aiokafka import TopicPartition

from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.clients import consumer, producer
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.runtime.ready_checks import Candidate, ReadyChecks
from eventjobs.settings import Settings

pytestmark = pytest.mark.kafka
WEEK_MS = 7 * 24 * 3600 * 1000


async def publish(settings: Settings, topic: str, partition: int, count: int, tag: str) -> list[int]:
    """`count` records to one partition; their offsets."""
    send = producer(settings)
    await send.start()
    try:
        acks = [await send.send(topic, b"{}", key=f"{tag}-{i}".encode(), partition=partition) for i in range(count)]
        return [(await ack).offset for ack in acks]
    finally:
        await send.stop()


async def commit(settings: Settings, group: str, offsets: dict[TopicPartition, int]) -> None:
    """What the worker group would commit after settling the records before these offsets."""
    member = consumer(settings, group_id=group)
    await member.start()
    try:
        member.assign(list(offsets))
        await member.commit(offsets)
    finally:
        await member.stop()


async def test_a_look_tells_waiting_records_from_read_ones_by_offset_and_by_time(settings: Settings) -> None:
    await apply_topics(settings, ["default"])
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    topic, group = names.ready("default", "normal"), names.worker_group("default")
    p0, p1 = TopicPartition(topic, 0), TopicPartition(topic, 1)
    # Given records published on two partitions, then, after a moment, more of them; the worker
    # group read and committed the first ones of partition 0 only
    before = int(time.time() * 1000) - 1
    early = await publish(settings, topic, 0, 3, "early")
    await asyncio.sleep(0.05)
    since = int(time.time() * 1000)
    late = await publish(settings, topic, 0, 2, "late") + await publish(settings, topic, 1, 2, "later")
    await commit(settings, group, {p0: early[-1] + 1})

    checks = ReadyChecks(settings, retention_ms=WEEK_MS)
    try:
        now = int(time.time() * 1000)
        exact = [
            Candidate("read", topic, group, (0, early[1]), before),          # committed past: not waiting
            Candidate("next", topic, group, (0, late[0]), before),           # just after the commit: waiting
            Candidate("uncommitted", topic, group, (1, late[2]), before),    # no offset there: read from the start
            Candidate("beyond", topic, group, (1, 999), before),             # past the end (a topic made anew)
        ]
        by_time = [
            Candidate("since-now", topic, group, None, since),     # nothing since `since` was read: waiting
            Candidate("since-before", topic, group, None, before),  # records since then were read: not known
        ]
        # When the processor looks at them in one pass
        waiting = await checks.waiting(exact + by_time, now)
        # Then exactly the records the group has not read are waiting
        assert waiting == {"next", "uncommitted", "since-now"}
        # And a record older than the retention (less the margin) is not known to wait, by time
        assert await checks.waiting(by_time[:1], since + WEEK_MS) == set()
        # And a look that cannot be made (a topic that does not exist) tells nothing
        missing = Candidate("missing", f"{settings.namespace}.ready.nosuchqueue.normal", group, (0, 0), before)
        assert await checks.waiting([missing], now) == set()
        assert await checks.waiting([], now) == set()
    finally:
        await checks.close()
