"""History as of any moment: jobs, one job and stats as they stood at a past time or log position.

Why this module exists: `job_events` keeps every record of the log with its position and what the
fold made of it (`status_after`, the status after the event), so the state of every job at any
earlier point can be answered from it, without a replay.

A moment (`AsOf`) is a time or a log position. Offsets are per partition, so a position names
partitions and offsets (`offset:P:O[,P:O...]`: each named partition up to and including its offset;
the question then covers only the jobs of those partitions: a job's events all live in one
partition). A job's state as of a moment is its state after the *prefix* of its events that ends
at its last event inside the cut: for a position, every event of the job at or below the offset;
for a time T, every event up to its last one that occurred at or before T, in log order (an event
before that one in the log counts even if its `occurred_at` is later, which only clock skew between
writers makes possible). That prefix is exactly what the core's `apply` folds, so the answer is the
fold's (the property test in tests/readside/test_as_of.py checks it against `apply`).

How it is computed:

* Which jobs existed, their status, queue, name, enqueue time and whether they were forgotten: in
  SQL. A job with no row after the moment whose rows are all folded into its `jobs` row stood
  then as it stands now, so its `jobs` row answers; for the others, `argMax` over the prefix rows
  by log position (`status_after` is the fold's status after each event; empty when there was no
  job: an event for an unknown id, or the forgetting one).
  Filters, order and pages of `jobs list`, and the counts of `stats`, are this query.
* Everything else a job shows (attempts, timestamps, result, last error, progress, workflow
  links) is not a column of an event but what the fold made of all of them. For the jobs one page
  shows (at most its limit, or the one job of `jobs show`) the prefix's payloads are folded again
  with the projector's own `project_event`, the code that writes the live `jobs` rows, so a job as
  of now reads exactly like its live row.
* Stats: status counts per group from the same per-job query, and the metric counts, rates and
  quantiles of `stats` by the live query (`queries.job_stats`) over the counted `job_events`
  rows inside the cut, aggregated as `job_metrics_1m_mv` aggregates them (`_metrics_at`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import orjson

from eventjobs.clickhouse.backend import Backend
from eventjobs.core.durations import parse_duration
from eventjobs.readside.queries import (
    MAX_CHILDREN_LISTED,
    STATUSES,
    JobDetail,
    JobNotFound,
    JobSummary,
    QueryArgumentError,
    StatsRow,
    job_filters,
    job_stats,
    utc,
)
from eventjobs.readside.rows import JOB_COLUMNS, ProjectedJob, fold_stored, job_row
from eventjobs.readside.store import ProjectionStore

__all__ = [
    "AsOf",
    "AsOfError",
    "StatusCounts",
    "list_jobs_as_of",
    "parse_as_of",
    "show_job_as_of",
    "stats_as_of",
    "status_counts_as_of",
]

_POSITION = re.compile(r"^offsets?:(.+)$")
_PART = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")
#: most partitions a position may name (a log has far fewer)
MAX_POSITION_PARTITIONS = 10_000


class AsOfError(QueryArgumentError):
    """An `--as-of` value that names no usable moment; the message says what is allowed."""


@dataclass(frozen=True)
class AsOf:
    """A moment of the log: a UTC time (`at`), or per partition the last offset included (`offsets`)."""

    at: datetime | None = None
    offsets: dict[int, int] = field(default_factory=dict)

    def describe(self) -> str:
        if self.at is not None:
            return f"as of {self.at:%Y-%m-%d %H:%M:%S.%f}"[:-3] + " UTC"
        return "as of log position " + ", ".join(f"partition {p} offset {o}" for p, o in sorted(self.offsets.items()))

    def as_json(self) -> dict[str, Any]:
        return {"at": self.at, "offsets": self.offsets or None}

    def cut(self, prefix: str = "") -> tuple[str, dict[str, Any]]:
        """The SQL condition of the rows inside the cut (columns qualified with `prefix`), and its parameters."""
        if self.at is not None:
            return f"{prefix}occurred_at <= {{as_of_at:DateTime64(3, 'UTC')}}", {"as_of_at": self.at}
        terms, params = [], {}
        for index, (partition, offset) in enumerate(sorted(self.offsets.items())):
            terms.append(f"({prefix}log_partition = {{as_of_p{index}:UInt16}} AND "
                         f"{prefix}log_offset <= {{as_of_o{index}:UInt64}})")
            params[f"as_of_p{index}"], params[f"as_of_o{index}"] = partition, offset
        return "(" + " OR ".join(terms) + ")", params


def parse_as_of(text: str, now: datetime) -> AsOf:
    """`--as-of`: an ISO-8601 time (UTC when it names no zone), an age before `now` (15m, 2h, 1d), or
    a log position `offset:P:O[,P:O...]`. A time after `now` is refused: there is no history yet."""
    text = text.strip()
    position = _POSITION.match(text)
    if position:
        return AsOf(offsets=_offsets(position.group(1), text))
    try:
        at = now - parse_duration(text)
    except ValueError:
        try:
            at = utc(datetime.fromisoformat(text))
        except ValueError:
            raise AsOfError(
                f"--as-of {text!r} is not a moment: give an ISO-8601 time (2026-05-17T12:00:00Z; UTC when it names "
                f"no zone), an age (15m, 2h, 1d ago) or a log position (offset:PARTITION:OFFSET, several separated "
                f"by commas)") from None
    if at > now:
        raise AsOfError(f"--as-of {text!r} is in the future ({at:%Y-%m-%d %H:%M:%S} UTC; now is "
                        f"{now:%Y-%m-%d %H:%M:%S} UTC): history only goes up to now")
    return AsOf(at=at)


def _offsets(body: str, text: str) -> dict[int, int]:
    offsets: dict[int, int] = {}
    for part in body.split(","):
        match = _PART.match(part)
        if match is None:
            raise AsOfError(f"--as-of {text!r}: {part.strip()!r} is not PARTITION:OFFSET (e.g. offset:0:1200 or "
                            f"offset:0:1200,1:980; both whole numbers)")
        partition, offset = int(match.group(1)), int(match.group(2))
        if partition in offsets:
            raise AsOfError(f"--as-of {text!r} names partition {partition} twice")
        if partition > 65535 or offset >= 2**63:
            raise AsOfError(f"--as-of {text!r}: partition {partition} / offset {offset} out of range")
        offsets[partition] = offset
    if len(offsets) > MAX_POSITION_PARTITIONS:
        raise AsOfError(f"--as-of names {len(offsets)} partitions, at most {MAX_POSITION_PARTITIONS}")
    return offsets


def check_as_of(backend: Backend, as_of: AsOf) -> None:
    """A position must lie inside what is projected: every named partition has events, and its
    offset is not past the newest projected one (the projector has not got there, or the log ends
    before it). A time needs no check (before the first event, no job existed)."""
    if as_of.at is not None:
        return
    projected = {int(p): int(o) for p, o in backend.query(
        "SELECT log_partition, max(log_offset) FROM job_events GROUP BY log_partition").rows}
    for partition, offset in sorted(as_of.offsets.items()):
        if partition not in projected:
            known = ", ".join(str(p) for p in sorted(projected)) or "none"
            raise AsOfError(f"--as-of: partition {partition} has no projected events (partitions with events: {known})")
        if offset > projected[partition]:
            raise AsOfError(f"--as-of: partition {partition} offset {offset} is past the newest projected offset "
                            f"{projected[partition]} (the projector has not got there yet, or the log ends there)")


def _prefix(as_of: AsOf, only: str = "", only_params: dict[str, Any] | None = None) -> tuple[str, dict[str, Any]]:
    """A subquery of the `job_events` rows in each job's prefix as of the moment (see the module
    docstring), of every job or of those the SQL condition `only` (with `only_params`) selects."""
    cut, params = as_of.cut()
    params = {**params, **(only_params or {})}
    only = f" AND {only}" if only else ""
    if as_of.at is None:  # a position: the rows inside the cut are the prefix
        return f"(SELECT * FROM job_events WHERE {cut}{only})", params
    # a time: each job's rows up to its last one inside the cut, in log order (a window over the
    # job's rows: one read of them, where a join with the last positions read them twice)
    by = "(log_partition, log_offset)"
    return (
        ("(SELECT * EXCEPT (prefix_last, prefix_inside) FROM (SELECT *, "
         f"maxIf({by}, {cut}) OVER (PARTITION BY job_id) AS prefix_last, "
         f"countIf({cut}) OVER (PARTITION BY job_id) AS prefix_inside FROM job_events WHERE 1{only}) "
         f"WHERE prefix_inside > 0 AND {by} <= prefix_last)"),
        params,
    )


def _jobs_at(backend: Backend, as_of: AsOf) -> tuple[str, dict[str, Any]]:
    """A subquery with one row per job that existed as of the moment: status, queue, name,
    forgotten and enqueued_at.

    A job none of whose rows lies after the moment (none outside the cut, for a position: of the
    partitions it names) and whose `jobs` row is written (its rows are at or below the state
    offset of `projector_progress`) stood then as it stands now: its `jobs` row is the fold of all
    its rows, which are its prefix. Only the other jobs (those that changed after the moment, and
    any the projector has not written yet) are computed from their prefix rows: `argMax` in log
    order. So a moment close to now reads few rows besides `jobs`."""
    cut, params = as_of.cut()
    unwritten = _not_in_jobs_rows(backend)
    after = f"NOT {cut}" if unwritten is None else f"(NOT {cut} OR {unwritten})"
    scope, jobs_scope = "1", "1"
    if as_of.at is None:
        named = ", ".join(str(int(partition)) for partition in sorted(as_of.offsets))
        scope = jobs_scope = f"log_partition IN ({named})"
    changed = f"(SELECT DISTINCT job_id FROM job_events WHERE {scope} AND {after})"
    rows, params = _prefix(as_of, f"job_id IN {changed}", params)
    by = "(log_partition, log_offset)"
    return (
        ("(SELECT job_id, status, queue, name, forgotten = 1 AS forgotten, enqueued_at FROM jobs FINAL "
         f"WHERE {jobs_scope} AND job_id NOT IN {changed} UNION ALL "
         f"SELECT job_id, argMaxIf(status_after, {by}, status_after != '') AS status, "
         f"argMaxIf(queue, {by}, status_after != '') AS queue, argMaxIf(name, {by}, status_after != '') AS name, "
         f"argMaxIf(outcome, {by}, status_after != '' OR outcome = 'forgotten') = 'forgotten' AS forgotten, "
         f"argMaxIf(occurred_at, {by}, type = 'enqueued' AND outcome = 'applied') AS enqueued_at "
         f"FROM {rows} GROUP BY job_id HAVING countIf(status_after != '') > 0)"),
        params,
    )


def _not_in_jobs_rows(backend: Backend) -> str | None:
    """The SQL condition of the `job_events` rows not folded into `jobs` rows yet, or None when
    there is none: those past the state offset of their partition in `projector_progress` (the
    projector writes a batch's event rows, then its `jobs` rows, then that offset). The projector's
    own `positions` (from the `positions` projection and `projector_progress`: a few rows)."""
    positions = ProjectionStore(backend).positions()
    written = positions.state_done
    behind = [(p, written.get(p, -1)) for p, o in sorted(positions.events_done.items()) if o > written.get(p, -1)]
    if not behind:
        return None
    return "(" + " OR ".join(f"(log_partition = {p} AND log_offset > {o})" if o >= 0 else f"log_partition = {p}"
                             for p, o in behind) + ")"


def _fold_jobs(backend: Backend, as_of: AsOf, job_ids: list[str]) -> dict[str, ProjectedJob]:
    """The projected jobs `job_ids` as of the moment: their prefix payloads folded with the projector's fold."""
    if not job_ids:
        return {}
    rows, params = _prefix(as_of, "job_id IN {as_of_ids:Array(String)}", {"as_of_ids": job_ids})
    result = backend.query(f"SELECT job_id, payload, log_partition, log_offset, outcome FROM {rows} "
                           "ORDER BY log_partition, log_offset", params)
    return fold_stored(result.rows)


def _summary(job: ProjectedJob) -> JobSummary:
    s = job.state
    return JobSummary(job_id=s.job_id, queue=s.queue, name=s.name, status=s.status.value, attempt=s.attempt,
                      attempts_started=s.attempts_started, enqueued_at=s.enqueued_at, updated_at=s.updated_at,
                      finished_at=s.finished_at, forgotten=job.forgotten)


def list_jobs_as_of(backend: Backend, as_of: AsOf, *, queue: str | None = None, status: str | None = None,
                    name: str | None = None, since: datetime | None = None, limit: int = 50,
                    until: datetime | None = None, offset: int = 0) -> list[JobSummary]:
    """`list_jobs` as of a moment: the jobs that existed then, newest enqueue first, with the state
    each had; filtered by queue, state then, job name and enqueue time."""
    where, filters = job_filters(queue=queue, status=status, name=name, since=since, until=until, limit=limit,
                                 offset=offset)
    check_as_of(backend, as_of)
    jobs, params = _jobs_at(backend, as_of)
    params = {**params, **filters}
    result = backend.query(f"SELECT job_id FROM {jobs} WHERE {' AND '.join(where)} "
                           "ORDER BY enqueued_at DESC, job_id LIMIT {limit:UInt32} OFFSET {offset:UInt64}", params)
    ids = [row[0] for row in result.rows]
    folded = _fold_jobs(backend, as_of, ids)
    return [_summary(folded[job_id]) for job_id in ids]


def show_job_as_of(backend: Backend, job_id: str, as_of: AsOf) -> JobDetail:
    """One job as it stood at the moment; `JobNotFound` (saying when it first appears) if it did not exist then."""
    check_as_of(backend, as_of)
    job = _fold_jobs(backend, as_of, [job_id]).get(job_id)
    if job is None:
        count, at, partition, offset = backend.query(
            "SELECT count(), min(occurred_at), min((log_partition, log_offset)).1, min((log_partition, log_offset)).2 "
            "FROM job_events WHERE job_id = {id:String} AND status_after != ''", {"id": job_id}).rows[0]
        if not count:
            raise JobNotFound(f"no job {job_id!r} in the read side (unknown id, or not projected yet)")
        raise JobNotFound(f"job {job_id!r} did not exist {as_of.describe()}: it first appears at "
                          f"{at:%Y-%m-%d %H:%M:%S} UTC (partition {partition} offset {offset})")
    row = dict(zip(JOB_COLUMNS, job_row(job), strict=False))
    detail = {name: row[name] for name in JobDetail.__dataclass_fields__ if name in row}
    detail["args"] = orjson.loads(detail["args"]) if detail["args"] else {}
    detail["result"] = orjson.loads(detail["result"]) if detail["result"] else None
    detail["forgotten"] = bool(detail["forgotten"])
    return JobDetail(**detail, children=_children_as_of(backend, job_id, as_of))


def _children_as_of(backend: Backend, job_id: str, as_of: AsOf) -> list[str]:
    """The jobs `job_id` enqueued that existed as of the moment, oldest first (at most `MAX_CHILDREN_LISTED`):
    the applied enqueues inside the cut that name it as parent. Only the rows of its children are
    read: their ids from `jobs` (its parent index), and the rows not in `jobs` rows yet."""
    cut, params = as_of.cut()
    unwritten = _not_in_jobs_rows(backend)
    also = "" if unwritten is None else (
        " UNION ALL SELECT job_id FROM job_events WHERE type = 'enqueued' AND " + unwritten)
    result = backend.query(
        "SELECT job_id FROM job_events WHERE job_id IN (SELECT job_id FROM jobs WHERE parent_job_id = {id:String}"
        f"{also}) AND type = 'enqueued' AND outcome = 'applied' AND {cut} "
        "AND JSONExtractString(payload, 'parent_job_id') = {id:String} "
        f"GROUP BY job_id ORDER BY max(occurred_at), job_id LIMIT {MAX_CHILDREN_LISTED}",
        {**params, "id": job_id})
    return [row[0] for row in result.rows]


@dataclass(frozen=True)
class StatusCounts:
    """How many jobs of a group (job name or queue) were in each status at the moment."""

    group: str
    total: int
    by_status: dict[str, int]


def status_counts_as_of(backend: Backend, as_of: AsOf, *, queue: str | None = None,
                        by: Literal["name", "queue"] = "name") -> list[StatusCounts]:
    """Jobs per status and job name (or queue) as of the moment; forgotten jobs count in their final status."""
    if by not in ("name", "queue"):
        raise QueryArgumentError(f"--by must be 'name' or 'queue', got {by!r}")
    check_as_of(backend, as_of)
    jobs, params = _jobs_at(backend, as_of)
    where = "1"
    if queue is not None:
        where, params = "queue = {queue:String}", {**params, "queue": queue}
    counts = ", ".join(f"countIf(status = '{status}') AS {status}" for status in STATUSES)
    result = backend.query(f"SELECT {by} AS grp, count() AS total, {counts} FROM {jobs} WHERE {where} "
                           "GROUP BY grp ORDER BY grp", params)
    return [StatusCounts(group=row["grp"], total=row["total"], by_status={s: row[s] for s in STATUSES})
            for row in result.dicts()]


def stats_as_of(backend: Backend, as_of: AsOf, *, queue: str | None = None, since: datetime | None = None,
                by: Literal["name", "queue"] = "name") -> list[StatsRow]:
    """`job_stats` up to the moment: the same query, over `_metrics_at` instead of `job_metrics_1m`."""
    if by not in ("name", "queue"):
        raise QueryArgumentError(f"--by must be 'name' or 'queue', got {by!r}")
    check_as_of(backend, as_of)
    source, params = _metrics_at(as_of)
    return job_stats(backend, queue=queue, since=since, by=by, source=source, source_params=params)


def _metrics_at(as_of: AsOf) -> tuple[str, dict[str, Any]]:
    """A subquery of `job_metrics_1m`'s shape (the columns `job_stats` reads) as of the moment.

    For a position: the counted `job_events` rows inside the cut, aggregated with the definitions
    of `job_metrics_1m_mv`, which those rows feed (projections/004_job_metrics.sql). For a time T:
    the minutes before T's minute are whole, so they are `job_metrics_1m`'s own rows (the same
    aggregation, done as the rows were projected), and only the rows of T's minute up to T are
    aggregated here: a few thousand rows read instead of every row before T."""
    cut, params = as_of.cut()
    rows = f"counted = 1 AND {cut}"
    whole = ""
    if as_of.at is not None:
        rows += " AND occurred_at >= toStartOfMinute({as_of_at:DateTime64(3, 'UTC')})"
        whole = (f"SELECT minute, queue, name, {', '.join(_STATS_STATES)} FROM job_metrics_1m "
                 "WHERE minute < toStartOfMinute({as_of_at:DateTime64(3, 'UTC')}) UNION ALL ")
    source = (
        f"({whole}SELECT toDateTime(toStartOfMinute(occurred_at), 'UTC') AS minute, queue, name, "
        "countIfState(type = 'enqueued') AS enqueued, countIfState(type = 'attempt_started') AS started, "
        "countIfState(type = 'attempt_succeeded') AS succeeded_attempts, "
        "countIfState(type IN ('attempt_failed', 'attempt_timed_out', 'lease_expired')) AS failed_attempts, "
        "countIfState(type = 'completed') AS completed, countIfState(type = 'failed') AS failed, "
        "countIfState(type = 'retry_scheduled') AS retried, countIfState(type = 'dead_lettered') AS dead_lettered, "
        "countIfState(type = 'cancelled') AS cancelled, "
        "quantilesDeterministicIfState(0.5, 0.95, 0.99)(wait_s, cityHash64(event_id), has_wait = 1) "
        "AS wait_quantiles, "
        "quantilesDeterministicIfState(0.5, 0.95, 0.99)(duration_s, cityHash64(event_id), has_duration = 1) "
        f"AS duration_quantiles FROM job_events WHERE {rows} GROUP BY minute, queue, name)"
    )
    return source, params


#: the states of `job_metrics_1m` that `job_stats` reads, in the order `_metrics_at` builds them
_STATS_STATES = ("enqueued", "started", "succeeded_attempts", "failed_attempts", "completed", "failed", "retried",
                 "dead_lettered", "cancelled", "wait_quantiles", "duration_quantiles")
