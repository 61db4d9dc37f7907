"""History as of any moment (`eventjobs.readside.as_of`) against the core's fold, on both backends.

Random logs (the simulation's job lives and workflows, plus redeliveries, events for unknown ids,
forgotten jobs and ids enqueued again after they were forgotten) are written to the projection
tables through the projector's own write path (`BatchFolder` and `ProjectionStore`, in batches,
with a small job cache so jobs are loaded back from `jobs`). At random cut points, a log position
or a time, the as-of answers must equal folding each job's log prefix with the core's `apply`.
"""

from __future__ import annotations

import random
import re
from collections import Counter, defaultdict
from dataclasses import dataclass
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka.structs import ConsumerRecord
from hypothesis import HealthCheck, given, settings, strategies as st
from starlette.testclient import TestClient

from eventjobs import App
from eventjobs.clickhouse import Backend, ServerBackend, quote_identifier
from eventjobs.clickhouse.http_api import ReadApi
from eventjobs.core.codec import encode
from eventjobs.core.events import HeartbeatEvent, JobEvent, RetentionPassedEvent
from eventjobs.core.fold import apply
from eventjobs.core.state import JobState, JobStatus
from eventjobs.kafka.clients import job_partition
from eventjobs.readside import queries
from eventjobs.readside.as_of import (
    AsOf,
    AsOfError,
    list_jobs_as_of,
    parse_as_of,
    show_job_as_of,
    stats_as_of,
    status_counts_as_of,
)
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import BatchFolder, JobCache
from eventjobs.readside.store import ProjectionStore
from eventjobs.settings import Settings
from eventjobs.web.app import create_app
from eventjobs.web.reads import ReadSide
from eventjobs.testing.simulation import SimulationProfile, generate_log, sim_id, workflow_log
from tests.readside.conftest import open_test_backend

PARTITIONS = 3
TABLES = ("job_events", "jobs", "dead_letters", "job_metrics_1m", "projector_progress")
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


@dataclass(frozen=True)
class Written:
    """A log as written: each event with its (partition, offset) and its `occurred_at` as stored (ms)."""

    events: list[tuple[int, int, JobEvent]]
    stored_at: dict[tuple[int, int], datetime]


def random_log(seed: int) -> list[JobEvent]:
    """Job lives and a workflow interleaved, children, redeliveries, unknown ids, forgotten and re-enqueued jobs."""
    rng = random.Random(seed)
    claim_start = (0.0, 0.5, 1.0)[seed % 3]  # claims that are also the start: none, some, all
    lives = generate_log(rng.randint(60, 260), seed=seed, concurrency=rng.randint(3, 20),
                         profile=SimulationProfile(claim_start=claim_start))
    flow = workflow_log(random.Random(seed + 1), jobs=rng.randint(2, 5))
    log: list[JobEvent] = []
    i = j = 0
    while i < len(lives) or j < len(flow):  # interleaved, each list keeping its order
        if j >= len(flow) or (i < len(lives) and rng.random() < len(lives) / (len(lives) + len(flow))):
            log.append(lives[i])
            i += 1
        else:
            log.append(flow[j])
            j += 1
    enqueued: list[str] = []
    for index, event in enumerate(log):  # some jobs enqueued by a job enqueued before them: its children
        if event.type == "enqueued":
            if enqueued and rng.random() < 0.3:
                log[index] = event.model_copy(update={"parent_job_id": rng.choice(enqueued[-20:])})
            enqueued.append(event.job_id)
    states: dict[str, JobState] = {}
    for event in log:
        decision = apply(states.get(event.job_id), event)
        if decision.state is not None:
            states[event.job_id] = decision.state
    last_at = max(event.occurred_at for event in log)
    finished = [s for s in states.values() if s.status in (JobStatus.COMPLETED, JobStatus.CANCELLED)]
    for state in rng.sample(finished, min(len(finished), rng.randint(0, 4))):
        last_at += timedelta(seconds=rng.randint(1, 60))
        log.append(RetentionPassedEvent(event_id=sim_id(rng, last_at), job_id=state.job_id, occurred_at=last_at,
                                        actor="timer:0", attempt=state.attempt, scope="finished", due_at=last_at))
        if rng.random() < 0.5:  # the same id (same idempotency key) enqueued again: a new job
            first = next(e for e in log if e.job_id == state.job_id and e.type == "enqueued")
            last_at += timedelta(seconds=1)
            log.append(first.model_copy(update={"event_id": sim_id(rng, last_at), "occurred_at": last_at}))
    for _ in range(rng.randint(0, 5)):  # redeliveries
        log.append(log[rng.randrange(len(log))])
    last_at += timedelta(seconds=1)
    log.append(HeartbeatEvent(event_id=sim_id(rng, last_at), job_id=sim_id(rng, last_at), occurred_at=last_at,
                              actor="worker:ghost", attempt=0,
                              lease_deadline=last_at + timedelta(seconds=30)))  # no such job: unknown_job
    return log


def write_log(backend: Backend, log: list[JobEvent], rng: random.Random, *, torn: bool = False) -> Written:
    """Partition and number the log as Kafka would, and project it through the projector's write path;
    `torn`: the last batch's event rows are written and its `jobs` rows not (a projector stopped
    between the two writes, or a read between them)."""
    next_offset = [0] * PARTITIONS
    records: list[ConsumerRecord[bytes, bytes]] = []
    placed: list[tuple[int, int, JobEvent]] = []
    for event in log:
        partition = job_partition(event.job_id, PARTITIONS)
        offset = next_offset[partition]
        next_offset[partition] += 1
        value = encode(event)
        records.append(ConsumerRecord(topic="events", partition=partition, offset=offset, timestamp=0,
                                      timestamp_type=0, key=event.job_id.encode(), value=value, checksum=None,
                                      serialized_key_size=0, serialized_value_size=len(value), headers=()))
        placed.append((partition, offset, event))
    store = ProjectionStore(backend)
    folder = BatchFolder(store, JobCache(max_jobs=rng.randint(2, 40)), max_event_bytes=1_000_000)
    folder.cache.reset(complete=True)
    start = 0
    while start < len(records):
        end = start + rng.randint(1, 120)
        batch = folder.fold(records[start:end], store.positions().events_done)
        batch.states_written = torn and end >= len(records)
        store.write(batch)
        folder.cache.trim()
        start = end
    stored = {(p, o): at for p, o, at in backend.query(
        "SELECT log_partition, log_offset, occurred_at FROM job_events").rows}
    return Written(placed, stored)


def expected_jobs(written: Written, as_of: AsOf) -> dict[str, tuple[JobState, bool]]:
    """Each job's (state, forgotten) after folding its prefix as of the moment with the core's `apply`."""
    by_job: dict[str, list[tuple[int, int, JobEvent]]] = defaultdict(list)
    for placed in written.events:
        by_job[placed[2].job_id].append(placed)
    result: dict[str, tuple[JobState, bool]] = {}
    for job_id, events in by_job.items():
        if as_of.at is not None:
            inside = [i for i, (p, o, _) in enumerate(events) if written.stored_at[(p, o)] <= as_of.at]
        else:
            inside = [i for i, (p, o, _) in enumerate(events) if o <= as_of.offsets.get(p, -1)]
        if not inside:
            continue
        state: JobState | None = None
        last: JobState | None = None
        forgotten = False
        for _, _, event in events[:inside[-1] + 1]:
            decision = apply(state, event)
            if decision.state is not None:
                state = last = decision.state
                forgotten = False
            elif state is not None and decision.accepted:  # its retention passed: forgotten
                state, forgotten = None, True
        if last is not None:
            result[job_id] = (last, forgotten)
    return result


def summary_of(state: JobState, forgotten: bool) -> queries.JobSummary:
    return queries.JobSummary(job_id=state.job_id, queue=state.queue, name=state.name, status=state.status.value,
                              attempt=state.attempt, attempts_started=state.attempts_started,
                              enqueued_at=state.enqueued_at, updated_at=state.updated_at,
                              finished_at=state.finished_at, forgotten=forgotten)


def ms(value: datetime | None) -> datetime | None:
    """A time as ClickHouse stores it in DateTime64(3) (the fold keeps microseconds)."""
    return value.replace(microsecond=value.microsecond // 1000 * 1000) if value is not None else None


def random_cuts(written: Written, rng: random.Random) -> list[AsOf]:
    times = sorted(written.stored_at.values())
    highest: dict[int, int] = {}
    for p, o, _ in written.events:
        highest[p] = max(highest.get(p, -1), o)
    cuts = [AsOf(at=times[0] - timedelta(milliseconds=1)), AsOf(at=times[-1]), AsOf(offsets=dict(highest))]
    for _ in range(6):
        if rng.random() < 0.5:
            at = rng.choice(times) + timedelta(milliseconds=rng.choice([-1, 0, 0, 1]))
            cuts.append(AsOf(at=at))
        else:
            named = rng.sample(sorted(highest), rng.randint(1, len(highest)))
            cuts.append(AsOf(offsets={p: rng.randint(0, highest[p]) for p in named}))
    return cuts


@pytest.fixture
def tables(backend: Backend) -> Backend:
    """The projection tables on each backend (the conformance `backend` fixture)."""
    apply_migrations(backend, default_projections_dir())
    return backend


@pytest.fixture
def chdb_tables(chdb_path: Path, namespace: str) -> Iterator[Backend]:
    """The projection tables on chdb only: the property test's many examples, on the engine in this process."""
    backend = open_test_backend("chdb", chdb_path, "", namespace)
    backend.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(namespace)}", database="")
    try:
        apply_migrations(backend, default_projections_dir())
        yield backend
    finally:
        backend.command(f"DROP DATABASE IF EXISTS {quote_identifier(namespace)} SYNC", database="")
        backend.close()


def _empty(backend: Backend) -> None:
    for table in TABLES:
        backend.command(f"TRUNCATE TABLE {table}")


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_as_of_equals_the_fold_of_the_log_prefix(chdb_tables: Backend, seed: int) -> None:
    tables = chdb_tables
    # Given a random log written through the projector's write path
    _empty(tables)
    rng = random.Random(seed)
    written = write_log(tables, random_log(seed), rng, torn=seed % 2 == 0)
    for as_of in random_cuts(written, rng):
        # When the read side is asked as of a position or a time
        expected = expected_jobs(written, as_of)
        listed = list_jobs_as_of(tables, as_of, limit=100_000)
        # Then every job that existed then is listed, as the fold of its prefix says, newest enqueue first
        assert {job.job_id: job for job in listed} == {
            job_id: summary_of(state, forgotten) for job_id, (state, forgotten) in expected.items()}, as_of
        newest_first = sorted(expected.values(), key=lambda pair: (-ms(pair[0].enqueued_at).timestamp(),  # type: ignore[union-attr]
                                                                    pair[0].job_id))
        assert [job.job_id for job in listed] == [state.job_id for state, _ in newest_first]
        # and the SQL status (filters, counts) is the fold's status
        wanted = Counter(state.status.value for state, _ in expected.values())
        for status in {*wanted, rng.choice(queries.STATUSES)}:
            ids = {job.job_id for job in list_jobs_as_of(tables, as_of, status=status, limit=100_000)}
            assert ids == {j for j, (s, _) in expected.items() if s.status.value == status}, (as_of, status)
        counts = status_counts_as_of(tables, as_of, by="queue")
        counted: Counter[str] = Counter()
        for row in counts:
            assert row.total == sum(row.by_status.values())
            counted.update({status: n for status, n in row.by_status.items() if n})
        assert counted == wanted, as_of
        # and the metrics count the counted rows inside the cut (for a time, the whole minutes
        # before it come from job_metrics_1m and only its own minute from job_events)
        cut, params = as_of.cut()
        rows = tables.query(
            "SELECT name, countIf(type = 'enqueued'), countIf(type = 'attempt_started'), countIf(type = 'completed'), "
            "countIf(type = 'dead_lettered'), countIf(type IN ('attempt_failed', 'attempt_timed_out', 'lease_expired')) "
            f"FROM job_events WHERE counted = 1 AND {cut} GROUP BY name", params).rows
        metrics = {row.group: (row.enqueued, row.started, row.completed, row.dead_lettered, row.failed_attempts)
                   for row in stats_as_of(tables, as_of)}
        assert metrics == {name: tuple(counts) for name, *counts in rows}, as_of
        # and one job shown in full reads as the fold's state
        for job_id in rng.sample(sorted(expected), min(3, len(expected))):
            state, forgotten = expected[job_id]
            detail = show_job_as_of(tables, job_id, as_of)
            assert (detail.status, detail.attempt, detail.attempts_started, detail.max_attempts, detail.forgotten,
                    detail.result, detail.error_type, detail.error_message, detail.reason, detail.worker_id,
                    detail.finished_at, detail.next_due_at, detail.snoozes) == (
                state.status.value, state.attempt, state.attempts_started, state.max_attempts, forgotten,
                state.result, state.last_error.error_type if state.last_error else "",
                state.last_error.message if state.last_error else "", state.reason or "", state.worker_id or "",
                state.finished_at, state.next_due_at, state.workflow.snoozes if state.workflow else 0)
        # and a parent's children are those of its jobs that existed then, oldest enqueue first
        parents = sorted({s.parent_job_id for s, _ in expected.values() if s.parent_job_id in expected})
        for parent in parents[:3]:
            children = sorted((s for s, _ in expected.values() if s.parent_job_id == parent),
                              key=lambda child: (ms(child.enqueued_at), child.job_id))
            assert show_job_as_of(tables, parent, as_of).children == [child.job_id for child in children], as_of


def test_a_moment_is_a_time_an_age_or_a_position() -> None:
    assert parse_as_of("2026-05-17T12:00:00Z", NOW) == AsOf(at=datetime(2026, 5, 17, 12, tzinfo=timezone.utc))
    assert parse_as_of("2026-05-17T14:00:00+02:00", NOW).at == datetime(2026, 5, 17, 12, tzinfo=timezone.utc)
    assert parse_as_of("2026-05-17 12:00", NOW).at == datetime(2026, 5, 17, 12, tzinfo=timezone.utc)  # UTC
    assert parse_as_of("2h", NOW).at == NOW - timedelta(hours=2)
    assert parse_as_of("offset:2:5000", NOW) == AsOf(offsets={2: 5000})
    assert parse_as_of("offset:0:120, 1:98", NOW) == AsOf(offsets={0: 120, 1: 98})
    assert parse_as_of(NOW.isoformat(), NOW).at == NOW


@pytest.mark.parametrize(("text", "message"), [
    ("yesterday", "is not a moment: give an ISO-8601 time"),
    ("2026-13-01", "is not a moment"),
    ("2026-06-01T12:00:01Z", "is in the future (2026-06-01 12:00:01 UTC; now is 2026-06-01 12:00:00 UTC)"),
    ("offset:1", "'1' is not PARTITION:OFFSET"),
    ("offset:0:5,0:6", "names partition 0 twice"),
    ("offset:0:-1", "is not PARTITION:OFFSET"),
    ("offset:70000:1", "out of range"),
])
def test_a_moment_that_cannot_be_used_is_refused_saying_what_is_allowed(text: str, message: str) -> None:
    with pytest.raises(AsOfError, match=re.escape(message)):
        parse_as_of(text, NOW)


def test_as_of_the_end_equals_the_live_projection_and_bad_moments_are_clear_errors(tables: Backend) -> None:
    # Given a random log projected (on each backend)
    rng = random.Random(5)
    written = write_log(tables, random_log(5), rng)
    end = max(written.stored_at.values())
    highest = {p: o for p, o in tables.query("SELECT log_partition, max(log_offset) FROM job_events "
                                             "GROUP BY log_partition").rows}
    # Then as of the end of the log, jobs, one job and the stats read as the live tables do
    for as_of in (AsOf(at=end), AsOf(offsets=highest)):
        assert list_jobs_as_of(tables, as_of, limit=10_000) == queries.list_jobs(tables, limit=10_000)
        job_id = queries.list_jobs(tables, limit=1)[0].job_id
        assert show_job_as_of(tables, job_id, as_of) == queries.show_job(tables, job_id)
        for by in ("name", "queue"):
            assert stats_as_of(tables, as_of, by=by) == queries.job_stats(tables, by=by)
        live = Counter(job.status for job in queries.list_jobs(tables, limit=10_000))
        assert sum((Counter(c.by_status) for c in status_counts_as_of(tables, as_of)), Counter()) == live
    # And a job that did not exist yet, or a position not projected, is a clear error
    earliest = min(written.events, key=lambda placed: written.stored_at[placed[:2]])
    first = earliest[2]
    before = AsOf(at=written.stored_at[earliest[:2]] - timedelta(milliseconds=1))
    with pytest.raises(queries.JobNotFound, match=f"job '{first.job_id}' did not exist as of .* UTC: it first "
                                                  r"appears at .* UTC \(partition \d offset \d+\)"):
        show_job_as_of(tables, first.job_id, before)
    with pytest.raises(queries.JobNotFound, match="no job 'nope' in the read side"):
        show_job_as_of(tables, "nope", AsOf(at=end))
    partition, offset = sorted(highest.items())[0]
    with pytest.raises(AsOfError, match=f"partition {partition} offset {offset + 1} is past the newest projected "
                                        f"offset {offset}"):
        list_jobs_as_of(tables, AsOf(offsets={partition: offset + 1}))
    with pytest.raises(AsOfError, match=r"partition 9 has no projected events \(partitions with events: 0, 1, 2\)"):
        status_counts_as_of(tables, AsOf(offsets={9: 0}))
    assert list_jobs_as_of(tables, before) == []


class _Kept:
    """A backend the dashboard's `ReadSide` may close after each page without closing the test's."""

    def __init__(self, backend: Backend) -> None:
        self._backend = backend

    def __getattr__(self, name: str) -> Any:
        return getattr(self._backend, name)

    def close(self) -> None:
        pass


def test_the_dashboard_and_the_read_api_answer_as_of_a_moment(tables: Backend, chdb_path: Path) -> None:
    # Given a random log projected (on each backend)
    rng = random.Random(11)
    written = write_log(tables, random_log(11), rng)
    partition, offset = max(((p, o) for p, o, _ in written.events), key=lambda po: (po[1], po[0]))
    as_of = AsOf(offsets={partition: offset // 2})
    expected = expected_jobs(written, as_of)
    job_id, (state, _) = sorted(expected.items())[0]
    settings = Settings(kafka_bootstrap="127.0.0.1:1", namespace=tables.database)  # Kafka never reached
    reads = ReadSide(settings, opener=lambda _: _Kept(tables))  # type: ignore[arg-type,return-value]
    with TestClient(create_app(settings, App(tables.database, settings=settings), reads=reads),
                    base_url="http://127.0.0.1") as client:
        # When the jobs page and a job page are asked as of a position
        listed = client.get(f"/jobs?as_of=offset:{partition}:{offset // 2}&status={state.status.value}")
        shown = client.get(f"/jobs/{job_id}?as_of=offset:{partition}:{offset // 2}")
        beyond = client.get(f"/jobs?as_of=offset:{partition}:{offset + 1}")
    # Then they show the jobs of that partition in the state each had then
    assert listed.status_code == 200 and f"as of log position partition {partition} offset {offset // 2}" in listed.text
    wanted = sorted(j for j, (s, _) in expected.items() if s.status is state.status)
    assert sorted(re.findall(r'<td class="id"><a href="/jobs/([^"?]+)\?as_of=', listed.text)) == wanted[:50]
    assert shown.status_code == 200 and f'id="job-status">{state.status.value}<' in shown.text
    assert 'action="/actions/' not in shown.text  # no action on a past state
    assert beyond.status_code == 400 and "is past the newest projected offset" in beyond.text
    # And through the projector's read API (every query on a readonly connection) the answers are the same
    if tables.kind == "chdb":
        api = ReadApi(tables, token="as-of-token")  # type: ignore[arg-type]
        api.start()
        reader = ServerBackend(api.url, tables.database, access_token="as-of-token")
        try:
            for moment in (as_of, AsOf(at=max(written.stored_at.values()) - timedelta(seconds=5))):
                assert list_jobs_as_of(reader, moment, limit=10_000) == list_jobs_as_of(tables, moment, limit=10_000)
                assert status_counts_as_of(reader, moment) == status_counts_as_of(tables, moment)
                assert stats_as_of(reader, moment) == stats_as_of(tables, moment)
            assert show_job_as_of(reader, job_id, as_of) == show_job_as_of(tables, job_id, as_of)
        finally:
            reader.close()
            api.stop()
