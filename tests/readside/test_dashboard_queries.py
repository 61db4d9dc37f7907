"""The dashboard's queries (per-minute series, queue depth, job filters with time range, args text
and pages) on both backends, against what the log itself says."""

from __future__ import annotations

import asyncio
from collections import Counter
from datetime import timedelta

import pytest

from eventjobs.clickhouse import Backend
from eventjobs.testing import commands
from eventjobs.core.events import JobEvent
from eventjobs.core.fold import apply, fold
from eventjobs.core.options import JobOptions
from eventjobs.kafka.admin import apply_topics
from eventjobs.readside import queries
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import Projector, ProjectorOptions
from eventjobs.settings import Settings
from tests.readside.fastlog import START, job_log, produce_fast
from tests.support.event_log import end_offsets

pytestmark = pytest.mark.kafka


def _open_jobs(at: timedelta) -> list[JobEvent]:
    """Jobs that stay open: pending ones of two priorities, and one claimed."""
    out: list[JobEvent] = []
    now = START + at
    for index, (queue, priority) in enumerate([("emails", "high"), ("emails", "high"), ("emails", "low"),
                                               ("reports", "normal")]):
        out.append(commands.enqueue("send_email", {"order": f"needle-{index}"},
                                    JobOptions(queue=queue, priority=priority), now=now, actor="api"))
    claimed = commands.enqueue("render_report", {"order": "claimed"}, JobOptions(queue="reports"), now=now,
                               actor="api")
    state = apply(None, claimed).state
    assert state is not None
    out += [claimed, commands.claim(state, worker_id="w1", now=now + timedelta(seconds=1), actor="w1")]
    return out


async def _project(backend: Backend, settings: Settings, log: list[JobEvent]) -> None:
    await apply_topics(settings)
    await produce_fast(settings, log)
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
    projector = Projector(backend, settings, control=False, stop_at=await end_offsets(settings),
                          options=ProjectorOptions(batch_max_events=500, batch_max_wait_s=0.2))
    await asyncio.wait_for(projector.run(asyncio.Event()), 120)


async def test_dashboard_queries_agree_with_the_log(backend: Backend, settings: Settings) -> None:
    log = job_log(600, seed=5)
    log += _open_jobs(log[-1].occurred_at - START + timedelta(seconds=5))
    await _project(backend, settings, log)

    # per-minute series: the counted events of each minute, straight from the log
    def per_minute(*types: str) -> Counter[int]:
        return Counter(int(e.occurred_at.timestamp()) // 60 * 60 for e in log if e.type in types)

    series = queries.minute_series(backend, since=START)
    assert series, "no minutes"
    got = {int(p.minute.timestamp()): p for p in series}
    assert {m: p.finished for m, p in got.items() if p.finished} == dict(per_minute("completed", "dead_lettered"))
    assert {m: p.enqueued for m, p in got.items() if p.enqueued} == dict(per_minute("enqueued"))
    failed, succeeded = per_minute("attempt_failed"), per_minute("attempt_succeeded")
    for minute, point in got.items():
        attempts = failed[minute] + succeeded[minute]
        assert point.failure_rate == (round(failed[minute] / attempts, 4) if attempts else None)
    later = queries.minute_series(backend, since=max(e.occurred_at for e in log) + timedelta(minutes=2))
    assert later == []

    # the overview's stats: by queue and by name in one read, as each grouping alone gives them
    for since in (None, START):
        by_queue, by_name = queries.job_stats_by_queue_and_name(backend, since=since)
        assert by_queue == queries.job_stats(backend, by="queue", since=since) and by_queue
        assert by_name == queries.job_stats(backend, by="name", since=since) and len(by_name) > 1
        assert sum(row.completed for row in by_queue) == sum(row.completed for row in by_name) > 0

    # queue depth: the open states of the fold, by queue and priority
    states = fold(log)
    expected: Counter[tuple[str, str, str]] = Counter(
        (s.queue, s.priority.value if hasattr(s.priority, "value") else str(s.priority), s.status.value)
        for s in states.values() if s.status.value in queries.OPEN_STATUSES)
    depth = queries.queue_depth(backend)
    got_depth = Counter({(d.queue, d.priority, status): getattr(d, status)
                         for d in depth for status in queries.OPEN_STATUSES if getattr(d, status)})
    assert got_depth == expected
    assert sum(d.total for d in depth) == 5

    # job filters: args text, enqueue time range, pages
    assert [j.job_id for j in queries.list_jobs(backend, args_contain="needle-2")] == \
        [s.job_id for s in states.values() if s.args.get("order") == "needle-2"]
    everything = queries.list_jobs(backend, limit=10_000)
    assert len(everything) == len(states)
    middle = sorted(s.enqueued_at for s in states.values())[len(states) // 2]
    before = queries.list_jobs(backend, until=middle, limit=10_000)
    assert {j.job_id for j in before} == {s.job_id for s in states.values() if s.enqueued_at < middle}
    assert queries.list_jobs(backend, limit=10, offset=10) == everything[10:20]
    with pytest.raises(queries.QueryArgumentError, match="offset must be 0 or more"):
        queries.list_jobs(backend, offset=-1)
