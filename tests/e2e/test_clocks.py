"""The services read time only from their injected clock: driven by a FrozenClock, with no sleeping
for due times, against the session broker."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

from eventjobs.core.clock import FrozenClock, SystemClock
from eventjobs.core.events import JobEvent
from eventjobs.core.records import TimerRecord
from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.clients import producer
from eventjobs.runtime.timers import TimerService
from eventjobs.settings import Settings
from tests.e2e.conftest import QUEUES, Runtime, job_events
from tests.support.jobs_app import build_app

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=timezone.utc)


async def until(condition: Callable[[], bool], timeout: float = 30) -> None:
    """Poll `condition` (Kafka hand-offs take a moment; the clock under test does not move)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        assert asyncio.get_running_loop().time() < deadline, "condition never held"
        await asyncio.sleep(0.05)


async def events_of_jobs(settings: Settings, jobs: set[str], count: int, timeout: float = 30) -> list[JobEvent]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        events = [e for e in await job_events(settings) if e.job_id in jobs]
        if len(events) >= count or asyncio.get_running_loop().time() > deadline:
            return events
        await asyncio.sleep(0.1)


async def test_the_timer_service_fires_only_what_its_clock_says_is_due(settings: Settings) -> None:
    await apply_topics(settings, QUEUES)
    clock = FrozenClock(T0)
    service = TimerService(settings, clock=clock)
    stop = asyncio.Event()
    task = asyncio.create_task(service.run(stop))
    try:
        sender = producer(settings)
        await sender.start()
        for job_id, due_in in [("in-a-minute", 60), ("in-an-hour", 3600)]:
            record = TimerRecord(job_id=job_id, kind="run_at", attempt=0, due_at=T0 + timedelta(seconds=due_in))
            await sender.send_and_wait(service.names.timers, record.encode(), key=record.key, partition=0)
        await sender.stop()
        await until(lambda: service.pending == 2)
        jobs = {"in-a-minute", "in-an-hour"}

        clock.advance(60)
        first = await events_of_jobs(settings, jobs, 1)
        assert [(e.job_id, e.type, e.occurred_at) for e in first] == [("in-a-minute", "due", T0 + timedelta(seconds=60))]
        assert service.pending == 1  # the hour-long timer waits: its due time has not come on this clock

        clock.advance(3600)
        both = await events_of_jobs(settings, jobs, 2)
        assert [(e.job_id, e.occurred_at) for e in both] == [
            ("in-a-minute", T0 + timedelta(seconds=60)), ("in-an-hour", T0 + timedelta(seconds=3660))
        ]
        await until(lambda: service.pending == 0)
    finally:
        stop.set()
        await task


async def test_the_app_writes_the_time_of_its_clock(settings: Settings) -> None:
    await apply_topics(settings, QUEUES)
    clock = FrozenClock(T0)
    app = build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap, clock=clock)
    try:
        job_id = await app.enqueue("add", {"a": 1, "b": 2}, delay=30)
        clock.advance(5)
        await app.cancel(job_id)
    finally:
        await app.close()
    events = await events_of_jobs(settings, {job_id}, 2)
    enqueued, cancel = events
    assert (enqueued.type, enqueued.occurred_at, enqueued.run_at) == ("enqueued", T0, T0 + timedelta(seconds=30))  # type: ignore[union-attr]
    assert (cancel.type, cancel.occurred_at) == ("cancel_requested", T0 + timedelta(seconds=5))


async def test_the_worker_writes_the_time_of_its_clock_and_its_lease(runtime: Runtime) -> None:
    # Frozen at the real present: the processor's timer service (system clock) must not find the
    # worker's lease already over.
    clock = FrozenClock(SystemClock().now())
    await runtime.start_worker(clock=clock, lease_s=7.0)
    job_id = await runtime.app.enqueue("add", {"a": 1, "b": 2})
    await runtime.app.wait(job_id, timeout=30)
    written = {e.type: e for e in await job_events(runtime.app.settings, job_id) if e.actor.startswith("worker:")}
    assert set(written) == {"attempt_started", "attempt_succeeded"}  # the start is also the claim
    assert {e.occurred_at for e in written.values()} == {clock.now()}
    assert written["attempt_started"].lease_deadline == clock.now() + timedelta(seconds=7)  # type: ignore[union-attr]
