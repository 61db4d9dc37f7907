"""`eventjobs replay`: rebuild what is derived from the event log, and prove it equals the live copy.

Two things are derived from the log, and both can be rebuilt from it:

* **The ClickHouse projections** (`replay_projections`). The log is projected by the same
  `Projector` (same fold, same row mapping) into a fresh database `<db>__replay_<token>`, while
  the live tables keep answering queries. Then the live projector (if one runs, found by its
  heartbeat) is asked to pause between two batches, the fresh tables catch up with the log's
  end, and each table is swapped in with `EXCHANGE TABLES` (atomic per table; the metric
  materialized view follows the table names, so it feeds the swapped-in tables). The live
  projector is told to resume and reloads its positions from the new tables. The replaced
  tables are dropped, or kept in that database with `keep_old` for a comparison.
* **The processor's job-state table** (`compare_state`, `write_state_corrections`). The events
  topic is folded with the core's `apply` exactly as the processor folds it (same decoding,
  same key check), up to the offsets the processor's group committed, and compared with the
  compacted changelog `<ns>.job-state`. Corrections (the folded state, or a tombstone for a job
  the log does not know) are written only for jobs that differ, and only while the processor's
  consumer group `<ns>.processor` has no members: a running processor holds its table in
  memory and would overwrite or ignore them.

Both report progress through a callback (done, total) in events (log offsets).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiokafka import TopicPartition
from aiokafka.structs import ConsumerRecord

from eventjobs.clickhouse.backend import Backend, qualified, quote_identifier
from eventjobs.clickhouse.errors import ClickHouseError
from eventjobs.core.codec import EventDecodeError, decode
from eventjobs.core.fold import apply
from eventjobs.core.state import JobState, decode_state, encode_state
from eventjobs.kafka import admin_client, consumer, partitions_of, producer, read_to_end
from eventjobs.projection.control import Control
from eventjobs.projection.migrations import apply_migrations, default_projections_dir
from eventjobs.projection.projector import BatchStats, Projector, ProjectorError, ProjectorOptions, events_topic
from eventjobs.settings import Settings
from eventjobs.topics import TopicNames, load_specs

log = logging.getLogger(__name__)

# The tables a projection replay rebuilds and swaps in (the migration log and the control
# table stay: the same files were applied, and the handshake must survive the swap).
SWAPPED_TABLES = ("job_events", "jobs", "dead_letters", "job_metrics_1m", "projector_progress")
Progress = Callable[[int, int], None]


class ReplayError(ClickHouseError):
    """A replay cannot go on (the processor runs, the live projector does not pause, ...)."""


# ---- Kafka positions ---------------------------------------------------------------------


async def log_offsets(settings: Settings, topic: str) -> tuple[list[TopicPartition], dict[int, int], dict[int, int]]:
    """Partitions of `topic`, and per partition the first offset still in the log and the end offset."""
    partitions = await partitions_of(settings, topic)
    if not partitions:
        raise ProjectorError(f"the topic {topic} does not exist on {settings.kafka_bootstrap}; "
                             f"create it with `eventjobs topics apply`")
    client = consumer(settings, group_id=None)
    await client.start()
    try:
        begins = await client.beginning_offsets(partitions)
        ends = await client.end_offsets(partitions)
    finally:
        await client.stop()
    return (partitions, {tp.partition: o for tp, o in begins.items()}, {tp.partition: o for tp, o in ends.items()})


async def offsets_at(settings: Settings, partitions: list[TopicPartition], at: datetime,
                     ends: dict[int, int]) -> dict[int, int]:
    """Per partition the first offset whose record time is at or after `at` (the end when none is)."""
    client = consumer(settings, group_id=None)
    await client.start()
    try:
        found = await client.offsets_for_times({tp: int(at.timestamp() * 1000) for tp in partitions})
    finally:
        await client.stop()
    return {tp.partition: (found[tp].offset if found.get(tp) is not None else ends[tp.partition]) for tp in partitions}


# ---- projections -------------------------------------------------------------------------


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
    from eventjobs.core.codec import decode as decode_event
    from eventjobs.projection.rows import JOB_COLUMNS, columns_of, job_row, project_event

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
        jobs: dict[str, Any] = {}
        for job_id, payload, partition, offset, outcome in result.rows:
            if outcome == "malformed":
                continue
            data = payload.encode()
            projected = project_event(jobs.get(job_id), decode_event(data), data, int(partition), int(offset))
            if projected.job is not None:
                jobs[job_id] = projected.job
        if jobs:
            rows = [job_row(job) for job in jobs.values()]
            backend.insert("jobs", JOB_COLUMNS, columns_of(rows, len(JOB_COLUMNS)), database=scratch)
    progress = [(p, o - 1) for p, o in sorted(start.items()) if o > 0]
    if progress:
        backend.insert("projector_progress", ["log_partition", "state_offset"],
                       [[p for p, _ in progress], [o for _, o in progress]], database=scratch)


# ---- the processor's job-state table -----------------------------------------------------


@dataclass
class StateDifference:
    job_id: str
    partition: int
    kind: str  # "missing" (not in the changelog), "extra" (changelog only), "different"
    fields: list[str]
    folded: JobState | None
    changelog: JobState | None


@dataclass
class StateComparison:
    """The fold of the events topic against the processor's compacted changelog."""

    jobs_folded: int
    jobs_in_changelog: int
    events: int
    fold_until: dict[int, int]
    bounded_by_group: bool
    elapsed_s: float
    differences: list[StateDifference] = field(default_factory=list)
    undecodable_changelog_records: int = 0

    @property
    def identical(self) -> bool:
        return not self.differences


async def processor_group_members(settings: Settings) -> list[str]:
    """Client ids of the members of the processor's consumer group `<ns>.processor` (empty: none)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        responses = await admin.describe_consumer_groups([f"{settings.namespace}.processor"])
    finally:
        await admin.close()
    members: list[str] = []
    for response in responses:
        for group in response.groups:
            # (error_code, group_id, state, protocol_type, protocol, members[, authorized ops])
            for member in group[5]:
                members.append(f"{member[0]} ({member[2]}{member[3]})" if len(member) > 3 else str(member[0]))
    return members


async def processor_committed(settings: Settings, partitions: list[TopicPartition]) -> dict[int, int]:
    """Offsets the processor's group committed on the events topic (partitions without one are left out)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(f"{settings.namespace}.processor", partitions=partitions)
    finally:
        await admin.close()
    return {tp.partition: meta.offset for tp, meta in offsets.items() if meta.offset >= 0}


async def fold_events(settings: Settings, partitions: list[TopicPartition], begins: dict[int, int],
                      until: dict[int, int], progress: Progress | None = None
                      ) -> tuple[dict[str, tuple[int, JobState]], int]:
    """Fold the events topic up to `until` as the processor does: job id -> (partition, state)."""
    states: dict[str, tuple[int, JobState]] = {}
    total = sum(max(0, until[p] - begins.get(p, 0)) for p in until)
    remaining = [tp for tp in partitions if until.get(tp.partition, 0) > begins.get(tp.partition, 0)]
    events = 0
    reader = consumer(settings, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
    await reader.start()
    try:
        reader.assign(partitions)
        await reader.seek_to_beginning(*partitions)
        max_bytes = settings.max_event_bytes
        while remaining:
            batch = await reader.getmany(*remaining, timeout_ms=500, max_records=20_000)
            for tp, records in batch.items():
                end = until[tp.partition]
                for record in records:
                    if record.offset >= end:
                        break
                    events += 1
                    _fold_record(states, record, max_bytes)
            position = {tp.partition: await reader.position(tp) for tp in partitions}
            remaining = [tp for tp in remaining if position[tp.partition] < until[tp.partition]]
            if progress is not None:
                progress(sum(max(0, min(position[p], end) - begins.get(p, 0)) for p, end in until.items()), total)
    finally:
        await reader.stop()
    return states, events


def _fold_record(states: dict[str, tuple[int, JobState]], record: ConsumerRecord[bytes, bytes], max_bytes: int) -> None:
    """One record as `processor.fold_batch` takes it: tombstones, undecodable and mis-keyed ones are skipped."""
    if record.value is None:
        return
    try:
        event = decode(record.value, max_bytes=max_bytes)
    except EventDecodeError:
        return
    if record.key is not None and record.key != event.job_id.encode():
        return
    before = states.get(event.job_id)
    decision = apply(before[1] if before else None, event, actor=f"processor:{record.partition}")
    if decision.state is not None and (before is None or decision.state is not before[1]):
        states[event.job_id] = (record.partition, decision.state)


async def read_changelog(settings: Settings) -> tuple[dict[str, tuple[int, JobState]], int]:
    """The compacted changelog's latest state per job (and how many records did not decode)."""
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    partitions = await partitions_of(settings, names.job_state)
    table: dict[str, tuple[int, JobState]] = {}
    bad = 0
    async for record in read_to_end(settings, partitions, timeout_s=600):
        if record.key is None:
            continue
        key = record.key.decode()
        if record.value is None:
            table.pop(key, None)
            continue
        try:
            table[key] = (record.partition, decode_state(record.value))
        except ValueError:
            bad += 1
    return table, bad


def _differing_fields(a: JobState, b: JobState) -> list[str]:
    return [name for name in type(a).model_fields if getattr(a, name) != getattr(b, name)]


async def compare_state(settings: Settings, *, progress: Progress | None = None) -> StateComparison:
    """Fold the events topic (up to the processor's committed offsets) and compare with the changelog."""
    started = time.perf_counter()
    partitions, begins, ends = await log_offsets(settings, events_topic(settings))
    committed = await processor_committed(settings, partitions)
    until = {p: committed.get(p, end) for p, end in ends.items()}
    folded, events = await fold_events(settings, partitions, begins, until, progress)
    changelog, bad = await read_changelog(settings)
    differences: list[StateDifference] = []
    for job_id in sorted(folded.keys() | changelog.keys()):
        mine, theirs = folded.get(job_id), changelog.get(job_id)
        if theirs is None:
            assert mine is not None
            differences.append(StateDifference(job_id, mine[0], "missing", [], mine[1], None))
        elif mine is None:
            differences.append(StateDifference(job_id, theirs[0], "extra", [], None, theirs[1]))
        elif encode_state(mine[1]) != encode_state(theirs[1]) or mine[0] != theirs[0]:
            fields = _differing_fields(mine[1], theirs[1]) or (["partition"] if mine[0] != theirs[0] else [])
            differences.append(StateDifference(job_id, mine[0], "different", fields, mine[1], theirs[1]))
    return StateComparison(len(folded), len(changelog), events, until, bool(committed),
                           time.perf_counter() - started, differences, bad)


async def ensure_processor_stopped(settings: Settings) -> None:
    """Raise `ReplayError` while the processor's consumer group has members."""
    members = await processor_group_members(settings)
    if members:
        raise ReplayError(
            f"the processor group {settings.namespace}.processor has {len(members)} member(s) "
            f"({', '.join(members[:3])}): a running processor keeps the job states in memory and would "
            f"overwrite the corrections; stop every processor, then run the replay again"
        )


async def write_state_corrections(settings: Settings, comparison: StateComparison) -> int:
    """Write the folded state (or a tombstone) for every differing job; refuses while the processor runs."""
    await ensure_processor_stopped(settings)
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    client = producer(settings, linger_ms=20)
    await client.start()
    try:
        futures = []
        for diff in comparison.differences:
            value = encode_state(diff.folded) if diff.folded is not None else None
            futures.append(await client.send(names.job_state, value, key=diff.job_id.encode(),
                                             partition=diff.partition))
        await asyncio.gather(*futures)
    finally:
        await client.stop()
    if await processor_group_members(settings):
        log.warning("a processor joined while the corrections were written; compare again once it settled")
    return len(comparison.differences)
