"""The worker's attempt runner: claim, start, heartbeats, the handler's call, the ending event.

Why this module exists: an attempt is one sequence (claim and start -> heartbeats while the
handler runs -> the one ending event), with state of its own (the attempts running, the
thread pool's gate, the verdicts awaited for re-published records), and nothing in it touches
the buffers or the offsets: the claim's acknowledgement is handed to the intake
(`acknowledged`). Which event ends an attempt is `core.attempt_end`'s rule (`_end`), for a
normal end as for one the worker's shutdown forces (`drain`).

The claim of a ready record is its `attempt_started`, carrying the lease (`claiming_start_event`):
the handler is called right after it, so the claim and the start are one event. Every event of
an attempt names the worker's claim (`claim_id`, that event's id), so an attempt whose claim the
fold refused (another claim came first) may run here but decides nothing. A re-published ready
record, which may be a second copy of an attempt already claimed elsewhere, is claimed with a
`claimed` event and runs (its `attempt_started` written) only once the claim is seen accepted on
the job-state changelog (`runtime.claim_verdicts`, read by the cancel watcher).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from aiokafka import AIOKafkaProducer

from eventjobs.app import App
from eventjobs.context import JobContext, JobsNotCompleted
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
from eventjobs.core.clock import Clock
from eventjobs.core.codec import encode
from eventjobs.core.commands import attempt_started_event, heartbeat_event, progress_event
from eventjobs.core.events import JobEvent
from eventjobs.core.records import AWAITS_VERDICT, ReadyRecord
from eventjobs.core.outcome import attempt_snoozed_event
from eventjobs.core.slots import late_for_rate, rate_hold_s
from eventjobs.core.state import JobStatus
from eventjobs.hooks import AttemptInfo, AttemptOutcome, Hooks
from eventjobs.kafka.clients import job_partition, topic_partition_count
from eventjobs.log.bad_records import power_of_ten
from eventjobs.runtime.cancels import CancelWatcher
from eventjobs.runtime.claim_verdicts import ClaimVerdicts
from eventjobs.runtime.intake import Item

log = logging.getLogger("eventjobs.runtime.worker")  # the worker's parts log as the worker (docs/operations.md)

# `job_partition`, remembered for the jobs running now: an attempt writes three events or more
_home_partition = functools.lru_cache(maxsize=8192)(job_partition)


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


class AttemptRunner:
    """Runs the attempts of one worker (`worker_id`, writing as `actor`) and writes their events."""

    def __init__(self, app: App, *, worker_id: str, actor: str, lease_s: float, grace_s: float, clock: Clock,
                 hooks: Hooks, executor: ThreadPoolExecutor, threads: int, cancels: CancelWatcher,
                 acknowledged: Callable[[asyncio.Future[Any], Item], None],
                 fail: Callable[[BaseException], None]) -> None:
        self.app = app
        self.worker_id = worker_id
        self.actor = actor
        self.lease_s = lease_s
        self.heartbeat_s = max(lease_s / 3, 0.2)
        self.grace_s = grace_s
        self.clock = clock  # the time written into events
        self.hooks = hooks
        self._watch_attempts = hooks.wants("before_attempt") or hooks.wants("after_attempt")
        self._executor = executor
        self._thread_free = asyncio.Semaphore(threads)  # a sync job waits for a thread before its timeout starts
        self.cancels = cancels
        self._acknowledged = acknowledged  # a claim's ack: the intake may commit its record's offset
        self._fail = fail  # a job task's own failure stops the worker
        self.running: dict[asyncio.Task[None], tuple[ReadyRecord, Item]] = {}
        self.completed = 0
        # claims of re-published ready records waiting for their verdict (read by the cancel
        # watcher, which is `watching` once it is positioned), and those refused (not run here)
        self.verdicts: ClaimVerdicts = cancels.verdicts
        self.refused_copies = 0
        self.late_for_rate = 0  # rate-limited claims given back as too late for their start (`_give_back_late`)
        self.heartbeat_failures = 0
        self._sender: AIOKafkaProducer | None = None
        self._event_partitions = 0  # partitions of the event log (a ready record names one)
        self._draining = False

    def start(self, sender: AIOKafkaProducer, event_partitions: int) -> None:
        self._sender = sender
        self._event_partitions = event_partitions

    def running_jobs(self) -> dict[bytes, str]:
        """The jobs running now, by key (the cancel watcher's filter)."""
        return {ready.job_id.encode(): ready.job_id for ready, _ in self.running.values()}

    def launch(self, ready: ReadyRecord, item: Item, claim: JobEvent, *, guarded: bool) -> None:
        """Run the attempt `ready` offers as a task, claiming it with `claim` first."""
        task = asyncio.create_task(self._run(ready, item, claim, guarded=guarded))
        self.running[task] = (ready, item)
        task.add_done_callback(self._job_done)

    def _job_done(self, task: asyncio.Task[None]) -> None:
        """A job task's end. Handler failures are outcomes (`_call`), so an exception here is the
        worker's own (its producer cannot send): the worker stops, and a restart starts afresh."""
        entry = self.running.pop(task, None)
        if entry is not None:
            self.cancels.forget(entry[0].job_id)
        if not task.cancelled() and task.exception() is not None:
            job = entry[0].job_id if entry else "?"
            self._fail(RuntimeError(f"running job {job} failed: {task.exception()!r}"))

    # -- writing ---------------------------------------------------------------------------
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

    # -- one attempt -----------------------------------------------------------------------
    async def _run(self, ready: ReadyRecord, item: Item, claim: JobEvent, guarded: bool = False) -> None:
        # Every event of the attempt names this claim (the claim event's id): if the fold refused
        # it (another claim of the attempt came first, e.g. from a ready record redelivered after
        # a worker died), the handler still runs here, this worker cannot know, but none of its
        # events counts. Only the accepted claim decides the attempt. A re-published record
        # (`guarded`) may well be such a copy: it runs only once its claim is seen accepted. So
        # does a job with a concurrency limit (`guarded` too), whose slot only the accepted claim holds.
        claim_id = item.claim_id = claim.event_id
        if guarded:
            if not await self._claim_stands(ready, item, claim):
                return
            if ready.start_at is not None:  # a rate's start: kept at a fixed lag after the grant's
                if not ready.rate_reasked and late_for_rate(ready.start_at, self.clock.now()):
                    await self._give_back_late(ready, item, claim_id)
                    return
                await asyncio.sleep(rate_hold_s(ready.start_at, self.clock.now()))
            await self._send(attempt_started_event(ready.job_id, ready.attempt, worker_id=self.worker_id,
                                                   now=self.clock.now(), actor=self.actor, claim_id=claim_id))
        else:  # the claim is the start (an attempt_started with the lease): one event, not two
            started = await self._send(claim)
            started.add_done_callback(lambda ack: self._acknowledged(ack, item))
        heartbeats = asyncio.create_task(self._heartbeat_loop(ready, claim_id))
        try:
            if self._watch_attempts:
                item.attempt = self._attempt_info(ready, claim_id)
                await self.hooks.before_attempt(item.attempt)
            item.begun = asyncio.get_running_loop().time()
            happened = await self._call(ready, claim_id)
        except asyncio.CancelledError:
            if ready.job_id not in self.cancels.cancel_seen or self._draining:
                raise  # the worker stops: `drain` ends the attempt (and calls `after_attempt`)
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

    async def _after_attempt(self, item: Item, end: JobEvent, happened: Happened, duration_s: float) -> None:
        """The hooks' `after_attempt`, once, for an attempt whose `before_attempt` was called."""
        if item.attempt is None or item.ended:
            return
        item.ended = True
        error = happened.error if isinstance(happened, (Raised, NotRecordable)) else None
        await self.hooks.after_attempt(item.attempt, AttemptOutcome(end, duration_s, error))

    async def _give_back_late(self, ready: ReadyRecord, item: Item, claim_id: str) -> None:
        """A rate-limited job claimed too late for its start (`slots.late_for_rate`): it does not
        start now, with others as late; the job asks its owner for a new start (once per run)."""
        log.info("rate-limited job %s (attempt %d) was claimed too late for its start at %s; it asks for a new "
                 "start", ready.job_id, ready.attempt, ready.start_at)
        self.late_for_rate += 1
        event = attempt_snoozed_event(ready.job_id, ready.attempt, 0.0, occurred_at=self.clock.now(), actor=self.actor,
                                      claim_id=claim_id, late_for_rate=True)
        ack = await self._send(event)
        item.end_sent = True
        ack.add_done_callback(lambda done: done.cancelled() or done.exception() is None or log.error(  # type: ignore[func-returns-value]  # logs a failed write only
            "the late claim of job %s was not given back (%s); its lease will expire", ready.job_id, done.exception()))

    async def _claim_stands(self, ready: ReadyRecord, item: Item, claim: JobEvent) -> bool:
        """Claim a re-published ready record and wait for the verdict: whether the job-state
        changelog shows the claim accepted (True), or refused or superseded (another claim of the
        attempt, a later attempt, an end: False, and the handler does not run here). The claim
        asks the lane to answer a refusal (`records.AWAITS_VERDICT_HEADER`). No verdict within
        the lease (the processor far behind) counts as refused: an accepted claim's lease then
        expires, and the job is retried."""
        await self.cancels.watching.wait()  # the follower reads from where it stood: it must stand before the claim
        verdict = self.verdicts.expect(ready, claim.event_id)
        try:
            ack = await self._send(claim, headers=AWAITS_VERDICT)
            ack.add_done_callback(lambda done: self._acknowledged(done, item))
            async with asyncio.timeout(self.lease_s):
                accepted = await verdict
        except TimeoutError:
            accepted = False
            log.warning("no verdict on the claim of guarded job %s (attempt %d) within its lease (%.1f s); "
                        "not run here", ready.job_id, ready.attempt, self.lease_s)
        finally:
            self.verdicts.forget(ready, verdict)
        if not accepted:
            self.refused_copies += 1
            log.debug("guarded job %s (attempt %d): claim %s refused or superseded; not run here",
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
        cancel_seen = self.cancels.cancel_seen
        return JobContext(
            job_id=ready.job_id, name=ready.name, queue=ready.queue, attempt=ready.attempt,
            max_attempts=ready.options.max_attempts, send_progress=send_progress, send_heartbeat=send_heartbeat,
            enqueue_child=enqueue_child, loop=asyncio.get_running_loop(),
            cancel_requested=lambda: ready.job_id in cancel_seen,
            dependencies=dependencies, wait_for_jobs=wait_for_jobs,
        )

    async def _heartbeat_loop(self, ready: ReadyRecord, claim_id: str | None = None) -> None:
        """Extend the lease while the handler runs; stop the handler once a cancel is seen."""
        while True:
            await asyncio.sleep(self.heartbeat_s)
            if ready.job_id in self.cancels.cancel_seen:
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

    # -- shutdown --------------------------------------------------------------------------
    async def drain(self) -> None:
        """Let running jobs finish within the grace period; report the rest as interrupted."""
        self._draining = True
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

