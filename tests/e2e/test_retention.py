"""Retention end to end: finished jobs leave the processor's table and changelog once retained,
dead letters are discarded after their retention, and an idempotency key is free again after."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from eventjobs import App
from eventjobs.core.state import JobStatus
from eventjobs.kafka.clients import partitions_of, read_to_end
from eventjobs.runtime.processor import run_processor
from tests.e2e.conftest import Runtime, job_events, processor_runtime, wait_for_status
from tests.support.jobs_app import EXECUTIONS


@pytest.fixture
async def short_retention(app: App) -> AsyncIterator[Runtime]:
    """A runtime whose processor keeps finished jobs 1.5 s and dead letters 1 s."""
    settings = app.settings.model_copy(update={"retain_completed_s": 1.5, "dead_letter_retention_s": 1.0})
    async with processor_runtime(app, settings) as rt:
        yield rt


async def changelog_value(app: App, job_id: str) -> bytes | None | str:
    """The latest changelog value of the job (None: a tombstone; 'absent': never written)."""
    latest: bytes | None | str = "absent"
    topic = app.names.job_state
    async for record in read_to_end(app.settings, await partitions_of(app.settings, topic)):
        if record.key == job_id.encode():
            latest = record.value
    return latest


async def events_of_type(app: App, job_id: str, type_: str, count: int = 1, timeout: float = 20) -> list:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        found = [e for e in await job_events(app.settings, job_id) if e.type == type_]
        if len(found) >= count or asyncio.get_running_loop().time() > deadline:
            return found
        await asyncio.sleep(0.2)


async def test_a_finished_job_is_forgotten_and_its_key_is_free_again(short_retention: Runtime) -> None:
    rt = short_retention
    await rt.start_worker()
    job_id = await rt.app.enqueue("add", {"a": 1, "b": 2}, idempotency_key="order-7")
    assert (await rt.app.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
    # while retained, the same key is refused
    assert await rt.app.enqueue("add", {"a": 1, "b": 2}, idempotency_key="order-7") == job_id
    (forgotten,) = await events_of_type(rt.app, job_id, "retention_passed")
    assert forgotten.scope == "finished"
    deadline = asyncio.get_running_loop().time() + 10
    while await changelog_value(rt.app, job_id) is not None:  # tombstoned once the processor committed
        assert asyncio.get_running_loop().time() < deadline, "the changelog still holds the forgotten job"
        await asyncio.sleep(0.2)
    assert EXECUTIONS[job_id] == 1
    # once forgotten, the key starts a new job with the same id
    assert await rt.app.enqueue("add", {"a": 1, "b": 2}, idempotency_key="order-7") == job_id
    completed = await events_of_type(rt.app, job_id, "completed", count=2)
    assert len(completed) == 2, " | ".join([f"{e.type} {e.__dict__.get('scope', '')} {e.actor}" for e in await job_events(rt.app.settings, job_id)])
    assert EXECUTIONS[job_id] == 2
    types = [e.type for e in await job_events(rt.app.settings, job_id)]
    assert types.count("enqueued") == 3 and types.count("duplicate_rejected") == 1


async def test_a_dead_letter_is_discarded_after_its_retention_then_forgotten(short_retention: Runtime) -> None:
    rt = short_retention
    await rt.start_worker()
    job_id = await rt.app.enqueue("gives_up", {})
    assert (await rt.app.wait(job_id, timeout=30)).status is JobStatus.DEAD_LETTERED
    passed = await events_of_type(rt.app, job_id, "retention_passed", count=2)
    assert [e.scope for e in passed] == ["dead_letter", "finished"]
    deadline = asyncio.get_running_loop().time() + 10
    while job_id in {entry.job_id for entry in await rt.app.dead_letters()}:
        assert asyncio.get_running_loop().time() < deadline, "the dead-letter entry is still listed"
        await asyncio.sleep(0.2)
    while await changelog_value(rt.app, job_id) is not None:
        assert asyncio.get_running_loop().time() < deadline, "the changelog still holds the forgotten job"
        await asyncio.sleep(0.2)


async def test_a_job_option_overrides_the_dead_letter_retention(short_retention: Runtime) -> None:
    rt = short_retention
    await rt.start_worker()
    job_id = await rt.app.enqueue("gives_up", {}, dead_letter_retention=3600)
    assert (await rt.app.wait(job_id, timeout=30)).status is JobStatus.DEAD_LETTERED
    await asyncio.sleep(3)  # past the processor's 1 s default
    state = await wait_for_status(rt, job_id, JobStatus.DEAD_LETTERED)
    assert state.options.dead_letter_retention_s == 3600
    assert [e for e in await job_events(rt.app.settings, job_id) if e.type == "retention_passed"] == []


async def timer_keys_of(app: App, job_id: str) -> set[str]:
    """The keys of the timer records (arms and tombstones) written for the job."""
    keys = set()
    async for record in read_to_end(app.settings, await partitions_of(app.settings, app.names.timers)):
        if record.key is not None and record.key.decode().startswith(f"{job_id}:"):
            keys.add(record.key.decode()[len(job_id) + 1:])
    return keys


async def test_a_restarted_processor_rebuilds_retention_from_its_table_and_writes_no_timer_for_it(app: App) -> None:
    """Retention is the lane's own timer, kept in memory: a processor that takes the partition
    over rebuilds it from the restored states, with its own settings, and nothing about it is
    written to the timer topic."""
    rt = Runtime(app)
    keeps_long = app.settings.model_copy(update={"retain_completed_s": 3600.0})
    first_stop = asyncio.Event()
    first = asyncio.create_task(run_processor(keeps_long, first_stop))
    try:
        await rt.start_worker()
        job_id = await app.enqueue("add", {"a": 2, "b": 3})
        assert (await app.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
        await asyncio.sleep(2)  # past the 1.5 s of the next processor, not the hour of this one
        assert [e for e in await job_events(app.settings, job_id) if e.type == "retention_passed"] == []
    finally:
        first_stop.set()
        await first
    rt.start_processor(app.settings.model_copy(update={"retain_completed_s": 1.5}))
    try:
        (forgotten,) = await events_of_type(app, job_id, "retention_passed")
        assert forgotten.scope == "finished" and forgotten.actor.startswith("processor:")
        deadline = asyncio.get_running_loop().time() + 10
        while await changelog_value(app, job_id) is not None:
            assert asyncio.get_running_loop().time() < deadline, "the changelog still holds the forgotten job"
            await asyncio.sleep(0.2)
        # no lease, republish or retention record was ever written: all three are the lane's own
        assert await timer_keys_of(app, job_id) == set()
    finally:
        await rt.close()
