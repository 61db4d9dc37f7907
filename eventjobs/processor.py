"""The lifecycle processor: folds the event log into job states and writes what follows.

One loop: consume a batch of events, `apply` each to its job's state, collect the effects (state
changelog, derived events, ready records, timers, dead letters, quarantined records), and commit
all of it together with the consumed offsets in one Kafka transaction per input partition.

Exactly-once and zombie fencing: every input partition has its own transactional producer whose
transactional id names the partition (`<ns>.processor.<p>`). A processor that takes over a
partition initialises that id, which fences the previous owner's producer and aborts its open
transaction; a stalled old owner that wakes up can no longer commit anything (aiokafka has no
KIP-447 group-metadata fencing, so the id per partition is what fences). Readers of the
changelog and the projector use read_committed, so an aborted batch is never seen, and the batch
is simply redone. The processor itself reads the event log uncommitted (see `run`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import ProducerFenced

from eventjobs.core.codec import EventDecodeError, decode, encode
from eventjobs.core.fold import apply
from eventjobs.core.state import JobState, decode_state, encode_state
from eventjobs.effects import Effects, collect
from eventjobs.kafka import OwnershipListener, consumer, producer, read_to_end
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
    table: dict[str, JobState], records: list[ConsumerRecord[bytes, bytes]], *, actor: str, max_event_bytes: int,
    partition: int | None = None,
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
        collect(result.effects, before, decision, event, partition)
    return result


@dataclass
class _Lane:
    """One owned partition: its producer, its state table, and the work waiting for it.

    Partitions work independently. Within a lane, folding and committing are pipelined: a batch
    is folded (and its ready records published as hints) as soon as it arrives, while the
    transaction of the previous batches is still committing; the committer then writes everything
    folded meanwhile in one transaction. If a commit fails the in-memory table is ahead of the
    changelog, so the processor stops and a restart restores the committed state.
    """

    partition: TopicPartition
    producer: AIOKafkaProducer
    table: dict[str, JobState]
    pending: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    # (result, next offset, record count, acks of its published ready records)
    folded: list[tuple[BatchResult, int, int, list[asyncio.Future[Any]]]] = field(default_factory=list)
    commit_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    flush: asyncio.Event = field(default_factory=asyncio.Event)  # set: commit now, do not wait for the interval
    last_commit: float = 0.0  # event-loop time when the last transaction began (or the lane was made)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    committer: asyncio.Task[None] | None = None
    next_offset: int = -1  # first offset not yet folded (-1: unknown)

    @property
    def backlog(self) -> int:
        return sum(entry[2] for entry in self.folded)


class LifecycleProcessor:
    """Consumes `<ns>.events` in the group `<ns>.processor`; run several for more throughput."""

    def __init__(self, settings: Settings, *, max_batch: int = 2000, commit_interval_s: float = 0.1,
                 instance: str | None = None) -> None:
        if commit_interval_s < 0:
            raise ValueError(f"commit_interval_s must be >= 0, got {commit_interval_s}")
        self.settings = settings
        self.commit_interval_s = commit_interval_s
        self.names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
        self.group_id = f"{settings.namespace}.processor"
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.max_batch = max_batch
        self.lanes: dict[int, _Lane] = {}
        self.ready_topics: set[str] = set()
        self.processed = 0
        self.started = asyncio.Event()
        self.failure: BaseException | None = None
        self._source: AIOKafkaConsumer | None = None
        self._taking = asyncio.Lock()
        self._closing = False
        self._hints: AIOKafkaProducer | None = None

    @property
    def tables(self) -> dict[int, dict[str, JobState]]:
        return {partition: lane.table for partition, lane in self.lanes.items()}

    # -- partition ownership ---------------------------------------------------------------
    async def _take(self, assigned: list[TopicPartition]) -> None:
        async with self._taking:
            await self._take_locked(assigned)

    async def _take_locked(self, assigned: list[TopicPartition]) -> None:
        for tp in assigned:
            if self._closing or self.failure is not None:  # stopping: take nothing more
                return
            if tp.topic != self.names.events or tp.partition in self.lanes:
                continue
            txn = producer(
                self.settings,
                transactional_id=f"{self.settings.namespace}.processor.{tp.partition}",
                transaction_timeout_ms=60_000,
                linger_ms=0,
                # right after a commit the coordinator answers CONCURRENT_TRANSACTIONS until the
                # markers are written; retry that quickly instead of after the default 100 ms
                retry_backoff_ms=5,
            )
            await txn.start()  # init_transactions: fences the previous owner of this partition
            lane = _Lane(tp, txn, await self._restore(tp.partition), last_commit=asyncio.get_running_loop().time())
            lane.task = asyncio.create_task(self._run_lane(lane))
            lane.committer = asyncio.create_task(self._commit_loop(lane))
            self.lanes[tp.partition] = lane
            log.info("processor %s owns partition %d (%d jobs restored)", self.instance, tp.partition, len(lane.table))
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
        for tp in revoked:
            lane = self.lanes.pop(tp.partition, None)
            if lane is None:
                continue
            if lane.task is not None:  # fold nothing more
                lane.task.cancel()
                await asyncio.gather(lane.task, return_exceptions=True)
            if lane.committer is not None:  # finish the commit under way and commit what was folded, then stop
                lane.flush.set()
                while (lane.folded or lane.lock.locked()) and not lane.committer.done():
                    lane.commit_wakeup.set()
                    lane.committed.clear()
                    waiter = asyncio.ensure_future(lane.committed.wait())
                    await asyncio.wait([waiter, lane.committer], return_when=asyncio.FIRST_COMPLETED)
                    waiter.cancel()
                lane.committer.cancel()
                await asyncio.gather(lane.committer, return_exceptions=True)
            try:
                await lane.producer.stop()
            except Exception as error:  # noqa: BLE001 - a fenced producer may fail to close; release the rest
                log.warning("processor %s: closing the producer of partition %d failed: %r",
                            self.instance, tp.partition, error)
            log.info("processor %s released partition %d", self.instance, tp.partition)

    # -- the loops -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await check_layout(self.settings)
        source = consumer(
            self.settings,
            group_id=self.group_id,
            max_poll_records=self.max_batch,
            fetch_max_wait_ms=500,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            max_poll_interval_ms=120_000,
            # Only processors write to the event log transactionally, and all they write there
            # are derived events, which `apply` never lets change a state (a duplicate or a
            # rejection; a property test holds it to that). Reading uncommitted is therefore
            # safe, and it spares every new event the wait for the partition's open transaction
            # to commit (read_committed stops at the first open transaction's offset).
            isolation_level="read_uncommitted",
        )
        self._source = source
        self._hints = producer(self.settings, linger_ms=0)
        await self._hints.start()
        await source.start()
        source.subscribe([self.names.events], listener=OwnershipListener(self._take, self._release))
        try:
            while not stop.is_set() and self.failure is None:
                backlog = sum(len(lane.pending) for lane in self.lanes.values())
                if backlog >= 4 * self.max_batch:  # lanes are behind: let them catch up first
                    await asyncio.sleep(0.005)
                    continue
                batch = await source.getmany(timeout_ms=50, max_records=self.max_batch)
                if batch:
                    async with self._taking:  # records can arrive while a partition is still being taken
                        pass
                for tp, records in batch.items():
                    lane = self.lanes.get(tp.partition)
                    if lane is None:
                        continue
                    fresh = [r for r in records if r.offset >= lane.next_offset]
                    if fresh:
                        lane.pending.extend(fresh)
                        lane.wakeup.set()
            if self.failure is not None:
                raise self.failure
        finally:
            # the group coordinator assigns partitions in its own task: let a take under way
            # finish, and take nothing after, so that every producer is closed
            self._closing = True
            async with self._taking:
                for partition in list(self.lanes):
                    await self._release([TopicPartition(self.names.events, partition)])
            await source.stop()
            await self._hints.stop()

    async def _run_lane(self, lane: _Lane) -> None:
        """Fold arriving records at once and publish their ready records; the committer follows."""
        tp = lane.partition
        while True:
            await lane.wakeup.wait()
            lane.wakeup.clear()
            while lane.pending:
                if lane.backlog >= 4 * self.max_batch:  # the committer is behind: wait for it
                    lane.committed.clear()
                    await lane.committed.wait()
                    continue
                records, lane.pending = lane.pending[: self.max_batch], lane.pending[self.max_batch :]
                result = fold_batch(lane.table, records, actor=f"processor:{tp.partition}",
                                    max_event_bytes=self.settings.max_event_bytes, partition=tp.partition)
                lane.table.update(result.effects.states)
                lane.next_offset = records[-1].offset + 1
                await self._ensure_ready_topics(result.effects)
                hints = await self._publish_hints(result)
                lane.folded.append((result, records[-1].offset + 1, len(records), hints))
                lane.commit_wakeup.set()

    async def _commit_loop(self, lane: _Lane) -> None:
        """Commit everything folded so far in one transaction, at most once per commit interval.

        Nothing waits for these commits on the way to a job's start (ready records go out before
        them, and the processor reads the log uncommitted), so fewer, larger transactions cost
        no latency there, and save the broker and this process four round trips each. A full
        batch, a revocation or a shutdown commits at once.
        """
        tp = lane.partition
        loop = asyncio.get_running_loop()
        while True:
            await lane.commit_wakeup.wait()
            lane.commit_wakeup.clear()
            while lane.folded:
                pause = lane.last_commit + self.commit_interval_s - loop.time()
                if pause > 0 and lane.backlog < self.max_batch and not lane.flush.is_set():
                    try:
                        await asyncio.wait_for(lane.flush.wait(), pause)
                    except TimeoutError:
                        pass
                lane.last_commit = loop.time()
                batch, lane.folded = lane.folded, []
                async with lane.lock:
                    acks: list[asyncio.Future[Any]] = []
                    try:
                        async with lane.producer.transaction():
                            for result, _, _, hints in batch:
                                acks += hints
                                acks += await self._send(lane.producer, tp.partition, result)
                            # every write must be acknowledged before the offsets commit: a lost
                            # changelog or ready record would otherwise go unnoticed
                            await asyncio.gather(*acks)
                            await lane.producer.send_offsets_to_transaction({tp: batch[-1][1]}, self.group_id)
                    except asyncio.CancelledError:
                        raise
                    except Exception as error:  # noqa: BLE001 - memory is ahead of the changelog now
                        await self._fail_commit(tp.partition, error, acks)
                        return
                self.processed += sum(entry[2] for entry in batch)
                lane.committed.set()

    async def _fail_commit(self, partition: int, error: Exception, acks: list[asyncio.Future[Any]]) -> None:
        """Stop the processor: a fenced producer means another instance owns the partition now;
        anything else leaves memory ahead of the changelog, which only a restart repairs.

        Fencing does not always surface as ``ProducerFenced``: once aiokafka's sender saw it, the
        producer is in a fatal state and the next send fails with "not in transaction". So the
        writes of the batch are checked for the fencing too (which also retrieves their errors).
        """
        done, _ = await asyncio.wait(acks, timeout=5) if acks else (set(), set())
        causes = [error, *(ack.exception() for ack in done if not ack.cancelled())]
        fenced = next((cause for cause in causes if isinstance(cause, ProducerFenced)), None)
        if self.failure is not None:  # the first failure is the cause; later ones follow from it
            return
        if fenced is not None:
            self.failure = ProcessorFenced(
                f"partition {partition} is owned by another processor; this one ({self.instance}) stops"
            )
            self.failure.__cause__ = fenced
        else:
            self.failure = RuntimeError(
                f"commit of partition {partition} failed ({error!r}); stopping so that a restart "
                f"restores the committed state"
            )

    async def _publish_hints(self, result: BatchResult) -> list[asyncio.Future[Any]]:
        """Ready records and revocations go out before the commit: they are hints for workers,
        whose claims the fold checks, so publishing them early only saves latency."""
        assert self._hints is not None
        names, acks = self.names, []
        for ready in result.effects.ready:
            topic = names.ready(capability_route(ready.queue, ready.options.capabilities), ready.priority.value)
            acks.append(await self._hints.send(topic, ready.encode(), key=ready.job_id.encode()))
        for revoked in result.effects.revoked:
            topic = names.ready(capability_route(revoked.queue, revoked.options.capabilities), revoked.priority.value)
            acks.append(await self._hints.send(topic, None, key=revoked.job_id.encode()))
        return acks

    async def _ensure_ready_topics(self, effects: Effects) -> None:
        routes = {capability_route(r.queue, r.options.capabilities) for r in effects.ready}
        missing = [route for route in routes if self.names.ready(route, "normal") not in self.ready_topics]
        if missing:
            self.ready_topics.update(await ensure_ready_topics(self.settings, missing))

    async def _send(self, txn: AIOKafkaProducer, partition: int, result: BatchResult) -> list[asyncio.Future[Any]]:
        """Queue the batch's durable writes in the open transaction; returns their acknowledgements."""
        names, effects = self.names, result.effects
        acks: list[asyncio.Future[Any]] = []
        for job_id, state in effects.states.items():
            acks.append(await txn.send(names.job_state, encode_state(state), key=job_id.encode(), partition=partition))
        for event in effects.events:
            acks.append(await txn.send(names.events, encode(event), key=event.job_id.encode(), partition=partition))
        for key, timer in effects.timers.items():
            acks.append(await txn.send(names.timers, timer.encode() if timer else None, key=key, partition=partition))
        for job_id, entry in effects.dead_letters.items():
            acks.append(await txn.send(names.dead_letters, entry.encode() if entry else None, key=job_id.encode()))
        for bad in result.quarantined:
            record = bad.record
            headers = [
                ("eventjobs.reason", bad.reason.encode()[:4000]),
                ("eventjobs.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
            ]
            acks.append(await txn.send(names.quarantine, record.value, key=record.key, headers=headers))
            log.warning("quarantined %s/%d@%d: %s", record.topic, record.partition, record.offset, bad.reason)
        return acks


async def run_processor(settings: Settings, stop: asyncio.Event, *, project: bool = False, **options: object) -> None:
    """Run the lifecycle processor and the timer service (and the projector) until `stop` is set."""
    from eventjobs.timers import TimerService

    processor = LifecycleProcessor(settings, **options)  # type: ignore[arg-type]
    services = [processor.run(stop), TimerService(settings).run(stop)]
    if project:
        from eventjobs.projection.service import run_projector

        services.append(run_projector(settings, stop))
    tasks = [asyncio.create_task(service) for service in services]
    done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
    for task in done:
        if task.exception() is not None:
            stop.set()
            for other in pending:
                other.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
            raise task.exception()  # type: ignore[misc]
    await asyncio.gather(*pending)
