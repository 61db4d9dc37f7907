"""How far the projector is behind, per partition: its Prometheus gauges (records behind, lag in
seconds), its report in `projector_lag` and the dashboard's reading of it, against a real broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import datetime, timedelta, timezone

import pytest
from prometheus_client import generate_latest

from eventjobs import metrics
from eventjobs.clickhouse import Backend
from eventjobs.kafka.admin import apply_topics
from eventjobs.metrics import Metrics
from eventjobs.readside import queries
from eventjobs.readside.control import Control
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import Projector, ProjectorOptions
from eventjobs.settings import Settings
from eventjobs.testing.simulation import generate_log
from tests.support.event_log import end_offsets, produce_events

pytestmark = pytest.mark.kafka

FAST = ProjectorOptions(batch_max_events=100, batch_max_wait_s=0.1, heartbeat_every_s=0.2, end_offsets_every_s=0.2)


async def until(check: Callable[[], bool], what: str, timeout_s: float = 60.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        assert time.monotonic() < deadline, f"not within {timeout_s:.0f} s: {what}"
        await asyncio.sleep(0.1)


class Gauges:
    """The projector's per-partition gauges, read as a scrape would."""

    def __init__(self, service: Metrics, partitions: list[int]) -> None:
        self.service = service
        self.partitions = partitions

    def behind(self, partition: int) -> float | None:
        return self.service.registry.get_sample_value(metrics.PROJECTOR_RECORDS_BEHIND, {"partition": str(partition)})

    def lag(self, partition: int) -> float | None:
        return self.service.registry.get_sample_value(metrics.PROJECTOR_LAG, {"partition": str(partition)})

    def total_behind(self) -> float:
        return sum(self.behind(p) or 0.0 for p in self.partitions)

    def max_lag(self) -> float:
        return max(self.lag(p) or 0.0 for p in self.partitions)

    def caught_up(self) -> bool:
        return all(self.behind(p) == 0 and self.lag(p) == 0 for p in self.partitions)


async def test_records_behind_and_lag_grow_while_the_projector_stalls_and_fall_to_zero_when_it_catches_up(
        backend: Backend, settings: Settings) -> None:
    # Given a log of 200 events and a live projector with metrics
    await apply_topics(settings)
    await produce_events(settings, generate_log(200, seed=3))
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
    before = await end_offsets(settings)
    partitions = sorted(before)
    service = Metrics()
    gauges = Gauges(service, partitions)
    stop = asyncio.Event()
    task = asyncio.create_task(Projector(backend, settings, options=FAST, metrics=service).run(stop))
    try:
        # When it has projected the log: nothing behind, no lag, one series per partition
        await until(gauges.caught_up, "every partition caught up")
        exposition = generate_latest(service.registry).decode()
        for partition in partitions:
            assert f'{metrics.PROJECTOR_RECORDS_BEHIND}{{partition="{partition}"}} 0.0' in exposition
            assert f'{metrics.PROJECTOR_LAG}{{partition="{partition}"}} 0.0' in exposition

        # When it stalls (paused, as for a projection swap) while the log grows
        control = Control(backend)
        await asyncio.to_thread(control.set, "pause_request", "stall-1")
        await until(lambda: control.read().get("paused", ("", None))[0] == "stall-1", "the projector paused")
        await produce_events(settings, generate_log(120, seed=4))
        grown = await end_offsets(settings)
        added = sum(grown.values()) - sum(before.values())
        # Then the records behind are the records it has not written, and the lag grows with time
        await until(lambda: gauges.total_behind() == added, f"{added} records behind")
        first = gauges.max_lag()
        await asyncio.sleep(1.0)
        assert gauges.max_lag() >= first + 0.9 > 0.9
        # and the dashboard reads the same from its report
        await until(lambda: sum(p.records_behind or 0 for p in queries.projector_lag(
            backend, None, datetime.now(timezone.utc)).partitions) == added, "the report of the stall")

        # When it resumes: everything is written, and every partition is back to 0
        await asyncio.to_thread(control.set, "resume", "stall-1")
        await until(gauges.caught_up, "every partition caught up after the stall")
        await until(lambda: all(p.caught_up and p.lag_s == 0 for p in queries.projector_lag(
            backend, grown, datetime.now(timezone.utc)).partitions), "the report of the catch-up")
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)

    # When the projector is stopped and the log grows: measured against the log's end now, the
    # report shows the new records behind, and a lag that grows with the time since
    await produce_events(settings, generate_log(60, seed=5))
    latest = await end_offsets(settings)
    now = datetime.now(timezone.utc)
    report = queries.projector_lag(backend, latest, now)
    assert [p.partition for p in report.partitions] == partitions
    assert sum(p.records_behind or 0 for p in report.partitions) == sum(latest.values()) - sum(grown.values())
    behind = [p for p in report.partitions if not p.caught_up]
    assert behind and all((p.lag_s or 0) > 0 for p in behind)
    later = {p.partition: p.lag_s for p in queries.projector_lag(backend, latest, now + timedelta(seconds=30)).partitions}
    assert all(later[p.partition] == pytest.approx((p.lag_s or 0) + 30) for p in behind)
    # (without Kafka's answer, the projector's last report: caught up)
    assert all(p.caught_up for p in queries.projector_lag(backend, None, now).partitions)


async def test_a_restarted_projector_counts_its_lag_from_the_last_record_it_projected(
        backend: Backend, settings: Settings) -> None:
    # Given a projector that projected a log and stopped
    await apply_topics(settings)
    await produce_events(settings, generate_log(100, seed=6))
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
    stop = asyncio.Event()
    first = Projector(backend, settings, options=FAST)
    task = asyncio.create_task(first.run(stop))
    partitions = sorted(await end_offsets(settings))
    await until(lambda: len(queries.projector_lag(backend, None, datetime.now(timezone.utc)).partitions) == len(partitions)
                and all(p.caught_up for p in queries.projector_lag(backend, None, datetime.now(timezone.utc)).partitions),
                "the first projector reported every partition caught up")
    stop.set()
    await asyncio.wait_for(task, 60)
    reported = {row.partition: row.last_projected_at for row in queries.reported_lag(backend)}

    # When another starts (and has not read anything yet)
    second = Projector(backend, settings, options=FAST)
    stop = asyncio.Event()
    task = asyncio.create_task(second.run(stop))
    try:
        await until(lambda: bool(second.lag.next_offsets), "the second projector resumed")
        # Then it knows when each partition was last current
        assert {p: at for p, at in second.lag.last_projected_at.items()} == {
            p: at for p, at in reported.items() if at is not None}
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
