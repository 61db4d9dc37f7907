"""The projector on the real broker, with both backends: ClickHouse ends equal to the fold of the log."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import pytest

from eventjobs.clickhouse import Backend
from eventjobs.core.events import DERIVED_TYPES, JobEvent
from eventjobs.core.fold import apply, fold, replay
from eventjobs.core.ids import job_id_for_key
from eventjobs.core.options import JobOptions
from eventjobs.testing.simulation import generate_log
from eventjobs.core.state import JobStatus
from eventjobs.readside.migrations import apply_migrations, default_projections_dir, view_definitions
from eventjobs.readside.projector import Projector, ProjectorOptions
from eventjobs.readside.store import VIEWS_OF_JOB_EVENTS
from eventjobs.settings import Settings
from eventjobs.kafka.admin import apply_topics
from tests.support.event_log import end_offsets, produce_events

pytestmark = pytest.mark.kafka
ROOT = Path(__file__).resolve().parents[2]
METRICS = {"enqueued": "enqueued", "attempt_started": "started", "completed": "completed", "failed": "failed",
           "retry_scheduled": "retried", "dead_lettered": "dead_lettered", "cancelled": "cancelled"}


def mixed_log(n_events: int, seed: int) -> list[JobEvent]:
    """A simulated log (success, retries, dead letters, cancels, operator actions) plus redeliveries."""
    log = generate_log(n_events, seed=seed)
    rng = random.Random(seed)
    redelivered = [log[rng.randrange(len(log))] for _ in range(max(1, n_events // 50))]
    return log + redelivered


def expected_counts(log: list[JobEvent]) -> Counter[str]:
    """Metric counts the fold implies: accepted events, plus the first echo of each derived event."""
    seen: set[str] = set()
    counts: Counter[str] = Counter()
    for event, decision in replay(log):
        first = event.event_id not in seen
        seen.add(event.event_id)
        if decision.accepted or (decision.duplicate and event.type in DERIVED_TYPES and first):
            if event.type in METRICS:
                counts[METRICS[event.type]] += 1
    return counts


def metric_counts(backend: Backend) -> Counter[str]:
    columns = sorted(set(METRICS.values()))
    row = backend.query(f"SELECT {', '.join(f'countIfMerge({c})' for c in columns)} FROM job_metrics_1m").rows[0]
    return Counter({c: v for c, v in zip(columns, row) if v})


def assert_projection_matches(backend: Backend, log: list[JobEvent], records: int, *, exact_metrics: bool = True) -> None:
    """`jobs`, `job_events`, `dead_letters` and the metric counts equal the fold of `log`; with
    `exact_metrics=False` the metrics may fall short (never over) of it (see test_clickhouse_outage)."""
    states = fold(log)
    rows = backend.query("SELECT job_id, status, attempt, attempts_started, state_json FROM jobs FINAL").rows
    assert {r[0]: (r[1], r[2], r[3]) for r in rows} == {
        j: (s.status.value, s.attempt, s.attempts_started) for j, s in states.items()}
    assert backend.query("SELECT count(), uniqExact(log_partition, log_offset) FROM job_events").rows == [
        (records, records)]
    counts, expected = metric_counts(backend), expected_counts(log)
    if exact_metrics:
        assert counts == expected
    else:
        assert all(counts[kind] <= expected[kind] for kind in counts | expected), (counts, expected)
    dead = {r[0] for r in backend.query("SELECT job_id FROM dead_letters FINAL").rows}
    assert dead == {j for j, s in states.items() if s.status is JobStatus.DEAD_LETTERED}


async def test_projection_equals_the_fold_of_a_mixed_log(backend: Backend, settings: Settings) -> None:
    # Given a mixed log on the real broker, with redeliveries, a duplicate enqueue and a malformed record
    await apply_topics(settings)
    log = mixed_log(4000, seed=7)
    enqueued = next(e for e in log if e.type == "enqueued")
    duplicate = enqueued.model_copy(update={"event_id": "01900000-0000-7000-8000-000000000001"})
    notice = apply(fold(log)[enqueued.job_id], duplicate).derived  # what the processor appends
    log += [duplicate, *notice]
    await produce_events(settings, log)
    await produce_events(settings, [b"{not json"], keys=[enqueued.job_id.encode()])
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
    # When the projector runs up to the end of the log, in small batches
    ends = await end_offsets(settings)
    projector = Projector(backend, settings, control=False, stop_at=ends,
                          options=ProjectorOptions(batch_max_events=700, batch_max_wait_s=0.2))
    await asyncio.wait_for(projector.run(asyncio.Event()), 120)
    # Then jobs, dead letters and metric counts equal the fold of the log
    assert_projection_matches(backend, log, len(log) + 1)
    outcomes = dict(backend.query("SELECT outcome, count() FROM job_events GROUP BY outcome").rows)
    assert outcomes["malformed"] == 1 and outcomes["duplicate"] >= 1 and outcomes["rejected"] >= 1
    assert backend.query("SELECT countIfMerge(duplicates_rejected) FROM job_metrics_1m").scalar() == 1


def _start_projector(settings: Settings, state_dir: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "EVENTJOBS_STATE_DIR": str(state_dir), "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
           "EVENTJOBS_NAMESPACE": settings.namespace, "EVENTJOBS_TOPICS_DIR": str(settings.topics_dir)}
    env.pop("EVENTJOBS_CLICKHOUSE_URL", None)
    return subprocess.Popen([sys.executable, "-m", "eventjobs.cli", "project", "--batch-size", "1500",
                             "--batch-wait", "0.05"], cwd=ROOT, env=env, stderr=subprocess.DEVNULL)


def _read_side(settings: Settings, timeout_s: float = 60) -> Backend:
    """The running projector's read API (the test process cannot open a second chdb directory)."""
    from tests.readside.tables import read_api

    return read_api(settings, timeout_s)


async def test_projector_killed_mid_batch_leaves_no_gap_and_no_double_count(settings: Settings,
                                                                              tmp_path: Path) -> None:
    # Given a log being produced while a projector (chdb, its own process) is SIGKILLed three times
    await apply_topics(settings)
    state_dir = tmp_path / "state"
    settings = settings.model_copy(update={"state_dir": state_dir})
    log = mixed_log(12000, seed=11)
    chunks = [log[i:i + 3000] for i in range(0, len(log), 3000)]
    process = _start_projector(settings, state_dir)
    try:
        for chunk in chunks:
            await produce_events(settings, chunk)
            _read_side(settings).close()  # the projector is up and serving
            await asyncio.sleep(random.uniform(0.1, 0.6))  # somewhere inside a batch
            process.send_signal(signal.SIGKILL)
            process.wait()
            process = _start_projector(settings, state_dir)
        # When the last projector catches up
        backend = _read_side(settings)
        try:
            deadline = time.monotonic() + 90
            while backend.query("SELECT count() FROM job_events").scalar() < len(log):
                assert time.monotonic() < deadline, "projector did not catch up"
                await asyncio.sleep(0.3)
            await asyncio.sleep(1.0)  # a late duplicate write would show up now
            # Then every record is there exactly once, and states and counts equal the fold (a kill
            # between the INSERT's `job_events` part and its views' parts is repaired at the next start)
            assert_projection_matches(backend, log, len(log))
        finally:
            backend.close()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _reused_key_log() -> tuple[str, str, list[JobEvent], list[JobEvent]]:
    """Two jobs whose ids come back after the processor forgot them, as the processor writes them.

    Job A completes, is forgotten (its `finished` retention passed), is enqueued again with the
    same idempotency key and completes again. Job B is dead-lettered, discarded by its dead-letter
    retention, forgotten, and enqueued again. Returns (id of A, id of B, the log up to and
    including both forgets, the rest), derived events echoed as the processor does.
    """
    from tests.core.builders import JobLog, Run, reach

    ids = (job_id_for_key("send_email", "order-42"), job_id_for_key("send_email", "order-43"))
    options = [JobOptions(max_attempts=1, idempotency_key=key) for key in ("order-42", "order-43")]
    first: list[JobEvent] = []
    rest: list[JobEvent] = []
    for job_id, opts, status in zip(ids, options, (JobStatus.COMPLETED, JobStatus.DEAD_LETTERED)):
        log, run = JobLog(job_id), Run()
        reach(status, log=log, run=run, options=opts)
        if status is JobStatus.DEAD_LETTERED:
            log.tick(86_400)
            run.apply(log.retention_passed(0, "dead_letter"))
        log.tick(3600)
        run.apply(log.retention_passed(0, "finished"))
        assert run.state is None
        first += run.log
        done = len(run.log)
        log.tick(120)
        reach(JobStatus.COMPLETED, log=log, run=run, options=opts)
        rest += run.log[done:]
    return ids[0], ids[1], first, rest


def _job(backend: Backend, job_id: str) -> tuple[str, int, int, str]:
    return backend.query("SELECT status, forgotten, attempts_started, toString(enqueued_at) FROM jobs FINAL "
                         "WHERE job_id = {id:String}", {"id": job_id}).rows[0]


async def test_a_forgotten_job_id_reused_gives_two_histories_and_survives_a_restart(backend: Backend,
                                                                                    settings: Settings) -> None:
    from eventjobs.clickhouse import quote_identifier
    from eventjobs.readside.queries import job_history
    from eventjobs.readside.replay import replay_projections
    from tests.readside.tables import assert_same_projections

    # Given jobs that complete (or are discarded by their dead-letter retention), are forgotten by
    # their `finished` retention, and are enqueued again with the same idempotency key
    await apply_topics(settings)
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
    a, b, first, rest = _reused_key_log()
    await produce_events(settings, first)
    options = ProjectorOptions(batch_max_events=4, batch_max_wait_s=0.2)

    # When a projector projects up to the forgets and stops
    projector = Projector(backend, settings, control=False, stop_at=await end_offsets(settings), options=options)
    await asyncio.wait_for(projector.run(asyncio.Event()), 120)
    # Then the `jobs` rows keep the final states, marked forgotten, and B left the dead-letter queue
    assert _job(backend, a)[:3] == ("completed", 1, 1)
    assert _job(backend, b)[:3] == ("discarded", 1, 1)
    assert backend.query("SELECT count() FROM dead_letters FINAL").scalar() == 0

    # When the jobs are enqueued again and a new projector (resuming from ClickHouse) goes on
    await asyncio.sleep(1.0)
    since = datetime.now(timezone.utc)  # for `replay --since` below: from the new jobs on
    await asyncio.sleep(0.2)
    await produce_events(settings, rest)
    projector = Projector(backend, settings, control=False, stop_at=await end_offsets(settings), options=options)
    await asyncio.wait_for(projector.run(asyncio.Event()), 120)
    log = first + rest
    # Then each id has a new job (not a duplicate refused), with both histories in job_events
    for job_id in (a, b):
        status, forgotten, attempts, enqueued_at = _job(backend, job_id)
        second_enqueue = [e for e in rest if e.job_id == job_id and e.type == "enqueued"][0]
        assert (status, forgotten, attempts) == ("completed", 0, 1)
        assert enqueued_at.startswith(second_enqueue.occurred_at.strftime("%Y-%m-%d %H:%M:%S"))
        history = await asyncio.to_thread(job_history, backend, job_id)
        assert [e.type for e in history] == [e.type for e in log if e.job_id == job_id]
        assert [e.outcome for e in history if e.type == "enqueued"] == ["applied", "applied"]
        assert [(e.outcome, e.status_after) for e in history if e.type == "retention_passed"][-1] == ("forgotten", "")
        assert "duplicate_rejected" not in [e.type for e in history]
        restart = next(i for i, e in enumerate(history) if e.since_enqueued_s == 0 and i > 0)
        assert history[restart].type == "enqueued"  # time since enqueue counts from the new job's enqueue
    retention = dict(backend.query("SELECT outcome, counted FROM job_events WHERE type = 'retention_passed' "
                                   "AND job_id = {id:String} ORDER BY log_offset", {"id": b}).rows)
    assert retention == {"applied": 1, "forgotten": 0}  # the dead-letter discard counts, the forget does not
    # metrics: two enqueued, started and completed per job name; the forgets add no metric row
    assert metric_counts(backend) == expected_counts(log) == Counter(
        enqueued=4, started=4, completed=3, failed=1, dead_lettered=1)
    forget_minutes = backend.query(
        "SELECT count() FROM job_metrics_1m WHERE minute IN (SELECT toStartOfMinute(occurred_at) FROM job_events "
        "WHERE outcome = 'forgotten')").scalar()
    assert forget_minutes == 0

    # And one projector over the whole log, without the restart, builds the very same tables
    whole = f"{settings.namespace}_whole"
    try:
        await asyncio.to_thread(apply_migrations, backend, default_projections_dir(), whole)
        projector = Projector(backend, settings, database=whole, control=False,
                              stop_at=await end_offsets(settings), options=options)
        await asyncio.wait_for(projector.run(asyncio.Event()), 120)
        counts = await asyncio.to_thread(assert_same_projections, backend, whole, settings.namespace)
        assert counts["jobs"] == 2 and counts["job_events"] == len(log)
    finally:
        backend.command(f"DROP DATABASE IF EXISTS {quote_identifier(whole)} SYNC", database="")

    # And `replay --since` the re-enqueues (the forgotten jobs folded again from job_events) too
    report = await replay_projections(settings, backend, since=since, keep_old=True, options=options)
    assert report.kept_old_in is not None and report.events == len(rest)
    try:
        await asyncio.to_thread(assert_same_projections, backend, report.kept_old_in, settings.namespace)
    finally:
        backend.command(f"DROP DATABASE IF EXISTS {quote_identifier(report.kept_old_in)} SYNC", database="")


async def test_a_batch_torn_between_job_events_and_its_views_is_rebuilt_at_start(backend: Backend,
                                                                                  settings: Settings) -> None:
    # Given a projection of a mixed log whose metric rows are gone and whose progress says no state
    # row was written (as after a kill between the job_events INSERT and its views' parts)
    await apply_topics(settings)
    log = mixed_log(3000, seed=5)
    await produce_events(settings, log)
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
    ends = await end_offsets(settings)
    options = ProjectorOptions(batch_max_events=500, batch_max_wait_s=0.2)
    await asyncio.wait_for(Projector(backend, settings, control=False, stop_at=ends, options=options)
                           .run(asyncio.Event()), 120)
    expected = expected_counts(log)
    assert metric_counts(backend) == expected
    backend.command("TRUNCATE TABLE job_metrics_1m")
    backend.command("ALTER TABLE projector_progress DELETE WHERE 1 SETTINGS mutations_sync = 2")
    assert metric_counts(backend) != expected
    # When a projector starts again
    await asyncio.wait_for(Projector(backend, settings, control=False, stop_at=ends, options=options)
                           .run(asyncio.Event()), 120)
    # Then the metrics are rebuilt from job_events, the states folded again, nothing twice
    assert_projection_matches(backend, log, len(log))


def test_every_view_of_job_events_is_repaired(backend: Backend) -> None:
    """A view the repair does not know would stay torn after a kill mid-INSERT."""
    apply_migrations(backend, default_projections_dir())
    views = {row[0] for row in backend.query(
        "SELECT name FROM system.tables WHERE database = currentDatabase() AND engine = 'MaterializedView'").rows}
    assert views == set(VIEWS_OF_JOB_EVENTS)
    # and each is rebuilt by the SELECT its projection file creates it with
    definitions = view_definitions(default_projections_dir())
    assert {view: d.table for view, d in definitions.items()} == VIEWS_OF_JOB_EVENTS
    assert all("FROM job_events" in d.select and "GROUP BY minute" in d.select for d in definitions.values())
