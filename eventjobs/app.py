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
from datetime import datetime, timezone
from typing import Any, TypeVar

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError
from pydantic import ValidationError

from eventjobs.core.codec import encode
from eventjobs.core.commands import enqueue as enqueued_event
from eventjobs.core.events import (
    CancelRequestedEvent,
    DeadLetterRetriedEvent,
    DiscardedEvent,
    EnqueuedEvent,
    JobEvent,
)
from eventjobs.core.ids import new_event_id
from eventjobs.core.options import InvalidJobOptions, JobOptions
from eventjobs.core.state import JobState
from eventjobs.kafka import partitions_of, producer, read_to_end
from eventjobs.records import DeadLetterRecord
from eventjobs.registry import Handler, JobDefinition, UnknownJob, define
from eventjobs.settings import Settings, load_settings
from eventjobs.state_watch import StateWatcher
from eventjobs.topic_admin import KafkaUnavailable
from eventjobs.topics import TopicNames, load_specs

T = TypeVar("T")


class InvalidJobArguments(ValueError):
    """The args of an enqueue are not a JSON object."""


class PayloadTooLarge(ValueError):
    """An event would exceed the configured size limit."""


class NotInDeadLetters(LookupError):
    """A dead-letter action named a job that is not in the dead-letter queue."""


def _now() -> datetime:
    return datetime.now(timezone.utc)


class App:
    """One application: its jobs and its topics (the namespace is the app name)."""

    def __init__(self, name: str, settings: Settings | None = None, **overrides: Any) -> None:
        self.settings = settings or load_settings(namespace=name, **overrides)
        if self.settings.namespace != name and settings is None:
            raise ValueError(f"app name {name!r} and namespace {self.settings.namespace!r} differ")
        self.name = name
        self.jobs: dict[str, JobDefinition] = {}
        self._names: TopicNames | None = None
        self.actor = f"producer:{socket.gethostname()}:{os.getpid()}"
        self._producers: dict[asyncio.AbstractEventLoop, AIOKafkaProducer] = {}
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
        loop = asyncio.get_running_loop()
        existing = self._producers.get(loop)
        if existing is None:
            existing = producer(self.settings)
            try:
                await existing.start()
            except (KafkaError, OSError) as error:
                await existing.stop()
                raise KafkaUnavailable(
                    f"cannot reach Kafka at {self.settings.kafka_bootstrap} ({error}); nothing was sent. "
                    f"Start it with `eventjobs dev up` or set KAFKA_BOOTSTRAP_SERVERS"
                ) from error
            self._producers[loop] = existing
        return existing

    async def append(self, events: list[JobEvent]) -> None:
        """Append events to the log and wait until the broker acknowledged every one."""
        payloads = [(event, encode(event, max_bytes=None)) for event in events]
        for event, payload in payloads:
            if len(payload) > self.settings.max_event_bytes:
                raise PayloadTooLarge(
                    f"{event.type} event of job {event.job_id} is {len(payload):,} bytes, over the limit of "
                    f"{self.settings.max_event_bytes:,} (EVENTJOBS_MAX_EVENT_BYTES); nothing was sent. Store large "
                    f"data elsewhere and pass a reference in args"
                )
        sender = await self._producer()
        pending = [
            await sender.send(self.names.events, payload, key=event.job_id.encode()) for event, payload in payloads
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
                name, args or {}, merged, now=_now(), actor=self.actor, parent_job_id=parent_job_id
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
    async def wait(self, job_id: str, timeout: float = 60.0) -> JobState:
        """The job's terminal state (completed, cancelled, dead_lettered or discarded)."""
        if self._watcher is None:
            self._watcher = StateWatcher(self.settings, self.names.job_state)
        return await self._watcher.wait(job_id, timeout)

    async def state(self, job_id: str) -> JobState | None:
        """The latest state the changelog has shown for the job (after `wait` started watching)."""
        if self._watcher is None:
            self._watcher = StateWatcher(self.settings, self.names.job_state)
        return await self._watcher.latest(job_id)

    async def cancel(self, job_id: str, reason: str = "cancelled by request") -> None:
        """Ask to cancel: pending, scheduled and retrying jobs stop at once; a running one at its end."""
        await self.append(
            [CancelRequestedEvent(event_id=new_event_id(), job_id=job_id, occurred_at=_now(),
                                  actor=self.actor, reason=reason)]
        )

    async def dead_letters(self) -> list[DeadLetterRecord]:
        """What is in the dead-letter queue now (read from the compacted dead-letter topic)."""
        entries: dict[str, DeadLetterRecord | None] = {}
        async for record in read_to_end(self.settings, await partitions_of(self.settings, self.names.dead_letters)):
            if record.key is None:
                continue
            entries[record.key.decode()] = DeadLetterRecord.decode(record.value) if record.value else None
        return sorted((e for e in entries.values() if e is not None), key=lambda e: e.dead_lettered_at)

    def _operator_action(self, kind: type[DeadLetterRetriedEvent] | type[DiscardedEvent], entry: DeadLetterRecord,
                         reason: str) -> JobEvent:
        """A dead-letter action refers to the dead_lettered event it acts on, which makes it idempotent."""
        return kind(event_id=new_event_id(), job_id=entry.job_id, occurred_at=_now(), actor=self.actor,
                    causation_id=entry.dead_letter_event_id, reason=reason)

    async def retry_dead_letter(self, job_id: str, reason: str = "retried by operator") -> DeadLetterRecord:
        entry = await self._dead_letter(job_id)
        await self.append([self._operator_action(DeadLetterRetriedEvent, entry, reason)])
        return entry

    async def retry_all_dead_letters(self, name: str | None = None, reason: str = "retried by operator") -> list[str]:
        entries = [e for e in await self.dead_letters() if name is None or e.name == name]
        await self.append([self._operator_action(DeadLetterRetriedEvent, e, reason) for e in entries])
        return [e.job_id for e in entries]

    async def discard_dead_letter(self, job_id: str, reason: str = "discarded by operator") -> DeadLetterRecord:
        entry = await self._dead_letter(job_id)
        await self.append([self._operator_action(DiscardedEvent, entry, reason)])
        return entry

    async def _dead_letter(self, job_id: str) -> DeadLetterRecord:
        for entry in await self.dead_letters():
            if entry.job_id == job_id:
                return entry
        raise NotInDeadLetters(f"job {job_id} is not in the dead-letter queue of app {self.name!r}")

    async def close(self) -> None:
        if self._watcher is not None:
            await self._watcher.stop()
            self._watcher = None
        loop = asyncio.get_running_loop()
        sender = self._producers.pop(loop, None)
        if sender is not None:
            await sender.stop()
        sync_loop, self._sync_loop = self._sync_loop, None
        if sync_loop is not None:  # the private loop of enqueue_sync: stop its producer, then the loop
            sync_sender = self._producers.pop(sync_loop, None)
            if sync_sender is not None:
                await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(sync_sender.stop(), sync_loop))
            sync_loop.call_soon_threadsafe(sync_loop.stop)

    async def __aenter__(self) -> App:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
