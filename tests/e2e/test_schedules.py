"""Periodic schedules against the real broker: the schedule service beside the processor, in-process.

No worker runs: what is checked is what the schedule service writes and the processor accepts.

The SIGKILL test with separate processes is in tests/faults/test_schedule_kills.py.
"""

from __future__ import annotations

import asyncio
import json
from collections import defaultdict
from datetime import datetime, timezone
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest

from eventjobs import App
from eventjobs.app import ScheduleNotFound
from eventjobs.core.events import EnqueuedEvent, parse_wire_timestamp
from eventjobs.core.partitioning import job_partition
from eventjobs.core.schedules import ORPHAN_REASON, InvalidSchedule, admit_schedule_record, declared_schedule_id
from eventjobs.core.state import JobStatus
from eventjobs.kafka.clients import partitions_of, producer, read_to_end
from eventjobs.registry import UnknownJob
from eventjobs.runtime.schedules import SET_ASIDE_UNCOMPUTABLE, ScheduleService
from eventjobs.settings import Settings
from tests.e2e.conftest import Runtime, job_events, spawn, wait_for_status
from tests.support.schedule_records import UNCOMPUTABLE_RULES, stored_definition

APP = "tests.support.jobs_app:app"


def schedule_ticks(events: list[Any], schedule_id: str) -> dict[datetime, set[str]]:
    """tick -> job ids of the enqueued events the schedule's ticks wrote (from their idempotency keys)."""
    ticks: dict[datetime, set[str]] = defaultdict(set)
    for event in events:
        if isinstance(event, EnqueuedEvent) and event.actor == f"schedule:{schedule_id}":
            assert event.idempotency_key is not None
            stamp = event.idempotency_key.removeprefix(f"{schedule_id}@")
            if not stamp.startswith("manual:"):
                ticks[parse_wire_timestamp(stamp)].add(event.job_id)
    return ticks


async def schedule_records(settings: Settings) -> list[Any]:
    topic = f"{settings.namespace}.schedules"
    return [admit_schedule_record(r.key, r.value) async for r in read_to_end(settings, await partitions_of(settings, topic))]


async def wait_until(predicate: Any, timeout: float, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        if await predicate():
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def start_service(runtime: Runtime, app: App | None = None) -> ScheduleService:
    service = ScheduleService(runtime.app.settings, jobs=app.jobs if app else None, writer=app.writer if app else None)
    runtime.tasks.append(asyncio.create_task(service.run(runtime.stop)))
    return service


async def test_a_schedule_fires_each_tick_once_and_obeys_pause_resume_trigger_delete(runtime: Runtime) -> None:
    app = runtime.app
    service = start_service(runtime)
    schedule_id = await app.schedule("add", {"a": 1, "b": 2}, every="1s", schedule_id="adder")
    assert schedule_id == "adder"
    assert await app.schedule("add", {"a": 1, "b": 2}, every="1s", schedule_id="adder") == "adder"  # no change

    async def ticks_at_least(n: int) -> bool:
        return len(schedule_ticks(await job_events(app.settings), "adder")) >= n

    await wait_until(lambda: ticks_at_least(3), 60, "three ticks")
    ticks = schedule_ticks(await job_events(app.settings), "adder")
    first_job = next(iter(ticks[min(ticks)]))
    state = await wait_for_status(runtime, first_job, JobStatus.PENDING)  # the processor took the tick's job
    assert (state.name, state.args) == ("add", {"a": 1, "b": 2})

    [status] = await app.schedules()
    assert (status.schedule_id, status.job, status.rule, status.paused) == ("adder", "add", "every 1s", False)
    assert status.last_tick is not None and status.next_tick is not None and status.next_tick > status.last_tick

    assert await app.pause_schedule("adder") is True
    assert await app.pause_schedule("adder") is False
    await asyncio.sleep(1.5)  # a tick in flight when the pause arrived may still land
    paused_count = len(schedule_ticks(await job_events(app.settings), "adder"))
    await asyncio.sleep(2.5)
    assert len(schedule_ticks(await job_events(app.settings), "adder")) == paused_count
    [status] = await app.schedules()
    assert status.paused and status.next_tick is None

    manual = await app.trigger_schedule("adder")  # fires although paused
    assert (await wait_for_status(runtime, manual, JobStatus.PENDING)).args == {"a": 1, "b": 2}

    assert await app.resume_schedule("adder") is True
    await wait_until(lambda: ticks_at_least(paused_count + 2), 30, "ticks after the resume")

    await app.unschedule("adder")
    await asyncio.sleep(1.5)
    deleted_count = len(schedule_ticks(await job_events(app.settings), "adder"))
    await asyncio.sleep(2.0)
    events = await job_events(app.settings)
    ticks = schedule_ticks(events, "adder")
    assert len(ticks) == deleted_count
    assert await app.schedules() == []
    with pytest.raises(ScheduleNotFound, match="no schedule 'adder'"):
        await app.pause_schedule("adder")

    # one job per tick, ticks a second apart, and no gap except the pause
    assert all(len(job_ids) == 1 for job_ids in ticks.values())
    rejected = sum(1 for e in events if e.type == "duplicate_rejected")
    assert rejected == 0, "no tick was enqueued twice in a run without crashes"
    assert service.skipped_records == 0 and service.fired == len(ticks)


async def test_bad_input_is_refused_with_a_clear_error(app: App) -> None:
    with pytest.raises(InvalidSchedule, match="invalid cron expression"):
        await app.schedule("add", cron="every minute")
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        await app.schedule("add", cron="0 * * * *", timezone="Mars/Olympus")
    with pytest.raises(InvalidSchedule, match="exactly one of every"):
        await app.schedule("add", every="1s", cron="* * * * *")
    with pytest.raises(InvalidSchedule, match="at least 1 s"):
        await app.schedule("add", every="100ms")
    with pytest.raises(InvalidSchedule, match="catch_up"):
        await app.schedule("add", every="1m", catch_up="some")
    with pytest.raises(InvalidSchedule, match=r"cron '0 0 30 2 \*' \(UTC\) has no tick within 1827 days"):
        await app.schedule("add", cron="0 0 30 2 *")
    with pytest.raises(InvalidSchedule, match="every='3000000d' is longer than 1827 days"):
        await app.schedule("add", every="3000000d")
    with pytest.raises(UnknownJob):
        await app.schedule("no_such_job", every="1m")
    with pytest.raises(InvalidSchedule, match="idempotency_key"):
        await app.schedule("add", every="1m", idempotency_key="k")
    with pytest.raises(ScheduleNotFound):
        await app.trigger_schedule("never-made")


async def test_bad_records_are_skipped_and_declared_schedules_are_synced(runtime: Runtime) -> None:
    app = runtime.app
    settings = app.settings
    declared = App(settings.namespace, settings=settings)

    @declared.job(every="1s")
    async def tick(args: dict[str, Any]) -> None:
        return None

    @declared.job(cron="0 0 1 1 *", timezone="Europe/Paris", catch_up="none")
    async def yearly(args: dict[str, Any]) -> None:
        return None

    sender = producer(settings)
    await sender.start()
    try:  # records nobody can use, on the topic before the service starts and while it runs
        await sender.send_and_wait(f"{settings.namespace}.schedules", b"{not json", key=b"x", partition=0)
        await sender.send_and_wait(f"{settings.namespace}.schedules", b'{"type": "fired"}', key=b"y", partition=1)
    finally:
        await sender.stop()
    service = start_service(runtime, app=declared)
    await wait_until(lambda: _has_ticks(settings, declared_schedule_id("tick"), 2), 60, "ticks of the declared schedule")
    assert service.skipped_records == 2 and service.failure is None
    listed = {s.schedule_id: s for s in await app.schedules()}
    assert set(listed) == {"job:tick", "job:yearly"} and listed["job:yearly"].rule == "cron 0 0 1 1 * (Europe/Paris)"
    assert listed["job:yearly"].declared and listed["job:yearly"].next_tick is not None

    # the code no longer declares `yearly`: the next start deletes it, with the reason on the log
    later = App(settings.namespace, settings=settings)

    @later.job("tick", every="1s")  # the same job in the next version of the code
    async def tick_again(args: dict[str, Any]) -> None:
        return None

    try:
        await ScheduleService(settings, jobs=later.jobs, writer=later.writer).write_declared()  # what the next start does first
    finally:
        await later.close()
    assert {s.schedule_id for s in await app.schedules()} == {"job:tick"}
    deletions = [r for r in await schedule_records(settings) if getattr(r, "type", None) == "deleted"]
    assert [(d.schedule_id, d.reason) for d in deletions] == [("job:yearly", ORPHAN_REASON)]
    await declared.close()


async def _has_ticks(settings: Settings, schedule_id: str, n: int) -> bool:
    return len(schedule_ticks(await job_events(settings), schedule_id)) >= n


async def test_the_schedules_command(app: App) -> None:
    from tests.support.cli import run_cli

    settings = app.settings
    await app.schedule("add", {"a": 2, "b": 2}, cron="0 3 * * *", timezone="Europe/Paris", schedule_id="nightly")
    listed = await asyncio.to_thread(run_cli, "schedules", "list", "--json", settings=settings)
    assert listed.returncode == 0, listed.stderr
    [row] = json.loads(listed.stdout)
    assert (row["schedule_id"], row["job"], row["rule"], row["paused"]) == (
        "nightly", "add", "cron 0 3 * * * (Europe/Paris)", False)
    assert row["next_tick"] is not None and row["last_tick"] is None

    paused = await asyncio.to_thread(run_cli, "schedules", "pause", "nightly", "--json", settings=settings)
    assert json.loads(paused.stdout) == {"schedule_id": "nightly", "paused": True, "changed": True}
    table = await asyncio.to_thread(run_cli, "schedules", "list", settings=settings)
    assert "nightly" in table.stdout and "paused" in table.stdout and "1 schedule(s)" in table.stdout
    resumed = await asyncio.to_thread(run_cli, "schedules", "resume", "nightly", settings=settings)
    assert resumed.returncode == 0 and "resumed nightly" in resumed.stdout
    triggered = await asyncio.to_thread(run_cli, "schedules", "trigger", "nightly", "--json", settings=settings)
    job_id = json.loads(triggered.stdout)["job_id"]
    [enqueued] = [e for e in await job_events(settings, job_id) if e.type == "enqueued"]
    assert enqueued.args == {"a": 2, "b": 2} and enqueued.actor == "schedule:nightly"
    deleted = await asyncio.to_thread(run_cli, "schedules", "delete", "nightly", settings=settings)
    assert deleted.returncode == 0 and "deleted nightly" in deleted.stdout

    missing = await asyncio.to_thread(run_cli, "schedules", "pause", "nightly", settings=settings)
    assert missing.returncode == 1 and missing.stdout == ""
    assert missing.stderr.strip().splitlines() == [
        f"error: no schedule 'nightly' in namespace '{settings.namespace}' (see `eventjobs schedules list`)"]


async def test_the_schedules_projection_shows_next_and_last_tick(app: App, clickhouse: Any) -> None:
    from eventjobs.clickhouse import ChdbBackend, ServerBackend
    from eventjobs.core.schedules import schedule_fired_event
    from eventjobs.readside.migrations import apply_migrations, default_projections_dir
    from eventjobs.readside.schedules import SchedulesProjection

    settings = app.settings
    await app.schedule("add", {"a": 1, "b": 1}, every="1h", schedule_id="hourly")
    tick = datetime(2026, 3, 1, 12, tzinfo=timezone.utc)
    await app.writer.append_schedule_records([schedule_fired_event("hourly", tick, "job-12h", now=tick, actor="test")])
    await app.schedule("add", {"a": 2, "b": 2}, cron="0 3 * * *", schedule_id="nightly")
    await app.pause_schedule("nightly")
    await app.schedule("add", {}, every="1m", schedule_id="gone")
    await app.unschedule("gone")
    sender = producer(settings)
    await sender.start()
    try:
        await sender.send_and_wait(f"{settings.namespace}.schedules", b"\xff not json", key=b"junk", partition=0)
    finally:
        await sender.stop()

    backend = (ChdbBackend(clickhouse.path, settings.namespace, role="pytest") if clickhouse.kind == "chdb"
               else ServerBackend(clickhouse.url, settings.namespace))
    stop = asyncio.Event()
    try:
        await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
        projection = SchedulesProjection(backend, settings)
        running = asyncio.create_task(projection.run(stop))

        async def rows() -> list[dict[str, Any]]:
            result = await asyncio.to_thread(backend.query, "SELECT schedule_id, rule, paused, last_tick, last_job_id, "
                                             "next_tick FROM schedules FINAL ORDER BY schedule_id")
            return result.dicts()

        async def projected() -> bool:
            return [r["schedule_id"] for r in await rows()] == ["hourly", "nightly"]

        await wait_until(projected, 30, "the schedules rows")
        hourly, nightly = await rows()
        assert (hourly["rule"], hourly["paused"], hourly["last_job_id"]) == ("every 1h", 0, "job-12h")
        assert hourly["last_tick"] == tick and hourly["next_tick"] > tick
        assert (nightly["rule"], nightly["paused"], nightly["next_tick"]) == ("cron 0 3 * * * (UTC)", 1, None)
        assert projection.skipped_records == 1
        stop.set()
        await asyncio.wait_for(running, 10)
    finally:
        stop.set()
        backend.command(f"DROP DATABASE IF EXISTS `{settings.namespace}` SYNC", database="")
        backend.close()


def test_a_bad_declared_schedule_fails_at_registration() -> None:
    app = App("declaring")

    async def handler(args: dict[str, Any]) -> None:
        return None

    with pytest.raises(InvalidSchedule, match="at least 1 s"):
        app.job(every="10ms")(handler)
    with pytest.raises(InvalidSchedule, match="invalid cron expression"):
        app.job(cron="0 25 * * *")(handler)
    with pytest.raises(InvalidSchedule, match="without every= or cron="):
        app.job(timezone="Europe/Paris")
    with pytest.raises(InvalidSchedule, match="unknown time zone"):
        app.job(cron="0 1 * * *", timezone="Paris")(handler)
    with pytest.raises(InvalidSchedule, match="schedule 'job:handler' of job 'handler': cron '0 0 31 4,6,9,11 "):
        app.job(cron="0 0 31 4,6,9,11 *")(handler)  # refused at import, not found out by every processor
    assert app.jobs == {}
    app.job(queue="reports", every="1h", catch_up="all")(handler)
    assert app.jobs["handler"].schedule == {"every": "1h", "catch_up": "all"}


async def test_ticks_missed_while_no_service_ran_fire_as_catch_up_says(runtime: Runtime) -> None:
    from eventjobs.core.clock import FrozenClock

    settings = runtime.app.settings
    created = datetime(2026, 3, 1, 12, 0, 30, tzinfo=timezone.utc)
    clock = FrozenClock(created)
    app = App(settings.namespace, settings=settings, clock=clock)

    @app.job()
    async def report(args: dict[str, Any]) -> None:
        return None

    for catch_up in ("none", "one", "all"):
        await app.schedule("report", every="1h", catch_up=catch_up, schedule_id=f"hourly-{catch_up}")
    clock.advance(hours=5, minutes=30)  # down from 12:00:30 to 17:30:30: ticks 13:00 ... 17:00 missed
    service = ScheduleService(settings, clock=clock)
    runtime.tasks.append(asyncio.create_task(service.run(runtime.stop)))

    async def fired_all() -> bool:
        return service.fired >= 6

    await wait_until(fired_all, 60, "the catch-up ticks")
    await asyncio.sleep(1.0)  # a second pass at the same time fires nothing more
    events = await job_events(settings)
    hours = {catch_up: sorted(t.hour for t in schedule_ticks(events, f"hourly-{catch_up}"))
             for catch_up in ("none", "one", "all")}
    assert hours == {"none": [], "one": [17], "all": [13, 14, 15, 16, 17]}
    assert service.fired == 6
    statuses = {s.schedule_id: s for s in await app.schedules()}
    assert statuses["hourly-one"].next_tick == datetime(2026, 3, 1, 18, tzinfo=timezone.utc)
    await app.close()


async def test_a_tick_enqueued_but_not_recorded_fires_again_and_is_refused(runtime: Runtime) -> None:
    from eventjobs.core.clock import FrozenClock
    from eventjobs.core.schedules import tick_job

    settings = runtime.app.settings
    clock = FrozenClock(datetime(2026, 3, 1, 12, 0, 30, tzinfo=timezone.utc))
    app = App(settings.namespace, settings=settings, clock=clock)

    @app.job()
    async def report(args: dict[str, Any]) -> None:
        return None

    await app.schedule("report", every="1m", schedule_id="crashy")
    clock.advance(minutes=1)
    tick = datetime(2026, 3, 1, 12, 1, tzinfo=timezone.utc)
    state = await app._schedule_state("crashy")
    assert state is not None and state.definition is not None
    first = tick_job(state.definition, tick, now=clock.now())
    await app.writer.append([first])  # a service enqueued the tick's job and died before its `fired` record

    service = ScheduleService(settings, clock=clock)
    runtime.tasks.append(asyncio.create_task(service.run(runtime.stop)))

    async def refused() -> bool:
        return any(e.type == "duplicate_rejected" for e in await job_events(settings, first.job_id))

    await wait_until(refused, 60, "the processor refusing the second enqueue of the tick")
    events = await job_events(settings, first.job_id)
    assert [e.type for e in events if e.type in ("enqueued", "duplicate_rejected")] == [
        "enqueued", "enqueued", "duplicate_rejected"]
    assert schedule_ticks(events, "crashy") == {tick: {first.job_id}} and service.fired == 1
    [status] = await app.schedules()
    assert status.last_tick == tick and status.last_job_id == first.job_id
    await app.close()


async def test_a_schedule_whose_job_cannot_be_built_is_reported_and_the_others_fire(runtime: Runtime) -> None:
    app = runtime.app
    await app.schedule("add", {"a": "x" * 100_000, "b": ""}, every="1s", schedule_id="too-big-here")
    await app.schedule("add", {"a": 1, "b": 1}, every="1s", schedule_id="fine")
    small = app.settings.model_copy(update={"max_event_bytes": 262_144})  # this service's budget: 48 KiB of args
    service = ScheduleService(small)
    runtime.tasks.append(asyncio.create_task(service.run(runtime.stop)))
    await wait_until(lambda: _has_ticks(app.settings, "fine", 3), 60, "ticks of the other schedule")
    assert service.bad.counts == {"job cannot be built": 1} and service.failure is None
    assert schedule_ticks(await job_events(app.settings), "too-big-here") == {}


async def _write_uncomputable_schedules(settings: Settings, now: datetime) -> list[str]:
    """Definitions this version refuses to make, written straight onto the topic with a raw producer
    (as an older version or a foreign producer would); their schedule ids."""
    topic = f"{settings.namespace}.schedules"
    count = len(await partitions_of(settings, topic))
    sender = producer(settings)
    await sender.start()
    try:
        for name, rule in UNCOMPUTABLE_RULES.items():
            key, value = stored_definition(name, now, **rule)  # type: ignore[arg-type]
            await sender.send_and_wait(topic, value, key=key, partition=job_partition(name, count))
    finally:
        await sender.stop()
    return sorted(UNCOMPUTABLE_RULES)


async def test_a_stored_schedule_whose_ticks_cannot_be_computed_stops_no_processor(
        app: App, tmp_path: Path, processes: list[Popen[bytes]]) -> None:
    """`0 0 30 2 *` and its kind on the topic used to crash-loop every processor: the schedule
    service raised croniter's error beside the lifecycle processor. Now the processor keeps
    moving jobs, the other schedules keep ticking, and the bad ones are set aside, in the log,
    the metric and the listing."""
    from tests.support.scrape import free_port, scrape_when_up, total
    from tests.support.cli import run_cli

    settings = app.settings
    await app.schedule("add", {"a": 1, "b": 1}, every="1s", schedule_id="fine")
    bad = await _write_uncomputable_schedules(settings, app.clock.now())
    port, log = free_port(), tmp_path / "processor.log"
    processor = spawn(["processor", "--app", APP, "--metrics-port", str(port)], settings, log)
    worker = spawn(["worker", "--app", APP, "--queues", "default"], settings, tmp_path / "worker.log")
    processes += [processor, worker]

    await wait_until(lambda: _has_ticks(settings, "fine", 3), 90, "three ticks of the other schedule")
    job_id = await app.enqueue("add", {"a": 2, "b": 3})
    assert (await app.wait(job_id, timeout=60)).result == {"sum": 5}
    assert processor.poll() is None, log.read_text()[-3000:]
    samples = await scrape_when_up(port, processor, log)
    assert total(samples, "eventjobs_schedules_set_aside", reason=SET_ASIDE_UNCOMPUTABLE) == len(bad)
    assert "it is set aside until its definition changes" in log.read_text()

    listed = {s.schedule_id: s for s in await app.schedules()}
    assert sorted(listed) == sorted([*bad, "fine"])
    assert all(listed[b].next_tick is None and "can be computed" in (listed[b].set_aside or "") for b in bad)
    assert listed["fine"].set_aside is None and listed["fine"].next_tick is not None
    shown = await asyncio.to_thread(run_cli, "schedules", "list", "--json", settings=settings)
    assert shown.returncode == 0, shown.stderr
    assert sorted(row["schedule_id"] for row in json.loads(shown.stdout) if row["set_aside"]) == bad
    table = await asyncio.to_thread(run_cli, "schedules", "list", settings=settings)
    assert table.returncode == 0 and table.stdout.count("set aside") >= len(bad), table.stdout


async def test_the_schedules_projection_sets_aside_a_schedule_whose_ticks_cannot_be_computed(
        app: App, clickhouse: Any) -> None:
    from eventjobs.clickhouse import ChdbBackend, ServerBackend
    from eventjobs.readside.migrations import apply_migrations, default_projections_dir
    from eventjobs.readside.schedules import SchedulesProjection

    settings = app.settings
    await app.schedule("add", {"a": 1, "b": 1}, every="1h", schedule_id="hourly")
    bad = await _write_uncomputable_schedules(settings, app.clock.now())
    backend = (ChdbBackend(clickhouse.path, settings.namespace, role="pytest") if clickhouse.kind == "chdb"
               else ServerBackend(clickhouse.url, settings.namespace))
    stop = asyncio.Event()
    try:
        await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
        projection = SchedulesProjection(backend, settings)
        running = asyncio.create_task(projection.run(stop))

        async def rows() -> list[dict[str, Any]]:
            result = await asyncio.to_thread(backend.query, "SELECT schedule_id, next_tick FROM schedules FINAL "
                                             "ORDER BY schedule_id")
            return result.dicts()

        async def projected() -> bool:
            assert not running.done(), running.exception()
            return len(await rows()) == len(bad) + 1

        await wait_until(projected, 30, "the schedules rows")
        assert {r["schedule_id"]: r["next_tick"] is None for r in await rows()} == {
            **{b: True for b in bad}, "hourly": False}
        assert sorted(projection.set_aside) == bad and projection.skipped_records == 0
        stop.set()
        await asyncio.wait_for(running, 10)
    finally:
        stop.set()
        backend.command(f"DROP DATABASE IF EXISTS `{settings.namespace}` SYNC", database="")
        backend.close()


async def test_concurrent_first_writes_to_the_schedules_topic_check_it_once(app: App, monkeypatch: Any) -> None:
    """The schedule service fires up to 200 ticks at once; each first write checked that the topic
    exists with its own admin connection, all on the loop at once (the longest stall left after a
    load of 100,000 schedules)."""
    import eventjobs.log.writer as writer_module
    from eventjobs.core.schedules import schedule_fired_event

    checks = 0
    check_topics = writer_module.ensure_single_topics

    async def counted(settings: Settings, keys: list[str]) -> list[str]:
        nonlocal checks
        checks += 1
        return await check_topics(settings, keys)

    monkeypatch.setattr(writer_module, "ensure_single_topics", counted)
    fresh = App(app.settings.namespace, settings=app.settings)
    now = fresh.clock.now()
    try:
        await asyncio.gather(*(fresh.writer.append_schedule_records([schedule_fired_event(f"s{n}", now, f"job-{n}", now=now,
                                                                                    actor="test")])
                               for n in range(50)))
    finally:
        await fresh.close()
    assert checks == 1
    fired = [r for r in await schedule_records(app.settings) if getattr(r, "type", None) == "fired"]
    assert sorted(r.schedule_id for r in fired) == sorted(f"s{n}" for n in range(50))
