"""`LogWriter`: appends events and operator records to a namespace's topics, one producer per event loop.

Every write is checked against its size limit before anything is sent, and returns only once
the broker acknowledged it (acks=all, idempotent producer), so an acknowledged enqueue is never
lost. `App` writes through one; the schedule service takes one (the app's, or its own).
"""

from __future__ import annotations

import asyncio
import os
import socket
import weakref
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError

from eventjobs.core.codec import encode
from eventjobs.core.events import EnqueuedEvent, JobEvent
from eventjobs.core.limits import size_limits
from eventjobs.core.schedules import ScheduleEvent, encode_schedule_event, record_key
from eventjobs.kafka.admin import KafkaUnavailable, ensure_single_topics
from eventjobs.kafka.clients import job_partition, producer, topic_partition_count
from eventjobs.kafka.topics import TopicNames
from eventjobs.settings import Settings


class PayloadTooLarge(ValueError):
    """An event would exceed the configured size limit (an enqueue: its args budget, `eventjobs.core.limits`)."""


def producer_actor() -> str:
    """`producer:<host>:<pid>`, the actor written into the events this process appends."""
    return f"producer:{socket.gethostname()}:{os.getpid()}"


@dataclass(eq=False)
class _LoopProducer:
    """The producer of one event loop, started and later stopped by its `owner` task on that loop."""

    started: asyncio.Future[AIOKafkaProducer]
    owner: asyncio.Task[None] = field(init=False)


async def run_on(loop: asyncio.AbstractEventLoop, coroutine: Coroutine[Any, Any, None]) -> None:
    """Run `coroutine` on `loop` (the running one, or one running in another thread) and wait for it."""
    if loop is asyncio.get_running_loop():
        await coroutine
    else:
        await asyncio.wrap_future(asyncio.run_coroutine_threadsafe(coroutine, loop))


async def _cancel_and_wait(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


class LogWriter:
    """The writes of one namespace: events to the event log, schedule records, queue-control records."""

    def __init__(self, settings: Settings, names: TopicNames, *, owner: str) -> None:
        self.settings = settings
        self.names = names
        self.owner = owner  # who writes, for the message of a write after close: "app 'shop'"
        self._producers: dict[asyncio.AbstractEventLoop, _LoopProducer] = {}
        #: the running check that the schedules topic exists, per event loop (`schedules_topic`)
        self._schedules_topic_checks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[Any]] = \
            weakref.WeakKeyDictionary()
        self._schedules_topic_checked = False

    async def producer(self) -> AIOKafkaProducer:
        """The running event loop's producer, started once per loop (concurrent first callers share
        the start). It is stopped when the writer closes or when `asyncio.run` shuts its loop down;
        entries of loops closed without that are dropped here, so the map follows live loops.
        `KafkaUnavailable` (nothing sent) if the broker cannot be reached."""
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
                held.started.set_exception(RuntimeError(f"{self.owner} was closed; nothing was sent"))
            await sender.stop()

    async def append(self, events: Sequence[JobEvent]) -> None:
        """Append events to the log and wait until the broker acknowledged every one."""
        await self.send(self.encoded(events))

    def encoded(self, events: Sequence[JobEvent]) -> list[tuple[JobEvent, bytes]]:
        """Each event with its bytes; `PayloadTooLarge` (nothing sent) for one over its limit."""
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
        return payloads

    async def send(self, payloads: list[tuple[JobEvent, bytes]]) -> None:
        """Send encoded events (`encoded`), each to its job's partition of the log, and wait for
        every acknowledgement."""
        sender = await self.producer()
        partitions = await topic_partition_count(sender, self.names.events)
        pending = [
            await sender.send(self.names.events, payload, key=event.job_id.encode(),
                              partition=job_partition(event.job_id, partitions))
            for event, payload in payloads
        ]
        await asyncio.gather(*pending)

    async def schedules_topic(self) -> str:
        """The schedules topic, created if this namespace's topics were applied before it existed.

        Checked once: concurrent first callers on a loop share one check (the schedule service
        fires up to 200 ticks at once, and each check opens an admin connection)."""
        if not self._schedules_topic_checked:
            loop = asyncio.get_running_loop()
            check = self._schedules_topic_checks.get(loop)
            if check is None or (check.done() and (check.cancelled() or check.exception() is not None)):
                check = self._schedules_topic_checks[loop] = loop.create_task(
                    ensure_single_topics(self.settings, ["schedules"]))
            await asyncio.shield(check)
            self._schedules_topic_checked = True
        return self.names.schedules

    async def append_schedule_records(self, events: Sequence[ScheduleEvent]) -> None:
        """Append schedule events (built by `eventjobs.core.schedules`) to the schedules topic, each under
        its record key on its schedule's partition; returns once the broker acknowledged every one."""
        topic = await self.schedules_topic()
        sender = await self.producer()
        count = await topic_partition_count(sender, topic)
        pending = [await sender.send(topic, encode_schedule_event(event), key=record_key(event).encode(),
                                     partition=job_partition(event.schedule_id, count)) for event in events]
        await asyncio.gather(*pending)

    async def put_queue_control(self, queue: str, value: bytes) -> None:
        """Write a queue's pause / resume record to the queue-control topic (created if missing)."""
        await ensure_single_topics(self.settings, ["queue-control"])
        sender = await self.producer()
        await (await sender.send(self.names.queue_control, value, key=queue.encode()))

    async def close(self) -> None:
        """Stop the producers of every running loop. A loop that is neither running nor closed
        cannot run a stop now; its producer is stopped when `asyncio.run` shuts that loop down
        (or dropped once the loop is closed)."""
        for loop, held in list(self._producers.items()):
            if loop.is_running():
                await run_on(loop, _cancel_and_wait(held.owner))
            elif loop.is_closed():
                self._producers.pop(loop, None)
