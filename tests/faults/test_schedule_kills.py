"""A 1-second schedule fires for 20 s across two processor processes while the one firing it is
SIGKILLed and started again: the event log holds one job per tick, no tick missing, none twice."""

from __future__ import annotations

import asyncio
import os
import signal
from datetime import timedelta
from pathlib import Path
from subprocess import Popen

from eventjobs import App
from eventjobs.core.schedules import ScheduleFiredEvent
from tests.e2e.conftest import job_events, spawn
from tests.e2e.test_schedules import schedule_records, schedule_ticks, wait_until

APP = "tests.support.jobs_app:app"


async def _firing_pid(app: App, schedule_id: str) -> int | None:
    """The pid of the processor whose schedule service wrote the schedule's latest `fired` record."""
    fired = [r for r in await schedule_records(app.settings) if isinstance(r, ScheduleFiredEvent)
             and r.schedule_id == schedule_id]
    return int(max(fired, key=lambda r: r.tick).actor.rsplit(":", 1)[1]) if fired else None


async def test_one_job_per_tick_with_the_firing_processor_killed(app: App, tmp_path: Path,
                                                                 processes: list[Popen[bytes]]) -> None:
    settings = app.settings
    first = spawn(["processor", "--app", APP], settings, tmp_path / "p1.log")
    second = spawn(["processor", "--app", APP], settings, tmp_path / "p2.log")
    processes += [first, second]
    schedule_id = await app.schedule("add", {"a": 1, "b": 1}, every="1s", schedule_id="every-second")

    async def fired_once() -> bool:
        return await _firing_pid(app, schedule_id) is not None

    await wait_until(fired_once, 60, "the first tick")
    started = asyncio.get_running_loop().time()
    await asyncio.sleep(6)
    owner = await _firing_pid(app, schedule_id)
    victim = {first.pid: first, second.pid: second}[owner]  # type: ignore[index]
    os.kill(victim.pid, signal.SIGKILL)  # mid-schedule: a tick may be enqueued but not yet recorded
    victim.wait(timeout=10)
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p3.log"))
    await asyncio.sleep(max(0.0, 20 - (asyncio.get_running_loop().time() - started)))
    assert await _firing_pid(app, schedule_id) not in (None, victim.pid), "another processor took the schedule over"
    await app.unschedule(schedule_id)
    stop_tick = app.clock.now()

    async def caught_up() -> bool:  # the survivor (or the restarted one) fired every tick up to the deletion
        ticks = schedule_ticks(await job_events(settings), schedule_id)
        return bool(ticks) and max(ticks) >= stop_tick - timedelta(seconds=1)

    await wait_until(caught_up, 60, "the ticks missed while the owner was dead")
    await asyncio.sleep(1.0)
    events = await job_events(settings)
    ticks = schedule_ticks(events, schedule_id)
    ordered = sorted(ticks)
    assert ordered[-1] - ordered[0] >= timedelta(seconds=18), ordered
    gaps = [(a, b) for a, b in zip(ordered, ordered[1:]) if b - a != timedelta(seconds=1)]
    assert gaps == [], f"ticks missing between {gaps}"
    assert all(len(job_ids) == 1 for job_ids in ticks.values()), "a tick enqueued two different jobs"
    # a tick enqueued twice (killed between its enqueue and its fired record) is refused by the processor
    enqueues: dict[str, int] = {}
    for event in events:
        if event.type == "enqueued" and event.actor == f"schedule:{schedule_id}":
            enqueues[event.job_id] = enqueues.get(event.job_id, 0) + 1
    rejected = {e.job_id: 0 for e in events if e.type == "duplicate_rejected"}
    for event in events:
        if event.type == "duplicate_rejected":
            rejected[event.job_id] += 1
    for job_id, count in enqueues.items():
        assert rejected.get(job_id, 0) == count - 1, f"job {job_id} enqueued {count} times, refused {rejected.get(job_id, 0)}"
    fired_late = [r for r in await schedule_records(settings)
                  if isinstance(r, ScheduleFiredEvent) and r.occurred_at - r.tick > timedelta(seconds=2)]
    print(f"{len(ordered)} ticks; {sum(enqueues.values()) - len(enqueues)} enqueued twice; "
          f"{len(fired_late)} fired over 2 s late (caught up after the kill)")
    survivor = second if victim is first else first
    assert survivor.poll() is None, (tmp_path / "p1.log").read_text()[-2000:]
