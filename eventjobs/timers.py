"""The timer service: fires scheduled runs, retry backoffs, lease expiries and TTLs on time.

Design (docs/architecture.md, "Timers"): the compacted topic `<ns>.timers` is the durable truth,
one record per pending timer keyed `job_id:kind`, co-partitioned with the event log. This service
owns timer partitions through a consumer group, rebuilds an in-memory `TimerIndex` of each
assigned partition by reading it from the beginning, then keeps reading new timers. When timers
are due it appends the events they cause (`due`, `lease_expired`, `expired`) and, once those are
acknowledged, a tombstone for each fired timer. A crash before the events are acknowledged fires
nothing (the timers are still in the topic); a crash between events and tombstones fires the
same timers again after the restart, with the same event ids, and the fold ignores a stale or
repeated fire, so firing is exactly-once in effect. No transaction is needed for that, and its
commit round trips would sit between a due time and the job's start.
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import datetime, timezone

from aiokafka import AIOKafkaProducer, TopicPartition

from eventjobs.core.codec import encode
from eventjobs.core.events import DueEvent, ExpiredEvent, JobEvent, LeaseExpiredEvent
from eventjobs.core.ids import derived_event_id
from eventjobs.kafka import OwnershipListener, consumer, producer
from eventjobs.records import TimerRecord, parse_timer_key
from eventjobs.settings import Settings
from eventjobs.timer_wheel import TimerIndex
from eventjobs.topics import TopicNames, load_specs

log = logging.getLogger("eventjobs.timers")

FIRE_BATCH = 2000


def fire_event(key: bytes, due_ms: int, attempt: int, now: datetime, actor: str) -> JobEvent:
    """The event a due timer causes. Its id is derived from the timer, so a re-fire is a duplicate."""
    job_id, kind, _ = parse_timer_key(key)
    due_at = datetime.fromtimestamp(due_ms / 1000, tz=timezone.utc)
    cause = f"{job_id}:{kind}:{attempt}:{due_ms}"
    common = {"job_id": job_id, "occurred_at": now, "actor": actor}
    if kind in ("run_at", "retry"):
        return DueEvent(event_id=derived_event_id(cause, "due", 0), attempt=attempt, timer=kind, **common)
    if kind == "lease":
        return LeaseExpiredEvent(
            event_id=derived_event_id(cause, "lease_expired", 0), attempt=attempt, lease_deadline=due_at, **common
        )
    if kind == "ttl":
        return ExpiredEvent(
            event_id=derived_event_id(cause, "expired", 0),
            reason=f"ttl passed at {due_at.isoformat(timespec='milliseconds')} before the job started",
            **common,
        )
    raise ValueError(f"unknown timer kind {kind!r} in key {key!r}")


class TimerService:
    """Owns timer partitions (group `<ns>.timers`) and fires their due timers."""

    def __init__(self, settings: Settings, *, tick_s: float = 0.005) -> None:
        self.settings = settings
        self.names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
        self.group_id = f"{settings.namespace}.timers"
        self.tick_s = tick_s
        self.indexes: dict[int, TimerIndex] = {}
        self.loading: dict[int, int] = {}  # partition -> end offset still to reach before firing
        self.lock = asyncio.Lock()
        self._source = None
        self._sender: AIOKafkaProducer | None = None
        self.loaded = asyncio.Event()  # set once every assigned partition was read to its end

    @property
    def pending(self) -> int:
        return sum(len(index) for index in self.indexes.values())

    async def _take(self, assigned: list[TopicPartition]) -> None:
        async with self.lock:
            assert self._source is not None
            ends = await self._source.end_offsets(assigned)
            for tp in assigned:
                if tp.partition in self.indexes:
                    continue
                self.indexes[tp.partition] = TimerIndex()
                self.loading[tp.partition] = ends[tp]
                await self._source.seek_to_beginning(tp)  # rebuild the index from the compacted topic

    async def _release(self, revoked: list[TopicPartition]) -> None:
        async with self.lock:
            for tp in revoked:
                self.indexes.pop(tp.partition, None)
                self.loading.pop(tp.partition, None)

    async def run(self, stop: asyncio.Event) -> None:
        self._source = consumer(
            self.settings,
            group_id=self.group_id,
            fetch_max_wait_ms=500,
            max_poll_records=50_000,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
        )
        source = self._source
        self._sender = producer(self.settings, linger_ms=0)
        await self._sender.start()
        await source.start()
        source.subscribe([self.names.timers], listener=OwnershipListener(self._take, self._release))
        try:
            while not stop.is_set():
                wait_ms = self._wait_ms()
                batch = await source.getmany(timeout_ms=wait_ms, max_records=50_000)
                async with self.lock:
                    for tp, records in batch.items():
                        index = self.indexes.get(tp.partition)
                        if index is None:
                            continue
                        for record in records:
                            if record.value is None:
                                index.delete(record.key)
                            else:
                                timer = TimerRecord.decode(record.value)
                                index.set(record.key, int(timer.due_at.timestamp() * 1000), timer.attempt)
                    for partition, end in list(self.loading.items()):
                        tp = TopicPartition(self.names.timers, partition)
                        if await source.position(tp) >= end:
                            del self.loading[partition]
                            log.info("timer partition %d loaded: %d pending", partition, len(self.indexes[partition]))
                            if not self.loading:
                                self.loaded.set()
                    await self._fire_due()
        finally:
            await source.stop()
            self.indexes.clear()
            await self._sender.stop()

    def _wait_ms(self) -> int:
        """Sleep in the fetch until the next timer is due (at most 100 ms, at least 1 ms)."""
        now_ms = time.time() * 1000
        next_due = [index.next_due_ms() for p, index in self.indexes.items() if p not in self.loading]
        due = min((d for d in next_due if d is not None), default=None)
        if due is None:
            return 100
        return int(max(1, min(100, due - now_ms)))

    async def _fire_due(self) -> None:
        now_ms = int(time.time() * 1000)
        work = []
        for partition, index in self.indexes.items():
            if partition in self.loading:
                continue
            due = index.pop_due(now_ms, limit=FIRE_BATCH)
            if due:
                work.append(self._fire(partition, due))
        if work:
            results = await asyncio.gather(*work, return_exceptions=True)
            for result in results:
                if isinstance(result, BaseException):
                    log.warning("firing timers failed (%s); they stay pending and fire again", result)

    async def _fire(self, partition: int, due: list[tuple[bytes, int, int]]) -> None:
        """Append the caused events, and once they are acknowledged, tombstone the timers.

        No transaction: a crash between the two fires those timers again after the restart, with
        the same event ids (derived from the timer), and `apply` ignores the repeat. Skipping the
        transaction keeps its commit round trips off the path from due time to start.
        """
        sender = self._sender
        assert sender is not None
        now = datetime.now(timezone.utc)
        actor = f"timer:{partition}"
        try:
            acks = [
                await sender.send(self.names.events, encode(fire_event(key, due_ms, attempt, now, actor)),
                                  key=parse_timer_key(key)[0].encode(), partition=partition)
                for key, due_ms, attempt in due
            ]
            await asyncio.gather(*acks)
            tombstones = [await sender.send(self.names.timers, None, key=key, partition=partition) for key, _, _ in due]
            await asyncio.gather(*tombstones)
        except BaseException:
            index = self.indexes.get(partition)
            if index is not None:  # not (all) fired: put them back so the next tick retries
                for key, due_ms, attempt in due:
                    if index.get(key) is None:
                        index.set(key, due_ms, attempt)
            raise
