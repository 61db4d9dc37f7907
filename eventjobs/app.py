"""`App`: register jobs, enqueue them, wait for them, cancel them, handle dead letters.

Everything that writes an event validates first and sends nothing on bad input; a write returns
only after the broker acknowledged it (acks=all, idempotent producer), so an acknowledged enqueue
is never lost.
"""

from __future__ import annotations

import asyncio
import os
import socket
import threading
from collections.abc import Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from eventjobs.core.clock import Clock, SystemClock
from eventjobs.core.codec import encode
from eventjobs.core.limits import size_limits
from eventjobs.core.commands import cancel_requested_event, dead_letter_retried_event, discarded_event
from eventjobs.core.commands import enqueue as enqueued_event
from eventjobs.core.events import EnqueuedEvent, JobEvent
from eventjobs.core.options import InvalidJobOptions, JobOptions
from eventjobs.core.state import JobState
from eventjobs.kafka.clients import job_partition, partitions_of, producer, read_to_end, topic_partition_count
from eventjobs.core.records import DeadLetterRecord, RefusedDeadLetter, admit_dead_letter
from eventjobs.registry import Handler, JobDefinition, UnknownJob, define
from eventjobs.settings import Settings, load_settings
from eventjobs.runtime.state_watch import StateWatcher
from eventjobs.kafka.admin import KafkaUnavailable
from eventjobs.kafka.topics import TopicNames, load_specs

T = TypeVar("T")


class InvalidJobArguments(ValueError):
    """The args of an enqueue are not a JSON object."""


class PayloadTooLarge(ValueError):
    """An event would exceed the configured size limit (an enqueue: its args budget, `eventjobs.core.limits`)."""


class NotInDeadLetters(LookupError):
    """A dead-letter action named a job that is not in the dead-letter queue."""


@dataclass(eq=False)
class _LoopProducer:
    """The producer of one event loop, started and later stopped by its `owner` task on that loop."""

    started: asyncio.Future[AIOKafkaProducer]
    owner: asyncio.Task[None] = field(init=False)


async def _run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> None:
    """Run `coroutine` on `loop` (the running one, or one running in another thread) and wait for it."""
    if loop is asyncio.get_running_loop():
        await coroutine
    else:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class App:
    """One application: its jobs and its topics (the namespace is the app name)."""

    def __init__(
        self, name: str, settings: Settings | None = None, *, clock: Clock | None = None, **overrides: Any
    ) -> None:
        self.settings = settings or load_settings(namespace=name, **overrides)
        if self.settings.namespace != name and settings is None:
            raise ValueError(f"app name {name!r} and namespace {self.settings.namespace!r} differ")
        self.name = name
        self.jobs: dict[str, JobDefinition] = {}
        self._names: TopicNames | None = None
        self.actor = f"producer:{socket.gethostname()}:{os.getpid()}"
        self.clock = clock or SystemClock()  # the time written into the events this app appends
        self._producers: dict[asyncio.AbstractEventLoop, _LoopProducer] = {}
        self._watcher: StateWatcher | None = None
        self._sync_loop: asyncio.AbstractEventLoop | None = None
        self._sync_lock = threading.Lock()

    @property
    def names(self) -> TopicNames:
        if self._names is None:
            self._names = TopicNames(self.settings.namespace, load_specs(self.settings.topics_dir))
        return self._names

    # -- registration ----------------------------------------------------------------------
    def job(self, name: str | None = None, **options: Any) -> Callable[[Handler], Handler]:
        """Register a handler: `@app.job(queue="emails", max_attempts=5, timeout=30, priority="high")`.

        Options are validated here, so a typo fails at import time, not at the first enqueue.
        """

        def register(handler: Handler) -> Handler:
            job_name = name or handler.__name__
            if job_name in self.jobs:
                raise ValueError(f"job {job_name!r} is already registered in app {self.name!r}")
            self.jobs[job_name] = define(job_name, handler, JobOptions(**options))
            return handler

        return register

    def definition(self, name: str) -> JobDefinition:
        try:
            return self.jobs[name]
        except KeyError:
            raise UnknownJob(name, list(self.jobs)) from None

    # -- producing -------------------------------------------------------------------------
    async def _producer(self) -> AIOKafkaProducer:
        """The running event loop's producer, started once per loop (concurrent first callers share
        the start). It is stopped when the app closes or when `asyncio.run` shuts its loop down;
        entries of loops closed without that are dropped here, so the map follows live loops."""
        for loop in [loop for loop in list(self._producers) if loop.is_closed()]:
            self._producers.pop(loop, None)
        loop = asyncio.get_running_loop()
        held = self._producers.get(loop)
        if held is None:
            held = self._producers[loop] = _LoopProducer(loop.create_future())
            held.owner = loop.create_task(self._hold_producer(loop, held))
        return await asyncio.shield(held.started)

    async def _hold_producer(self, loop: asyncio.AbstractEventLoop, held: _LoopProducer) -> None:
        """Start the producer, hand it out and keep it until cancelled (by `close()`, or by
        `asyncio.run` cancelling the tasks left on a loop it shuts down), then stop it."""
        sender = producer(self.settings)
        try:
            try:
                await sender.start()
            except (KafkaError, OSError) as error:
                unavailable = KafkaUnavailable(
                    f"cannot reach Kafka at {self.settings.kafka_bootstrap} ({error}); nothing was sent. "
                    f"Start it with `eventjobs dev up` or set KAFKA_BOOTSTRAP_SERVERS"
                )
                unavailable.__cause__ = error
                held.started.set_exception(unavailable)
                return
            held.started.set_result(sender)
            await loop.create_future()  # never done: the producer is kept until this task is cancelled
        finally:
            if self._producers.get(loop) is held:
                del self._producers[loop]
            if not held.started.done():
                held.started.set_exception(RuntimeError(f"app {self.name!r} was closed; nothing was sent"))
            await sender.stop()

    async def append(self, events: list[JobEvent]) -> None:
        """Append events to the log and wait until the broker acknowledged every one."""
        payloads = [(event, encode(event, max_bytes=None)) for event in events]
        limits = size_limits(self.settings.max_event_bytes)
        for event, payload in payloads:
            if type(event) is EnqueuedEvent and len(payload) > limits.enqueue_bytes:
                raise PayloadTooLarge(
                    f"args of job {event.name!r} are too large: its enqueued event is {len(payload):,} bytes, over "
                    f"the limit of {limits.enqueue_bytes:,} for args and options (3/8 of what "
                    f"EVENTJOBS_MAX_EVENT_BYTES={limits.max_event_bytes:,} leaves after its reserve, so that the "
                    f"job's state, which also holds its result and last error, always fits); nothing was sent. "
                    f"Store large data elsewhere and pass a reference in args"
                )
            if len(payload) > self.settings.max_event_bytes:
                raise PayloadTooLarge(
                    f"{event.type} event of job {event.job_id} is {len(payload):,} bytes, over the limit of "
                    f"{self.settings.max_event_bytes:,} (EVENTJOBS_MAX_EVENT_BYTES); nothing was sent. Store large "
                    f"data elsewhere and pass a reference in args"
                )
        sender = await self._producer()
        count = await topic_partition_count(sender, self.names.events)  # every event on its job's partition
        pending = [
            await sender.send(self.names.events, payload, key=event.job_id.encode(),
                              partition=job_partition(event.job_id, count))
            for event, payload in payloads
        ]
        await asyncio.gather(*pending)

    def build_enqueue(
        self, name: str, args: dict[str, Any] | None = None, *, parent_job_id: str | None = None, **options: Any
    ) -> EnqueuedEvent:
        """The validated `enqueued` event for a job (nothing is sent). Raises on any bad input."""
        definition = self.definition(name)
        if args is not None and not isinstance(args, dict):
            raise InvalidJobArguments(f"args of job {name!r} must be a dict (JSON object), got {type(args).__name__}")
        merged = definition.options.merged(**options) if options else definition.options
        try:
            return enqueued_event(
                name, args or {}, merged, now=self.clock.now(), actor=self.actor, parent_job_id=parent_job_id
            )
        except InvalidJobOptions:
            raise
        except ValidationError as error:
            problems = "; ".join(
                f"{'.'.join(str(p) for p in issue['loc'])}: {issue['msg'].removeprefix('Value error, ')}"
                for issue in error.errors(include_url=False)
            )
            raise InvalidJobArguments(f"cannot enqueue job {name!r}: {problems}") from None

    async def enqueue(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> str:
        """Validate, append the `enqueued` event, return the job id once the broker acknowledged it.

        Options override the job's registered ones: queue, max_attempts, backoff, retry_on,
        timeout, priority, ttl, idempotency_key, run_at, delay, capabilities, plus parent_job_id.
        With an idempotency key the job id is derived from it: a duplicate returns the same id
        and the processor refuses to run the job again.
        """
        event = self.build_enqueue(name, args, **options)
        await self.append([event])
        return event.job_id

    def enqueue_sync(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> str:
        """`enqueue` for scripts and sync web handlers (runs on a private event loop thread)."""
        return self.run_sync(self.enqueue(name, args, **options))

    def run_sync(self, coroutine: Coroutine[Any, Any, T]) -> T:
        """Run one of the app's coroutines from sync code."""
        with self._sync_lock:
            if self._sync_loop is None:
                loop = asyncio.new_event_loop()
                threading.Thread(target=loop.run_forever, name=f"eventjobs-{self.name}", daemon=True).start()
                self._sync_loop = loop
        return asyncio.run_coroutine_threadsafe(coroutine, self._sync_loop).result()

    # -- waiting and operator actions ------------------------------------------------------
    def _state_watcher(self) -> StateWatcher:
        """The app's one changelog watcher, made on first use, on the event loop it is used from.

        It is made anew only when that loop has closed (e.g. after `asyncio.run` returned).
        """
        watcher = self._watcher
        if watcher is None or watcher.loop.is_closed():
            watcher = self._watcher = StateWatcher(
                self.settings, self.names.job_state, keep=self.settings.wait_cache_jobs
            )
        elif watcher.loop is not asyncio.get_running_loop():
            raise RuntimeError(
                f"App.wait and App.state of app {self.name!r} follow the changelog on the event loop they were "
                f"first used on; call them from that loop"
            )
        return watcher

    async def wait(self, job_id: str, timeout: float = 60.0) -> JobState:
        """The job's terminal state (completed, cancelled, dead_lettered or discarded).

        Any number of callers may wait at once: one watcher per app follows the changelog. A job
        that finished before the call is answered too, from the cache of the latest states
        (`EVENTJOBS_WAIT_CACHE_JOBS`) or else from the job's changelog partition. `timeout` covers
        everything; the TimeoutError says the job's last state, or that none exists.
        """
        return await self._state_watcher().wait(job_id, timeout)

    async def state(self, job_id: str) -> JobState | None:
        """The job's latest state in the changelog (None: unknown, or forgotten after retention)."""
        return await self._state_watcher().latest(job_id)

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> None:
        """Ask to cancel: pending, scheduled and retrying jobs stop at once; a running one at its end."""
        await self.append([cancel_requested_event(job_id, reason, now=self.clock.now(), actor=self.actor)])

    skipped_dead_letters = 0  # entries the last `dead_letters()` call skipped because they could not be used

    async def dead_letters(self) -> list[DeadLetterRecord]:
        """What is in the dead-letter queue now (read from the compacted dead-letter topic).

        An entry that cannot be used (a key that is not UTF-8, a value that is not a dead-letter
        record, or one about another job than its key) is skipped, counted in
        `skipped_dead_letters` and logged once per kind; the good entries are listed.
        """
        from eventjobs.runtime.bad_records import BadRecords, describe_key, origin

        bad = BadRecords("eventjobs.app", f"app {self.name!r} (dead letters)")
        entries: dict[str, DeadLetterRecord | None] = {}
        async for record in read_to_end(self.settings, await partitions_of(self.settings, self.names.dead_letters)):
            if record.key is None:
                continue
            admitted = admit_dead_letter(record.key, record.value)
            if isinstance(admitted, RefusedDeadLetter):
                if admitted.job_id is not None:
                    entries.pop(admitted.job_id, None)  # the newest fact of this key is unusable: no entry
                bad.report(admitted.kind, f"{origin(record)} ({describe_key(record.key)})", admitted.reason)
                continue
            job_id, entry = admitted
            entries[job_id] = entry
        self.skipped_dead_letters = bad.total
        return sorted((e for e in entries.values() if e is not None), key=lambda e: e.dead_lettered_at)

    def _operator_action(self, build: Callable[..., JobEvent], entry: DeadLetterRecord, reason: str) -> JobEvent:
        """A dead-letter action refers to the dead_lettered event it acts on, which makes it idempotent."""
        return build(entry.job_id, entry.dead_letter_event_id, reason, now=self.clock.now(), actor=self.actor)

    async def retry_dead_letter(self, job_id: str, reason: str = "retried by operator") -> DeadLetterRecord:
        entry = await self._dead_letter(job_id)
        await self.append([self._operator_action(dead_letter_retried_event, entry, reason)])
        return entry

    async def retry_all_dead_letters(self, name: str | None = None, reason: str = "retried by operator") -> list[str]:
        entries = [e for e in await self.dead_letters() if name is None or e.name == name]
        await self.append([self._operator_action(dead_letter_retried_event, e, reason) for e in entries])
        return [e.job_id for e in entries]

    async def discard_dead_letter(self, job_id: str, reason: str = "discarded by operator") -> DeadLetterRecord:
        entry = await self._dead_letter(job_id)
        await self.append([self._operator_action(discarded_event, entry, reason)])
        return entry

    async def _dead_letter(self, job_id: str) -> DeadLetterRecord:
        for entry in await self.dead_letters():
            if entry.job_id == job_id:
                return entry
        raise NotInDeadLetters(f"job {job_id} is not in the dead-letter queue of app {self.name!r}")

    async def close(self) -> None:
        """Stop the watcher and the producers of every running loop, then the private sync loop.

        A loop that is neither running nor closed cannot run a stop now; its producer is stopped
        when `asyncio.run` shuts that loop down (or dropped once the loop is closed).
        """
        watcher, self._watcher = self._watcher, None
        if watcher is not None and watcher.loop.is_running():
            await _run_on(watcher.loop, watcher.stop())
        for loop, held in list(self._producers.items()):
            if loop.is_running():
                await _run_on(loop, _cancel_and_wait(held.owner))
            elif loop.is_closed():
                self._producers.pop(loop, None)
        sync_loop, self._sync_loop = self._sync_loop, None
        if sync_loop is not None:
            sync_loop.call_soon_threadsafe(sync_loop.stop)

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
