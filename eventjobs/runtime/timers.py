"""The timer service: fires scheduled runs, retry backoffs and TTLs on time.

(A running attempt's lease, re-publishing a pending job's ready record and retention are the
processor's own timers, `core/housekeeping.py`, never records: a timer record of such a kind is
refused, "Bad input" below.)

Design (docs/architecture.md, "Timers"): the compacted topic `<ns>.timers` is the durable truth,
one record per pending timer keyed `job_id:kind`, co-partitioned with the event log. This service
owns timer partitions through a consumer group, rebuilds an in-memory `TimerIndex` of each
assigned partition by reading it from the beginning, then keeps reading new timers. When timers
are due it appends the events they cause (`due`, `expired`) and, once those are acknowledged, a
tombstone for each fired timer. A crash before the events are acknowledged fires nothing (the timers are still in the
topic); a crash between events and tombstones fires the same timers again after the restart, with
the same event ids, and the fold ignores a stale or repeated fire, so firing is exactly-once in
effect. No transaction is needed for that, and its commit round trips would sit between a due time
and the job's start.

Bad input (docs/architecture.md, "Bad input"): a timer record nobody can use (not JSON, a kind
this service does not fire, other wrong fields, an attempt out of range, a key that is not the
record's key; `admit_timer`) is skipped, counted in
`skipped_records`, logged once per kind, and tombstoned on the timer topic so that no restart
reads it again. Failures: a send that fails transiently is retried with backoff (per partition,
logged); one that cannot be retried, or keeps failing for `GIVE_UP_S`, and a partition take or
release that fails, stop the service: `run` raises, and the processor process exits non-zero.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.errors import KafkaError, KafkaTimeoutError
from pydantic import ValidationError

from eventjobs.core.refused import Refused
from eventjobs.core.clock import Clock, SystemClock
from eventjobs.core.codec import encode
from eventjobs.core.commands import timer_fired_event
from eventjobs.core.events import JobEvent
from eventjobs.core.timer_index import TimerIndex, admit_timer, brief
from eventjobs.kafka.clients import OwnershipListener, consumer, job_partition, partitions_of, producer
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.metrics import Metrics
from eventjobs.log.bad_records import BadRecords, describe_key
from eventjobs.runtime.supervisor import Supervised
from eventjobs.settings import Settings

log = logging.getLogger("eventjobs.runtime.timers")

FIRE_BATCH = 2000
# timer records taken from the consumer at a time: each is a Python object with its key and value
# until indexed, so a larger batch raises the peak memory of a rebuild (and, as the allocator
# keeps freed memory, the RSS after it) more than it speeds the rebuild up
READ_BATCH = 5_000
MAX_WAIT_MS = 100
RETRY_FIRST_MS = 100  # backoff after a failed send of a partition's timers: 100 ms, doubling ...
RETRY_MAX_MS = 10_000  # ... up to 10 s
GIVE_UP_S = 120.0  # a partition whose sends fail this long stops the service (a restart may help)


@dataclass(frozen=True)
class Firing:
    """The timers of one partition due in one pass, and the events they cause (in due order)."""

    partition: int
    timers: list[tuple[bytes, int, int]]  # (key, due_ms, attempt), as TimerIndex.pop_due gives them
    events: list[JobEvent]
    dropped: list[tuple[bytes, str]] = field(default_factory=list)  # timers that cause no event, and why


@dataclass
class _Retry:
    """A partition whose timers could not be sent: when it may try again, and since when it fails."""

    failures: int
    since_ms: int
    next_ms: int


def _ms(now: datetime) -> int:
    return int(now.timestamp() * 1000)


def _firing(partition: int, due: list[tuple[bytes, int, int]], now: datetime) -> Firing:
    """The events `due` timers cause; a timer that causes none (a key naming no known kind, say)
    is left out and listed in `dropped`, to be tombstoned with the rest."""
    actor = f"timer:{partition}"
    timers, dropped = [], []
    events: list[JobEvent] = []
    for key, due_ms, attempt in due:
        try:
            events.append(timer_fired_event(key, due_ms, attempt, now=now, actor=actor))
        except ValueError as error:  # pydantic's ValidationError and UnicodeDecodeError are ValueErrors
            dropped.append((key, brief(error) if isinstance(error, ValidationError) else str(error)))
            continue
        timers.append((key, due_ms, attempt))
    return Firing(partition, timers, events, dropped)


def transient(error: BaseException) -> bool:
    """Whether a failed send may succeed if tried again (the broker or a leader was away)."""
    if isinstance(error, (KafkaTimeoutError, TimeoutError)):
        return True
    return isinstance(error, KafkaError) and bool(getattr(error, "retriable", False))


def retry_delay_ms(failures: int) -> int:
    """Backoff before the next try after `failures` consecutive failed sends (1, 2, ...)."""
    return min(RETRY_MAX_MS, RETRY_FIRST_MS << min(failures - 1, 20))


class TimerService(Supervised):
    """Owns timer partitions (group `<ns>.timers`) and fires their due timers.

    Time is read only from `clock`, once per pass: `run_once(now)` fires what is due at `now`, so
    tests drive it with chosen times instead of sleeping.
    """

    def __init__(self, settings: Settings, *, clock: Clock | None = None, metrics: Metrics | None = None) -> None:
        self.settings = settings
        self.metrics = metrics  # Prometheus metrics (eventjobs.metrics), or None
        if metrics is not None:  # pending timers are read at scrape time (from the HTTP thread)
            metrics.gauge_from(metrics.timers_pending, lambda: sum(len(i) for i in list(self.indexes.values())))
            self._lateness = metrics.timer_lateness
        self.names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
        self.group_id = self.names.timers_group
        self.clock = clock or SystemClock()
        self.indexes: dict[int, TimerIndex] = {}
        self.loading: dict[int, int] = {}  # partition -> end offset still to reach before firing
        self.lock = asyncio.Lock()
        self._source: AIOKafkaConsumer | None = None
        self._sender: AIOKafkaProducer | None = None
        self.loaded = asyncio.Event()  # set once every assigned partition was read to its end
        self._supervise_as("timer service", log)
        self.bad = BadRecords(log, "timer service", action="skipped and tombstoned",
                              count=metrics.skipped if metrics is not None else None)
        # partition -> key -> (why, where) of bad records that are the newest of their key, to tombstone
        self._bad_keys: dict[int, dict[bytes, tuple[Refused, str]]] = {}
        self._retry: dict[int, _Retry] = {}  # partitions whose last send failed
        self._tombstoning: set[asyncio.Future[Any]] = set()
        self.event_partitions = 0  # partitions of the event log (read at start): fired events go to job_partition

    @property
    def skipped_records(self) -> int:
        """Timer records skipped (and tombstoned) because nobody can use them; see `bad.counts`."""
        return self.bad.total

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
                self._bad_keys.pop(tp.partition, None)
                self._retry.pop(tp.partition, None)

    async def run(self, stop: asyncio.Event) -> None:
        self._source = consumer(
            self.settings,
            group_id=self.group_id,
            fetch_max_wait_ms=500,
            max_poll_records=READ_BATCH,
            session_timeout_ms=10_000,
            heartbeat_interval_ms=2_000,
        )
        source = self._source
        self._sender = producer(self.settings, linger_ms=0)
        try:  # started inside: a failed or cancelled start still closes both clients
            await self._sender.start()
            self.event_partitions = len(await partitions_of(self.settings, self.names.events))
            await source.start()
            source.subscribe([self.names.timers], listener=OwnershipListener(self._take, self._release, self._fail))
            while not stop.is_set() and self.failure is None:
                batch = await source.getmany(timeout_ms=self.wait_ms(self.clock.now()), max_records=READ_BATCH)
                async with self.lock:
                    for tp, records in batch.items():
                        self.index_timers(tp.partition, ((r.key, r.value, r.offset) for r in records))
                    await self._check_loaded(source)
                    await self._tombstone_bad_records()
                    await self.run_once(self.clock.now())
            if self.failure is not None:
                raise self.failure
        finally:
            await source.stop()
            self.indexes.clear()
            await self._sender.stop()

    def index_timers(
        self, partition: int, records: Iterable[tuple[bytes | None, bytes | None] | tuple[bytes | None, bytes | None, int]]
    ) -> None:
        """Apply timer records (key, value; None is a tombstone; optionally the offset, for the log)
        read from `partition` to its index.

        A record that cannot be a timer is skipped and held back as the key's bad newest record
        until the partition is loaded (`take_bad_records`): if a later record of the same key
        replaces it first (such as the tombstone written for it before a restart), it is
        forgotten, so a restart does not report again what was already dealt with.
        """
        index = self.indexes.get(partition)
        if index is None:  # not (or no longer) ours
            return
        held = self._bad_keys.setdefault(partition, {})
        for key, value, *offset in records:
            if value is None:
                if key is not None:
                    index.delete(key)
                    held.pop(key, None)
                continue
            admitted = admit_timer(key, value)
            if isinstance(admitted, Refused):
                where = f"{self.names.timers}/{partition}@{offset[0] if offset else '?'} ({describe_key(key)})"
                if key is None:  # cannot be on a compacted topic, nor tombstoned: report it now
                    self.bad.report(admitted.kind, where, admitted.reason)
                    continue
                index.delete(key)  # the newest record of the key is this one: no timer for it any more
                held[key] = (admitted, where)
                continue
            index.set(key, *admitted)  # type: ignore[arg-type]  # admit_timer refuses a key other than the record's
            held.pop(key, None)  # type: ignore[arg-type]  # the same key, so not None

    def take_bad_records(self, partition: int) -> list[bytes]:
        """Report (count, log once per kind) the bad records still the newest of their keys in a
        loaded partition, and return their keys to tombstone. Nothing while the partition loads."""
        held = self._bad_keys.get(partition)
        if not held or partition in self.loading or partition not in self.indexes:
            return []
        keys = list(held)
        for refused, where in held.values():
            self.bad.report(refused.kind, where, refused.reason)
        held.clear()
        return keys

    async def _tombstone_bad_records(self) -> None:
        """Write a tombstone for each bad timer record of a loaded partition that is still the newest
        of its key, so that it is not read again after a restart (the topic is compacted).

        Not before the partition is loaded: a later record of the key may still be on its way,
        and a tombstone written after it would delete a good timer. A tombstone that fails is
        logged; the record is then read (and refused) again after the next restart.
        """
        sender = self._sender
        if sender is None:
            return
        for partition in list(self._bad_keys):
            for key in self.take_bad_records(partition):
                ack = await sender.send(self.names.timers, None, key=key, partition=partition)
                self._tombstoning.add(ack)
                ack.add_done_callback(self._tombstoned)

    def _tombstoned(self, ack: asyncio.Future[Any]) -> None:
        self._tombstoning.discard(ack)
        if not ack.cancelled() and ack.exception() is not None:
            log.warning("tombstoning a bad timer record failed (%s); it is refused again after a restart",
                        ack.exception())

    async def _check_loaded(self, source: AIOKafkaConsumer) -> None:
        """Mark partitions whose rebuild reached the end offset seen at assignment; they may fire now."""
        for partition, end in list(self.loading.items()):
            tp = TopicPartition(self.names.timers, partition)
            if await source.position(tp) >= end:
                del self.loading[partition]
                log.info("timer partition %d loaded: %d pending", partition, len(self.indexes[partition]))
                if not self.loading:
                    self.loaded.set()

    def wait_ms(self, now: datetime) -> int:
        """How long the loop may sleep at `now`: until the next timer is due (1 to MAX_WAIT_MS ms)."""
        next_due = []
        for partition, index in self.indexes.items():
            due_ms = index.next_due_ms() if partition not in self.loading else None
            retry = self._retry.get(partition)
            if due_ms is not None and retry is not None:  # backing off: not before its next try
                due_ms = max(due_ms, retry.next_ms)
            next_due.append(due_ms)
        due = min((d for d in next_due if d is not None), default=None)
        if due is None:
            return MAX_WAIT_MS
        return int(max(1, min(MAX_WAIT_MS, due - _ms(now))))

    def take_due(self, now: datetime) -> list[Firing]:
        """Remove the timers due at `now` from the loaded partitions' indexes (at most FIRE_BATCH per
        partition) and build the events they cause. No I/O: `run_once` sends what this returns."""
        firings = []
        now_ms = _ms(now)
        for partition, index in self.indexes.items():
            if partition in self.loading:
                continue
            retry = self._retry.get(partition)
            if retry is not None and retry.next_ms > now_ms:  # its last send failed: back off
                continue
            due = index.pop_due(now_ms, limit=FIRE_BATCH)
            if due:
                firing = _firing(partition, due, now)
                for key, reason in firing.dropped:
                    self.bad.report("causes no event", f"{self.names.timers}/{partition} ({describe_key(key)})", reason)
                firings.append(firing)
        return firings

    async def run_once(self, now: datetime) -> list[JobEvent]:
        """One pass: fire every timer due at `now`; return the events written (acknowledged).

        A partition whose sending fails keeps its timers pending: a transient failure is tried
        again after a backoff (100 ms doubling to 10 s, logged); any other failure, or one that
        lasts `GIVE_UP_S`, stops the service (`failure`), so that the process exits and restarts.
        """
        firings = self.take_due(now)
        results = await asyncio.gather(*(self._fire(firing) for firing in firings), return_exceptions=True)
        fired: list[JobEvent] = []
        now_ms = _ms(now)
        for firing, result in zip(firings, results, strict=True):
            partition = firing.partition
            if isinstance(result, BaseException):
                self._send_failed(partition, result, now_ms)
                continue
            fired.extend(firing.events)
            if self.metrics is not None:
                for _, due_ms, _ in firing.timers:
                    self._lateness.observe(max(0, now_ms - due_ms) / 1000)
            retry = self._retry.pop(partition, None)
            if retry is not None:
                log.warning("timers of partition %d are sent again (after %d failed tries)", partition, retry.failures)
        return fired

    def _send_failed(self, partition: int, error: BaseException, now_ms: int) -> None:
        retry = self._retry.get(partition)
        if retry is None:
            retry = self._retry[partition] = _Retry(0, now_ms, now_ms)
        retry.failures += 1
        delay = retry_delay_ms(retry.failures)
        retry.next_ms = now_ms + delay
        if not transient(error):
            self._fail(RuntimeError(f"sending the timers of partition {partition} failed: {error!r}"))
        elif now_ms - retry.since_ms >= GIVE_UP_S * 1000:
            self._fail(RuntimeError(
                f"sending the timers of partition {partition} has failed for {(now_ms - retry.since_ms) / 1000:.0f} s "
                f"({retry.failures} tries): {error!r}"))
        elif retry.failures == 1 or retry.failures & (retry.failures - 1) == 0:  # 1st, 2nd, 4th, 8th ...
            log.warning("firing the timers of partition %d failed (%r, %d in a row); they stay pending, next try in %d ms",
                        partition, error, retry.failures, delay)

    def _event_partition(self, job_id: str, timer_partition: int) -> int:
        """The job's event-log partition (`job_partition`); before `run` read the partition count
        (unit tests), the timer's own partition number, which is the job's (co-partitioned)."""
        return job_partition(job_id, self.event_partitions) if self.event_partitions else timer_partition

    async def _fire(self, firing: Firing) -> None:
        """Append the caused events, and once they are acknowledged, tombstone the timers.

        No transaction: a crash between the two fires those timers again after the restart, with
        the same event ids (derived from the timer), and `apply` ignores the repeat. Skipping the
        transaction keeps its commit round trips off the path from due time to start.
        """
        sender = self._sender
        assert sender is not None
        partition = firing.partition
        try:
            acks = [
                await sender.send(self.names.events, encode(event, max_bytes=self.settings.max_event_bytes),
                                  key=event.job_id.encode(), partition=self._event_partition(event.job_id, partition))
                for event in firing.events
            ]
            await asyncio.gather(*acks)
            tombstones = [
                await sender.send(self.names.timers, None, key=key, partition=partition)
                for key in [*(key for key, _, _ in firing.timers), *(key for key, _ in firing.dropped)]
            ]
            await asyncio.gather(*tombstones)
        except BaseException:
            index = self.indexes.get(partition)
            if index is not None:  # not (all) fired: put them back so a later pass retries
                for key, due_ms, attempt in firing.timers:
                    if index.get(key) is None:
                        index.set(key, due_ms, attempt)
            raise
