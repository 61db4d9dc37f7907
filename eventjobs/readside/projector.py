"""The projector: consumes the event log and writes the ClickHouse projections in batches.

Batches are bounded by size (`batch_max_events`) and time (`batch_max_wait_s`). Each batch is
folded through the core's `apply` (job states cached in memory, bounded; misses loaded from
`jobs FINAL` in one query per batch) and written by `ProjectionStore` (see its docstring for why a
crash anywhere leaves no gap and no double count). Positions live in ClickHouse with the data,
not in a consumer group: partitions are assigned manually and read from where the tables say.

If ClickHouse is unreachable the batch is kept and retried with capped exponential backoff;
nothing is skipped. The same class rebuilds projections for `eventjobs replay` (into another
database, up to fixed end offsets, without the heartbeat / pause handshake).
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import OrderedDict
from collections.abc import Callable, Collection
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from eventjobs.clickhouse.backend import Backend
from eventjobs.clickhouse.backoff import Backoff
from eventjobs.clickhouse.errors import ClickHouseError, ClickHouseUnavailable
from eventjobs.core.codec import admit
from eventjobs.core.refused import Refused
from eventjobs.core.limits import PROJECTOR_END_OFFSETS_EVERY_S
from eventjobs.core.state import JobStatus
from eventjobs.runtime.gc_pause import collector_paused
from eventjobs.kafka.clients import consumer as kafka_consumer
from eventjobs.kafka.clients import job_partition, partitions_of
from eventjobs.metrics import Metrics
from eventjobs.readside.control import Control
from eventjobs.readside.lag import LagTracker
from eventjobs.readside.rows import ProjectedJob, malformed_row, project_event
from eventjobs.readside.store import Batch, Positions, ProjectionStore
from eventjobs.settings import Settings
from eventjobs.kafka.topics import TopicNames, load_specs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ProjectorOptions:
    """Batch bounds, cache bound and heartbeat period (seconds and counts as named)."""

    batch_max_events: int = 20_000
    batch_max_wait_s: float = 0.5
    cache_max_jobs: int = 500_000
    heartbeat_every_s: float = 1.0
    #: how often the log's end offsets are asked for, for the lag per partition
    end_offsets_every_s: float = PROJECTOR_END_OFFSETS_EVERY_S


@dataclass
class BatchStats:
    """What one written batch did (for progress bars and logs)."""

    records: int
    event_rows: int
    elapsed_s: float
    next_offsets: dict[int, int] = field(default_factory=dict)


class ProjectorError(Exception):
    """The projector cannot run (no event log topic, ...); the message says what to do."""


def events_topic(settings: Settings) -> str:
    return TopicNames(settings.namespace, load_specs(settings.topics_dir)).events


class JobCache:
    """Projected jobs by id, least recently used evicted beyond `max_jobs`.

    `complete` is True while the cache is known to hold every job there is (the projection was
    empty at start and nothing was evicted since), which saves the lookup query per batch.
    """

    def __init__(self, max_jobs: int) -> None:
        self.max_jobs = max_jobs
        self.jobs: OrderedDict[str, ProjectedJob] = OrderedDict()
        self.complete = False

    def reset(self, complete: bool) -> None:
        self.jobs.clear()
        self.complete = complete

    def trim(self, protect: Collection[str] = ()) -> None:
        """Evict the least recently used jobs beyond `max_jobs`, except those in `protect` (jobs of
        a batch still being written: ClickHouse does not have their new state yet)."""
        for _ in range(len(self.jobs)):
            if len(self.jobs) <= self.max_jobs:
                return
            job_id, job = self.jobs.popitem(last=False)
            self.complete = False
            if job_id in protect:
                self.jobs[job_id] = job


class BatchFolder:
    """Turns a list of Kafka records into a `Batch`, using and updating the job cache."""

    def __init__(self, store: ProjectionStore, cache: JobCache, max_event_bytes: int) -> None:
        self.store = store
        self.cache = cache
        self.max_event_bytes = max_event_bytes
        self.partition_count = 0  # of the event log (0: unknown, every event is folded where it is)

    def fold(self, records: list[ConsumerRecord[bytes, bytes]], events_done: dict[int, int]) -> Batch:
        with collector_paused():
            return self._fold(records, events_done)

    def _fold(self, records: list[ConsumerRecord[bytes, bytes]], events_done: dict[int, int]) -> Batch:
        decoded = [self._decode(record) for record in records]
        self._load_missing({event.job_id for event in decoded if not isinstance(event, Refused)})
        jobs = self.cache.jobs
        touched: dict[str, ProjectedJob] = {}
        dead: set[str] = set()
        rows: list[tuple[Any, ...]] = []
        last: dict[int, int] = {}
        for record, event in zip(records, decoded, strict=True):
            partition, offset = record.partition, record.offset
            last[partition] = offset
            if isinstance(event, Refused):
                row = malformed_row(record.value, record.key, partition, offset, record.timestamp, event.reason)
            else:
                before = jobs.get(event.job_id)
                if self._moved(before, event.job_id, partition):
                    continue  # the processor moved it to its job's partition: the copy there is projected
                projected = project_event(before, event, record.value or b"", partition, offset)
                row = projected.row
                if projected.job is not None and projected.job is not before:
                    jobs[event.job_id] = projected.job
                    jobs.move_to_end(event.job_id)
                    touched[event.job_id] = projected.job
                    if projected.job.state.status is JobStatus.DEAD_LETTERED or (
                            before is not None and before.state.status is JobStatus.DEAD_LETTERED):
                        dead.add(event.job_id)
                    elif offset <= events_done.get(partition, -1):
                        # redo after a crash between the commit point and the state rows: the
                        # cached state may already be past this event (its `jobs` row was written),
                        # so whether it left the dead-letter queue here is unknown; write its row
                        # again (a deletion marker unless dead-lettered; the highest version wins)
                        dead.add(event.job_id)
            if offset > events_done.get(partition, -1):
                rows.append(row)
        return Batch(rows, touched, dead, last, len(records))

    def _moved(self, job: ProjectedJob | None, job_id: str, partition: int) -> bool:
        """Whether the processor moved this event elsewhere, as `processor.fold_batch` decides: an
        event of a job not held on its partition whose job belongs on another (`job_partition`)."""
        held_here = job is not None and not job.forgotten and job.log_partition == partition
        return bool(self.partition_count) and not held_here and job_partition(job_id, self.partition_count) != partition

    def _decode(self, record: ConsumerRecord[bytes, bytes]) -> Any:
        return admit(record.value, record.key, max_bytes=self.max_event_bytes)

    def _load_missing(self, job_ids: set[str]) -> None:
        if self.cache.complete:
            return
        missing = [job_id for job_id in job_ids if job_id not in self.cache.jobs]
        if missing:
            self.cache.jobs.update(self.store.load_jobs(missing))


class Projector:
    """Consume the event log into one database's projection tables until `stop` is set (or `stop_at`)."""

    def __init__(self, backend: Backend, settings: Settings, *, database: str | None = None,
                 options: ProjectorOptions = ProjectorOptions(), role: str = "eventjobs project",
                 control: bool = True, start_at: dict[int, int] | None = None,
                 stop_at: dict[int, int] | None = None,
                 on_batch: Callable[[BatchStats], None] | None = None, metrics: Metrics | None = None) -> None:
        #: Prometheus metrics (eventjobs_projector_lag_seconds, eventjobs_projector_records_behind), or None
        self.metrics = metrics
        self.backend = backend
        self.settings = settings
        self.topic = events_topic(settings)
        self.store = ProjectionStore(backend, database)
        self.control = Control(backend, self.store.database) if control else None
        self.options = options
        self.role = role
        self.start_at = start_at
        self.stop_at = stop_at
        self.on_batch = on_batch
        self.cache = JobCache(options.cache_max_jobs)
        self.folder = BatchFolder(self.store, self.cache, settings.max_event_bytes)
        self.positions = Positions()
        self.next_offsets: dict[int, int] = {}
        #: how far each partition is behind: reported with metrics and, by a live projector (one with
        #: `control`), in `projector_lag` for the dashboard
        self.lag = LagTracker()
        self._handled_pause: str | None = None
        self._last_beat = 0.0

    # ---- lifetime -------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Fetch, fold and write batches until `stop` (or `stop_at`).

        Two batches are in flight at most: while batch N is written to ClickHouse (in a thread;
        the engine releases the GIL), batch N+1 is fetched and folded. Writes stay strictly in
        order (N+1 is written only after N is), so positions and the commit point are as before.
        Before a heartbeat / pause check and before finishing, the write in flight is awaited.
        With metrics or `control`, `_watch_lag` runs beside the loop; its failure stops the loop.
        """
        consumer = kafka_consumer(self.settings, group_id=None, enable_auto_commit=False,
                                  max_partition_fetch_bytes=4 * 1024 * 1024)
        writing: asyncio.Task[bool] | None = None
        in_flight: Batch | None = None
        watching: asyncio.Task[None] | None = None
        watch_done = asyncio.Event()
        try:
            await consumer.start()  # inside: a cancelled start still closes the consumer
            partitions = await self._assign(consumer)
            await self._seek(consumer, partitions, stop)
            if self.metrics is not None or self.control is not None:
                watching = asyncio.create_task(self._watch_lag(consumer, partitions, watch_done))
            while not stop.is_set():
                if watching is not None and watching.done():
                    watching.result()  # raises what ended it
                    break
                if await self._reached_end(consumer, partitions):
                    if writing is None:
                        break
                    await writing
                    writing = None
                    continue
                records = await self._next_batch(consumer)
                if records:
                    started = time.perf_counter()
                    self.cache.trim(protect=in_flight.jobs if writing is not None and in_flight else ())
                    batch = await asyncio.to_thread(self.folder.fold, records, self.positions.events_done)
                    if writing is not None and not await writing:
                        writing = None
                        break  # stopping during an outage: nothing after the unwritten batch is written
                    in_flight = batch
                    writing = asyncio.create_task(self._write(batch, started, stop, _log_times(records)))
                elif writing is not None:
                    await writing
                    writing = None
                else:  # nothing new and every record returned is written: so is all before the positions
                    for tp in partitions:
                        self.lag.passed(tp.partition, await consumer.position(tp))
                if self.control is not None and time.monotonic() - self._last_beat >= self.options.heartbeat_every_s:
                    if writing is not None:
                        await writing
                        writing = None
                    await self._tick_control(consumer, partitions, stop)
        finally:
            watch_done.set()  # the watch ends after its current round (a thread's write is never cut off)
            for task in (writing, watching):
                if task is not None:
                    await asyncio.gather(task, return_exceptions=True)
            await consumer.stop()

    def finished(self) -> bool:
        """With `stop_at` (a rebuild): every partition reached its end offset."""
        if self.stop_at is None:
            return False
        return all(self.next_offsets.get(p, 0) >= end for p, end in self.stop_at.items())

    async def _reached_end(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition]) -> bool:
        """`finished()`, or every partition's read position reached its end offset.

        The last offsets of a partition can be transaction markers (the processor appends derived
        events transactionally), which are never returned as records: only the consumer's position
        moves past them. Called between batches, when every record returned so far is written.
        """
        if self.stop_at is None:
            return False
        if self.finished():
            return True
        for tp in partitions:
            end = self.stop_at.get(tp.partition, 0)
            if self.next_offsets.get(tp.partition, 0) < end and await consumer.position(tp) < end:
                return False
        return True

    async def _assign(self, consumer: AIOKafkaConsumer) -> list[TopicPartition]:
        partitions = await partitions_of(self.settings, self.topic)
        if not partitions:
            raise ProjectorError(
                f"the event log topic {self.topic} does not exist on {self.settings.kafka_bootstrap}; "
                f"create it with `eventjobs topics apply`"
            )
        consumer.assign(partitions)
        self.folder.partition_count = len(partitions)
        return partitions

    async def _seek(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition], stop: asyncio.Event) -> None:
        """Read positions from ClickHouse (retrying while it is unreachable) and seek every partition."""
        _, self.positions = await self._retrying(self.store.positions, stop)
        _, repaired = await self._retrying(functools.partial(self.store.repair_views, self.positions), stop)
        if repaired:
            log.warning("the last batch written before this start may have missed the metric views: the view rows of "
                        "%d minute(s) from %s were rebuilt from job_events", len(repaired), repaired[0])
        _, has_jobs = await self._retrying(self.store.has_jobs, stop)
        last_projected: dict[int, Any] = {}
        if self.control is not None:  # a live projector: its last report, for the lag after a restart
            _, last_projected = await self._retrying(self.store.last_projected, stop)
        if stop.is_set():
            return
        self.cache.reset(complete=not has_jobs)
        for tp in partitions:
            start = self.positions.resume_offset(tp.partition)
            if self.start_at is not None:
                start = max(start, self.start_at.get(tp.partition, 0))
            self.next_offsets[tp.partition] = start
            self.lag.resumed(tp.partition, start, (last_projected or {}).get(tp.partition))
            if start > 0:
                consumer.seek(tp, start)
            else:
                await consumer.seek_to_beginning(tp)
            if self.stop_at is not None and start >= self.stop_at.get(tp.partition, 0):
                consumer.pause(tp)
        log.info("projecting %s from %s", self.topic, dict(sorted(self.next_offsets.items())))

    async def _next_batch(self, consumer: AIOKafkaConsumer) -> list[ConsumerRecord[bytes, bytes]]:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.options.batch_max_wait_s
        records: list[ConsumerRecord[bytes, bytes]] = []
        while len(records) < self.options.batch_max_events:
            remaining = deadline - loop.time()
            if remaining <= 0:
                break
            fetched = await consumer.getmany(timeout_ms=int(remaining * 1000),
                                             max_records=self.options.batch_max_events - len(records))
            if not fetched:
                break
            for tp, batch in fetched.items():
                records.extend(self._within_bounds(consumer, tp, batch))
        return records

    def _within_bounds(self, consumer: AIOKafkaConsumer, tp: TopicPartition,
                       batch: list[ConsumerRecord[bytes, bytes]]) -> list[ConsumerRecord[bytes, bytes]]:
        if self.stop_at is None:
            return batch
        end = self.stop_at.get(tp.partition, 0)
        kept = [record for record in batch if record.offset < end]
        if len(kept) < len(batch) or (kept and kept[-1].offset + 1 >= end):
            consumer.pause(tp)
        return kept

    # ---- one batch ------------------------------------------------------------------------

    async def _write(self, batch: Batch, started: float, stop: asyncio.Event,
                     log_times: dict[int, int] | None = None) -> bool:
        """Write a folded batch (retrying while ClickHouse is unreachable), then advance the positions
        and the lag tracker (`log_times`: per partition, the log time of the batch's last record)."""
        done, _ = await self._retrying(lambda: self.store.write(batch), stop)
        if not done:
            return False  # stopping during an outage: nothing advanced, the batch is read again on restart
        for partition, offset in batch.last_offsets.items():
            self.positions.state_done[partition] = offset
            self.positions.events_done[partition] = max(offset, self.positions.events_done.get(partition, -1))
            self.next_offsets[partition] = offset + 1
            if log_times is not None and partition in log_times:
                self.lag.projected(partition, offset, log_times[partition])
        stats = BatchStats(batch.records, len(batch.event_rows), time.perf_counter() - started, dict(self.next_offsets))
        if self.on_batch is not None:
            self.on_batch(stats)
        return True

    async def _watch_lag(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                         done: asyncio.Event) -> None:
        """Until `done` (set when the batch loop ends): ask the log's end offsets every `end_offsets_every_s` (while Kafka does not
        answer the last answer stands, and the lag in seconds goes on growing) and, with `control`,
        report the lag in `projector_lag`. Beside the batch loop, so it goes on while a write waits
        for ClickHouse. With metrics, the per-partition gauges read the tracker at scrape time."""
        if self.metrics is not None:
            for tp in partitions:
                label = str(tp.partition)
                self.metrics.gauge_from(self.metrics.projector_lag.labels(label),
                                        functools.partial(self.lag.lag_s, tp.partition))
                self.metrics.gauge_from(self.metrics.projector_records_behind.labels(label),
                                        functools.partial(self.lag.records_behind, tp.partition))
        every_s = self.options.end_offsets_every_s
        while not done.is_set():
            try:
                ends = await asyncio.wait_for(consumer.end_offsets(partitions), max(every_s, 1.0))
                self.lag.ended({tp.partition: offset for tp, offset in ends.items()})
            except (TimeoutError, KafkaError) as error:
                log.debug("end offsets of %s not read (%r); the last ones stand", self.topic, error)
            if self.control is not None:
                try:
                    await asyncio.to_thread(self.store.write_lag, self.lag.lags(), self.lag.now())
                except ClickHouseError as error:
                    log.debug("lag not reported: %s", error)
            try:
                await asyncio.wait_for(done.wait(), every_s)
            except TimeoutError:
                pass

    async def _retrying(self, action: Callable[[], Any], stop: asyncio.Event) -> tuple[bool, Any]:
        """Run `action` in a thread until it succeeds: (True, its result); back off while ClickHouse is
        unreachable; (False, None) when `stop` is set first."""
        backoff = Backoff()
        while True:
            try:
                return True, await asyncio.to_thread(action)
            except ClickHouseUnavailable as error:
                delay = backoff.next_delay_s()
                log.warning("ClickHouse unavailable (%s); retrying in %.1f s, nothing is skipped", error, delay)
                try:
                    await asyncio.wait_for(stop.wait(), delay)
                    return False, None
                except TimeoutError:
                    continue

    # ---- heartbeat and the replay handshake ------------------------------------------------

    async def _tick_control(self, consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                            stop: asyncio.Event) -> None:
        now = time.monotonic()
        if now - self._last_beat < self.options.heartbeat_every_s or self.control is None:
            return
        self._last_beat = now
        control = self.control
        try:
            await asyncio.to_thread(control.heartbeat, self.role, {"next_offsets": self.next_offsets})
            facts = await asyncio.to_thread(control.read)
        except ClickHouseError as error:
            log.debug("heartbeat failed: %s", error)
            return
        token = facts.get("pause_request", ("", None))[0]
        if token and token != self._handled_pause and facts.get("resume", ("", None))[0] != token:
            await self._pause(token, consumer, partitions, stop)

    async def _pause(self, token: str, consumer: AIOKafkaConsumer, partitions: list[TopicPartition],
                     stop: asyncio.Event) -> None:
        """Write nothing until the replay says `resume`, then reload positions from the swapped tables."""
        assert self.control is not None
        control = self.control
        log.info("paused for a projection swap (token %s)", token)
        await asyncio.to_thread(control.set, "paused", token)
        while not stop.is_set():
            await asyncio.sleep(0.2)
            try:
                await asyncio.to_thread(control.heartbeat, self.role, {"paused": token})
                facts = await asyncio.to_thread(control.read)
            except ClickHouseError:
                continue
            if facts.get("resume", ("", None))[0] == token or facts.get("pause_request", ("", None))[0] != token:
                break
        self._handled_pause = token
        await self._seek(consumer, partitions, stop)
        log.info("resumed after the projection swap")



def _log_times(records: list[ConsumerRecord[bytes, bytes]]) -> dict[int, int]:
    """Per partition, the log time (ms) of the last of these records (they come in offset order)."""
    times: dict[int, int] = {}
    for record in records:
        times[record.partition] = record.timestamp
    return times
