"""The worker: takes ready jobs of its queues, claims them, runs the handlers, reports outcomes.

Per queue (and per capability route, see `records.capability_route`) one consumer in the group
`<ns>.workers.<route>` reads the four priority topics. Fetched records wait in one bounded
buffer per priority; a free slot always takes the highest priority first, and a priority whose
buffer is full has its partitions paused, so a backlog of low jobs never hides a critical one.

A ready record's offset is committed once the claim for it is acknowledged: a worker that dies
before that leaves the record to another worker; one that dies after it leaves a claimed job
whose lease expires, and the processor makes it ready again. Execution is at-least-once.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import logging
import os
import socket
import traceback
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata

from eventjobs.app import App
from eventjobs.context import JobContext
from eventjobs.core.codec import EventEncodeError, encode
from eventjobs.core.events import (
    AttemptStartedEvent,
    AttemptTimedOutEvent,
    ClaimedEvent,
    HeartbeatEvent,
    JobEvent,
    ProgressEvent,
)
from eventjobs.core.ids import new_event_id
from eventjobs.core.outcome import WorkerFailure, outcome_event, worker_failure_event
from eventjobs.core.state import decode_state
from eventjobs.kafka import consumer, partitions_of, producer
from eventjobs.records import ReadyRecord, capability_route
from eventjobs.topic_admin import ensure_ready_topics
from eventjobs.topics import PRIORITIES

log = logging.getLogger("eventjobs.worker")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def capability_subsets(capabilities: list[str]) -> list[tuple[str, ...]]:
    """Every subset of the worker's capabilities: it may run jobs needing any of them."""
    caps = sorted(set(capabilities))
    return [combo for size in range(len(caps) + 1) for combo in itertools.combinations(caps, size)]


@dataclass
class _Offsets:
    """Which fetched offsets of one partition are not yet safe to commit."""

    outstanding: set[int] = field(default_factory=set)
    next_offset: int = -1

    def committable(self) -> int:
        return min(self.outstanding) if self.outstanding else self.next_offset


@dataclass
class _Item:
    source: AIOKafkaConsumer
    record: ConsumerRecord[bytes, bytes]


class Worker:
    """Runs jobs of `queues` with at most `concurrency` at once."""

    def __init__(
        self,
        app: App,
        *,
        queues: list[str] | None = None,
        concurrency: int = 10,
        capabilities: list[str] | None = None,
        worker_id: str | None = None,
        lease_s: float = 30.0,
        grace_s: float = 30.0,
        prefetch: int | None = None,
    ) -> None:
        if concurrency < 1:
            raise ValueError(f"concurrency must be >= 1, got {concurrency}")
        self.app = app
        self.settings = app.settings
        self.queues = queues or sorted({d.options.queue for d in app.jobs.values()} or {"default"})
        self.concurrency = concurrency
        self.capabilities = sorted(set(capabilities or []))
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.actor = f"worker:{self.worker_id}"
        self.lease_s = lease_s
        self.heartbeat_s = max(lease_s / 3, 0.2)
        self.grace_s = grace_s
        self.prefetch = prefetch or max(4 * concurrency, 100)
        self.buffers: dict[str, deque[_Item]] = {p: deque() for p in PRIORITIES}
        self.offsets: dict[tuple[int, TopicPartition], _Offsets] = {}
        self.running: dict[asyncio.Task[None], tuple[ReadyRecord, _Item]] = {}
        self.cancel_seen: set[str] = set()
        self.revoked: OrderedDict[str, None] = OrderedDict()
        self.claimed_here: OrderedDict[tuple[str, int], None] = OrderedDict()
        self.completed = 0
        self._consumers: list[AIOKafkaConsumer] = []
        self._sender: AIOKafkaProducer | None = None
        self._executor = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="eventjobs-job")
        self._wakeup = asyncio.Event()
        self._draining = False
        self._commit_soon = asyncio.Event()
        self._room = asyncio.Event()  # a buffer has room again
        self.started = asyncio.Event()

    # -- set-up ----------------------------------------------------------------------------
    def routes(self) -> list[str]:
        return [capability_route(q, subset) for q in self.queues for subset in capability_subsets(self.capabilities)]

    async def _start(self) -> None:
        names = self.app.names
        routes = self.routes()
        await ensure_ready_topics(self.settings, routes)
        self._sender = producer(self.settings, linger_ms=2)
        await self._sender.start()
        for route in routes:
            source = consumer(
                self.settings,
                group_id=f"{self.settings.namespace}.workers.{route}",
                # Ready records are hints, the claim is checked by the fold: reading them before the
                # processor's transaction commits saves the commit round trips on every job start.
                isolation_level="read_uncommitted",
                fetch_max_wait_ms=500,
                max_poll_records=self.prefetch,
                session_timeout_ms=10_000,
                heartbeat_interval_ms=2_000,
            )
            await source.start()
            source.subscribe([names.ready(route, priority) for priority in PRIORITIES])
            self._consumers.append(source)

    # -- the loops -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        await self._start()
        fetchers = [asyncio.create_task(self._fetch(source, stop)) for source in self._consumers]
        committer = asyncio.create_task(self._commit_loop(stop))
        cancels = asyncio.create_task(self._watch_cancels(stop))
        self.started.set()
        log.info("worker %s serving %s with concurrency %d", self.worker_id, ", ".join(self.routes()), self.concurrency)
        try:
            await self._dispatch(stop)
        finally:
            for task in fetchers:
                task.cancel()
            await asyncio.gather(*fetchers, return_exceptions=True)
            await self._drain()
            committer.cancel()
            cancels.cancel()
            await asyncio.gather(committer, cancels, return_exceptions=True)
            await self._commit()
            for source in self._consumers:
                await source.stop()
            if self._sender is not None:
                await self._sender.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _fetch(self, source: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Fetch only priorities whose buffer has room; the fetcher keeps the rest prefetched.

        (Pausing partitions instead would make a resumed partition wait for the next fetch round,
        up to fetch_max_wait_ms, every time a buffer drained.)
        """
        index = self._consumers.index(source)
        while not stop.is_set():
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
            for tp, records in batch.items():
                priority = tp.topic.rsplit(".", 1)[1]
                state = self.offsets.setdefault((index, tp), _Offsets())
                for record in records:
                    state.next_offset = record.offset + 1
                    if record.value is None:  # the processor revoked this job's ready record
                        self._revoke(record.key.decode() if record.key else "", priority)
                        continue
                    state.outstanding.add(record.offset)
                    self.buffers[priority].append(_Item(source, record))
            if batch:
                self._wakeup.set()

    def _revoke(self, job_id: str, priority: str) -> None:
        """Drop a buffered ready record of a job cancelled or expired before it started."""
        self.revoked[job_id] = None
        while len(self.revoked) > 100_000:
            self.revoked.popitem(last=False)
        buffer = self.buffers[priority]
        for item in [i for i in buffer if i.record.key == job_id.encode()]:
            buffer.remove(item)
            self._settled(item)

    def _next_item(self) -> _Item | None:
        for priority in PRIORITIES:
            if self.buffers[priority]:
                return self.buffers[priority].popleft()
        return None

    async def _dispatch(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        try:
            while not stop.is_set():
                if len(self.running) >= self.concurrency:
                    await asyncio.wait([stopping, *self.running], return_when=asyncio.FIRST_COMPLETED)
                    continue
                item = self._next_item()
                if item is None:
                    self._wakeup.clear()
                    waker = asyncio.ensure_future(self._wakeup.wait())
                    await asyncio.wait([stopping, waker], return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
                    continue
                self._room.set()
                self._start_job(item)
        finally:
            stopping.cancel()

    def _start_job(self, item: _Item) -> None:
        try:
            ready = ReadyRecord.decode(item.record.value)
        except Exception as error:  # noqa: BLE001 - a broken ready record must not stop the worker
            log.error("skipping undecodable ready record %s/%d@%d: %s", item.record.topic,
                      item.record.partition, item.record.offset, error)
            self._settled(item)
            return
        if ready.job_id in self.revoked or (ready.job_id, ready.attempt) in self.claimed_here:
            # revoked, or a repeat of a ready record this worker already claimed (a processor batch
            # redone after a crash publishes its ready records again): never run an attempt twice here
            self._settled(item)
            return
        self.claimed_here[(ready.job_id, ready.attempt)] = None
        while len(self.claimed_here) > 100_000:
            self.claimed_here.popitem(last=False)
        if not set(ready.options.capabilities) <= set(self.capabilities):
            log.error("job %s needs %s but this worker has %s; not claimed", ready.job_id,
                      ready.options.capabilities, self.capabilities)
            self._settled(item)
            return
        task = asyncio.create_task(self._run_job(ready, item))
        self.running[task] = (ready, item)
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        self.running.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            log.error("job task failed unexpectedly", exc_info=task.exception())

    def _claim_acknowledged(self, ack: asyncio.Future[Any], item: _Item) -> None:
        """Only a durable claim lets the ready record's offset be committed; an unsent claim leaves
        the record to be delivered again (after a restart or a rebalance)."""
        if ack.cancelled() or ack.exception() is not None:
            log.error("claim of %s/%d@%d was not written (%s); its ready record stays uncommitted",
                      item.record.topic, item.record.partition, item.record.offset,
                      "cancelled" if ack.cancelled() else ack.exception())
            return
        self._settled(item)

    def _settled(self, item: _Item) -> None:
        """The record's claim is durable (or the record is skipped): its offset may be committed."""
        index = self._consumers.index(item.source)
        tp = TopicPartition(item.record.topic, item.record.partition)
        state = self.offsets.get((index, tp))
        if state is not None:
            state.outstanding.discard(item.record.offset)
        self._commit_soon.set()

    # -- one job ---------------------------------------------------------------------------
    async def _send(self, event: JobEvent, partition: int | None = None) -> asyncio.Future[Any]:
        assert self._sender is not None
        return await self._sender.send(self.app.names.events, encode(event), key=event.job_id.encode(),
                                       partition=partition)

    def _envelope(self, ready: ReadyRecord) -> dict[str, Any]:
        return {"event_id": new_event_id(), "job_id": ready.job_id, "occurred_at": _now(), "actor": self.actor}

    def _failure(self, ready: ReadyRecord, kind: WorkerFailure, message: str, traceback: str = "") -> JobEvent:
        return worker_failure_event(kind, message, **self._envelope(ready), attempt=ready.attempt, traceback=traceback)

    async def _run_job(self, ready: ReadyRecord, item: _Item) -> None:
        now = _now()
        lease = timedelta(seconds=max(self.lease_s, 0.5))
        await self._send(ClaimedEvent(**self._envelope(ready), attempt=ready.attempt, worker_id=self.worker_id,
                                      lease_deadline=now + lease), ready.partition)
        started = await self._send(AttemptStartedEvent(**self._envelope(ready), attempt=ready.attempt,
                                                        worker_id=self.worker_id), ready.partition)
        started.add_done_callback(lambda ack: self._claim_acknowledged(ack, item))
        heartbeats = asyncio.create_task(self._heartbeat_loop(ready))
        try:
            outcome = await self._call(ready)
        except asyncio.CancelledError:
            if ready.job_id not in self.cancel_seen or self._draining:
                raise
            outcome = self._failure(ready, WorkerFailure.CANCELLED,
                                    "cancel requested while running; stopped at a heartbeat")
        finally:
            heartbeats.cancel()
        try:
            ack = await self._send(outcome, ready.partition)
            ack.add_done_callback(lambda done: done.cancelled() or done.exception() is None or log.error(
                "outcome of job %s was not written (%s); its lease will expire and it will run again",
                ready.job_id, done.exception()))
        except EventEncodeError as error:  # e.g. a result over the size limit: report, don't vanish
            await self._send(self._failure(ready, WorkerFailure.INVALID_RESULT, str(error)), ready.partition)
        self.completed += 1

    async def _call(self, ready: ReadyRecord) -> JobEvent:
        """Run the handler under its timeout; map whatever happens to the attempt's event."""
        definition = self.app.jobs.get(ready.name)
        common = {"job_id": ready.job_id, "attempt": ready.attempt, "retry_on": ready.options.retry_on,
                  "actor": self.actor}
        if definition is None:
            known = ", ".join(sorted(self.app.jobs)) or "none"
            return self._failure(
                ready, WorkerFailure.UNKNOWN_JOB,
                f"no handler registered for job {ready.name!r} in app {self.app.name!r} (registered: {known})",
            )
        ctx = self._context(ready)
        backoff = definition.options.backoff if callable(definition.options.backoff) else None
        try:
            async with asyncio.timeout(ready.options.timeout_s) as deadline:
                if definition.is_async:
                    call = definition.handler(ready.args, ctx) if definition.takes_context else definition.handler(ready.args)
                    result = await call
                else:
                    loop = asyncio.get_running_loop()
                    partial = (functools.partial(definition.handler, ready.args, ctx) if definition.takes_context
                               else functools.partial(definition.handler, ready.args))
                    result = await loop.run_in_executor(self._executor, partial)
        except TimeoutError as error:
            if deadline.expired():
                return AttemptTimedOutEvent(**self._envelope(ready), attempt=ready.attempt,
                                            timeout_s=ready.options.timeout_s)
            return outcome_event(error, occurred_at=_now(), backoff=backoff, **common)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - every failure is reported, with its traceback
            return outcome_event(error, occurred_at=_now(), backoff=backoff, **common)
        return outcome_event(result, occurred_at=_now(), backoff=backoff, **common)

    def _context(self, ready: ReadyRecord) -> JobContext:
        async def send_progress(percent: float, message: str) -> None:
            await self._send(ProgressEvent(**self._envelope(ready), attempt=ready.attempt, percent=percent,
                                           message=message))

        async def send_heartbeat() -> None:
            await self._send(HeartbeatEvent(**self._envelope(ready), attempt=ready.attempt,
                                            lease_deadline=_now() + timedelta(seconds=self.lease_s)))

        async def enqueue_child(name: str, args: dict[str, Any] | None, **options: Any) -> str:
            return await self.app.enqueue(name, args, **options)

        return JobContext(
            job_id=ready.job_id, name=ready.name, queue=ready.queue, attempt=ready.attempt,
            max_attempts=ready.options.max_attempts, send_progress=send_progress, send_heartbeat=send_heartbeat,
            enqueue_child=enqueue_child, loop=asyncio.get_running_loop(),
            cancel_requested=lambda: ready.job_id in self.cancel_seen,
        )

    async def _heartbeat_loop(self, ready: ReadyRecord) -> None:
        """Extend the lease while the handler runs; stop the handler once a cancel is seen."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if ready.job_id in self.cancel_seen:
                for task, (running, _) in list(self.running.items()):
                    if running.job_id == ready.job_id and task is not asyncio.current_task():
                        task.cancel()
                return
            await self._send(HeartbeatEvent(**self._envelope(ready), attempt=ready.attempt,
                                            lease_deadline=_now() + timedelta(seconds=self.lease_s)))

    # -- cancels of running jobs -----------------------------------------------------------
    async def _watch_cancels(self, stop: asyncio.Event) -> None:
        """Tail the state changelog for cancel requests on jobs running here (keys checked first)."""
        topic = self.app.names.job_state
        partitions = await partitions_of(self.settings, topic)
        reader = consumer(self.settings, group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=500)
        await reader.start()
        try:
            reader.assign(partitions)
            await reader.seek_to_end()
            while not stop.is_set():
                batch = await reader.getmany(timeout_ms=200)
                running = {ready.job_id for ready, _ in self.running.values()}
                for records in batch.values():
                    for record in records:
                        job_id = record.key.decode() if record.key else ""
                        if job_id in running and record.value is not None:
                            if decode_state(record.value).cancel_requested:
                                self.cancel_seen.add(job_id)
        finally:
            await reader.stop()

    # -- shutdown and commits --------------------------------------------------------------
    async def _drain(self) -> None:
        """Let running jobs finish within the grace period; report the rest as interrupted."""
        self._draining = True
        for source in self._consumers:
            source.pause(*source.assignment())
        if self.running:
            log.info("waiting up to %.0f s for %d running job(s)", self.grace_s, len(self.running))
            await asyncio.wait(list(self.running), timeout=self.grace_s)
        for task, (ready, item) in list(self.running.items()):
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
            await self._send(self._failure(
                ready, WorkerFailure.WORKER_SHUTDOWN,
                f"worker {self.worker_id} shut down before the job finished (grace {self.grace_s:g} s)",
                traceback="".join(traceback.format_stack(limit=1)),
            ), ready.partition)
        if self._sender is not None:
            await self._sender.flush()

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        """Commit soon after claims become durable (debounced), so a crash redelivers little."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._commit_soon.wait(), 0.5)
            except asyncio.TimeoutError:
                pass
            await asyncio.sleep(0.01)
            self._commit_soon.clear()
            await self._commit()

    async def _commit(self) -> None:
        for index, source in enumerate(self._consumers):
            assigned = source.assignment()
            offsets = {
                tp: OffsetAndMetadata(state.committable(), "")
                for (i, tp), state in self.offsets.items()
                if i == index and tp in assigned and state.committable() >= 0
            }
            if offsets:
                try:
                    await source.commit(offsets)
                except Exception as error:  # noqa: BLE001 - a rebalance; the next commit retries
                    log.debug("offset commit failed: %s", error)
