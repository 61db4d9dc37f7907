"""The worker's intake: its consumers of ready records, their priority buffers and offsets.

Why this module exists: what a worker fetched but has not claimed yet, and which offsets are
safe to commit, is state of its own, touched by the fetchers, rebalances, queue pauses,
revocations and the committer, and by nothing that runs a job. The intake owns it:

* one consumer per route (`records.capability_route`) in the group `<ns>.workers.<route>`,
  reading the four priority topics;
* one bounded buffer per priority: a free slot always takes the highest priority first
  (`next_item`), and a priority whose buffer is full is not fetched, so a backlog of low jobs
  never hides a critical one;
* per partition, the offsets fetched but not settled (`Offsets`): a ready record's offset is
  committed once the claim for it is acknowledged (`claim_acknowledged`), or once it is skipped
  or quarantined (`settled`);
* holds (a paused queue puts its buffered records back) and revocations (rebalances drop a
  partition's buffered records; tombstones of the processor drop one attempt's);
* the attempts seen here (`first_time`): revoked, or claimed here already, run no second time;
* the committer (`commit_loop`), which also measures the queue depth for `Hook.on_queue_depth`.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from eventjobs.app import App
from eventjobs.core.records import ReadyRecord, capability_route, queue_of_route, ready_attempt, revoked_attempt
from eventjobs.hooks import AttemptInfo, Hooks, Quarantined
from eventjobs.kafka.clients import OwnershipListener, consumer
from eventjobs.kafka.topics import PRIORITIES
from eventjobs.log.bad_records import BadRecords, describe_key, origin
from eventjobs.runtime.processor import quarantine_headers
from eventjobs.runtime.queue_pauses import QueuePauses

log = logging.getLogger("eventjobs.runtime.worker")  # the worker's parts log as the worker (docs/operations.md)
DEPTH_EVERY_S = 2.0  # how often the queue depth metric is measured (one ListOffsets request per consumer)
REMEMBERED_ATTEMPTS = 100_000  # attempts remembered as revoked, and as claimed here (each)


def capability_subsets(capabilities: list[str]) -> list[tuple[str, ...]]:
    """Every subset of the worker's capabilities: it may run jobs needing any of them."""
    caps = sorted(set(capabilities))
    return [combo for size in range(len(caps) + 1) for combo in itertools.combinations(caps, size)]


@dataclass
class Offsets:
    """Which fetched offsets of one partition are not yet safe to commit."""

    outstanding: set[int] = field(default_factory=set)
    next_offset: int = -1

    def committable(self) -> int:
        return min(self.outstanding) if self.outstanding else self.next_offset


@dataclass
class Item:
    """One fetched ready record, from its buffer to the end of its attempt."""

    source: AIOKafkaConsumer
    record: ConsumerRecord[bytes, bytes]
    claim_id: str | None = None  # the event_id of this worker's claim (`attempt_started` or `claimed`), once built
    attempt: AttemptInfo | None = None  # once `before_attempt` was called (hooks watch attempts)
    begun: float | None = None  # event-loop time the handler was called
    end_sent: bool = False  # the attempt's ending event was sent (`drain` sends none then)
    ended: bool = False  # `after_attempt` was called

    def run_time(self) -> float:
        """Seconds since the handler was called (0 if it never was)."""
        return 0.0 if self.begun is None else asyncio.get_running_loop().time() - self.begun


def _revokes(revoked: tuple[str, int, int], item: Item) -> bool:
    """Whether a tombstone revoking `revoked` revokes the buffered `item` of its job."""
    try:
        return ready_attempt(ReadyRecord.decode(item.record.value)) == revoked
    except Exception:  # noqa: BLE001 - a broken record is quarantined when its turn comes
        return False


class Intake:
    """Fetches the ready records of `queues` (and capability routes) into priority buffers, and
    commits their offsets once they are settled."""

    def __init__(self, app: App, *, queues: list[str], capabilities: list[str], prefetch: int, hooks: Hooks,
                 fail: Callable[[BaseException], None]) -> None:
        self.app = app
        self.settings = app.settings
        self.queues = queues
        self.capabilities = capabilities
        self.prefetch = prefetch
        self.hooks = hooks
        self._fail = fail  # a failed take or release stops the worker
        self.consumers: list[AIOKafkaConsumer] = []
        self.buffers: dict[str, deque[Item]] = {p: deque() for p in PRIORITIES}
        self.offsets: dict[tuple[int, TopicPartition], Offsets] = {}
        # attempts whose ready records the processor revoked: (job id, attempt, enqueued_at ms)
        self.revoked: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self.claimed_here: OrderedDict[tuple[str, int, int], None] = OrderedDict()  # ready_attempt keys
        self.wakeup = asyncio.Event()  # records were buffered
        self._room = asyncio.Event()  # a buffer has room again
        self._commit_soon = asyncio.Event()
        self.pauses: QueuePauses | None = None  # paused queues (`<ns>.queue-control`), made at start
        self._route_queues: list[str] = []  # the queue of each consumer's route (`routes()`, in order), made at start
        # ready records quarantined (counted by kind, each kind logged once); see docs/architecture.md, "Bad input"
        self.bad_ready = BadRecords(log, "worker", action="quarantined")
        self.bad_tombstones = BadRecords(log, "worker", action="skipped")  # ready-topic tombstones naming no attempt
        self.quarantining: set[asyncio.Task[None]] = set()
        self._sender: AIOKafkaProducer | None = None
        self._commit_failing: set[int] = set()  # consumers whose last offset commit failed
        self._depth_due = 0.0  # event-loop time of the next queue depth measurement

    def routes(self) -> list[str]:
        return [capability_route(q, subset) for q in self.queues for subset in capability_subsets(self.capabilities)]

    async def start(self, sender: AIOKafkaProducer) -> None:
        """Subscribe one consumer per route; `sender` writes quarantined records."""
        names = self.app.names
        routes = self.routes()
        self._sender = sender
        self._route_queues = [queue_of_route(route) for route in routes]
        self.pauses = QueuePauses(self.settings, names.queue_control, on_change=self._pauses_changed)
        for route in routes:
            source = consumer(
                self.settings,
                group_id=names.worker_group(route),
                # Ready records are hints, the claim is checked by the fold: reading them before the
                # processor's transaction commits saves the commit round trips on every job start.
                isolation_level="read_uncommitted",
                fetch_max_wait_ms=500,
                max_poll_records=self.prefetch,
                session_timeout_ms=10_000,
                heartbeat_interval_ms=2_000,
            )
            await source.start()
            self.consumers.append(source)
            source.subscribe([names.ready(route, priority) for priority in PRIORITIES],
                             listener=OwnershipListener(functools.partial(self._take, source),
                                                        functools.partial(self._release, source), self._fail))

    async def stop(self) -> None:
        for source in self.consumers:
            await source.stop()

    def pause_all(self) -> None:
        """Fetch nothing more (the worker drains)."""
        for source in self.consumers:
            source.pause(*source.assignment())

    # -- partition ownership ---------------------------------------------------------------
    async def _take(self, source: AIOKafkaConsumer, assigned: list[TopicPartition]) -> None:
        """Partitions assigned to `source`: their fetch starts from the committed offset, so any
        offsets state left of an earlier ownership is stale."""
        index = self.consumers.index(source)
        for tp in assigned:
            self.offsets.pop((index, tp), None)

    async def _release(self, source: AIOKafkaConsumer, revoked: list[TopicPartition]) -> None:
        """Partitions taken from `source` (a rebalance): their buffered ready records are dropped,
        not run (the new owner gets them from the committed offset), and what was settled before
        the first unsettled record is committed now, while this consumer still owns them; nothing
        of theirs is committed later. Jobs already claimed from them run on (their claims stand)."""
        index = self.consumers.index(source)
        self._unbuffer(source, set(revoked))
        offsets = {}
        for tp in revoked:
            state = self.offsets.pop((index, tp), None)
            if state is not None and state.committable() >= 0:
                offsets[tp] = OffsetAndMetadata(state.committable(), "")
        if offsets:
            try:
                await source.commit(offsets)
            except Exception as error:  # noqa: BLE001 - the new owner then starts from the previous commit
                log.info("committing revoked partitions failed (%r); their records are delivered again", error)

    # -- fetching --------------------------------------------------------------------------
    async def fetch(self, source: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Fetch only priorities whose buffer has room; the fetcher keeps the rest prefetched.

        (Pausing partitions instead would make a resumed partition wait for the next fetch round,
        up to fetch_max_wait_ms, every time a buffer drained.)
        """
        index = self.consumers.index(source)
        assert self.pauses is not None
        await self.pauses.caught_up.wait()  # a queue paused before this worker started is never fetched
        while not stop.is_set():
            if self.pauses.paused(self._route_queues[index]):
                await self._hold(source, index)
                continue
            if source.paused():  # the queue was resumed
                source.resume(*source.paused())
            if not source.assignment():  # still joining the group, or nothing assigned to us
                await asyncio.sleep(0.05)
                continue
            wanted = [tp for tp in source.assignment()
                      if len(self.buffers[tp.topic.rsplit(".", 1)[1]]) < self.prefetch]
            if not wanted:
                self._room.clear()
                await self._room.wait()
                continue
            batch = await source.getmany(*wanted, timeout_ms=100, max_records=self.prefetch)
            assigned = source.assignment() if batch else ()
            for tp, records in batch.items():
                if tp not in assigned:  # revoked while fetching: its new owner gets these records
                    continue
                priority = tp.topic.rsplit(".", 1)[1]
                state = self.offsets.setdefault((index, tp), Offsets())
                for record in records:
                    state.next_offset = record.offset + 1
                    if record.value is None:  # the processor revoked this job's ready record
                        self._revoke(record, priority)
                        continue
                    state.outstanding.add(record.offset)
                    self.buffers[priority].append(Item(source, record))
            if batch:
                self.wakeup.set()

    def _revoke(self, tombstone: ConsumerRecord[bytes, bytes], priority: str) -> None:
        """Drop a buffered ready record of an attempt cancelled or expired before it started, and
        remember the attempt (job, attempt and enqueue time: the job's next attempt, after a
        dead-letter retry say, is not revoked). A tombstone that names no attempt (the processor
        writes none: a foreign producer's) revokes nothing; it is skipped and counted."""
        revoked = revoked_attempt(tombstone.key, tombstone.headers)
        if revoked is None:
            self.bad_tombstones.report("revokes no attempt", f"{origin(tombstone)} ({describe_key(tombstone.key)})",
                                       "a ready-topic tombstone without its attempt's headers; nothing is revoked")
            return
        self.revoked[revoked] = None
        while len(self.revoked) > REMEMBERED_ATTEMPTS:
            self.revoked.popitem(last=False)
        buffer = self.buffers[priority]
        for item in [i for i in buffer if i.record.key == tombstone.key and _revokes(revoked, i)]:
            buffer.remove(item)
            self.settled(item)

    def _pauses_changed(self) -> None:
        """A queue was paused or resumed: wake the fetchers (one may wait for buffer room)."""
        self._room.set()

    def _unbuffer(self, source: AIOKafkaConsumer, partitions: set[TopicPartition] | None = None
                  ) -> dict[TopicPartition, int]:
        """Drop the buffered ready records `source` fetched (of `partitions` only, if given); per
        partition, the first offset dropped."""
        first: dict[TopicPartition, int] = {}
        for buffer in self.buffers.values():
            kept = []
            for item in buffer:
                tp = TopicPartition(item.record.topic, item.record.partition) if item.source is source else None
                if tp is None or (partitions is not None and tp not in partitions):
                    kept.append(item)
                else:
                    first[tp] = min(first.get(tp, item.record.offset), item.record.offset)
            if len(kept) != len(buffer):
                buffer.clear()
                buffer.extend(kept)
                self._room.set()
        return first

    async def _hold(self, source: AIOKafkaConsumer, index: int) -> None:
        """While the queue of `source` is paused: its partitions are paused, its buffered ready
        records are put back (dropped here, and the partition rewound to the first of them, so
        they are fetched again on resume and nothing of them is committed now), and the consumer
        still polls, which keeps it in its group however long the pause lasts."""
        if not source.assignment():  # still joining the group: nothing fetched, nothing to put back
            await asyncio.sleep(0.05)
            return
        source.pause(*source.assignment())
        first = self._unbuffer(source)
        batch = await source.getmany(timeout_ms=100)  # all paused: returns nothing, unless assigned just now
        for tp, records in batch.items():
            if records:
                first[tp] = min(first.get(tp, records[0].offset), records[0].offset)
        assigned = source.assignment()
        for tp, offset in first.items():
            state = self.offsets.get((index, tp))
            if state is not None:  # buffered records follow everything settled or in flight of their partition
                state.outstanding = {o for o in state.outstanding if o < offset}
                state.next_offset = offset
            if tp in assigned:
                source.seek(tp, offset)

    def next_item(self) -> Item | None:
        """The next buffered record, highest priority first (its buffer then has room)."""
        for priority in PRIORITIES:
            if self.buffers[priority]:
                item = self.buffers[priority].popleft()
                self._room.set()
                return item
        return None

    def first_time(self, ready: ReadyRecord) -> bool:
        """Whether the attempt `ready` offers may run here: not revoked, and not claimed here before
        (a processor batch redone after a crash, or a re-publish of a pending job, publishes its
        ready record again: an attempt never runs twice here). It counts as claimed from now on."""
        key = ready_attempt(ready)
        if (self.revoked and key in self.revoked) or key in self.claimed_here:
            return False
        self.claimed_here[key] = None
        while len(self.claimed_here) > REMEMBERED_ATTEMPTS:
            self.claimed_here.popitem(last=False)
        return True

    # -- settling --------------------------------------------------------------------------
    def quarantine(self, item: Item, kind: str, reason: str) -> None:
        """Copy a ready record the worker cannot run to the quarantine topic (reason and origin in
        its headers); its offset is committed once the copy is acknowledged."""
        record = item.record
        self.bad_ready.report(kind, f"{origin(record)} ({describe_key(record.key)})", reason)
        task = asyncio.create_task(self._write_quarantine(item, kind, reason))
        self.quarantining.add(task)
        task.add_done_callback(self.quarantining.discard)

    async def _write_quarantine(self, item: Item, kind: str, reason: str) -> None:
        record = item.record
        try:
            assert self._sender is not None
            await (await self._sender.send(self.app.names.quarantine, record.value, key=record.key,
                                           headers=quarantine_headers(record, f"{kind}: {reason}")))
        except Exception as error:  # noqa: BLE001 - like an unsent claim: delivered again later
            log.warning("quarantining %s failed (%r); its ready record stays uncommitted", origin(record), error)
            return
        self.settled(item)
        await self.hooks.on_quarantined(Quarantined(record.topic, record.partition, record.offset, kind, reason))

    def claim_acknowledged(self, ack: asyncio.Future[Any], item: Item) -> None:
        """Only a durable claim lets the ready record's offset be committed; an unsent claim leaves
        the record to be delivered again (after a restart or a rebalance)."""
        if ack.cancelled() or ack.exception() is not None:
            log.error("claim of %s/%d@%d was not written (%s); its ready record stays uncommitted",
                      item.record.topic, item.record.partition, item.record.offset,
                      "cancelled" if ack.cancelled() else ack.exception())
            return
        self.settled(item)

    def settled(self, item: Item) -> None:
        """The record's claim is durable (or the record is skipped): its offset may be committed."""
        index = self.consumers.index(item.source)
        tp = TopicPartition(item.record.topic, item.record.partition)
        state = self.offsets.get((index, tp))
        if state is not None:
            state.outstanding.discard(item.record.offset)
        self._commit_soon.set()

    # -- commits ---------------------------------------------------------------------------
    async def commit_loop(self, stop: asyncio.Event) -> None:
        """Commit soon after claims become durable (debounced), so a crash redelivers little."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._commit_soon.wait(), 0.5)
            except TimeoutError:
                pass
            await asyncio.sleep(0.01)
            self._commit_soon.clear()
            await self.commit()
            if self.hooks.wants("on_queue_depth") and asyncio.get_running_loop().time() >= self._depth_due:
                self._depth_due = asyncio.get_running_loop().time() + DEPTH_EVERY_S
                depth = await self.measure_depth()
                if depth is not None:
                    await self.hooks.on_queue_depth(depth)

    async def measure_depth(self) -> dict[tuple[str, str], int] | None:
        """Per queue and priority (`eventjobs_queue_depth`, `Hook.on_queue_depth`), the end offsets
        of the ready partitions this worker consumes minus its position there (the first record not
        yet settled, or the consumer's position before anything was fetched); None if it failed."""
        depth = {(queue, priority): 0 for queue in self.queues for priority in PRIORITIES}
        labels = {self.app.names.ready(capability_route(queue, subset), priority): (queue, priority)
                  for queue in self.queues for subset in capability_subsets(self.capabilities) for priority in PRIORITIES}
        for index, source in enumerate(self.consumers):
            assigned = list(source.assignment())
            if not assigned:
                continue
            try:
                ends = await asyncio.wait_for(source.end_offsets(assigned), 5)
                for tp in assigned:
                    state = self.offsets.get((index, tp))
                    position = state.committable() if state is not None and state.committable() >= 0 else None
                    if position is None:
                        position = await asyncio.wait_for(source.position(tp), 1)
                    label = labels.get(tp.topic)
                    if label is not None:
                        depth[label] += max(0, ends.get(tp, 0) - position)
            except Exception as error:  # noqa: BLE001 - a rebalance or a slow broker: measured again soon
                log.debug("measuring queue depth failed: %r", error)
                return None
        return depth

    async def commit(self) -> None:
        for index, source in enumerate(self.consumers):
            assigned = source.assignment()
            offsets = {
                tp: OffsetAndMetadata(state.committable(), "")
                for (i, tp), state in self.offsets.items()
                if i == index and tp in assigned and state.committable() >= 0
            }
            if offsets:
                try:
                    await source.commit(offsets)
                    self._commit_failing.discard(index)
                except Exception as error:  # noqa: BLE001 - a rebalance; the next commit retries
                    # the first failure of a streak is told: a worker dropped from its group (a
                    # missed session) fails every commit until it rejoins, and the records it
                    # claimed meanwhile are delivered again to their partition's new owner
                    level = logging.DEBUG if index in self._commit_failing else logging.INFO
                    self._commit_failing.add(index)
                    log.log(level, "offset commit of the ready partitions failed (%r); retried at the next commit", error)
