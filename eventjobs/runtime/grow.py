"""More partitions: a namespace's live jobs carried into a new namespace whose job topics have more.

Why a new namespace, not more partitions on the same topics: the job partition rule
(`core/partitioning.job_partition`) places every job by the partition count, and every reader of
the log (the processor, `replay --state`, the projector) judges each record by the count it sees
now. Added in place, partitions would move about half of all jobs, finished ones included, and
the log would no longer rebuild what was built from it. A new namespace starts a log of its own,
consistent from its first record, with only what is still needed.

What `grow` writes into the target, in one Kafka transaction (all of it, or nothing):

1. the history of every job the processor still holds (every state in the committed changelog:
   waiting, pending, scheduled, claimed, running, retrying, dead-lettered, and finished jobs
   still retained, whose idempotency keys and dependency answers must hold): each of its events
   the source's processor folded, in log order, to its new job partition (header
   `eventjobs.copied-from: topic/partition/offset`);
2. its state into the changelog and what that state waits for (`core.effects.installed`): its
   timers, the ready record of a pending job (unless an event not folded yet takes it out of
   pending: a cancel in flight, say; `core.effects.ready_survives`), the dead-letter entry of a
   dead-lettered one;
3. the target processor group's offsets, just past those histories: the history is folded into
   the states already, so the processor starts after it;
4. every event the source's processor had not folded yet (the tail past its committed offsets:
   requests and answers between jobs in flight, late worker results, new enqueues), after that
   point, on each event's new job partition, for the target's processor to fold;
5. the schedules (latest record of each key), the queue pauses, and the concurrency limits' slot
   tables (latest of each key owner, which match the processor's committed offsets as the job
   states do; the slot requests and releases not folded yet are in the tail), each table on its
   owner's new partition.

While copying, the source's log is folded up to the processor's committed offsets as the
processor folded it; that fold must equal the changelog (`replay --state`'s check), or nothing is
committed: the states carried over are the log's. After committing, the grow waits until the
target group's offsets read back (the group coordinator applies a transaction's offsets a moment
after the commit returns; read before that, the check would fold the tail as well, and a processor
started at once would start from the log's beginning), the target
is checked the same way, and the source's queues are paused (reason naming the target), so a
worker started on the old namespace by mistake takes nothing.

Refused, with the reason, while any service of the source runs (its processor, timer and
schedule services, workers: members of their consumer groups), while the target has topics, or
when a producer writes to the source during the grow (the transaction is then aborted).
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventjobs.core.clock import Clock, SystemClock
from eventjobs.core.codec import admit
from eventjobs.core.refused import Refused
from eventjobs.core.control import admit_queue_control, queue_control
from eventjobs.core.effects import Effects, installed, ready_survives
from eventjobs.core.fold import apply
from eventjobs.core.records import capability_route, queue_of_route
from eventjobs.core.schedules import admit_schedule_record
from eventjobs.core.state import JobState, JobStatus, encode_state
from eventjobs.kafka.admin import apply_topics, create_missing_topics, ready_routes
from eventjobs.kafka.clients import consumer, job_partition, partitions_of, producer, read_to_end, started_admin
from eventjobs.kafka.offsets import log_offsets
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.runtime.state_check import compare_state, processor_committed, read_changelog
from eventjobs.settings import Settings

log = logging.getLogger("eventjobs.runtime.grow")

#: Header of an event `grow` copied into the target: `topic/partition/offset` of the original.
COPIED_FROM_HEADER = "eventjobs.copied-from"
#: The grow's transaction may last this long (Kafka's default cap, `transaction.max.timeout.ms`).
TRANSACTION_TIMEOUT_MS = 900_000
#: How long the grow waits, after its transaction committed, for the new processor group's offsets
#: to read back: the group coordinator applies a transaction's offsets when the commit marker
#: reaches it, a moment after the commit returns, and until then they read as absent.
OFFSETS_VISIBLE_S = 60.0
_ACKS_IN_FLIGHT = 2000  # sends awaited at a time: memory stays bounded however large the history


#: The topics whose partition number is the job partition rule's: the grown count for each.
CO_PARTITIONED = ("events", "job-state", "timers", "limit-state")


class GrowRefused(RuntimeError):
    """The grow cannot run (or was rolled back); the message says why and what to do."""


@dataclass
class GrowReport:
    source: str
    target: str
    partitions_before: int
    partitions: int
    jobs: Counter[str] = field(default_factory=Counter)  # status -> jobs carried over
    moved: int = 0  # jobs whose partition number changed
    history_events: int = 0
    tail_events: int = 0
    timers: int = 0
    ready: int = 0
    dead_letters: int = 0
    schedule_records: int = 0
    queue_controls: int = 0
    slot_tables: int = 0
    paused_queues: list[str] = field(default_factory=list)


Progress = Callable[[str], None]


async def grow(source: Settings, target: Settings, partitions: int, *, clock: Clock | None = None,
               progress: Progress | None = None) -> GrowReport:
    """Carry `source`'s live jobs into the new namespace `target` with `partitions` partitions for
    its event log, changelog and timers (see the module docstring)."""
    say = progress or (lambda message: log.info("%s", message))
    clock = clock or SystemClock()
    names, new = _names(source), _names(target)
    if target.namespace == source.namespace:
        raise GrowRefused(f"grow into a new namespace (--into), not {source.namespace!r} itself")
    events_before = await partitions_of(source, names.events)
    if not events_before:
        raise GrowRefused(f"namespace {source.namespace!r} has no event log ({names.events}) on {source.kafka_bootstrap}")
    if partitions <= len(events_before):
        raise GrowRefused(f"{names.events} has {len(events_before)} partitions already; --to must be more")
    await _refuse_while_running(source, names)
    await _refuse_existing(target)
    _, begins, ends = await log_offsets(source, names.events)
    await _refuse_open_transactions(source, names, ends)
    table, _ = await read_changelog(source)
    report = GrowReport(source.namespace, target.namespace, len(events_before), partitions)
    await _create_target_topics(target, new, partitions, {_route(state) for _, state in table.values()})
    try:
        starts = await _write(source, target, names, new, table, begins, ends, partitions, clock, say, report)
    except BaseException:
        await _delete_target_topics(target)  # what the grow made: a later grow may start afresh
        raise
    # the check below (and the new processor) read these offsets: absent, they would fold the tail too
    await _offsets_visible(target, [TopicPartition(new.events, p) for p in range(partitions)], starts)
    report.jobs = Counter(state.status.value for _, state in table.values())
    report.moved = sum(1 for job_id, (p, _) in table.items() if job_partition(job_id, partitions) != p)
    say(f"checking that the changelog of {target.namespace} equals the fold of its log")
    check = await compare_state(target)
    if not check.identical:  # pragma: no cover - a defect of this module, reported rather than hidden
        raise GrowRefused(f"{target.namespace} was written but its changelog differs from the fold of its log for "
                          f"{len(check.differences)} job(s); do not start services on it")
    report.paused_queues = await _pause_source_queues(source, names, target.namespace, clock)
    return report


async def _write(source: Settings, target: Settings, names: TopicNames, new: TopicNames,
                 table: dict[str, tuple[int, JobState]], begins: dict[int, int], ends: dict[int, int], partitions: int,
                 clock: Clock, say: Progress, report: GrowReport) -> dict[int, int]:
    """Everything the target gets, in one transaction (the steps of the module docstring); returns
    the offsets its processor group starts from, per partition of the new event log."""
    writer = producer(target, transactional_id=new.grow_transactional_id, transaction_timeout_ms=TRANSACTION_TIMEOUT_MS,
                      linger_ms=5)
    await writer.start()
    try:
        async with writer.transaction():
            committed = await processor_committed(source, [TopicPartition(names.events, p) for p in ends])
            until = {p: max(begins[p], committed.get(p, begins[p])) for p in ends}
            say(f"copying the history of {len(table):,} jobs")
            folded, starts = await _copy_history(source, writer, names, new, table, begins, until, partitions, report)
            differ = _differing(folded, table)
            if differ:  # what the source's processor holds is not what its log says: carry nothing over
                raise GrowRefused(f"the changelog of {source.namespace} differs from the fold of its log up to the "
                                  f"processor's committed offsets for {len(differ)} job(s), e.g. {differ[:3]}; see "
                                  f"`eventjobs replay --state` (a job whose enqueue is older than the log's retention "
                                  f"cannot be carried over); nothing was written")
            say(f"copying what the processor had not folded ({sum(ends[p] - until[p] for p in ends):,} offsets)")
            waiting_ready = await _copy_tail(source, writer, names, new, table, until, ends, partitions, report)
            await _install_states(writer, new, table, waiting_ready, partitions, clock, report)
            await _copy_schedules(source, target, writer, names, new, report)
            await _copy_queue_controls(source, writer, names, new, report)
            await _copy_slot_tables(source, writer, names, new, partitions, report)
            # the history is in the states already: the target's processor starts right after it
            offsets = {p: starts.get(p, 0) for p in range(partitions)}
            await writer.send_offsets_to_transaction(
                {TopicPartition(new.events, p): offset for p, offset in offsets.items()}, new.processor_group)
            if (await log_offsets(source, names.events))[2] != ends:
                raise GrowRefused(f"events were appended to {names.events} during the grow (a producer or service "
                                  f"still writes to it): stop it and grow again; nothing was written")
    finally:
        await writer.stop()
    return offsets


async def _offsets_visible(target: Settings, partitions: list[TopicPartition], starts: dict[int, int]) -> None:
    """Wait until the target processor group's committed offsets read back as `starts`."""
    deadline = asyncio.get_running_loop().time() + OFFSETS_VISIBLE_S
    while (committed := await processor_committed(target, partitions)) != starts:
        if asyncio.get_running_loop().time() > deadline:
            raise GrowRefused(f"{target.namespace} was written but its processor's offsets read back as {committed}, "
                              f"not {starts}, after {OFFSETS_VISIBLE_S:.0f} s; do not start services on it")
        await asyncio.sleep(0.1)


def _differing(folded: dict[str, tuple[int, JobState]], table: dict[str, tuple[int, JobState]]) -> list[str]:
    """Jobs whose (partition, state) differ between the fold of the log and the changelog."""
    return sorted(job_id for job_id in folded.keys() | table.keys()
                  if job_id not in folded or job_id not in table or folded[job_id][0] != table[job_id][0]
                  or encode_state(folded[job_id][1]) != encode_state(table[job_id][1]))


def _names(settings: Settings) -> TopicNames:
    return TopicNames(settings.namespace, load_specs(settings.topics_dir))


def _route(state: JobState) -> str:
    return capability_route(state.queue, state.options.capabilities)


async def _refuse_while_running(settings: Settings, names: TopicNames) -> None:
    """Every consumer group of the source's services must be empty: a running processor would
    keep folding (and its timer service firing) into the old layout, a worker claiming there."""
    async with started_admin(settings) as admin:
        prefix = names.worker_group("")  # every queue route's group of workers
        groups = [names.processor_group, names.timers_group, names.schedules_group]
        groups += sorted(group for group, *_ in await admin.list_consumer_groups() if group.startswith(prefix))
        # one group per request: aiokafka 0.14 misreads a DescribeGroups answer about several groups
        described = [response for group in groups for response in await admin.describe_consumer_groups([group])]
    busy = []
    for response in described:
        for group in response.groups:  # (error_code, group_id, state, protocol_type, protocol, members, ...)
            if group[5]:  # a member: (member_id, client_id, client_host, ...)
                hosts = ", ".join(sorted({str(member[2]).lstrip("/") for member in group[5]}))
                busy.append(f"{group[1]} ({len(group[5])} member(s) on {hosts})")
    if busy:
        raise GrowRefused(f"services of {settings.namespace} are running: {'; '.join(busy)}. Stop every processor "
                          f"and worker of the namespace (and the producers writing to it), then grow")


async def _namespace_topics(admin: AIOKafkaAdminClient, namespace: str) -> list[str]:
    """The topics of `namespace` (`<namespace>.*`), sorted."""
    return sorted(name for name in await admin.list_topics() if name.startswith(f"{namespace}."))


async def _refuse_existing(target: Settings) -> None:
    async with started_admin(target) as admin:
        taken = await _namespace_topics(admin, target.namespace)
    if taken:
        raise GrowRefused(f"namespace {target.namespace!r} has topics already ({', '.join(taken[:4])}"
                          f"{', ...' if len(taken) > 4 else ''}): grow into a namespace that does not exist yet")


async def _refuse_open_transactions(settings: Settings, names: TopicNames, committed_ends: dict[int, int]) -> None:
    """A processor killed mid-transaction leaves it open until its timeout aborts it; until then
    a committed read stops before it, and what follows it would be left out."""
    reader = consumer(settings, group_id=None, isolation_level="read_uncommitted")
    await reader.start()
    try:
        partitions = [TopicPartition(names.events, p) for p in committed_ends]
        ends = {tp.partition: offset for tp, offset in (await reader.end_offsets(partitions)).items()}
    finally:
        await reader.stop()
    open_ = sorted(p for p, end in ends.items() if committed_ends[p] < end)  # the last stable offset lags
    if open_:
        raise GrowRefused(f"a transaction of a stopped processor is still open on {names.events} partition(s) "
                          f"{open_} (Kafka aborts it within its timeout, 60 s): grow again in a minute")


async def _delete_target_topics(target: Settings) -> None:
    try:
        async with started_admin(target) as admin:
            mine = await _namespace_topics(admin, target.namespace)
            if mine:
                await admin.delete_topics(mine)
                log.warning("the grow failed: deleted the topics it had created (%s)", ", ".join(mine))
    except Exception as error:  # noqa: BLE001 - the grow's own error is the one to report
        log.error("the grow failed and its topics in %s could not be deleted (%r): delete them before growing "
                  "into it again", target.namespace, error)


async def _create_target_topics(target: Settings, new: TopicNames, partitions: int, routes: set[str]) -> None:
    """The co-partitioned topics with `partitions`, everything else as its spec says."""
    grown = {key: new.specs[key].spec.model_copy(update={"partitions": partitions})
             for key in CO_PARTITIONED}
    await create_missing_topics(target, {spec.render(target.namespace): spec for spec in grown.values()})
    await apply_topics(target, sorted(routes | {"default"}))


class _Sends:
    """Sends in the open transaction, awaited in bounded groups; remembers the next offset after
    the last record written to each partition."""

    def __init__(self, writer: AIOKafkaProducer) -> None:
        self.writer = writer
        self.pending: list[asyncio.Future[Any]] = []
        self.next_offsets: dict[int, int] = {}

    async def send(self, topic: str, value: bytes | None, key: bytes | None, partition: int | None = None,
                   headers: list[tuple[str, bytes]] | None = None) -> None:
        self.pending.append(await self.writer.send(topic, value, key=key, partition=partition, headers=headers))
        if len(self.pending) >= _ACKS_IN_FLIGHT:
            await self.flush()

    async def flush(self) -> None:
        pending, self.pending = self.pending, []
        for written in await asyncio.gather(*pending):
            self.next_offsets[written.partition] = max(self.next_offsets.get(written.partition, 0), written.offset + 1)


async def _read_between(settings: Settings, topic: str, start: dict[int, int],
                        stop: dict[int, int]) -> AsyncIterator[ConsumerRecord[bytes, bytes]]:
    """Committed records of `topic` from `start` up to `stop` (exclusive) per partition, each
    partition in order."""
    wanted = [TopicPartition(topic, p) for p in stop if stop[p] > start[p]]
    if not wanted:
        return
    reader = consumer(settings, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
    await reader.start()
    try:
        reader.assign(wanted)
        for tp in wanted:
            reader.seek(tp, start[tp.partition])
        remaining = set(wanted)
        while remaining:
            batch = await reader.getmany(*remaining, timeout_ms=500, max_records=10_000)
            for tp, records in batch.items():
                for record in records:
                    if record.offset < stop[tp.partition]:
                        yield record
            for tp in list(remaining):
                if await reader.position(tp) >= stop[tp.partition]:
                    remaining.discard(tp)
    finally:
        await reader.stop()


def _copied_from(record: ConsumerRecord[bytes, bytes]) -> list[tuple[str, bytes]]:
    return [*(record.headers or ()), (COPIED_FROM_HEADER, f"{record.topic}/{record.partition}/{record.offset}".encode())]


async def _copy_history(source: Settings, writer: AIOKafkaProducer, names: TopicNames, new: TopicNames,
                        table: dict[str, tuple[int, JobState]], begins: dict[int, int], until: dict[int, int],
                        partitions: int, report: GrowReport) -> tuple[dict[str, tuple[int, JobState]], dict[int, int]]:
    """Fold the source log up to `until` exactly as its processor did (`state_check._fold_record`'s
    rules) and copy every record folded for a job of `table`, on the partition that holds it, to
    the job's new partition. Returns the fold (job id -> partition and state, to compare with
    `table`), and per target partition the offset after the last copy."""
    sends = _Sends(writer)
    states: dict[str, tuple[int, JobState]] = {}
    count = len(begins)
    async for record in _read_between(source, names.events, begins, until):
        event = admit(record.value, record.key, max_bytes=source.max_event_bytes)
        if isinstance(event, Refused):
            continue  # quarantined by the source's processor: not part of any job
        job_id = event.job_id
        before = states.get(job_id)
        if (before is None or before[0] != record.partition) and job_partition(job_id, count) != record.partition:
            continue  # moved by the source's processor; the copy it wrote is folded where it was written
        decision = apply(before[1] if before else None, event, actor=f"processor:{record.partition}")
        if decision.state is not None:
            states[job_id] = (record.partition, decision.state)
        elif decision.rejected is None:
            states.pop(job_id, None)
        held = table.get(job_id)
        if held is not None and held[0] == record.partition:
            await sends.send(new.events, record.value, record.key, job_partition(job_id, partitions), _copied_from(record))
            report.history_events += 1
    await sends.flush()
    return states, sends.next_offsets


async def _install_states(writer: AIOKafkaProducer, new: TopicNames, table: dict[str, tuple[int, JobState]],
                          waiting_ready: set[str], partitions: int, clock: Clock, report: GrowReport) -> None:
    """Each state on its new partition with the records it waits for (`core.effects.installed`);
    a pending job gets its ready record only if it is in `waiting_ready`."""
    sends = _Sends(writer)
    now = clock.now()
    for job_id, (_, state) in table.items():
        partition = job_partition(job_id, partitions)
        effects: Effects = installed(state, now, partition, ready=job_id in waiting_ready)
        await sends.send(new.job_state, encode_state(state), job_id.encode(), partition)
        for key, timer in effects.timers.items():
            await sends.send(new.timers, timer.encode() if timer else None, key, partition)
            report.timers += 1
        for ready in effects.ready:
            await sends.send(new.ready(_route(state), ready.priority.value), ready.encode(), job_id.encode())
            report.ready += 1
        for entry in effects.dead_letters.values():
            if entry is not None:
                await sends.send(new.dead_letters, entry.encode(), job_id.encode())
                report.dead_letters += 1
    await sends.flush()


async def _copy_tail(source: Settings, writer: AIOKafkaProducer, names: TopicNames, new: TopicNames,
                     table: dict[str, tuple[int, JobState]], until: dict[int, int], ends: dict[int, int],
                     partitions: int, report: GrowReport) -> set[str]:
    """The events the source's processor had not folded, each to its job's new partition (after
    the target processor's starting point), for the target's processor to fold. Returns the
    pending jobs whose ready record these events leave valid (`core.effects.ready_survives`):
    the others get theirs from the target's processor, when they are pending again."""
    sends = _Sends(writer)
    pending = {job_id: state for job_id, (_, state) in table.items() if state.status is JobStatus.PENDING}
    async for record in _read_between(source, names.events, until, ends):
        event = admit(record.value, record.key, max_bytes=source.max_event_bytes)
        if isinstance(event, Refused):
            continue  # the source's processor would have quarantined it
        await sends.send(new.events, record.value, record.key, job_partition(event.job_id, partitions),
                         _copied_from(record))
        report.tail_events += 1
        if event.job_id in pending:
            still = ready_survives(pending[event.job_id], event)
            if still is None:
                del pending[event.job_id]
            else:
                pending[event.job_id] = still
    await sends.flush()
    return set(pending)


async def _latest(settings: Settings, topic: str) -> dict[bytes, ConsumerRecord[bytes, bytes]]:
    """The latest record of each key of a compacted topic (tombstones drop the key)."""
    latest: dict[bytes, ConsumerRecord[bytes, bytes]] = {}
    async for record in read_to_end(settings, await partitions_of(settings, topic)):
        if record.key is None:
            continue
        if record.value is None:
            latest.pop(record.key, None)
        else:
            latest[record.key] = record
    return latest


async def _copy_slot_tables(source: Settings, writer: AIOKafkaProducer, names: TopicNames, new: TopicNames,
                           partitions: int, report: GrowReport) -> None:
    """Each concurrency-limit key's slot table (latest record), on its owner's new partition."""
    sends = _Sends(writer)
    for key, record in (await _latest(source, names.limit_state)).items():
        await sends.send(new.limit_state, record.value, key, job_partition(key.decode(errors="replace"), partitions))
        report.slot_tables += 1
    await sends.flush()


async def _copy_schedules(source: Settings, target: Settings, writer: AIOKafkaProducer, names: TopicNames,
                          new: TopicNames, report: GrowReport) -> None:
    """Each schedule's definition, last fired tick and last trigger, on its partition in the target."""
    count = len(await partitions_of(target, new.schedules))
    sends = _Sends(writer)
    for key, record in (await _latest(source, names.schedules)).items():
        event = admit_schedule_record(key, record.value)
        if event is None or isinstance(event, Refused):
            continue  # skipped by every reader of the source as well
        await sends.send(new.schedules, record.value, key, job_partition(event.schedule_id, count))
        report.schedule_records += 1
    await sends.flush()


async def _copy_queue_controls(source: Settings, writer: AIOKafkaProducer, names: TopicNames, new: TopicNames,
                               report: GrowReport) -> None:
    sends = _Sends(writer)
    for key, record in (await _latest(source, names.queue_control)).items():
        if not isinstance(admit_queue_control(key, record.value), tuple):
            continue
        await sends.send(new.queue_control, record.value, key)
        report.queue_controls += 1
    await sends.flush()


async def _pause_source_queues(source: Settings, names: TopicNames, target: str, clock: Clock) -> list[str]:
    """Pause every queue of the source (those with ready topics, and those paused before), so that a
    worker started on the old namespace by mistake takes nothing."""
    queues = {queue_of_route(route) for route in await ready_routes(source)}
    queues |= {key.decode() for key, record in (await _latest(source, names.queue_control)).items()
               if isinstance(admit_queue_control(key, record.value), tuple)}
    writer = producer(source)
    await writer.start()
    try:
        acks = []
        for queue in sorted(queues):
            record = queue_control(queue, paused=True, reason=f"moved to namespace {target} by `eventjobs partitions grow`",
                                   now=clock.now(), actor="operator:partitions-grow")
            acks.append(await writer.send(names.queue_control, record.encode(), key=queue.encode()))
        await asyncio.gather(*acks)
    finally:
        await writer.stop()
    return sorted(queues)
