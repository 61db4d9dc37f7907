"""Who leads what, and who is in sync, on a local cluster (`eventjobs dev up --brokers 3`): the
cluster fault test and the soak pick the broker to kill and wait for it to catch up with these."""

from __future__ import annotations

import asyncio
import time
from collections import Counter

from eventjobs.kafka.clients import admin_client
from eventjobs.settings import Settings

#: The broker's own replicated topics: consumer offsets and transaction state must catch up too.
INTERNAL_TOPICS = ("__consumer_offsets", "__transaction_state")


async def partition_metadata(settings: Settings, topics: list[str]) -> dict[tuple[str, int], dict[str, object]]:
    """(topic, partition) -> its metadata (leader, replicas, isr), as the cluster reports it now."""
    admin = admin_client(settings)
    await admin.start()
    try:
        described = await admin.describe_topics(topics)
    finally:
        await admin.close()
    return {(topic["topic"], p["partition"]): p for topic in described if not topic.get("error_code")
            for p in topic["partitions"]}


async def leaders(settings: Settings, topic: str) -> dict[int, int]:
    """Partition -> the node id leading it."""
    return {partition: int(meta["leader"])  # type: ignore[call-overload]
            for (_, partition), meta in (await partition_metadata(settings, [topic])).items()}


async def busiest_leader(settings: Settings, topic: str, besides: int | None = None) -> tuple[int, list[int]]:
    """The node leading most partitions of `topic` (not `besides`), and those partitions."""
    led = await leaders(settings, topic)
    counts = Counter(node for node in led.values() if node != besides)
    node = counts.most_common(1)[0][0]
    return node, sorted(partition for partition, leader in led.items() if leader == node)


async def lagging(settings: Settings, node_id: int, topics: list[str]) -> list[tuple[str, int]]:
    """Partitions of `topics` that `node_id` replicates but is not in sync for (not in the ISR)."""
    meta = await partition_metadata(settings, topics)
    return sorted(key for key, partition in meta.items()
                  if node_id in partition["replicas"] and node_id not in partition["isr"])  # type: ignore[operator]


async def wait_in_sync(settings: Settings, node_id: int, topics: list[str], timeout_s: float) -> float:
    """Wait until `node_id` is back in the ISR of every partition of `topics` it replicates;
    returns the seconds it took, fails naming the partitions still behind."""
    started = time.monotonic()
    behind: list[tuple[str, int]] = []
    while time.monotonic() - started < timeout_s:
        behind = await lagging(settings, node_id, topics)
        if not behind:
            return time.monotonic() - started
        await asyncio.sleep(0.5)
    raise AssertionError(f"node {node_id} is still out of sync after {timeout_s:.0f} s for {behind[:10]}")
