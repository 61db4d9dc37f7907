"""`eventjobs replay --projections`: rebuild the ClickHouse projections from the event log.

The log is projected by the same `Projector` (same fold, same row mapping) into a fresh database
`<db>__replay_<token>`, while the live tables keep answering queries. Then the live projector (if
one runs, found by its heartbeat) is asked to pause between two batches, the fresh tables catch
up with the log's end, and each table is swapped in with `EXCHANGE TABLES` (atomic per table; the
metric materialized view follows the table names, so it feeds the swapped-in tables). The live
projector is told to resume and reloads its positions from the new tables. The replaced tables
are dropped, or kept in that database with `keep_old` for a comparison. Progress is reported
through a callback (done, total) in events (log offsets).

The processor's job-state table is checked against the log by `eventjobs.runtime.state_check`.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from eventjobs.clickhouse.backend import Backend, qualified, quote_identifier
from eventjobs.clickhouse.errors import ClickHouseError
from eventjobs.kafka.offsets import log_offsets, offsets_at
from eventjobs.readside.control import Control
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import BatchStats, Projector, ProjectorOptions, events_topic
from eventjobs.settings import Settings

log = logging.getLogger(__name__)

# The tables a projection replay rebuilds and swaps in (the migration log and the control
# table stay: the same files were applied, and the handshake must survive the swap).
SWAPPED_TABLES = ("job_events", "jobs", "dead_letters", "job_metrics_1m", "projector_progress")
Progress = Callable[[int, int], None]


class ReplayError(ClickHouseError):
    """A projection replay cannot go on (interrupted, the live projector does not pause)."""


@dataclass
class ProjectionReplay:
    """What a projection replay did."""

    database: str
    scratch_database: str
    events: int
    elapsed_s: float
    start_offsets: dict[int, int]
    end_offsets: dict[int, int]
    paused_live_projector: bool
    kept_old_in: str | None = None
    tables: tuple[str, ...] = SWAPPED_TABLES

    @property
    def events_per_s(self) -> float:
        return self.events / self.elapsed_s if self.elapsed_s > 0 else 0.0


class _ProgressTracker:
    """Turns the projector's per-batch positions into (done, total) for a progress bar."""

    def __init__(self, start: dict[int, int], end: dict[int, int], report: Progress | None) -> None:
        self.start, self.end, self.report = start, end, report
        self.total = sum(max(0, end[p] - start.get(p, 0)) for p in end)

    def extend(self, end: dict[int, int]) -> None:
        self.end = end
        self.total = sum(max(0, end[p] - self.start.get(p, 0)) for p in end)

    def __call__(self, stats: BatchStats) -> None:
        if self.report is None:
            return
        done = sum(max(0, min(stats.next_offsets.get(p, 0), e) - self.start.get(p, 0)) for p, e in self.end.items())
        self.report(done, self.total)

    def finish(self) -> None:
        if self.report is not None:
            self.report(self.total, self.total)


def scratch_database_name(database: str, token: str) -> str:
    return f"{database}__replay_{token[:12]}"


async def replay_projections(settings: Settings, backend: Backend, *, since: datetime | None = None,
                             options: ProjectorOptions = ProjectorOptions(), progress: Progress | None = None,
                             keep_old: bool = False, pause_timeout_s: float = 60.0,
                             stop: asyncio.Event | None = None) -> ProjectionReplay:
    """Rebuild the projections of `backend.database` from the log and swap them in (see the module doc).

    `since`: rebuild only from the first record at or after that time; the rows before it are
    copied from the live tables (event rows, with their metrics through the view) and the states
    of the jobs it touches are folded again from their earlier events in `job_events`.
    """
    stop = stop or asyncio.Event()
    started = time.perf_counter()
    live_db = backend.database
    token = uuid.uuid4().hex
    scratch = scratch_database_name(live_db, token)
    topic = events_topic(settings)
    partitions, begins, ends = await log_offsets(settings, topic)
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir(), live_db)
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir(), scratch)
    start = dict(begins)
    try:
        if since is not None:
            start = await offsets_at(settings, partitions, since, ends)
            await asyncio.to_thread(_copy_prefix, backend, live_db, scratch, start)
        tracker = _ProgressTracker(start, ends, progress)
        await Projector(backend, settings, database=scratch, options=options, control=False,
                        start_at=start if since is not None else None, stop_at=ends, on_batch=tracker,
                        role="eventjobs replay").run(stop)
        if stop.is_set():
            raise ReplayError("replay interrupted before the swap; the live tables are unchanged")
        control = Control(backend, live_db)
        live = await asyncio.to_thread(control.live_projector)
        paused = False
        try:
            if live is not None:
                await _pause_live_projector(control, token, pause_timeout_s)
                paused = True
                # the live projector went on while we rebuilt: catch up with the log's end now
                _, _, ends = await log_offsets(settings, topic)
                tracker.extend(ends)
                await Projector(backend, settings, database=scratch, options=options, control=False,
                                stop_at=ends, on_batch=tracker, role="eventjobs replay").run(stop)
                if stop.is_set():
                    raise ReplayError("replay interrupted before the swap; the live tables are unchanged")
            await asyncio.to_thread(_exchange, backend, live_db, scratch)
        finally:
            if paused:
                await asyncio.to_thread(control.set, "resume", token)
        tracker.finish()
    except BaseException:
        await asyncio.to_thread(_drop_database, backend, scratch)
        raise
    if not keep_old:
        await asyncio.to_thread(_drop_database, backend, scratch)
    events = sum(max(0, ends[p] - start.get(p, 0)) for p in ends)
    return ProjectionReplay(live_db, scratch, events, time.perf_counter() - started, start, ends,
                            paused_live_projector=paused, kept_old_in=scratch if keep_old else None)


async def _pause_live_projector(control: Control, token: str, timeout_s: float) -> None:
    """Ask the live projector to pause between batches and wait until it says it did."""
    await asyncio.to_thread(control.set, "pause_request", token)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        facts = await asyncio.to_thread(control.read)
        if facts.get("paused", ("", None))[0] == token:
            return
        await asyncio.sleep(0.1)
    await asyncio.to_thread(control.set, "resume", token)
    raise ReplayError(f"the live projector did not pause within {timeout_s:.0f} s (its heartbeat is recent); "
                      f"the live tables are unchanged; retry, or stop the projector and replay again")


def _exchange(backend: Backend, live_db: str, scratch: str) -> None:
    for table in SWAPPED_TABLES:
        backend.command(f"EXCHANGE TABLES {qualified(live_db, table)} AND {qualified(scratch, table)}", database="")


def _drop_database(backend: Backend, database: str) -> None:
    try:
        backend.command(f"DROP DATABASE IF EXISTS {quote_identifier(database)} SYNC", database="")
    except ClickHouseError as error:  # leave it for an operator rather than hide the real error
        log.warning("could not drop the replay database %s: %s", database, error)
    forget = getattr(backend, "forget_database", None)
    if forget is not None:
        forget(database)


def _copy_prefix(backend: Backend, live_db: str, scratch: str, start: dict[int, int]) -> None:
    """For `--since`: the live rows before `start` into the scratch tables, and the jobs' states there.

    Event rows before the start offsets are copied with INSERT ... SELECT (so the scratch metric
    view counts them again). Jobs whose last folded event is before the start keep their row;
    the others are folded again from their earlier event rows, so the projector resumes them
    exactly where the live projector stood at that offset.
    """
    from eventjobs.readside.rows import JOB_COLUMNS, columns_of, fold_stored, job_row

    before = " OR ".join(f"(log_partition = {int(p)} AND log_offset < {int(o)})" for p, o in start.items()) or "0"
    backend.command(f"INSERT INTO {qualified(scratch, 'job_events')} SELECT * FROM {qualified(live_db, 'job_events')} "
                    f"WHERE {before}", database="")
    after = " OR ".join(f"(log_partition = {int(p)} AND version >= {int(o)})" for p, o in start.items()) or "0"
    backend.command(f"INSERT INTO {qualified(scratch, 'jobs')} SELECT * FROM {qualified(live_db, 'jobs')} FINAL "
                    f"WHERE NOT ({after})", database="")
    backend.command(f"INSERT INTO {qualified(scratch, 'dead_letters')} SELECT d.* FROM "
                    f"{qualified(live_db, 'dead_letters')} AS d FINAL WHERE d.job_id IN (SELECT job_id FROM "
                    f"{qualified(scratch, 'jobs')})", database="")
    touched = backend.query(f"SELECT count() FROM {qualified(live_db, 'jobs')} FINAL WHERE {after}",
                            database="").scalar() or 0
    buckets = max(1, int(touched) // 20_000 + 1)
    for bucket in range(buckets):
        # the touched jobs' events before the start, a bucket of jobs at a time, folded again
        result = backend.query(
            f"SELECT job_id, payload, log_partition, log_offset, outcome FROM {qualified(scratch, 'job_events')} "
            f"WHERE job_id IN (SELECT job_id FROM {qualified(live_db, 'jobs')} FINAL WHERE {after}) "
            f"AND cityHash64(job_id) % {buckets} = {bucket} ORDER BY log_partition, log_offset", database="")
        jobs = fold_stored(result.rows)
        if jobs:
            rows = [job_row(job) for job in jobs.values()]
            backend.insert("jobs", JOB_COLUMNS, columns_of(rows, len(JOB_COLUMNS)), database=scratch)
    progress = [(p, o - 1) for p, o in sorted(start.items()) if o > 0]
    if progress:
        backend.insert("projector_progress", ["log_partition", "state_offset"],
                       [[p for p, _ in progress], [o for _, o in progress]], database=scratch)
