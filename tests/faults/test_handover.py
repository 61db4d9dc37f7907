"""A partition handed to another processor is folded from the offset its previous owner committed
last, even when the consumer was given an older one.

aiokafka fetches a newly assigned partition's committed offset when the assignment arrives, before
the processor's take (which initialises the partition's transactional id and so completes, or
aborts, the previous owner's last transaction). If that transaction was committing meanwhile
(slow: a broker of the cluster had just been lost), the consumer got the offset from before it,
while the changelog the take restores includes it: the new owner folded those events a second
time. Most of them change nothing a second time; a second enqueue of a job (one idempotency key)
derives its `duplicate_rejected` again, and that derived event was committed twice. Seen 29
times in a soak of 20,000 jobs on a three-broker cluster (benchmarks/soak.py --brokers 3
--kill-broker alternate, docs/reliability.md). The take now asks for the committed offset again
after the transactional id is initialised, and starts there.

The test gives the new owner's consumer the oldest offset on purpose (as such an early fetch
would), then checks that nothing below the committed offset is folded again.
"""

from __future__ import annotations

import asyncio
from collections import Counter

from aiokafka import TopicPartition

from eventjobs import App
from eventjobs.core.ids import job_id_for_key
from eventjobs.core.partitioning import job_partition
from eventjobs.kafka.clients import partitions_of
from eventjobs.runtime.processor import LifecycleProcessor
from eventjobs.runtime.state_check import processor_committed
from eventjobs.kafka.offsets import log_offsets
from tests.e2e.conftest import job_events
from tests.faults.test_process_faults import poll


class GivenTheOldestOffset(LifecycleProcessor):
    """A processor whose consumer, at assignment, starts each partition at its first offset: what a
    committed offset fetched before the previous owner's last transaction committed gives."""

    async def _take_locked(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            if tp.topic == self.names.events and self._source is not None:
                await self._source.position(tp)  # the fetch aiokafka makes at assignment, then the stale answer
                self._source.seek(tp, 0)
        await super()._take_locked(assigned)


async def _run_until(processor: LifecycleProcessor, done: asyncio.Event) -> asyncio.Task[None]:
    task = asyncio.create_task(processor.run(done))
    await asyncio.wait_for(processor.started.wait(), 60)
    return task


async def test_a_partition_taken_over_is_not_folded_again_below_its_committed_offset(app: App) -> None:
    settings = app.settings
    job = await app.enqueue("add", {"a": 1, "b": 2}, idempotency_key="order-7")
    assert await app.enqueue("add", {"a": 1, "b": 2}, idempotency_key="order-7") == job  # refused: one notice
    partitions = await partitions_of(settings, f"{settings.namespace}.events")
    home = job_partition(job, len(partitions))

    first_stop = asyncio.Event()
    first = await _run_until(LifecycleProcessor(settings), first_stop)

    async def notices() -> int:
        return Counter(e.type for e in await job_events(settings, job))["duplicate_rejected"]

    async def one_notice() -> bool:
        return await notices() == 1

    async def marker_folded() -> bool:
        return await app.state(marker) is not None

    async def committed_to_the_end() -> bool:
        _, _, ends = await log_offsets(settings, f"{settings.namespace}.events")
        # the end is one past the marker that ends the processor's own last transaction
        return (await processor_committed(settings, partitions)).get(home, -1) >= ends[home] - 1

    await poll(one_notice, 60, "the duplicate refused")
    await poll(committed_to_the_end, 60, "the first processor to commit the notice it read back")
    first_stop.set()
    await asyncio.wait_for(first, 60)

    marker = ""
    second_stop = asyncio.Event()
    second = await _run_until(GivenTheOldestOffset(settings), second_stop)
    try:
        # a job on the same partition, enqueued now: once it is folded, whatever the new owner
        # folded before it on that partition is committed
        key = next(k for k in (f"marker-{i}" for i in range(10_000))
                   if job_partition(job_id_for_key("add", k), len(partitions)) == home)
        marker = await app.enqueue("add", {"a": 0, "b": 0}, idempotency_key=key)
        await poll(marker_folded, 60, "the marker job folded by the new owner")
    finally:
        second_stop.set()
        await asyncio.wait_for(second, 60)
    assert await notices() == 1, "the new owner folded the duplicate enqueue again and committed a second notice"
