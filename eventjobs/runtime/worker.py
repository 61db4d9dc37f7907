"""The worker: takes ready jobs of its queues, claims them, runs the handlers, reports outcomes.

A thin shell that starts its parts, each owning its own state, and runs and drains them:

* `runtime.intake.Intake`: the consumers of the ready topics (one per queue and capability
  route), the priority buffers, the offsets not yet safe to commit, queue pauses, revocations,
  and the committer;
* `runtime.attempts.AttemptRunner`: one attempt each (claim, start, heartbeats, the handler's
  call, the ending event by `core.attempt_end`'s rule), and the drain at shutdown;
* `runtime.cancels.CancelWatcher`: cancel requests and claim verdicts from the job-state changelog;
* `runtime.queue_pauses` and `runtime.worker_registry`: paused queues, this worker's presence.

The worker itself checks each ready record it takes (`_admit`: a record it cannot run is
quarantined, not run) and hands it to the runner; each background task is `_supervised`, and
the first failure stops the worker (`run` raises `WorkerStopped`).

A ready record's offset is committed once the claim for it is acknowledged: a worker that dies
before that leaves the record to another worker; one that dies after it leaves a claimed job
whose lease expires, and the processor makes it ready again. Execution is at-least-once.
Partitions revoked in a rebalance lose their buffered records and commit nothing afterwards.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections import OrderedDict, deque
from concurrent.futures import ThreadPoolExecutor

from aiokafka import AIOKafkaProducer, ConsumerRecord, TopicPartition
from pydantic import ValidationError

from eventjobs.app import App
from eventjobs.core.clock import Clock, SystemClock
from eventjobs.core.commands import DEFAULT_LEASE_S, claimed_event, claiming_start_event
from eventjobs.core.events import JobEvent
from eventjobs.core.records import ReadyRecord, is_republished
from eventjobs.core.timer_index import brief
from eventjobs.hooks import Hooks, WorkerInfo
from eventjobs.hooks.prometheus import MetricsHook
from eventjobs.kafka.admin import TopicLayoutError, ensure_ready_topics, ensure_single_topics
from eventjobs.kafka.clients import partitions_of, producer
from eventjobs.metrics import Metrics
from eventjobs.runtime.attempts import AttemptRunner, wait_for_results
from eventjobs.log.bad_records import BadRecords, describe_key
from eventjobs.runtime.cancels import CancelWatcher
from eventjobs.runtime.claim_verdicts import ClaimVerdicts
from eventjobs.runtime.intake import Intake, Item, Offsets, capability_subsets
from eventjobs.runtime.queue_pauses import QueuePauses
from eventjobs.runtime.supervisor import Supervised
from eventjobs.runtime.worker_registry import WorkerRegistry

log = logging.getLogger("eventjobs.runtime.worker")
DEFAULT_ASYNC_CONCURRENCY = 100  # jobs at once when a handler is async (taskiq's default too)

__all__ = ["DEFAULT_ASYNC_CONCURRENCY", "BadReadyRecord", "Worker", "WorkerStopped", "capability_subsets",
           "default_threads", "wait_for_results"]


def default_threads() -> int:
    """Threads for sync handlers: concurrent.futures.ThreadPoolExecutor's default size."""
    return min(32, (os.cpu_count() or 1) + 4)


class WorkerStopped(RuntimeError):
    """A background task of the worker failed; the worker stopped (its cause is chained)."""


class BadReadyRecord(ValueError):
    """A ready record the worker cannot run: `kind` (logged once per kind) and `reason`."""

    def __init__(self, kind: str, reason: str) -> None:
        super().__init__(f"{kind}: {reason}")
        self.kind = kind
        self.reason = reason


class Worker(Supervised):
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
        self.capabilities = sorted(set(capabilities or []))
        self.worker_id = worker_id or f"{socket.gethostname()}:{os.getpid()}"
        self.actor = f"worker:{self.worker_id}"
        self.lease_s = lease_s
        self.grace_s = grace_s
        self.prefetch = prefetch or max(4 * concurrency, 100)
        self.clock = clock or SystemClock()  # the time written into events
        # supervision: the first failure of a background task sets `halt`, which stops the worker (run raises it)
        self.halt = asyncio.Event()
        self._supervise_as(f"worker {self.worker_id}", log, self.halt)
        self.metrics = metrics  # Prometheus metrics (eventjobs.metrics), or None: counted by a `MetricsHook`
        self.info = WorkerInfo(worker_id=self.worker_id, queues=tuple(self.queues),
                               capabilities=tuple(self.capabilities), concurrency=concurrency, threads=threads,
                               busy=lambda: len(self.running))
        # the app's hooks, after the metrics' (whose `after_attempt` so runs last); see docs/hooks.md
        self.hooks = Hooks([*([MetricsHook(metrics, self.info)] if metrics is not None else []), *app.hooks.hooks],
                           metrics=metrics)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="eventjobs-job")
        self.intake = Intake(app, queues=self.queues, capabilities=self.capabilities, prefetch=self.prefetch,
                             hooks=self.hooks, fail=self._fail)
        self.cancels = CancelWatcher(app, ClaimVerdicts(), running=lambda: self.attempts.running_jobs())
        self.attempts = AttemptRunner(app, worker_id=self.worker_id, actor=self.actor, lease_s=lease_s,
                                      grace_s=grace_s, clock=self.clock, hooks=self.hooks, executor=self._executor,
                                      threads=threads, cancels=self.cancels,
                                      acknowledged=self.intake.claim_acknowledged, fail=self._fail)
        self._sender: AIOKafkaProducer | None = None
        self.started = asyncio.Event()
        self.registry: WorkerRegistry | None = None  # this worker's entries on `<ns>.workers`, made at start
        self._event_partitions = 0  # partitions of the event log (a ready record names one)

    # -- the parts' state, as the worker's (read by operators' tools and tests) ----------------
    @property
    def buffers(self) -> dict[str, deque[Item]]:
        return self.intake.buffers

    @property
    def offsets(self) -> dict[tuple[int, TopicPartition], Offsets]:
        return self.intake.offsets

    @property
    def revoked(self) -> OrderedDict[tuple[str, int, int], None]:
        return self.intake.revoked

    @property
    def claimed_here(self) -> OrderedDict[tuple[str, int, int], None]:
        return self.intake.claimed_here

    @property
    def pauses(self) -> QueuePauses | None:
        return self.intake.pauses

    @property
    def running(self) -> dict[asyncio.Task[None], tuple[ReadyRecord, Item]]:
        return self.attempts.running

    @property
    def completed(self) -> int:
        return self.attempts.completed

    @property
    def refused_copies(self) -> int:
        return self.attempts.refused_copies

    @property
    def heartbeat_failures(self) -> int:
        return self.attempts.heartbeat_failures

    @property
    def verdicts(self) -> ClaimVerdicts:
        return self.cancels.verdicts

    @property
    def cancel_seen(self) -> set[str]:
        return self.cancels.cancel_seen

    @property
    def bad_ready(self) -> BadRecords:
        return self.intake.bad_ready

    @property
    def bad_changelog(self) -> BadRecords:
        return self.cancels.bad_changelog

    @property
    def quarantined(self) -> int:
        """Ready records copied to the quarantine topic because they could not be run."""
        return self.intake.bad_ready.total

    @property
    def skipped_records(self) -> int:
        """Changelog records the cancel watcher skipped because they could not be used, and ready-topic
        tombstones that revoke no attempt."""
        return self.cancels.bad_changelog.total + self.intake.bad_tombstones.total

    # -- set-up ----------------------------------------------------------------------------
    def routes(self) -> list[str]:
        return self.intake.routes()

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
        self.attempts.start(self._sender, self._event_partitions)
        self.registry = WorkerRegistry(
            topic=names.workers, worker_id=self.worker_id, queues=self.queues, capabilities=self.capabilities,
            concurrency=self.concurrency, busy=lambda: len(self.running), clock=self.clock,
            heartbeat_s=self.settings.worker_heartbeat_s)
        await self.registry.hello(self._sender)
        await self.intake.start(self._sender)

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
        intake = self.intake
        try:
            await self._start()
        except BaseException:  # e.g. topics missing: close the clients started so far
            await intake.stop()
            if self._sender is not None:
                await self._sender.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)
            raise
        halt = self.halt  # set by `stop`, or by the first failure of a background task
        stopping = asyncio.create_task(stop.wait())
        stopping.add_done_callback(lambda _: halt.set())
        fetchers = [self._supervised(intake.fetch(source, halt), f"the fetcher of {', '.join(sorted(source.subscription()))}")
                    for source in intake.consumers]
        committer = self._supervised(intake.commit_loop(halt), "the offset committer")
        cancels = self._supervised(self.cancels.watch(halt), "the cancel watcher")
        assert intake.pauses is not None and self.registry is not None and self._sender is not None
        control = [self._supervised(intake.pauses.follow(halt), "the queue-control follower"),
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
                intake.pause_all()
                await self.attempts.drain()
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
            if intake.quarantining:  # copies under way: their offsets commit once they are acknowledged
                await asyncio.wait(list(intake.quarantining), timeout=10)
            await intake.commit()
            await intake.stop()
            if self._sender is not None:
                await self._sender.stop()
            self._executor.shutdown(wait=False, cancel_futures=True)
        if self.failure is not None:
            raise WorkerStopped(f"worker {self.worker_id} stopped: {self.failure}") from self.failure

    async def _dispatch(self, stop: asyncio.Event) -> None:
        stopping = asyncio.ensure_future(stop.wait())
        intake, running = self.intake, self.attempts.running
        try:
            while not stop.is_set():
                if len(running) >= self.concurrency:
                    await asyncio.wait([stopping, *running], return_when=asyncio.FIRST_COMPLETED)
                    continue
                item = intake.next_item()
                if item is None:
                    intake.wakeup.clear()
                    waker = asyncio.ensure_future(intake.wakeup.wait())
                    await asyncio.wait([stopping, waker], return_when=asyncio.FIRST_COMPLETED)
                    waker.cancel()
                    continue
                self._start_job(item)
        finally:
            stopping.cancel()

    def _start_job(self, item: Item) -> None:
        try:
            ready, claim, guarded = self._admit(item.record, guarded=is_republished(item.record.headers))
        except BadReadyRecord as bad:  # a broken ready record must not stop the worker
            self.intake.quarantine(item, bad.kind, bad.reason)
            return
        except Exception as error:  # noqa: BLE001 - nor one that breaks the checks in a way not foreseen
            self.intake.quarantine(item, "unusable", repr(error))
            return
        if not self.intake.first_time(ready):  # revoked, or claimed here already
            self.intake.settled(item)
            return
        if not set(ready.options.capabilities) <= set(self.capabilities):  # not on its route's topic
            self.intake.quarantine(item, "capabilities missing",
                                   f"job {ready.job_id} needs {ready.options.capabilities} but this worker has "
                                   f"{self.capabilities}; not claimed")
            return
        self.attempts.launch(ready, item, claim, guarded=guarded)

    def _admit(self, record: ConsumerRecord[bytes, bytes], *, guarded: bool = False
               ) -> tuple[ReadyRecord, JobEvent, bool]:
        """The ready record, checked as far as claiming it needs, and the claim the runner writes
        first (built here, once: a record it cannot be built from is refused); raises
        `BadReadyRecord` otherwise. The claim is an `attempt_started` that is also the claim (the
        handler starts right after it), or, for a `guarded` record (re-published, or a limited job: the handler
        waits for the claim's verdict), a `claimed` event the start follows once accepted."""
        try:
            ready = ReadyRecord.decode(record.value)
        except ValidationError as error:
            raise BadReadyRecord("not a ready record", brief(error)) from None
        if record.key != ready.job_id.encode():
            raise BadReadyRecord("key does not match", f"{describe_key(record.key)} is not the job id {ready.job_id!r}")
        if ready.partition is not None and self._event_partitions and not 0 <= ready.partition < self._event_partitions:
            raise BadReadyRecord("partition out of range", f"event-log partition {ready.partition} does not exist "
                                 f"({self._event_partitions} partitions)")
        # a limited job is guarded too: its handler must not run on a refused claim (a copy of an
        # attempt another worker holds would run beyond its key's slots)
        guarded = guarded or ready.options.concurrency is not None
        try:
            build = claimed_event if guarded else claiming_start_event
            claim = build(ready.job_id, ready.attempt, worker_id=self.worker_id, now=self.clock.now(),
                          actor=self.actor, lease_s=self.lease_s)
        except ValidationError as error:
            raise BadReadyRecord("cannot be claimed", brief(error)) from None
        return ready, claim, guarded
