"""The lifecycle processor: folds the event log into job states and writes what follows.

One loop: consume a batch of events, `apply` each to its job's state, collect the effects (state
changelog, derived events, ready records, timers, dead letters, quarantined records), and commit
all of it together with the consumed offsets in one Kafka transaction per input partition.

Exactly-once and zombie fencing: every input partition has its own transactional producer whose
transactional id names the partition (`<ns>.processor.<p>`). A processor that takes over a
partition initialises that id, which fences the previous owner's producer and aborts its open
transaction; a stalled old owner that wakes up can no longer commit anything (aiokafka has no
KIP-447 group-metadata fencing, so the id per partition is what fences). Readers use
read_committed, so an aborted batch is never seen, and the batch is simply redone.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import KafkaError, ProducerFenced

from eventjobs.core.codec import EventDecodeError, decode, encode
from eventjobs.core.fold import apply
from eventjobs.core.state import JobState, decode_state, encode_state
from eventjobs.effects import Effects, collect
from eventjobs.kafka import consumer, producer, read_to_end
from eventjobs.records import capability_route
from eventjobs.settings import Settings
from eventjobs.topic_admin import check_layout, ensure_ready_topics
from eventjobs.topics import TopicNames, load_specs

log = logging.getLogger("eventjobs.processor")


class ProcessorFenced(RuntimeError):
    """Another processor instance owns a partition this one still thought it had."""


@dataclass
class Quarantined:
    record: ConsumerRecord[bytes, bytes]
    reason: str


@dataclass
class BatchResult:
    effects: Effects = field(default_factory=Effects)
    quarantined: list[Quarantined] = field(default_factory=list)
    applied: int = 0
    rejected: int = 0


def fold_batch(
    table: dict[str, JobState], records: list[ConsumerRecord[bytes, bytes]], *, actor: str, max_event_bytes: int
) -> BatchResult:
    """Apply a partition's batch to its state table (not modified: new states are in the effects)."""
    result = BatchResult()
    states = result.effects.states
    for record in records:
        if record.value is None:
            result.quarantined.append(Quarantined(record, "empty record (tombstone) on the event log"))
            continue
        try:
            event = decode(record.value, max_bytes=max_event_bytes)
        except EventDecodeError as error:
            result.quarantined.append(Quarantined(record, str(error)))
            continue
        if record.key is not None and record.key != event.job_id.encode():
            result.quarantined.append(
                Quarantined(record, f"record key {record.key!r} is not the event's job_id {event.job_id!r}")
            )
            continue
        before = states.get(event.job_id) or table.get(event.job_id)
        decision = apply(before, event, actor=actor)
        if decision.rejected is not None:
            result.rejected += 1
            log.debug("rejected %s of job %s: %s", event.type, event.job_id, decision.rejected)
        else:
            result.applied += 1
        collect(result.effects, before, decision, event)
    return result


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, processor: LifecycleProcessor) -> None:
        self.processor = processor

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        await self.processor._release(revoked)

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        await self.processor._take(assigned)


class LifecycleProcessor:
    """Consumes `<ns>.events` in the group `<ns>.processor`; run several for more throughput."""

    def __init__(self, settings: Settings, *, max_batch: int = 2000, instance: str | None = None) -> None:
        self.settings = settings
        self.names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
        self.group_id = f"{settings.namespace}.processor"
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.max_batch = max_batch
        self.tables: dict[int, dict[str, JobState]] = {}
        self.producers: dict[int, AIOKafkaProducer] = {}
        self.ready_topics: set[str] = set()
        self.lock = asyncio.Lock()
        self.processed = 0
        self.started = asyncio.Event()

    # -- partition ownership ---------------------------------------------------------------
    async def _take(self, assigned: list[TopicPartition]) -> None:
        async with self.lock:
            for tp in assigned:
                if tp.topic != self.names.events or tp.partition in self.producers:
                    continue
                txn = producer(
                    self.settings,
                    transactional_id=f"{self.settings.namespace}.processor.{tp.partition}",
                    transaction_timeout_ms=60_000,
                    linger_ms=5,
                )
                await txn.start()  # init_transactions: fences the previous owner of this partition
                self.producers[tp.partition] = txn
                self.tables[tp.partition] = await self._restore(tp.partition)
                log.info("processor %s owns partition %d (%d jobs restored)",
                         self.instance, tp.partition, len(self.tables[tp.partition]))
            self.started.set()

    async def _restore(self, partition: int) -> dict[str, JobState]:
        table: dict[str, JobState] = {}
        async for record in read_to_end(self.settings, [TopicPartition(self.names.job_state, partition)]):
            key = record.key.decode() if record.key else None
            if key is None:
                continue
            if record.value is None:
                table.pop(key, None)
            else:
                table[key] = decode_state(record.value)
        return table

    async def _release(self, revoked: list[TopicPartition]) -> None:
        async with self.lock:
            for tp in revoked:
                txn = self.producers.pop(tp.partition, None)
                self.tables.pop(tp.partition, None)
                if txn is not None:
                    await txn.stop()
                    log.info("processor %s released partition %d", self.instance, tp.partition)

    # -- the loop --------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await check_layout(self.settings)
        source = consumer(
            self.settings,
            group_id=self.group_id,
            max_poll_records=self.max_batch,
            fetch_max_wait_ms=20,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            max_poll_interval_ms=120_000,
        )
        await source.start()
        source.subscribe([self.names.events], listener=_Rebalance(self))
        try:
            while not stop.is_set():
                batch = await source.getmany(timeout_ms=50, max_records=self.max_batch)
                if not batch:
                    continue
                async with self.lock:
                    owned = {tp: records for tp, records in batch.items() if tp.partition in self.producers}
                    outcomes = await asyncio.gather(
                        *(self._commit(tp, records) for tp, records in owned.items()), return_exceptions=True
                    )
                for (tp, records), outcome in zip(owned.items(), outcomes):
                    if isinstance(outcome, ProducerFenced):
                        raise ProcessorFenced(
                            f"partition {tp.partition} is owned by another processor; this one ({self.instance}) stops"
                        ) from outcome
                    if isinstance(outcome, BaseException):
                        log.warning("batch of partition %d not committed (%s); it will be redone", tp.partition, outcome)
                        source.seek(tp, records[0].offset)
        finally:
            await source.stop()
            for txn in self.producers.values():
                await txn.stop()
            self.producers.clear()

    async def _commit(self, tp: TopicPartition, records: list[ConsumerRecord[bytes, bytes]]) -> None:
        table = self.tables[tp.partition]
        result = fold_batch(table, records, actor=f"processor:{tp.partition}", max_event_bytes=self.settings.max_event_bytes)
        await self._ensure_ready_topics(result.effects)
        txn = self.producers[tp.partition]
        async with txn.transaction():
            await self._send(txn, tp.partition, result)
            await txn.send_offsets_to_transaction({tp: records[-1].offset + 1}, self.group_id)
        table.update(result.effects.states)
        self.processed += len(records)

    async def _ensure_ready_topics(self, effects: Effects) -> None:
        routes = {capability_route(r.queue, r.options.capabilities) for r in effects.ready}
        missing = [route for route in routes if self.names.ready(route, "normal") not in self.ready_topics]
        if missing:
            self.ready_topics.update(await ensure_ready_topics(self.settings, missing))

    async def _send(self, txn: AIOKafkaProducer, partition: int, result: BatchResult) -> None:
        names, effects = self.names, result.effects
        for job_id, state in effects.states.items():
            await txn.send(names.job_state, encode_state(state), key=job_id.encode(), partition=partition)
        for event in effects.events:
            await txn.send(names.events, encode(event), key=event.job_id.encode(), partition=partition)
        for ready in effects.ready:
            topic = names.ready(capability_route(ready.queue, ready.options.capabilities), ready.priority.value)
            await txn.send(topic, ready.encode(), key=ready.job_id.encode())
        for revoked in effects.revoked:
            topic = names.ready(capability_route(revoked.queue, revoked.options.capabilities), revoked.priority.value)
            await txn.send(topic, None, key=revoked.job_id.encode())
        for key, timer in effects.timers.items():
            await txn.send(names.timers, timer.encode() if timer else None, key=key, partition=partition)
        for job_id, entry in effects.dead_letters.items():
            await txn.send(names.dead_letters, entry.encode() if entry else None, key=job_id.encode())
        for bad in result.quarantined:
            record = bad.record
            headers = [
                ("eventjobs.reason", bad.reason.encode()[:4000]),
                ("eventjobs.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ]
            await txn.send(names.quarantine, record.value, key=record.key, headers=headers)
            log.warning("quarantined %s/%d@%d: %s", record.topic, record.partition, record.offset, bad.reason)


async def run_processor(settings: Settings, stop: asyncio.Event, **options: object) -> None:
    """Run the lifecycle processor and the timer service together until `stop` is set."""
    from eventjobs.timers import TimerService

    processor = LifecycleProcessor(settings, **options)  # type: ignore[arg-type]
    timers = TimerService(settings)
    tasks = [asyncio.create_task(processor.run(stop)), asyncio.create_task(timers.run(stop))]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        if task.exception() is not None:
            stop.set()
            for other in pending:
                other.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise task.exception()  # type: ignore[misc]
    await asyncio.gather(*pending)
