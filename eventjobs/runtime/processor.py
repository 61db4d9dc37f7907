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
import functools
import logging
import os
import socket
from collections.abc import Coroutine, Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.errors import ProducerFenced

from eventjobs.core.codec import EventEncodeError, admit, encode
from eventjobs.core.refused import Refused
from eventjobs.core.events import LINKED_TYPES, SLOT_OWNER_TYPES
from eventjobs.core.fold import Decision, apply
from eventjobs.core.slots import SLOT_TABLE_IDLE_S, SlotTable, apply_slot, decode_table, encode_table, forgettable
from eventjobs.runtime.gc_pause import collector_paused
from eventjobs.core.state import JobState, JobStatus, StateDecodeError, decode_state, encode_state
from eventjobs.core.clock import Clock, SystemClock, epoch_ms
from eventjobs.core.effects import Effects, collect
from eventjobs.core.housekeeping import Housekeeping, HousekeepingTimer, ReadyRepublish, Retention, earliest_publish
from eventjobs.kafka.clients import OwnershipListener, consumer, job_partition, producer
from eventjobs.core.records import ReadyRecord, awaits_verdict, capability_route, republished_headers, revocation_headers
from eventjobs.log.bad_records import BadRecords, describe_key, origin
from eventjobs.log.readers import read_compacted
from eventjobs.runtime.ready_checks import Candidate, ReadyChecks
from eventjobs.runtime.supervisor import Supervised, run_services
from eventjobs.metrics import COUNTED_EVENTS, Metrics
from eventjobs.settings import Settings
from eventjobs.kafka.admin import check_layout, ensure_ready_topics
from eventjobs.kafka.topics import TopicNames, load_specs, retention_ms

log = logging.getLogger("eventjobs.runtime.processor")


class ProcessorFenced(RuntimeError):
    """Another processor instance owns a partition this one still thought it had."""


@dataclass
class Quarantined:
    record: ConsumerRecord[bytes, bytes]
    reason: str
    kind: str  # what the bad-record counts group it by (`Refused.kind`)


#: Header of an event the processor moved to its job's partition: `topic/partition/offset` of the
#: record as its producer wrote it (on another partition than `job_partition` of its job).
MOVED_FROM_HEADER = "eventjobs.moved-from"
#: The longest the processor waits between two looks at its lanes' housekeeping timers (a timer
#: tracked meanwhile that is due sooner than the next look wakes it at once).
HOUSEKEEPING_WAIT_S = 0.5
#: How often a lane that owns slot tables looks for idle empty ones to forget (`core.slots.forgettable`).
SLOT_SWEEP_S = 60.0
MOVED_PRODUCERS_LOGGED = 1000  # producers whose first moved event is logged (and counted by name); bounded
#: The longest a partition's take waits for the group coordinator to say where the partition starts.
COMMITTED_OFFSET_TIMEOUT_S = 120.0


@dataclass
class Moved:
    """A valid event that arrived on another partition than its job's (a producer with another
    partitioner): it is not applied here but copied to `partition`, whose lane applies it."""

    record: ConsumerRecord[bytes, bytes]
    partition: int
    actor: str  # the producer, as the event names it (logged once per producer)


@dataclass
class BatchResult:
    effects: Effects = field(default_factory=Effects)
    quarantined: list[Quarantined] = field(default_factory=list)
    moved: list[Moved] = field(default_factory=list)
    applied: int = 0
    rejected: int = 0
    # what `_send` writes, encoded once while folding: job id -> (state, bytes); derived event id -> bytes
    state_bytes: dict[str, tuple[JobState, bytes]] = field(default_factory=dict)
    event_bytes: dict[str, bytes] = field(default_factory=dict)
    # (event type, the job's state) of every accepted or derived event a metric counts
    # (`eventjobs.metrics.COUNTED_EVENTS`); counted once the batch commits
    counted: list[tuple[str, JobState]] = field(default_factory=list)
    # concurrency limits: the slot tables of the keys this partition owns that the batch changed
    # (owner id -> table; None: forgotten, a tombstone), written to the limit-state changelog
    # (`eventjobs.core.slots`)
    slot_tables: dict[str, SlotTable | None] = field(default_factory=dict)


def merged(results: list[BatchResult]) -> BatchResult:
    """The durable writes of several folded batches committed in one transaction, each key once.

    The changelog, the timer topic and the dead-letter topic are compacted: only a key's last
    value in the transaction matters, so a job that was enqueued, claimed and completed within
    one commit interval writes one state, and a timer armed and tombstoned in it writes only the
    tombstone. Derived events and quarantined records are all kept, in order.
    """
    if len(results) == 1:
        return results[0]
    total = BatchResult()
    effects = total.effects
    for result in results:
        effects.states.update(result.effects.states)
        effects.events.extend(result.effects.events)
        effects.timers.update(result.effects.timers)
        effects.dead_letters.update(result.effects.dead_letters)
        total.quarantined.extend(result.quarantined)
        total.slot_tables.update(result.slot_tables)
        total.state_bytes.update(result.state_bytes)
        total.event_bytes.update(result.event_bytes)
    return total


def fold_batch(
    table: dict[str, JobState], records: list[ConsumerRecord[bytes, bytes]], *, actor: str, max_event_bytes: int,
    partition: int | None = None, max_state_bytes: int | None = None, partition_count: int | None = None,
    slots: dict[str, SlotTable] | None = None,
) -> BatchResult:
    """Apply a partition's batch to its state table (not modified: new states are in the effects,
    None for a job forgotten by its retention).

    With ``partition_count`` (and ``partition``), a valid event of a job this partition does not
    hold, whose job belongs on another partition (``job_partition``), is not applied but listed in
    ``moved``: the lane copies it to its job's partition, whose lane applies it (so a producer with
    another partitioner is served). A job is only ever created on its own partition, so the jobs a
    lane holds are its own and the hash is computed once per job, not once per event.

    A record whose derived events would be over ``max_event_bytes``, or whose job state would be
    over ``max_state_bytes`` (None: states are not checked here), is quarantined with the reason
    instead of applied: written, it would fail the transaction on every restart. The size budgets
    (``eventjobs.core.limits``) keep this from happening to what eventjobs' own writers produce.

    Only the last state of a job in a batch is written, so states are encoded (once, for `_send`)
    after the fold; only if one is too large is the batch folded again, checking every step.
    """
    result = _fold(table, records, actor, max_event_bytes, partition, None, partition_count, slots)
    if max_state_bytes is None:
        return result
    for job_id, state in result.effects.states.items():
        if state is not None:
            data = encode_state(state)
            if len(data) > max_state_bytes:  # rare: find and quarantine the record that made it so
                return _fold(table, records, actor, max_event_bytes, partition, max_state_bytes, partition_count, slots)
            result.state_bytes[job_id] = (state, data)
    return result


def _fold(
    table: dict[str, JobState], records: list[ConsumerRecord[bytes, bytes]], actor: str, max_event_bytes: int,
    partition: int | None, max_state_bytes: int | None, partition_count: int | None = None,
    slots: dict[str, SlotTable] | None = None,
) -> BatchResult:
    result = BatchResult()
    states = result.effects.states
    for record in records:
        event = admit(record.value, record.key, max_bytes=max_event_bytes)
        if isinstance(event, Refused):
            result.quarantined.append(Quarantined(record, event.reason, event.kind))
            continue
        before = states.get(event.job_id, _UNSEEN)
        if before is _UNSEEN:
            before = table.get(event.job_id)
        # an owner id is never a job's, so only events of jobs not held here are asked this
        if before is None and event.type in SLOT_OWNER_TYPES:  # to a concurrency limit's owner, not to a job
            _fold_slot(result, slots if slots is not None else {}, record, event, actor, max_event_bytes, partition,
                       partition_count)
            continue
        if before is None and _moved_elsewhere(result, record, event, partition, partition_count):
            continue
        decision = apply(before, event, actor=actor)
        oversized = _encode_outputs(result, before, decision, max_event_bytes, max_state_bytes)
        if oversized is not None:
            reason = f"applying this {event.type} event of job {event.job_id} would write {oversized}"
            result.quarantined.append(Quarantined(record, reason, "output over the size limit"))
            continue
        if decision.rejected is not None:
            result.rejected += 1
            log.debug("rejected %s of job %s: %s", event.type, event.job_id, decision.rejected)
        else:
            result.applied += 1
        collect(result.effects, before, decision, event, partition,
                answer_refusal=event.type == "claimed" and awaits_verdict(record.headers))
        # a derived event read back from the log is never accepted again, so nothing counts twice
        # an accepted enqueue of a known job is a debounce's replacement: no new job, not counted
        if event.type in COUNTED_EVENTS and decision.accepted and not (event.type == "enqueued" and before is not None):
            result.counted.append((event.type, decision.state or before))
        for derived in decision.derived:
            if derived.type in COUNTED_EVENTS:
                result.counted.append((derived.type, decision.state or before))
    return result


def _moved_elsewhere(result: BatchResult, record: ConsumerRecord[bytes, bytes], event: Any, partition: int | None,
                     partition_count: int | None) -> bool:
    """For an event of a job (or limit owner) not held here: whether it belongs on another partition
    (another partitioner wrote it); then it is listed in ``moved`` and its own lane applies the copy."""
    if not partition_count or partition is None:
        return False
    home = job_partition(event.job_id, partition_count)
    if home == partition:
        return False
    result.moved.append(Moved(record, home, event.actor))
    return True


def _fold_slot(result: BatchResult, slots: dict[str, SlotTable], record: ConsumerRecord[bytes, bytes], event: Any,
               actor: str, max_event_bytes: int, partition: int | None, partition_count: int | None) -> None:
    """Apply a slot request or release to its owner's table (``eventjobs.core.slots``); what it
    grants, refuses or revokes goes to those jobs' partitions like every linked event."""
    owner = event.job_id
    before = result.slot_tables.get(owner) or slots.get(owner)
    if before is None and _moved_elsewhere(result, record, event, partition, partition_count):
        return
    decision = apply_slot(before, event, actor)
    encoded = _encode_derived(decision.derived, max_event_bytes)
    if isinstance(encoded, str):
        result.quarantined.append(Quarantined(record, encoded, "output over the size limit"))
        return
    result.event_bytes.update(encoded)
    if decision.rejected is not None or decision.duplicate:
        result.rejected += 1
        log.debug("%s %s of limit owner %s: %s", "duplicate" if decision.duplicate else "rejected", event.type, owner,
                  decision.rejected)
    else:
        result.applied += 1
    if decision.table is not None and decision.table is not before:
        result.slot_tables[owner] = decision.table
    result.effects.events.extend(decision.derived)


def _encode_outputs(
    result: BatchResult, before: JobState | None, decision: Decision, max_event_bytes: int, max_state_bytes: int | None
) -> str | None:
    """Encode the new state (if checked) and the derived events of `decision` into `result`, or say
    which of them is too large (nothing is stored then)."""
    state = decision.state
    checked: tuple[JobState, bytes] | None = None
    if max_state_bytes is not None and state is not None and state is not before and decision.rejected is None:
        state_data = encode_state(state)
        if len(state_data) > max_state_bytes:
            return f"a job state of {len(state_data):,} bytes, over the limit of {max_state_bytes:,}"
        checked = (state, state_data)
    encoded = _encode_derived(decision.derived, max_event_bytes)
    if isinstance(encoded, str):
        return encoded
    if checked is not None:
        result.state_bytes[checked[0].job_id] = checked
    result.event_bytes.update(encoded)
    return None


def _encode_derived(derived: Iterable[Any], max_event_bytes: int) -> list[tuple[str, bytes]] | str:
    """The derived events encoded, as (event id, bytes), or why one of them cannot be written."""
    encoded = []
    for event in derived:
        try:
            encoded.append((event.event_id, encode(event, max_bytes=max_event_bytes)))
        except EventEncodeError as error:
            return f"a derived event that cannot be written: {error}"
    return encoded


def quarantine_headers(record: ConsumerRecord[bytes, bytes], reason: str) -> list[tuple[str, bytes]]:
    """Why a record was quarantined and where it came from (`topic/partition/offset`)."""
    return [
        ("eventjobs.reason", reason.encode()[:4000]),
        ("eventjobs.source", f"{record.topic}/{record.partition}/{record.offset}".encode()),
    ]


_UNSEEN: Any = object()  # not touched in this batch (None in a batch's states means forgotten)


def _waits_on(lane: _Lane, ready: ReadyRecord) -> bool:
    """Whether the lane's job still waits on the attempt `ready` offers (pending, same incarnation)."""
    state = lane.table.get(ready.job_id)
    return (state is not None and state.status is JobStatus.PENDING and state.attempt == ready.attempt
            and state.enqueued_at == ready.enqueued_at)


def _placing(lane: _Lane, ready: ReadyRecord) -> None:
    """A ready record is about to be sent: until its ack says where it went, it counts as waiting."""
    if _waits_on(lane, ready):
        lane.housekeeping.publishing(ready.job_id)


def _placed(lane: _Lane, ready: ReadyRecord, ack: asyncio.Future[Any]) -> None:
    """A ready record's send was acknowledged: its lane's housekeeping learns where it is, if
    the job still waits on that attempt (a record of a job claimed meanwhile is of no interest)."""
    if ack.cancelled() or ack.exception() is not None:
        return  # the commit waits for this ack and fails: a restart publishes it again
    if _waits_on(lane, ready):
        metadata = ack.result()
        lane.housekeeping.published(ready.job_id, metadata.partition, metadata.offset)


def update_table(table: dict[str, JobState], states: dict[str, JobState | None]) -> None:
    """Apply a batch's new states to a lane's table; forgotten jobs leave it."""
    for job_id, state in states.items():
        if state is None:
            table.pop(job_id, None)
        else:
            table[job_id] = state


@dataclass(frozen=True)
class _Folded:
    """One batch a lane folded and has not committed yet."""

    result: BatchResult
    next_offset: int  # the offset to commit once it is: just past the batch's last record
    count: int  # records in the batch
    hints: list[asyncio.Future[Any]]  # acks of its published ready records


@dataclass
class _Lane:
    """One owned partition: its producer, its state table and housekeeping timers, and the work waiting for it.

    Partitions work independently. Within a lane, folding and committing are pipelined: a batch
    is folded (and its ready records published as hints) as soon as it arrives, while the
    transaction of the previous batches is still committing; the committer then writes everything
    folded meanwhile in one transaction. If a commit fails the in-memory table is ahead of the
    changelog, so the processor stops and a restart restores the committed state.
    """

    partition: TopicPartition
    producer: AIOKafkaProducer
    table: dict[str, JobState]
    housekeeping: Housekeeping  # the table's lease, re-publish and retention timers (in memory, rebuilt from it)
    slots: dict[str, SlotTable] = field(default_factory=dict)  # concurrency limits' slot tables this partition owns
    pending: list[ConsumerRecord[bytes, bytes]] = field(default_factory=list)
    wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    folded: list[_Folded] = field(default_factory=list)
    commit_wakeup: asyncio.Event = field(default_factory=asyncio.Event)
    committed: asyncio.Event = field(default_factory=asyncio.Event)
    flush: asyncio.Event = field(default_factory=asyncio.Event)  # set: commit now, do not wait for the interval
    last_commit: float = 0.0  # event-loop time when the last transaction began (or the lane was made)
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    task: asyncio.Task[None] | None = None
    committer: asyncio.Task[None] | None = None
    next_offset: int = -1  # first offset not yet folded (-1: unknown)
    slots_swept: float = 0.0  # event-loop time of the last look for idle slot tables (`_forget_idle_slots`)

    @property
    def backlog(self) -> int:
        return sum(entry.count for entry in self.folded)


class LifecycleProcessor(Supervised):
    """Consumes `<ns>.events` in the group `<ns>.processor`; run several for more throughput.

    Its lane tasks and housekeeping are `_supervised`: any end of one but a cancel stops the
    processor instead of leaving a partition unserved."""

    _ended_by_error = "ended"

    def __init__(self, settings: Settings, *, max_batch: int = 2000, commit_interval_s: float = 0.1,
                 instance: str | None = None, republish: ReadyRepublish | None = None,
                 metrics: Metrics | None = None, clock: Clock | None = None,
                 slot_idle_s: float = SLOT_TABLE_IDLE_S, slot_sweep_s: float = SLOT_SWEEP_S) -> None:
        if commit_interval_s < 0:
            raise ValueError(f"commit_interval_s must be >= 0, got {commit_interval_s}")
        self.settings = settings
        self.commit_interval_s = commit_interval_s
        self.slot_idle_s, self.slot_sweep_s = slot_idle_s, slot_sweep_s  # forgetting idle slot tables
        self.retention = Retention(settings.retain_completed_s, settings.dead_letter_retention_s)
        # when a pending job's ready record is looked at, and published again if it is lost
        self.republish = republish or ReadyRepublish.after(settings.republish_after_s)
        self.clock = clock or SystemClock()  # when housekeeping timers are due
        self.names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
        self.group_id = self.names.processor_group
        self.instance = instance or f"{socket.gethostname()}:{os.getpid()}"
        self.max_batch = max_batch
        self.lanes: dict[int, _Lane] = {}
        self.ready_topics: set[str] = set()
        self.processed = 0
        self.started = asyncio.Event()
        self._supervise_as(f"processor {self.instance}", log)
        self._source: AIOKafkaConsumer | None = None
        self._taking = asyncio.Lock()
        self._closing = False
        self._hints: AIOKafkaProducer | None = None
        # the housekeeping loop's next look (epoch ms), and what wakes it sooner (`_housekeeping_tracked`)
        self._housekeeping_look_ms = 0
        self._housekeeping_wakeup = asyncio.Event()
        self.bad_records = BadRecords(log, f"processor {self.instance}", action="quarantined")
        # events that arrived on another partition than their job's (another partitioner wrote
        # them) and were moved there: counted, and logged once per producer (`actor`)
        self.partition_count = 0  # of the event log, from `check_layout` at start
        self.moved_events = 0
        self.moved_from: dict[str, int] = {}  # producer -> events moved (at most MOVED_PRODUCERS_LOGGED kept)
        self.metrics = metrics  # Prometheus metrics (eventjobs.metrics), or None
        self._slot_totals: dict[str, list[int]] = {}  # limit name (as labelled) -> [slots in use, jobs waiting]
        if metrics is not None:
            self._counters = metrics.event_counters()
            metrics.quarantined.inc(0)
            metrics.gauge_from(metrics.processor_lag, self._lag)
            metrics.gauge_from(metrics.housekeeping_timers,
                               lambda: sum(len(lane.housekeeping) for lane in list(self.lanes.values())))

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
                transactional_id=self.names.processor_transactional_id(tp.partition),
                transaction_timeout_ms=60_000,
                linger_ms=0,
                # right after a commit the coordinator answers CONCURRENT_TRANSACTIONS until the
                # markers are written; retry that quickly instead of after the default 100 ms
                retry_backoff_ms=5,
            )
            await txn.start()  # init_transactions: fences the previous owner of this partition
            try:
                table = await self._restore(tp.partition, txn)
                slots = await self._restore_slots(tp.partition)
                start = await self._committed(tp)
            except BaseException:
                await txn.stop()
                raise
            self._slots_changed({owner: (None, table) for owner, table in slots.items()})
            housekeeping = Housekeeping(self.retention, self.republish)
            housekeeping.track_all(table)
            self._housekeeping_tracked(housekeeping)
            lane = _Lane(tp, txn, table, housekeeping, slots=slots, last_commit=asyncio.get_running_loop().time(),
                         next_offset=start)
            lane.task = self._supervised(self._run_lane(lane), f"the fold of partition {tp.partition}")
            lane.committer = self._supervised(self._commit_loop(lane), f"the committer of partition {tp.partition}")
            self.lanes[tp.partition] = lane
            log.info("processor %s owns partition %d (%d jobs restored)", self.instance, tp.partition, len(lane.table))
        self.started.set()

    async def _committed(self, tp: TopicPartition) -> int:
        """Where the partition's lane starts: the offset committed for it, asked again now (-1: none).

        aiokafka fetched the committed offset when the partition was assigned, before this take
        initialised its transactional id. The previous owner's last transaction may have been
        committing then (slow while the cluster replaces a lost broker): the consumer got the
        offset from before it, while the changelog just restored includes it. Folding from there
        would fold those events again, and a duplicate enqueue among them would derive its
        `duplicate_rejected` a second time. Asked now, after `init_transactions` completed or
        aborted that transaction, the offset matches the restored table; the lane ignores what
        the consumer fetches below it. (The consumer is not moved there: records it fetched
        before this take and hands over after it would then come a second time.)
        """
        assert self._source is not None
        try:  # aiokafka retries this until the group coordinator answers: bounded, the take then fails loudly
            async with asyncio.timeout(COMMITTED_OFFSET_TIMEOUT_S):
                committed = await self._source.committed(tp)
        except TimeoutError:
            raise RuntimeError(f"the committed offset of partition {tp.partition} was not answered within "
                               f"{COMMITTED_OFFSET_TIMEOUT_S:.0f} s") from None
        return -1 if committed is None else committed

    async def _restore(self, partition: int, txn: AIOKafkaProducer) -> dict[str, JobState]:
        """The partition's committed job states, from its changelog partition (compacted: one record per job).

        A job whose latest record does not decode is left out (its next event is then refused as
        an unknown job; `eventjobs replay --state` can rebuild it from the log): the record is
        copied to the quarantine topic with the reason and tombstoned, in one transaction of the
        partition's own (fenced) producer, so it is reported once and not read again.
        """
        with collector_paused():  # every restored state outlives the restore: do not rescan them
            read = await read_compacted(self.settings, [TopicPartition(self.names.job_state, partition)],
                                        decode_state, StateDecodeError)
        if read.undecodable:  # reported only now: a later record of the key (a tombstone) may have replaced it
            async with txn.transaction():
                acks = []
                for key_bytes, (record, error) in read.undecodable.items():
                    reason = f"undecodable job state in the changelog: {error}"
                    self.bad_records.report("undecodable state", f"{origin(record)} ({describe_key(key_bytes)})", reason)
                    acks.append(await txn.send(self.names.quarantine, record.value, key=key_bytes,
                                               headers=quarantine_headers(record, reason)))
                    acks.append(await txn.send(self.names.job_state, None, key=key_bytes, partition=partition))
                await asyncio.gather(*acks)
        return read.latest

    async def _restore_slots(self, partition: int) -> dict[str, SlotTable]:
        """The slot tables of the concurrency-limit keys the partition owns (``limit-state``, compacted).
        A record that does not decode is logged and left out (that key's table starts again empty)."""
        def undecodable(record: ConsumerRecord[bytes, bytes], error: Exception) -> None:
            self.bad_records.report("undecodable slot table", origin(record), str(error))

        read = await read_compacted(self.settings, [TopicPartition(self.names.limit_state, partition)],
                                    decode_table, ValueError, on_undecodable=undecodable)
        return read.latest

    async def _release(self, revoked: list[TopicPartition]) -> None:
        for tp in revoked:
            lane = self.lanes.pop(tp.partition, None)
            if lane is None:
                continue
            self._slots_changed({owner: (table, None) for owner, table in lane.slots.items()})
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
        self.partition_count = await check_layout(self.settings)
        source = consumer(
            self.settings,
            group_id=self.group_id,
            max_poll_records=self.max_batch,
            fetch_max_wait_ms=500,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
            max_poll_interval_ms=120_000,
            # Only processors write to the event log transactionally, and all they write there
            # are derived events of the lane's own jobs, which `apply` never lets change a state
            # (a duplicate or a rejection; a property test holds it to that). Events for another
            # job (`LINKED_TYPES`), which do change its state, are written plainly and
            # acknowledged before the transaction commits (`_send_linked`): an aborted
            # transaction takes none of them back. Reading uncommitted is therefore safe, and it
            # spares every new event the wait for the partition's open transaction to commit
            # (read_committed stops at the first open transaction's offset).
            isolation_level="read_uncommitted",
        )
        self._source = source
        self._hints = producer(self.settings, linger_ms=0)
        housekeeper: asyncio.Task[None] | None = None
        try:  # started inside: a failed or cancelled start still closes both clients
            await self._hints.start()
            housekeeper = self._supervised(self._keep_house(), "the housekeeping timers (lease, re-publish, retention)")
            await source.start()
            source.subscribe([self.names.events], listener=OwnershipListener(self._take, self._release, self._fail))
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
            if housekeeper is not None:
                housekeeper.cancel()
                await asyncio.gather(housekeeper, return_exceptions=True)
            async with self._taking:
                for partition in list(self.lanes):
                    await self._release([TopicPartition(self.names.events, partition)])
            await source.stop()
            await self._hints.stop()

    async def _run_lane(self, lane: _Lane) -> None:
        """Fold arriving records at once and publish their ready records; the committer follows."""
        tp = lane.partition
        while True:
            if lane.slots:  # woken at least once a sweep period, so that idle tables are forgotten
                try:
                    await asyncio.wait_for(lane.wakeup.wait(), self.slot_sweep_s)
                except TimeoutError:
                    pass
            else:
                await lane.wakeup.wait()
            lane.wakeup.clear()
            self._forget_idle_slots(lane)
            while lane.pending:
                if lane.backlog >= 4 * self.max_batch:  # the committer is behind: wait for it
                    lane.committed.clear()
                    await lane.committed.wait()
                    continue
                records, lane.pending = lane.pending[: self.max_batch], lane.pending[self.max_batch :]
                result = fold_batch(lane.table, records, actor=f"processor:{tp.partition}",
                                    max_event_bytes=self.settings.max_event_bytes, partition=tp.partition,
                                    max_state_bytes=self.settings.max_event_bytes, partition_count=self.partition_count,
                                    slots=lane.slots)
                if result.slot_tables:
                    self._slots_changed({owner: (lane.slots.get(owner), table)
                                         for owner, table in result.slot_tables.items()})
                    lane.slots.update(result.slot_tables)  # type: ignore[arg-type]  # a fold writes no tombstone
                lane.housekeeping.track_all(result.effects.states, before=lane.table)
                self._housekeeping_tracked(lane.housekeeping)
                update_table(lane.table, result.effects.states)
                for ready in result.effects.ready:  # published below: waiting (in flight) until acknowledged
                    _placing(lane, ready)
                lane.next_offset = records[-1].offset + 1
                await self._ensure_ready_topics(result.effects)
                hints = await self._publish_hints(result, lane)
                lane.folded.append(_Folded(result, records[-1].offset + 1, len(records), hints))
                lane.commit_wakeup.set()

    def _forget_idle_slots(self, lane: _Lane) -> None:
        """Drop the lane's slot tables that hold nothing and were idle `SLOT_TABLE_IDLE_S` (a
        tombstone each, committed with the lane's next transaction), at most once a sweep period:
        the memory of limits follows the keys in use. What a forgotten table remembered is not
        needed (`eventjobs.core.slots`: a stale grant is given back by its job)."""
        loop_now = asyncio.get_running_loop().time()
        if not lane.slots or lane.next_offset < 0 or loop_now - lane.slots_swept < self.slot_sweep_s:
            return
        lane.slots_swept = loop_now
        now = self.clock.now()
        idle: dict[str, SlotTable | None] = {owner: None for owner, table in lane.slots.items()
                                             if forgettable(table, now, self.slot_idle_s)}
        if not idle:
            return
        self._slots_changed({owner: (lane.slots.pop(owner), None) for owner in idle})
        lane.folded.append(_Folded(BatchResult(slot_tables=idle), lane.next_offset, 0, []))
        lane.commit_wakeup.set()
        log.debug("partition %d forgot %d idle slot table(s)", lane.partition.partition, len(idle))

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
                            for entry in batch:
                                acks += entry.hints
                            acks += await self._send(lane.producer, tp.partition, merged([entry.result for entry in batch]))
                            # every write must be acknowledged before the offsets commit: a lost
                            # changelog or ready record would otherwise go unnoticed
                            await asyncio.gather(*acks)
                            await lane.producer.send_offsets_to_transaction({tp: batch[-1].next_offset}, self.group_id)
                    except asyncio.CancelledError:
                        raise
                    except Exception as error:  # noqa: BLE001 - memory is ahead of the changelog now
                        await self._fail_commit(tp.partition, error, acks)
                        return
                self.processed += sum(entry.count for entry in batch)
                if self.metrics is not None:
                    self._count(batch)
                lane.committed.set()

    async def _keep_house(self) -> None:
        """Fire the lanes' housekeeping timers (`core.housekeeping`: a running attempt's lease,
        re-publishing a pending job's ready record, retention) when they come due.

        Leases and retentions are fired first, as the timer service fires its timers; then the
        due re-publishes of the pass are looked at together (`runtime.ready_checks`: a few offset
        requests for all of them): a job whose ready record still waits for its worker group (a
        paused queue, a backlog) is not published again, its timer is armed again; only a
        record that is gone, or may be, is. So a slow look never holds a lease expiry back.

        Each event goes plainly (idempotent producer, acks=all) to the lane's partition, as the
        timer service writes its events, and the lane folds it when it arrives. A crash before it
        is written loses nothing (the timers are rebuilt from the restored table); one after it
        writes it again with the same id, a duplicate. A write that fails ends this task, which
        stops the processor (the entries it took are only in memory; a restart rebuilds them).
        """
        assert self._hints is not None
        checks = ReadyChecks(self.settings, self._ready_retention_ms)
        try:
            while True:
                now = self.clock.now()
                due = [(partition, lane, lane.housekeeping.due_timers(lane.table, now))
                       for partition, lane in list(self.lanes.items())]
                acks = [await self._fire(partition, lane, timer, now)
                        for partition, lane, timers in due for timer in timers
                        if timer.kind != "republish" and self.lanes.get(partition) is lane]
                candidates, in_flight = self._ready_candidates(due)
                waiting = in_flight | await checks.waiting(candidates, epoch_ms(now))
                for partition, lane, timers in due:
                    if self.lanes.get(partition) is not lane:
                        continue  # released meanwhile: its next owner rebuilt the timers from the table
                    for timer in timers:
                        if timer.kind != "republish":
                            continue
                        if timer.job_id in waiting:
                            lane.housekeeping.defer(timer, lane.table, now)
                            continue
                        acks.append(await self._fire(partition, lane, timer, now))
                if acks:
                    await asyncio.gather(*acks)
                wait_s = self._housekeeping_wait_s(now)
                self._housekeeping_look_ms = epoch_ms(now) + int(wait_s * 1000)
                self._housekeeping_wakeup.clear()
                try:
                    await asyncio.wait_for(self._housekeeping_wakeup.wait(), wait_s)
                except TimeoutError:
                    pass
        finally:
            await checks.close()

    async def _fire(self, partition: int, lane: _Lane, timer: HousekeepingTimer, now: datetime) -> asyncio.Future[Any]:
        """Write the event of a due housekeeping timer to its lane's partition; returns its ack."""
        assert self._hints is not None
        event = lane.housekeeping.fire(timer, now, actor=f"processor:{partition}")
        data = encode(event, max_bytes=self.settings.max_event_bytes)
        sent: asyncio.Future[Any] = await self._hints.send(self.names.events, data, key=event.job_id.encode(),
                                                           partition=partition)
        return sent

    def _housekeeping_tracked(self, housekeeping: Housekeeping) -> None:
        """A lane tracked new states: wake the housekeeping loop if one is due before its next look
        (a lease shorter than HOUSEKEEPING_WAIT_S then expires on time)."""
        due_ms = housekeeping.next_due_ms()
        if due_ms is not None and due_ms < self._housekeeping_look_ms:
            self._housekeeping_wakeup.set()

    def _ready_candidates(self, due: list[tuple[int, _Lane, list[HousekeepingTimer]]]
                          ) -> tuple[list[Candidate], set[str]]:
        """The due re-publishes whose ready record is to be looked at: its topic and worker group
        (from the job's state), and where it went, or since when it can be there; and those
        whose record is still being sent (waiting, without a look)."""
        candidates, in_flight = [], set()
        for _, lane, timers in due:
            for timer in timers:
                state = lane.table.get(timer.job_id)
                if timer.kind != "republish" or state is None:
                    continue
                if lane.housekeeping.ready_in_flight(timer.job_id):
                    in_flight.add(timer.job_id)
                    continue
                route = capability_route(state.queue, state.options.capabilities)
                candidates.append(Candidate(timer.job_id, self.names.ready(route, state.priority.value),
                                            self.names.worker_group(route), lane.housekeeping.ready_place(timer.job_id),
                                            epoch_ms(earliest_publish(state))))
        return candidates, in_flight

    @property
    def _ready_retention_ms(self) -> int | None:
        """The ready topics' retention (their spec's; None: forever)."""
        retention = retention_ms(self.names.specs["ready"].spec.retention)
        return None if retention < 0 else retention

    def _housekeeping_wait_s(self, now: datetime) -> float:
        """Until the next housekeeping timer (a lease's included) is due, within HOUSEKEEPING_WAIT_S
        (one tracked meanwhile that is due sooner wakes the loop: `_housekeeping_tracked`)."""
        due = [ms for lane in list(self.lanes.values()) if (ms := lane.housekeeping.next_due_ms()) is not None]
        if not due:
            return HOUSEKEEPING_WAIT_S
        return min(HOUSEKEEPING_WAIT_S, max(0.001, (min(due) - epoch_ms(now)) / 1000))

    def _slots_changed(self, changes: dict[str, tuple[SlotTable | None, SlotTable | None]]) -> None:
        """Keep the limits' gauges (slots in use, jobs waiting, by limit name) in step with the
        owned slot tables: each change is (before, after), None for a table not owned (any more)."""
        metrics = self.metrics
        if metrics is None or not changes:
            return
        touched = set()
        for before, after in changes.values():
            for table, sign in ((before, -1), (after, 1)):
                if table is None:
                    continue
                label = metrics.limits(table.limit)
                totals = self._slot_totals.setdefault(label, [0, 0])
                totals[0] += sign * table.in_use
                totals[1] += sign * len(table.queue)
                touched.add(label)
        for label in touched:
            in_use, waiting = self._slot_totals[label]
            metrics.limit_slots_in_use.labels(label).set(in_use)
            metrics.limit_jobs_waiting.labels(label).set(waiting)

    def _count(self, batch: list[_Folded]) -> None:
        """Count a committed batch's events in the metrics (what the log now holds)."""
        counters, quarantined = self._counters, 0
        for entry in batch:
            quarantined += len(entry.result.quarantined)
            for event_type, state in entry.result.counted:
                if state is not None:
                    counters[event_type].inc(state.name, state.queue)
        if quarantined:
            self.metrics.quarantined.inc(quarantined)  # type: ignore[union-attr]  # called only with metrics (see the caller)

    def _lag(self) -> float:
        """Events on the owned partitions not folded yet (the consumer's high watermark minus the
        next offset to fold); read at scrape time."""
        source, lag = self._source, 0
        if source is None:
            return 0
        for lane in list(self.lanes.values()):
            try:
                end = source.highwater(lane.partition)
            except Exception:  # noqa: BLE001, S112 - revoked meanwhile
                continue
            if end is not None and lane.next_offset >= 0:
                lag += max(0, end - lane.next_offset)
        return lag

    async def _fail_commit(self, partition: int, error: Exception, acks: list[asyncio.Future[Any]]) -> None:
        """Stop the processor: a fenced producer means another instance owns the partition now;
        anything else leaves memory ahead of the changelog, which only a restart repairs.

        Fencing does not always surface as ``ProducerFenced``: once aiokafka's sender saw it, the
        producer is in a fatal state and the next send fails with "not in transaction". So the
        writes of the batch are checked for the fencing too (which also retrieves their errors).
        """
        done, pending = await asyncio.wait(acks, timeout=5) if acks else (set(), set())
        causes = [error, *(ack.exception() for ack in done if not ack.cancelled())]
        retrieve_errors(pending)  # they fail later, with the same cause: not an unretrieved error each
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

    async def _publish_hints(self, result: BatchResult, lane: _Lane | None = None) -> list[asyncio.Future[Any]]:
        """Ready records and revocations go out before the commit: they are hints for workers,
        whose claims the fold checks, so publishing them early only saves latency. A re-publish
        is marked (`records.REPUBLISHED_HEADER`), and where each ready record went is told to
        the lane's housekeeping once the broker acknowledged it."""
        assert self._hints is not None
        names, acks, republished = self.names, [], result.effects.republished
        for ready in result.effects.ready:
            topic = names.ready(capability_route(ready.queue, ready.options.capabilities), ready.priority.value)
            state = result.effects.states.get(ready.job_id)
            headers = None
            if ready.job_id in republished:
                headers = republished_headers(state.ready_republishes if state is not None else 0)
            ack = await self._hints.send(topic, ready.encode(), key=ready.job_id.encode(), headers=headers)
            if lane is not None:
                ack.add_done_callback(functools.partial(_placed, lane, ready))
            acks.append(ack)
        for revoked in result.effects.revoked:  # a tombstone naming the revoked attempt (workers key on both)
            topic = names.ready(capability_route(revoked.queue, revoked.options.capabilities), revoked.priority.value)
            acks.append(await self._hints.send(topic, None, key=revoked.job_id.encode(),
                                               headers=revocation_headers(revoked)))
        for moved in result.moved:
            acks.append(await self._move(moved))
        acks += await self._send_linked(result)
        return acks

    async def _send_linked(self, result: BatchResult) -> list[asyncio.Future[Any]]:
        """Write the batch's events about other jobs (`LINKED_TYPES`: dependency requests,
        answers, reopens, probes) to those jobs' partitions, plainly, not in the lane's transaction.

        Their lanes read the log uncommitted and act on them at once (a waiting job runs on its
        answer). Were they in the transaction and it aborted, the committed log would hold only
        the copy a restarted lane derives again, after everything the other job did meanwhile,
        and its fold (the projector, `replay --state`) would reject that history where the
        changelog accepted it. Written plainly (idempotent producer, acks=all, in fold order),
        each is acknowledged before the transaction that derived it commits (the commit waits for
        every hint): a crash in between derives it again with the same id, a duplicate that
        `apply` leaves without effect. Cost: none beyond their own writes.
        """
        assert self._hints is not None
        acks, event_bytes, max_bytes = [], result.event_bytes, self.settings.max_event_bytes
        for event in result.effects.events:
            if event.type in LINKED_TYPES:
                data = event_bytes.get(event.event_id) or encode(event, max_bytes=max_bytes)
                acks.append(await self._hints.send(self.names.events, data, key=event.job_id.encode(),
                                                   partition=job_partition(event.job_id, self.partition_count)))
        return acks

    async def _move(self, moved: Moved) -> asyncio.Future[Any]:
        """Copy an event that arrived on another partition than its job's to its job's partition.

        Not in the lane's transaction: the processor reads the log uncommitted, so the lane that
        owns the job would apply a copy that a failed transaction then aborts, while readers of
        committed data (replay, the projector) would see only the copy written again after the
        restart, later in the log. Written plainly (idempotent producer, acks=all), the copy is
        acknowledged before the transaction that consumes the original commits (its ack is among
        the hints the commit waits for): a crash in between writes it again, with the same
        event id, which the fold takes as a duplicate. Cost: one extra write per such event.
        """
        assert self._hints is not None
        record = moved.record
        source = f"{record.topic}/{record.partition}/{record.offset}"
        self.moved_events += 1
        count = self.moved_from.get(moved.actor)
        if count is None and len(self.moved_from) < MOVED_PRODUCERS_LOGGED:
            log.warning("producer %r writes events to other partitions than their job's (first: %s, job %s, whose "
                        "partition is %d): the processor moves each one there, one extra write per event. Produce "
                        "to the job's partition (docs/producers.md) to avoid it; further moves of this producer are "
                        "counted in moved_events, not logged", moved.actor, source,
                        record.key.decode(errors="replace") if record.key else "?", moved.partition)
        if count is not None or len(self.moved_from) < MOVED_PRODUCERS_LOGGED:
            self.moved_from[moved.actor] = (count or 0) + 1
        headers = [*(record.headers or ()), (MOVED_FROM_HEADER, source.encode())]
        sent: asyncio.Future[Any] = await self._hints.send(self.names.events, record.value, key=record.key,
                                                          partition=moved.partition, headers=headers)
        return sent

    async def _ensure_ready_topics(self, effects: Effects) -> None:
        routes = {capability_route(r.queue, r.options.capabilities) for r in effects.ready}
        missing = [route for route in routes if self.names.ready(route, "normal") not in self.ready_topics]
        if missing:
            self.ready_topics.update(await ensure_ready_topics(self.settings, missing))

    async def _send(self, txn: AIOKafkaProducer, partition: int, result: BatchResult) -> list[asyncio.Future[Any]]:
        """Queue the batch's durable writes in the open transaction; returns their acknowledgements.
        A send that fails midway (a fenced producer) leaves those queued before it to fail too:
        their errors are retrieved (the commit's failure reports the cause)."""
        acks: list[asyncio.Future[Any]] = []
        try:
            await self._queue_writes(txn, partition, result, acks)
        except BaseException:
            retrieve_errors(acks)
            raise
        return acks

    async def _queue_writes(self, txn: AIOKafkaProducer, partition: int, result: BatchResult,
                            acks: list[asyncio.Future[Any]]) -> None:
        names, effects = self.names, result.effects
        state_bytes, event_bytes, max_bytes = result.state_bytes, result.event_bytes, self.settings.max_event_bytes
        for job_id, state in effects.states.items():
            value = None  # None: forgotten, a tombstone
            if state is not None:
                cached = state_bytes.get(job_id)  # encoded (and size-checked) by fold_batch
                value = cached[1] if cached is not None and cached[0] is state else encode_state(state)
            acks.append(await txn.send(names.job_state, value, key=job_id.encode(), partition=partition))
        for event in effects.events:
            if event.type in LINKED_TYPES:
                continue  # about another job: written plainly to its partition (`_send_linked`)
            data = event_bytes.get(event.event_id) or encode(event, max_bytes=max_bytes)
            acks.append(await txn.send(names.events, data, key=event.job_id.encode(), partition=partition))
        for owner, table in result.slot_tables.items():
            value = encode_table(table) if table is not None else None  # None: forgotten, a tombstone
            acks.append(await txn.send(names.limit_state, value, key=owner.encode(), partition=partition))
        for key, timer in effects.timers.items():
            acks.append(await txn.send(names.timers, timer.encode() if timer else None, key=key, partition=partition))
        for job_id, entry in effects.dead_letters.items():
            acks.append(await txn.send(names.dead_letters, entry.encode() if entry else None, key=job_id.encode()))
        for bad in result.quarantined:
            record = bad.record
            headers = quarantine_headers(record, bad.reason)
            acks.append(await txn.send(names.quarantine, record.value, key=record.key, headers=headers))
            self.bad_records.report(bad.kind, origin(record), bad.reason)


def retrieve_errors(futures: Iterable[asyncio.Future[Any]]) -> None:
    """Mark the errors of `futures` (now or when they end) as seen: the failure they share is
    reported once, by whoever caused it, not as asyncio's "exception was never retrieved" each."""
    for future in futures:
        future.add_done_callback(_seen)


def _seen(future: asyncio.Future[Any]) -> None:
    if not future.cancelled():
        future.exception()


async def run_processor(settings: Settings, stop: asyncio.Event, *, with_services: dict[str, Coroutine[Any, Any, None]]
                        | None = None, metrics: Metrics | None = None, **options: object) -> None:
    """Run the lifecycle processor and the timer service (and any `with_services`, such as the
    projector) until `stop` is set; the first failure of any of them stops all and is raised.
    With `metrics`, both count into it (one registry per process)."""
    from eventjobs.runtime.timers import TimerService

    processor = LifecycleProcessor(settings, metrics=metrics, **options)  # type: ignore[arg-type]  # the processor's keyword arguments, checked by its __init__
    services = {"lifecycle processor": processor.run(stop),
                "timer service": TimerService(settings, metrics=metrics).run(stop)}
    await run_services(stop, {**services, **(with_services or {})})
