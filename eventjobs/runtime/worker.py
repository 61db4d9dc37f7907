"""The worker: takes ready jobs of its queues, claims them, runs the handlers, reports outcomes.

Per queue (and per capability route, see `records.capability_route`) one consumer in the group
`<ns>.workers.<route>` reads the four priority topics. Fetched records wait in one bounded
buffer per priority; a free slot always takes the highest priority first, and a priority whose
buffer is full has its partitions paused, so a backlog of low jobs never hides a critical one.

A ready record's offset is committed once the claim for it is acknowledged: a worker that dies
before that leaves the record to another worker; one that dies after it leaves a claimed job
whose lease expires, and the processor makes it ready again. Execution is at-least-once.
Partitions revoked in a rebalance lose their buffered records and commit nothing afterwards.
Every event of an attempt names the worker's claim (`claim_id`), so an attempt whose claim the
fold refused (another claim came first) may run here but decides nothing. A re-published ready
record, which may be a second copy of an attempt already claimed elsewhere, runs only once the
claim is seen accepted on the job-state changelog (`runtime.claim_verdicts`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import itertools
import logging
import os
import socket
import traceback
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRecord, TopicPartition
from aiokafka.structs import OffsetAndMetadata
from pydantic import ValidationError

from eventjobs.app import App
from eventjobs.context import JobContext, JobsNotCompleted
from eventjobs.core.clock import Clock, SystemClock
from eventjobs.core.attempt_end import (
    CancelledWhileRunning,
    Happened,
    NoHandler,
    NotRecordable,
    Raised,
    Returned,
    RunningAttempt,
    ShutDown,
    TimedOut,
    attempt_end,
)
from eventjobs.core.codec import encode
from eventjobs.core.commands import (
    DEFAULT_LEASE_S,
    attempt_started_event,
    claimed_event,
    heartbeat_event,
    progress_event,
)
from eventjobs.core.events import JobEvent
from eventjobs.core.state import JobStatus, StateDecodeError, decode_state
from eventjobs.kafka.clients import (
    OwnershipListener,
    consumer,
    job_partition,
    partitions_of,
    producer,
    topic_partition_count,
)
from eventjobs.hooks import AttemptInfo, AttemptOutcome, Hooks, Quarantined, WorkerInfo
from eventjobs.hooks.prometheus import MetricsHook
from eventjobs.metrics import Metrics
from eventjobs.log.bad_records import BadRecords, describe_key, origin, power_of_ten
from eventjobs.runtime.processor import quarantine_headers
from eventjobs.core.records import (
    AWAITS_VERDICT,
    ReadyRecord,
    capability_route,
    is_republished,
    queue_of_route,
    ready_attempt,
    revoked_attempt,
)
from eventjobs.runtime.claim_verdicts import ClaimVerdicts
from eventjobs.core.timer_index import brief
from eventjobs.kafka.admin import TopicLayoutError, ensure_ready_topics, ensure_single_topics
from eventjobs.runtime.queue_pauses import QueuePauses
from eventjobs.runtime.worker_registry import WorkerRegistry
from eventjobs.kafka.topics import PRIORITIES

log = logging.getLogger("eventjobs.runtime.worker")
DEFAULT_ASYNC_CONCURRENCY = 100  # jobs at once when a handler is async (taskiq's default too)


def default_threads() -> int:
    """Threads for sync handlers: concurrent.futures.ThreadPoolExecutor's default size."""
    return min(32, (os.cpu_count() or 1) + 4)
DEPTH_EVERY_S = 2.0  # how often the queue depth metric is measured (one ListOffsets request per consumer)


class WorkerStopped(RuntimeError):
    """A background task of the worker failed; the worker stopped (its cause is chained)."""


class BadReadyRecord(ValueError):
    """A ready record the worker cannot run: `kind` (logged once per kind) and `reason`."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


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
    claim_id: str | None = None  # the event_id of this worker's `claimed` event, once built
    attempt: AttemptInfo | None = None  # once `before_attempt` was called (hooks watch attempts)
    begun: float | None = None  # event-loop time the handler was called
    end_sent: bool = False  # the attempt's ending event was sent (`_drain` sends none then)
    ended: bool = False  # `after_attempt` was called

    def run_time(self) -> float:
        """Seconds since the handler was called (0 if it never was)."""
        return 0.0 if self.begun is None else asyncio.get_running_loop().time() - self.begun


# `job_partition`, remembered for the jobs running now: an attempt writes three events or more
_home_partition = functools.lru_cache(maxsize=8192)(job_partition)


def _revokes(revoked: tuple[str, int, int] | None, item: _Item) -> bool:
    """Whether a tombstone revoking `revoked` (None: any attempt) revokes the buffered `item` of its job."""
    if revoked is None:
        return True
    try:
        return ready_attempt(ReadyRecord.decode(item.record.value)) == revoked
    except Exception:  # noqa: BLE001 - a broken record is quarantined when its turn comes
        return False


async def wait_for_results(app: App, job_ids: list[str], timeout: float) -> dict[str, Any]:
    """`ctx.wait_for_jobs`: {job id: result} once every job ended, through the app's one changelog
    watcher (`App.wait`); `JobsNotCompleted` names those that did not complete, or not in time."""
    ends = await asyncio.gather(*(app.wait(job_id, timeout) for job_id in job_ids), return_exceptions=True)
    results: dict[str, Any] = {}
    problems: dict[str, str] = {}
    for job_id, end in zip(job_ids, ends, strict=True):
        if isinstance(end, TimeoutError):
            problems[job_id] = f"did not end within {timeout:g} s ({end})"
        elif isinstance(end, BaseException):
            raise end
        elif end.status is JobStatus.COMPLETED:
            results[job_id] = end.result
        else:
            problems[job_id] = f"ended {end.status.value}" + (f": {end.reason}" if end.reason else "")
    if problems:
        raise JobsNotCompleted(problems, results)
    return results


class Worker:
    """Runs jobs of `queues` with at most `concurrency` at once."""

    def __init__(
        self,
        app: App,
        *,
        queues: list[str] | None = None,
        concurrency: int | None = None,
        capabilities: list[str] | None = None,
        threads: int | None = None,
        worker_id: str | None = None,
        lease_s: float = DEFAULT_LEASE_S,
        grace_s: float = 30.0,
        prefetch: int | None = None,
        clock: Clock | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        # Defaults per handler kind: async handlers run as tasks (DEFAULT_ASYNC_CONCURRENCY at once),
        # sync ones in a thread pool sized like concurrent.futures' (default_threads()); a given
        # `concurrency` caps both, as before. A sync job waits for a free thread before its timeout starts.
        threads = threads or concurrency or default_threads()
        if concurrency is None:
            any_async = any(d.is_async for d in app.jobs.values()) or not app.jobs
            concurrency = DEFAULT_ASYNC_CONCURRENCY if any_async else threads
        if concurrency < 1 or threads < 1:
            raise ValueError(f"concurrency and threads must be >= 1, got {concurrency} and {threads}")
        self.app = app
        self.settings = app.settings
        self.queues = queues or sorted({d.options.queue for d in app.jobs.values()} or {"default"})
        self.concurrency = concurrency
        self.threads = threads
        self._thread_free = asyncio.Semaphore(threads)
        self.capabilities = sorted(set(capabilities or []))
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.actor = f"worker:{self.worker_id}"
        self.lease_s = lease_s
        self.heartbeat_s = max(lease_s / 3, 0.2)
        self.grace_s = grace_s
        self.prefetch = prefetch or max(4 * concurrency, 100)
        self.clock = clock or SystemClock()  # the time written into events
        self.buffers: dict[str, deque[_Item]] = {p: deque() for p in PRIORITIES}
        self.offsets: dict[tuple[int, TopicPartition], _Offsets] = {}
        self.running: dict[asyncio.Task[None], tuple[ReadyRecord, _Item]] = {}
        self.cancel_seen: set[str] = set()
        # attempts whose ready records the processor revoked: (job id, attempt, enqueued_at ms)
        self.revoked: OrderedDict[tuple[str, int, int], None] = OrderedDict()
        self.claimed_here: OrderedDict[tuple[str, int, int], None] = OrderedDict()  # ready_attempt keys
        self.completed = 0
        # claims of re-published ready records waiting for their verdict (read by the changelog
        # follower, which is `_watching` once it is positioned), and those refused (not run here)
        self.verdicts = ClaimVerdicts()
        self._watching = asyncio.Event()
        self.refused_copies = 0
        self._consumers: list[AIOKafkaConsumer] = []
        self._sender: AIOKafkaProducer | None = None
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="eventjobs-job")
        self._wakeup = asyncio.Event()
        self._draining = False
        self._commit_soon = asyncio.Event()
        self._room = asyncio.Event()  # a buffer has room again
        self.started = asyncio.Event()
        self.pauses: QueuePauses | None = None  # paused queues (`<ns>.queue-control`), made at start
        self._route_queues: list[str] = []  # the queue of each consumer's route (`routes()`, in order), made at start
        self.registry: WorkerRegistry | None = None  # this worker's entries on `<ns>.workers`, made at start
        # bad input: ready records quarantined, changelog records skipped (counted by kind in
        # `bad_ready` / `bad_changelog`, each kind logged once); see docs/architecture.md, "Bad input"
        self.bad_ready = BadRecords(log, "worker", action="quarantined")
        self.bad_changelog = BadRecords(log, "worker (cancel watcher)")
        self._quarantining: set[asyncio.Task[None]] = set()
        self._event_partitions = 0  # partitions of the event log (a ready record names one)
        # supervision: the first failure of a background task, which stops the worker (run raises it)
        self.failure: BaseException | None = None
        self._halt = asyncio.Event()
        self.heartbeat_failures = 0
        self.metrics = metrics  # Prometheus metrics (eventjobs.metrics), or None: counted by a `MetricsHook`
        self.info = WorkerInfo(worker_id=self.worker_id, queues=tuple(self.queues),
                               capabilities=tuple(self.capabilities), concurrency=concurrency, threads=threads,
                               busy=lambda: len(self.running))
        # the app's hooks, after the metrics' (whose `after_attempt` so runs last); see docs/hooks.md
        self.hooks = Hooks([*([MetricsHook(metrics, self.info)] if metrics is not None else []), *app.hooks.hooks],
                           metrics=metrics)
        self._watch_attempts = self.hooks.wants("before_attempt") or self.hooks.wants("after_attempt")
        self._depth_due = 0.0  # event-loop time of the next queue depth measurement

    @property
    def quarantined(self) -> int:
        """Ready records copied to the quarantine topic because they could not be run."""
        return self.bad_ready.total

    @property
    def skipped_records(self) -> int:
        """Changelog records the cancel watcher skipped because they could not be used."""
        return self.bad_changelog.total

    # -- set-up ----------------------------------------------------------------------------
    def routes(self) -> list[str]:
        return [capability_route(q, subset) for q in self.queues for subset in capability_subsets(self.capabilities)]

    async def _start(self) -> None:
        names = self.app.names
        routes = self.routes()
        self._event_partitions = len(await partitions_of(self.settings, names.events))
        if not self._event_partitions:
            raise TopicLayoutError(f"topic {names.events} does not exist; create the topics with "
                                   f"`eventjobs topics apply --namespace {self.settings.namespace}` (or --app)")
        await ensure_ready_topics(self.settings, routes)
        await ensure_single_topics(self.settings, ["workers", "queue-control"])
        self._sender = producer(self.settings, linger_ms=2)
        await self._sender.start()
        self._route_queues = [queue_of_route(route) for route in routes]
        self.pauses = QueuePauses(self.settings, names.queue_control, on_change=self._pauses_changed)
        self.registry = WorkerRegistry(
            topic=names.workers, worker_id=self.worker_id, queues=self.queues, capabilities=self.capabilities,
            concurrency=self.concurrency, busy=lambda: len(self.running), clock=self.clock,
            heartbeat_s=self.settings.worker_heartbeat_s)
        await self.registry.hello(self._sender)
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
            self._consumers.append(source)
            source.subscribe([names.ready(route, priority) for priority in PRIORITIES],
                             listener=OwnershipListener(functools.partial(self._take, source),
                                                        functools.partial(self._release, source), self._fail))

    async def _take(self, source: AIOKafkaConsumer, assigned: list[TopicPartition]) -> None:
        """Partitions assigned to `source`: their fetch starts from the committed offset, so any
        offsets state left of an earlier ownership is stale."""
        index = self._consumers.index(source)
        for tp in assigned:
            self.offsets.pop((index, tp), None)

    async def _release(self, source: AIOKafkaConsumer, revoked: list[TopicPartition]) -> None:
        """Partitions taken from `source` (a rebalance): their buffered ready records are dropped,
        not run (the new owner gets them from the committed offset), and what was settled before
        the first unsettled record is committed now, while this consumer still owns them; nothing
        of theirs is committed later. Jobs already claimed from them run on (their claims stand)."""
        index = self._consumers.index(source)
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

    # -- the loops -------------------------------------------------------------------------
    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop` is set; raises `WorkerStopped` if a background task failed (the CLI
        then exits non-zero, and whatever supervises the process restarts it). The hooks'
        `on_worker_start` runs first, their `on_worker_stop` once everything is closed."""
        await self.hooks.on_worker_start(self.info)
        try:
            await self._serve(stop)
        finally:
            await self.hooks.on_worker_stop(self.info)

    async def _serve(self, stop: asyncio.Event) -> None:
        try:
            await self._start()
        except BaseException:  # e.g. topics missing: close the clients started so far
            for source in self._consumers:
                await source.stop()
            if self._sender is not None:
                await self._sender.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)
            raise
        halt = self._halt  # set by `stop`, or by the first failure of a background task
        stopping = asyncio.create_task(stop.wait())
        stopping.add_done_callback(lambda _: halt.set())
        fetchers = [self._supervised(self._fetch(source, halt), f"the fetcher of {', '.join(sorted(source.subscription()))}")
                    for source in self._consumers]
        committer = self._supervised(self._commit_loop(halt), "the offset committer")
        cancels = self._supervised(self._watch_cancels(halt), "the cancel watcher")
        assert self.pauses is not None and self.registry is not None and self._sender is not None
        control = [self._supervised(self.pauses.follow(halt), "the queue-control follower"),
                   self._supervised(self.registry.heartbeats(self._sender, halt), "the worker registry heartbeat")]
        self.started.set()
        log.info("worker %s serving %s with concurrency %d", self.worker_id, ", ".join(self.routes()), self.concurrency)
        try:
            await self._dispatch(halt)
        finally:
            halt.set()
            stopping.cancel()
            for task in fetchers:
                task.cancel()
            await asyncio.gather(*fetchers, return_exceptions=True)
            try:
                await self._drain()
            except Exception as error:  # stopping for a failure: the sender may be what failed
                if self.failure is None:
                    raise
                log.error("handing back the running jobs failed (%r); their leases will expire", error)
            committer.cancel()
            cancels.cancel()
            for task in control:
                task.cancel()
            await asyncio.gather(committer, cancels, *control, return_exceptions=True)
            await self.registry.goodbye(self._sender)
            if self._quarantining:  # copies under way: their offsets commit once they are acknowledged
                await asyncio.wait(list(self._quarantining), timeout=10)
            await self._commit()
            for source in self._consumers:
                await source.stop()
            if self._sender is not None:
                await self._sender.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.failure is not None:
            raise WorkerStopped(f"worker {self.worker_id} stopped: {self.failure}") from self.failure

    def _fail(self, error: BaseException) -> None:
        """Stop the worker because of `error` (the first failure is the one reported)."""
        if self.failure is None:
            log.error("worker %s stops: %s", self.worker_id, error)
            self.failure = error
        self._halt.set()

    def _supervised(self, work: Any, what: str) -> asyncio.Task[None]:
        """A background task whose failure, or end before the worker stops, stops the worker
        (instead of leaving it alive and silently doing nothing)."""
        task: asyncio.Task[None] = asyncio.create_task(work, name=what)

        def ended(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                self._fail(RuntimeError(f"{what} failed: {error!r}"))
            elif not self._halt.is_set():
                self._fail(RuntimeError(f"{what} ended unexpectedly"))

        task.add_done_callback(ended)
        return task

    async def _fetch(self, source: AIOKafkaConsumer, stop: asyncio.Event) -> None:
        """Fetch only priorities whose buffer has room; the fetcher keeps the rest prefetched.

        (Pausing partitions instead would make a resumed partition wait for the next fetch round,
        up to fetch_max_wait_ms, every time a buffer drained.)
        """
        index = self._consumers.index(source)
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
                state = self.offsets.setdefault((index, tp), _Offsets())
                for record in records:
                    state.next_offset = record.offset + 1
                    if record.value is None:  # the processor revoked this job's ready record
                        self._revoke(record, priority)
                        continue
                    state.outstanding.add(record.offset)
                    self.buffers[priority].append(_Item(source, record))
            if batch:
                self._wakeup.set()

    def _revoke(self, tombstone: ConsumerRecord[bytes, bytes], priority: str) -> None:
        """Drop a buffered ready record of an attempt cancelled or expired before it started, and
        remember the attempt (job, attempt and enqueue time: the job's next attempt, after a
        dead-letter retry say, is not revoked). A tombstone that names no attempt (written by an
        older processor) drops the job's buffered records and is not remembered."""
        revoked = revoked_attempt(tombstone.key, tombstone.headers)
        if revoked is not None:
            self.revoked[revoked] = None
            while len(self.revoked) > 100_000:
                self.revoked.popitem(last=False)
        buffer = self.buffers[priority]
        for item in [i for i in buffer if i.record.key == tombstone.key and _revokes(revoked, i)]:
            buffer.remove(item)
            self._settled(item)

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
            ready, claim = self._admit(item.record)
        except BadReadyRecord as bad:  # a broken ready record must not stop the worker
            self._quarantine(item, bad.kind, bad.reason)
            return
        except Exception as error:  # noqa: BLE001 - nor one that breaks the checks in a way not foreseen
            self._quarantine(item, "unusable", repr(error))
            return
        if (self.revoked and ready_attempt(ready) in self.revoked) or ready_attempt(ready) in self.claimed_here:
            # revoked, or a repeat of a ready record this worker already claimed (a processor batch
            # redone after a crash, or a re-publish of a pending job, publishes its ready record
            # again): never run an attempt twice here
            self._settled(item)
            return
        self.claimed_here[ready_attempt(ready)] = None
        while len(self.claimed_here) > 100_000:
            self.claimed_here.popitem(last=False)
        if not set(ready.options.capabilities) <= set(self.capabilities):  # not on its route's topic
            self._quarantine(item, "capabilities missing",
                             f"job {ready.job_id} needs {ready.options.capabilities} but this worker has "
                             f"{self.capabilities}; not claimed")
            return
        task = asyncio.create_task(self._run_job(ready, item, claim, guarded=is_republished(item.record.headers)))
        self.running[task] = (ready, item)
        task.add_done_callback(self._job_done)

    def _admit(self, record: ConsumerRecord[bytes, bytes]) -> tuple[ReadyRecord, JobEvent]:
        """The ready record, checked as far as claiming it needs, and the claim `_run_job` writes
        first (built here, once: a record it cannot be built from is refused); raises
        `BadReadyRecord` otherwise."""
        try:
            ready = ReadyRecord.decode(record.value)
        except ValidationError as error:
            raise BadReadyRecord("not a ready record", brief(error)) from None
        if record.key != ready.job_id.encode():
            raise BadReadyRecord("key does not match", f"{describe_key(record.key)} is not the job id {ready.job_id!r}")
        if ready.partition is not None and self._event_partitions and not 0 <= ready.partition < self._event_partitions:
            raise BadReadyRecord("partition out of range", f"event-log partition {ready.partition} does not exist "
                                 f"({self._event_partitions} partitions)")
        try:
            claim = claimed_event(ready.job_id, ready.attempt, worker_id=self.worker_id, now=self.clock.now(),
                                  actor=self.actor, lease_s=self.lease_s)
        except ValidationError as error:
            raise BadReadyRecord("cannot be claimed", brief(error)) from None
        return ready, claim

    def _quarantine(self, item: _Item, kind: str, reason: str) -> None:
        """Copy a ready record the worker cannot run to the quarantine topic (reason and origin in
        its headers); its offset is committed once the copy is acknowledged."""
        record = item.record
        self.bad_ready.report(kind, f"{origin(record)} ({describe_key(record.key)})", reason)
        task = asyncio.create_task(self._write_quarantine(item, kind, reason))
        self._quarantining.add(task)
        task.add_done_callback(self._quarantining.discard)

    async def _write_quarantine(self, item: _Item, kind: str, reason: str) -> None:
        record = item.record
        try:
            assert self._sender is not None
            await (await self._sender.send(self.app.names.quarantine, record.value, key=record.key,
                                           headers=quarantine_headers(record, f"{kind}: {reason}")))
        except Exception as error:  # noqa: BLE001 - like an unsent claim: delivered again later
            log.warning("quarantining %s failed (%r); its ready record stays uncommitted", origin(record), error)
            return
        self._settled(item)
        await self.hooks.on_quarantined(Quarantined(record.topic, record.partition, record.offset, kind, reason))

    def _job_done(self, task: asyncio.Task[None]) -> None:
        """A job task's end. Handler failures are outcomes (`_call`), so an exception here is the
        worker's own (its producer cannot send): the worker stops, and a restart starts afresh."""
        entry = self.running.pop(task, None)
        if entry is not None:
            self.cancel_seen.discard(entry[0].job_id)  # only jobs running here are watched for cancels
        if not task.cancelled() and task.exception() is not None:
            job = entry[0].job_id if entry else "?"
            self._fail(RuntimeError(f"running job {job} failed: {task.exception()!r}"))

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
    async def _send(self, event: JobEvent, headers: list[tuple[str, bytes]] | None = None) -> asyncio.Future[Any]:
        """Append one of the attempt's events (claim, start, progress, heartbeat, outcome) to its
        job's partition (`job_partition`), whoever enqueued the job and however they partitioned."""
        assert self._sender is not None
        topic = self.app.names.events
        count = self._event_partitions or await topic_partition_count(self._sender, topic)
        sent: asyncio.Future[Any] = await self._sender.send(
            topic, encode(event, max_bytes=self.app.settings.max_event_bytes), key=event.job_id.encode(),
            partition=_home_partition(event.job_id, count), headers=headers)
        return sent

    def _end(self, ready: ReadyRecord, happened: Happened, claim_id: str | None = None) -> JobEvent:
        """The event that ends the attempt after what happened to it (`core.attempt_end`, the one rule)."""
        definition = self.app.jobs.get(ready.name)
        backoff = definition.options.backoff if definition is not None and callable(definition.options.backoff) else None
        attempt = RunningAttempt.of(ready, actor=self.actor, claim_id=claim_id, backoff=backoff,
                                    max_event_bytes=self.app.settings.max_event_bytes)
        return attempt_end(attempt, happened, now=self.clock.now())

    def _heartbeat(self, ready: ReadyRecord, claim_id: str | None = None) -> JobEvent:
        return heartbeat_event(ready.job_id, ready.attempt, now=self.clock.now(), actor=self.actor, lease_s=self.lease_s,
                               claim_id=claim_id)

    async def _run_job(self, ready: ReadyRecord, item: _Item, claim: JobEvent, guarded: bool = False) -> None:
        # Every event of the attempt names this claim (the claimed event's id): if the fold refused
        # it (another claim of the attempt came first, e.g. from a ready record redelivered after
        # a worker died), the handler still runs here, this worker cannot know, but none of its
        # events counts. Only the accepted claim decides the attempt. A re-published record
        # (`guarded`) may well be such a copy: it runs only once its claim is seen accepted.
        claim_id = item.claim_id = claim.event_id
        if guarded:
            if not await self._claim_stands(ready, item, claim):
                return
        else:
            await self._send(claim)
        started = await self._send(attempt_started_event(ready.job_id, ready.attempt, worker_id=self.worker_id,
                                                         now=self.clock.now(), actor=self.actor, claim_id=claim_id))
        if not guarded:
            started.add_done_callback(lambda ack: self._claim_acknowledged(ack, item))
        heartbeats = asyncio.create_task(self._heartbeat_loop(ready, claim_id))
        try:
            if self._watch_attempts:
                item.attempt = self._attempt_info(ready, claim_id)
                await self.hooks.before_attempt(item.attempt)
            item.begun = asyncio.get_running_loop().time()
            happened = await self._call(ready, claim_id)
        except asyncio.CancelledError:
            if ready.job_id not in self.cancel_seen or self._draining:
                raise  # the worker stops: `_drain` ends the attempt (and calls `after_attempt`)
            happened = CancelledWhileRunning()
        except Exception as error:  # running it failed outside the handler: record why, don't vanish
            log.exception("outcome of job %s could not be built", ready.job_id)
            happened = NotRecordable(error)
        finally:
            heartbeats.cancel()
        duration_s = item.run_time()
        end = self._end(ready, happened, claim_id)  # encodable within the limit, by attempt_end
        ack = await self._send(end)
        item.end_sent = True
        ack.add_done_callback(lambda done: done.cancelled() or done.exception() is None or log.error(  # type: ignore[func-returns-value]  # logs a failed write only
            "outcome of job %s was not written (%s); its lease will expire and it will run again",
            ready.job_id, done.exception()))
        self.completed += 1
        await self._after_attempt(item, end, happened, duration_s)

    def _attempt_info(self, ready: ReadyRecord, claim_id: str | None) -> AttemptInfo:
        return AttemptInfo(job_id=ready.job_id, name=ready.name, queue=ready.queue, priority=ready.priority.value,
                           attempt=ready.attempt, max_attempts=ready.options.max_attempts, worker_id=self.worker_id,
                           claim_id=claim_id, enqueued_at=ready.enqueued_at, ready_at=ready.ready_at,
                           started_at=self.clock.now())

    async def _after_attempt(self, item: _Item, end: JobEvent, happened: Happened, duration_s: float) -> None:
        """The hooks' `after_attempt`, once, for an attempt whose `before_attempt` was called."""
        if item.attempt is None or item.ended:
            return
        item.ended = True
        error = happened.error if isinstance(happened, (Raised, NotRecordable)) else None
        await self.hooks.after_attempt(item.attempt, AttemptOutcome(end, duration_s, error))

    async def _claim_stands(self, ready: ReadyRecord, item: _Item, claim: JobEvent) -> bool:
        """Claim a re-published ready record and wait for the verdict: whether the job-state
        changelog shows the claim accepted (True), or refused or superseded (another claim of the
        attempt, a later attempt, an end: False, and the handler does not run here). The claim
        asks the lane to answer a refusal (`records.AWAITS_VERDICT_HEADER`). No verdict within
        the lease (the processor far behind) counts as refused: an accepted claim's lease then
        expires, and the job is retried."""
        await self._watching.wait()  # the follower reads from where it stood: it must stand before the claim
        verdict = self.verdicts.expect(ready, claim.event_id)
        try:
            ack = await self._send(claim, headers=AWAITS_VERDICT)
            ack.add_done_callback(lambda done: self._claim_acknowledged(done, item))
            async with asyncio.timeout(self.lease_s):
                accepted = await verdict
        except TimeoutError:
            accepted = False
            log.warning("no verdict on the claim of re-published job %s (attempt %d) within its lease (%.1f s); "
                        "not run here", ready.job_id, ready.attempt, self.lease_s)
        finally:
            self.verdicts.forget(ready, verdict)
        if not accepted:
            self.refused_copies += 1
            log.debug("re-published job %s (attempt %d): claim %s refused or superseded; not run here",
                      ready.job_id, ready.attempt, claim.event_id)
        return accepted

    async def _call(self, ready: ReadyRecord, claim_id: str | None = None) -> Happened:
        """Run the handler under its timeout; say what happened (`_end` makes it the attempt's event)."""
        definition = self.app.jobs.get(ready.name)
        if definition is None:
            return NoHandler(ready.name, self.app.name, tuple(self.app.jobs))
        ctx = self._context(ready, claim_id)
        try:
            gate = contextlib.nullcontext() if definition.is_async else self._thread_free
            async with gate, asyncio.timeout(ready.options.timeout_s) as deadline:
                if definition.is_async:
                    call = definition.handler(ready.args, ctx) if definition.takes_context else definition.handler(ready.args)
                    result = await call
                else:
                    loop = asyncio.get_running_loop()
                    partial = (functools.partial(definition.handler, ready.args, ctx) if definition.takes_context
                               else functools.partial(definition.handler, ready.args))
                    result = await loop.run_in_executor(self._executor, partial)
        except TimeoutError as error:
            return TimedOut() if deadline.expired() else Raised(error)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - every failure is reported, with its traceback
            return Raised(error)
        return Returned(result)

    def _context(self, ready: ReadyRecord, claim_id: str | None = None) -> JobContext:
        async def send_progress(percent: float, message: str) -> None:
            await self._send(progress_event(ready.job_id, ready.attempt, percent, message, now=self.clock.now(),
                                            actor=self.actor, claim_id=claim_id))

        async def send_heartbeat() -> None:
            await self._send(self._heartbeat(ready, claim_id))

        async def enqueue_child(name: str, args: dict[str, Any] | None, **options: Any) -> str:
            return await self.app.enqueue(name, args, **options)

        async def wait_for_jobs(job_ids: list[str], timeout: float) -> dict[str, Any]:
            return await wait_for_results(self.app, job_ids, timeout)

        dependencies = {job_id: outcome.model_dump() for job_id, outcome in (ready.dependencies or {}).items()}
        return JobContext(
            job_id=ready.job_id, name=ready.name, queue=ready.queue, attempt=ready.attempt,
            max_attempts=ready.options.max_attempts, send_progress=send_progress, send_heartbeat=send_heartbeat,
            enqueue_child=enqueue_child, loop=asyncio.get_running_loop(),
            cancel_requested=lambda: ready.job_id in self.cancel_seen,
            dependencies=dependencies, wait_for_jobs=wait_for_jobs,
        )

    async def _heartbeat_loop(self, ready: ReadyRecord, claim_id: str | None = None) -> None:
        """Extend the lease while the handler runs; stop the handler once a cancel is seen."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if ready.job_id in self.cancel_seen:
                for task, (running, _) in list(self.running.items()):
                    if running.job_id == ready.job_id and task is not asyncio.current_task():
                        task.cancel()
                return
            try:  # a heartbeat that cannot be sent is tried again at the next tick (lease/3 later)
                ack = await self._send(self._heartbeat(ready, claim_id))
            except Exception as error:  # noqa: BLE001 - e.g. no metadata for the topic within the timeout
                self._heartbeat_failed(ready, error)
                continue
            ack.add_done_callback(lambda done: done.cancelled() or done.exception() is None
                                  or self._heartbeat_failed(ready, done.exception()))  # type: ignore[func-returns-value]  # on a failed write only

    def _heartbeat_failed(self, ready: ReadyRecord, error: BaseException | None) -> None:
        """Log a heartbeat that was not written: the first, then every power of ten (no flood)."""
        self.heartbeat_failures += 1
        count = self.heartbeat_failures
        if power_of_ten(count):
            log.warning("heartbeat of job %s was not written (%r; %d heartbeat(s) failed so far); the next one "
                        "follows in %.1f s, and the lease expires %.1f s after the last one written",
                        ready.job_id, error, count, self.heartbeat_s, self.lease_s)

    # -- cancels of running jobs -----------------------------------------------------------
    async def _watch_cancels(self, stop: asyncio.Event) -> None:
        """Tail the state changelog for cancel requests on jobs running here, and for the verdicts
        of claims waiting for one (keys checked first)."""
        topic = self.app.names.job_state
        partitions = await partitions_of(self.settings, topic)
        reader = consumer(self.settings, group_id=None, auto_offset_reset="latest", fetch_max_wait_ms=500)
        await reader.start()
        try:
            reader.assign(partitions)
            await reader.seek_to_end()
            for tp in partitions:  # resolved now: states written from here on are read
                await reader.position(tp)
            self._watching.set()
            verdicts = self.verdicts
            while not stop.is_set():
                batch = await reader.getmany(timeout_ms=200)
                running = {ready.job_id.encode(): ready.job_id for ready, _ in self.running.values()}
                for records in batch.values():
                    for record in records:
                        key = record.key
                        job_id = running.get(key) if key is not None else None
                        if job_id is None:  # keys compared as bytes: no decoding
                            continue
                        if record.value is None:
                            if key in verdicts:
                                verdicts.seen(key, None)  # the job is forgotten
                            continue
                        try:
                            state = decode_state(record.value)
                        except StateDecodeError as error:  # skipped: a later state of the job still counts
                            self.bad_changelog.report("undecodable state", f"{origin(record)} (job {job_id})",
                                                      str(error))
                            continue
                        if key in verdicts:
                            verdicts.seen(key, state)
                        if state.cancel_requested:
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
            if item.end_sent:  # stopped in its `after_attempt` hooks: it has its end
                continue
            duration_s = item.run_time()
            stopped_at = "".join(traceback.format_stack(limit=1))
            happened = ShutDown(self.worker_id, self.grace_s, stopped_at)
            end = self._end(ready, happened, item.claim_id)
            await self._send(end)
            await self._after_attempt(item, end, happened, duration_s)
        if self._sender is not None:
            await self._sender.flush()

    async def _commit_loop(self, stop: asyncio.Event) -> None:
        """Commit soon after claims become durable (debounced), so a crash redelivers little."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(self._commit_soon.wait(), 0.5)
            except TimeoutError:
                pass
            await asyncio.sleep(0.01)
            self._commit_soon.clear()
            await self._commit()
            if self.hooks.wants("on_queue_depth") and asyncio.get_running_loop().time() >= self._depth_due:
                self._depth_due = asyncio.get_running_loop().time() + DEPTH_EVERY_S
                depth = await self._measure_depth()
                if depth is not None:
                    await self.hooks.on_queue_depth(depth)

    async def _measure_depth(self) -> dict[tuple[str, str], int] | None:
        """Per queue and priority (`eventjobs_queue_depth`, `Hook.on_queue_depth`), the end offsets
        of the ready partitions this worker consumes minus its position there (the first record not
        yet settled, or the consumer's position before anything was fetched); None if it failed."""
        depth = {(queue, priority): 0 for queue in self.queues for priority in PRIORITIES}
        labels = {self.app.names.ready(capability_route(queue, subset), priority): (queue, priority)
                  for queue in self.queues for subset in capability_subsets(self.capabilities) for priority in PRIORITIES}
        for index, source in enumerate(self._consumers):
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
