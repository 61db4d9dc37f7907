"""The schedule service's decisions, driven by chosen times: no broker, no sleeping.

Records are folded with `apply_records` as the service folds what it reads; `settle` computes
when each schedule is due next; `take_due(now)` is the pure half of `run_once(now)`: what a pass
at `now` fires. So the tests show which schedules a pass fires, which it sets aside, and that
the work of many schedules leaves the event loop turns in between.
"""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from aiokafka.structs import ConsumerRecord

from eventjobs import metrics
from eventjobs.core.options import JobOptions
from eventjobs.core.schedules import (
    apply_schedule,
    define_schedule,
    encode_schedule_event,
    record_key,
    schedule_created_event,
    schedule_paused_event,
    schedule_updated_event,
)
from eventjobs.core.timer_index import TimerIndex
from eventjobs.metrics import Metrics
from eventjobs.runtime.schedules import SET_ASIDE_UNCOMPUTABLE, ScheduleService
from eventjobs.settings import Settings
from tests.support.schedule_records import UNCOMPUTABLE_RULES, stored_definition

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)


def service_owning(*partitions: int, **options: Any) -> ScheduleService:
    """A service that owns `partitions`, already loaded (as after its read reached their end)."""
    service = ScheduleService(Settings(kafka_bootstrap="127.0.0.1:1", namespace="clock", topics_dir=ROOT / "topics"),
                              **options)
    for partition in partitions:
        service.states[partition] = {}
        service.due[partition] = TimerIndex()
    return service


def as_records(pairs: list[tuple[bytes, bytes]], partition: int = 0) -> list[ConsumerRecord[bytes, bytes]]:
    return [ConsumerRecord("clock.schedules", partition, offset, 0, 0, key, value, None, len(key), len(value), [])
            for offset, (key, value) in enumerate(pairs)]


def created(schedule_id: str, **rule: Any) -> tuple[bytes, bytes]:
    definition = define_schedule("report", {}, JobOptions(), schedule_id=schedule_id, now=T0, **rule)
    event = schedule_created_event(definition, None, now=T0, actor="operator")
    return record_key(event).encode(), encode_schedule_event(event)


def due_at(service: ScheduleService, seconds: float) -> dict[str, list[datetime]]:
    return {definition.schedule_id: ticks for _, definition, ticks in service.take_due(T0 + timedelta(seconds=seconds))}


async def test_schedules_whose_ticks_cannot_be_computed_are_set_aside_and_the_others_fire() -> None:
    registry = Metrics()
    service = service_owning(0, metrics=registry)
    stored = [stored_definition(name, T0, job="report", **rule) for name, rule in UNCOMPUTABLE_RULES.items()]  # type: ignore[arg-type]
    await service.apply_records(0, as_records([created("fine", every="1s"), *stored, created("hourly", cron="0 * * * *")]))
    await service.settle()
    assert due_at(service, 2.5) == {"fine": [T0 + timedelta(seconds=1), T0 + timedelta(seconds=2)]}
    assert service.set_aside() == service.set_aside(SET_ASIDE_UNCOMPUTABLE) == len(UNCOMPUTABLE_RULES)
    assert registry.registry.get_sample_value(metrics.SCHEDULES_SET_ASIDE,
                                              {"reason": SET_ASIDE_UNCOMPUTABLE}) == len(UNCOMPUTABLE_RULES)
    assert service.bad.counts == {SET_ASIDE_UNCOMPUTABLE: len(UNCOMPUTABLE_RULES)}  # logged once, then counted
    assert due_at(service, 3600) == {"hourly": [T0 + timedelta(hours=1)]}  # "fine" was taken at 2.5 s (not fired)

    # a new definition of a set-aside schedule is tried again
    state = service.states[0]["february-30"]
    mended = schedule_updated_event(define_schedule("report", {}, JobOptions(), cron="0 0 28 2 *",
                                                    schedule_id="february-30", now=T0), state,
                                    now=T0 + timedelta(seconds=1), actor="operator")
    await service.apply_records(0, as_records([(record_key(mended).encode(), encode_schedule_event(mended))]))
    await service.settle()
    assert service.set_aside() == len(UNCOMPUTABLE_RULES) - 1
    assert registry.registry.get_sample_value(metrics.SCHEDULES_SET_ASIDE,
                                              {"reason": SET_ASIDE_UNCOMPUTABLE}) == len(UNCOMPUTABLE_RULES) - 1
    assert due_at(service, 366 * 86400)["february-30"] == [datetime(2027, 2, 28, tzinfo=timezone.utc)]


async def test_a_pass_takes_only_the_due_schedules_and_a_pause_takes_one_out_at_once() -> None:
    service = service_owning(0, 1)
    await service.apply_records(0, as_records([created(f"m{m}", cron=f"{m} * * * *") for m in range(60)]))
    await service.apply_records(1, as_records([created("often", every="10s")], partition=1))
    await service.settle()
    assert due_at(service, 0) == {}
    assert due_at(service, 59) == {"often": [T0 + timedelta(seconds=s) for s in (10, 20, 30, 40, 50)]}
    assert due_at(service, 60) == {"m1": [T0 + timedelta(minutes=1)]}  # "often" was taken at 59 s, not yet fired
    paused = schedule_paused_event(service.states[0]["m2"], now=T0 + timedelta(seconds=61), actor="operator")
    await service.apply_records(0, as_records([(record_key(paused).encode(), encode_schedule_event(paused))]))
    assert due_at(service, 180) == {"m3": [T0 + timedelta(minutes=3)]}  # m2 is paused: out of the index already
    await service.settle()
    assert "m2" not in due_at(service, 3 * 3600)


async def test_computing_the_next_ticks_of_many_schedules_leaves_the_loop_turns() -> None:
    """After a load, every schedule's next tick is computed (tens of µs each for a cron): in
    slices, so that the lifecycle processor on the same loop keeps running. This counts the turns
    a probe task gets while the passes compute; it does not time them."""
    service = service_owning(0)
    daily = [define_schedule("report", {}, JobOptions(), cron=f"{n % 60} {n % 24} * * *", now=T0) for n in range(120)]
    for n in range(3000):  # as if the partition had just been read to its end
        since = T0 + timedelta(seconds=n)  # each its own next-tick computation (no two ask the same)
        definition = daily[n % 120].model_copy(update={"schedule_id": f"s{n}", "since": since})
        state = apply_schedule(None, schedule_created_event(definition, None, now=T0, actor="operator"))
        service.states[0][state.schedule_id] = state
    turns = 0
    done = asyncio.Event()

    async def probe() -> None:
        nonlocal turns
        while not done.is_set():
            await asyncio.sleep(0.001)
            turns += 1

    probing = asyncio.create_task(probe())
    await asyncio.sleep(0)
    service._unsettled.append((0, iter(list(service.states[0]))))  # what `_check_loaded` queues
    passes = 0
    while True:
        await service.run_once(T0)
        passes += 1
        if service.wait_ms(T0) > 0:
            break
    done.set()
    await probing
    assert turns >= 5, f"{turns} probe turns in {passes} passes"
    assert len(service.due[0]) == 3000
