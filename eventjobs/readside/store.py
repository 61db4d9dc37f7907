"""The projector's ClickHouse side: where to resume, jobs to resume folding, and writing a batch.

Exactly-once in effect, without transactions across tables:

* `job_events` rows carry their `(log_partition, log_offset)`. Inserting them (one INSERT, one
  block, so all or nothing) is the batch's commit point, and the metric materialized views are
  fed by that same INSERT. On start the projector reads `max(log_offset)` per partition and
  never writes an event row at or below it again: no double count.
* `jobs` and `dead_letters` are written after it and are replacing tables keyed by job id with
  the offset of the last folded event as version: writing the same state again changes nothing.
  `projector_progress` records per partition up to where they are written. After a crash between
  the commit point and these rows, the projector reads the log again from that older position,
  folds the events once more (the core's `apply` makes an already-applied event a no-op) and
  rewrites the state rows, skipping the event rows that are already committed: no gap.
* The metric views are fed by the `job_events` INSERT, but ClickHouse writes the table's part
  and the views' parts one after the other: a process killed in between (or a server that died
  while the INSERT was unanswered) leaves that batch out of the metrics. Such a batch is the one
  whose event rows are past `projector_progress` (nothing after it has been written), so before
  folding on, the projector rebuilds the metric rows of the minutes those rows fall in from
  `job_events` (`repair_views`): deleted, then aggregated again by the view's own SELECT (as
  projections/ states it, `migrations.view_definitions`). No
  double count, and no batch left out.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from eventjobs.clickhouse.backend import Backend, quote_identifier
from eventjobs.readside.migrations import default_projections_dir, view_definitions
from eventjobs.readside.lag import PartitionLag
from eventjobs.readside.rows import (
    DEAD_LETTER_COLUMNS,
    JOB_COLUMNS,
    JOB_EVENT_COLUMNS,
    RESUME_COLUMNS,
    ProjectedJob,
    columns_of,
    dead_letter_row,
    job_from_row,
    job_row,
)

#: The materialized views fed by `job_events` (projections/), and the table each writes to, in
#: rows per `minute`. A view left out here would not be repaired after a torn INSERT: a test
#: checks that every view of the projections is listed.
VIEWS_OF_JOB_EVENTS = {"job_metrics_1m_mv": "job_metrics_1m"}

LAG_COLUMNS = ["log_partition", "next_offset", "end_offset", "records_behind", "last_projected_at", "lag_s",
               "updated_at"]
_PARTITION = JOB_EVENT_COLUMNS.index("log_partition")
_OFFSET = JOB_EVENT_COLUMNS.index("log_offset")


@dataclass
class Positions:
    """Per partition: last offset whose event row is committed, and last offset whose state rows are."""

    events_done: dict[int, int] = field(default_factory=dict)
    state_done: dict[int, int] = field(default_factory=dict)

    def resume_offset(self, partition: int) -> int:
        """The first offset to read again (the older of the two positions, plus one)."""
        return min(self.events_done.get(partition, -1), self.state_done.get(partition, -1)) + 1


@dataclass
class Batch:
    """What one batch writes, and how far its writing got (so a retry continues, never repeats)."""

    event_rows: list[tuple[Any, ...]]
    jobs: dict[str, ProjectedJob]
    dead_letter_jobs: set[str]
    last_offsets: dict[int, int]
    records: int
    event_attempts: int = 0
    events_written: bool = False
    states_written: bool = False

    def event_positions(self) -> dict[int, int]:
        """Per partition, the highest offset among this batch's event rows."""
        highest: dict[int, int] = {}
        for row in self.event_rows:
            partition, offset = row[_PARTITION], row[_OFFSET]
            if offset > highest.get(partition, -1):
                highest[partition] = offset
        return highest


class ProjectionStore:
    """Reads and writes the projection tables of one database."""

    def __init__(self, backend: Backend, database: str | None = None, projections_dir: Path | None = None) -> None:
        self.backend = backend
        self.database = database or backend.database
        self.projections_dir = projections_dir or default_projections_dir()  # where the views' SELECTs are

    def positions(self) -> Positions:
        events = self.backend.query(
            "SELECT log_partition, max(log_offset) FROM job_events GROUP BY log_partition", database=self.database
        ).rows
        states = self.backend.query(
            "SELECT log_partition, max(state_offset) FROM projector_progress GROUP BY log_partition",
            database=self.database,
        ).rows
        return Positions({int(p): int(o) for p, o in events}, {int(p): int(o) for p, o in states})

    def repair_views(self, positions: Positions) -> list[datetime]:
        """Rebuild the view rows of the minutes of the event rows past `projector_progress` (a
        batch whose INSERT may have been torn between `job_events` and its views); returns those
        minutes (none: nothing to repair). Safe to repeat: killed midway, it is done again on the
        next start, since the progress is only written after it."""
        past = {p: positions.state_done.get(p, -1) for p, done in positions.events_done.items()
                if done > positions.state_done.get(p, -1)}
        if not past:
            return []
        where = " OR ".join(f"(log_partition = {int(p)} AND log_offset > {int(o)})" for p, o in sorted(past.items()))
        minutes = [row[0] for row in self.backend.query(
            f"SELECT DISTINCT toString(toStartOfMinute(occurred_at)) FROM job_events WHERE counted = 1 AND ({where}) "
            "ORDER BY 1", database=self.database).rows]
        if not minutes:
            return []
        definitions = view_definitions(self.projections_dir)
        chosen = "minute IN {minutes:Array(DateTime('UTC'))}"
        for view, table in VIEWS_OF_JOB_EVENTS.items():
            definition = definitions.get(view)
            if definition is None or definition.table != table:
                raise RuntimeError(f"{self.projections_dir} creates no view {view} TO {table}: its rows cannot be "
                                   f"rebuilt (projections/ and readside/store.py VIEWS_OF_JOB_EVENTS disagree)")
            # the view's own SELECT, as projections/ states it, limited to the minutes by its output
            # column `minute` (a grouping key: ClickHouse filters the job_events rows before grouping)
            columns = ", ".join(quote_identifier(row[0]) for row in self.backend.query(
                f"DESCRIBE ({definition.select})", database=self.database).rows)
            self.backend.command(f"ALTER TABLE {table} DELETE WHERE {chosen} SETTINGS mutations_sync = 2",
                                 {"minutes": minutes}, database=self.database)
            self.backend.command(f"INSERT INTO {table} ({columns}) SELECT {columns} FROM ({definition.select}) "
                                 f"WHERE {chosen}", {"minutes": minutes}, database=self.database)
        return [datetime.fromisoformat(minute) for minute in minutes]

    def last_projected(self) -> dict[int, datetime]:
        """Per partition, the log time of the last projected record as the projector last reported
        it (`projector_lag`), so that a restarted projector's lag counts from there."""
        rows = self.backend.query(
            "SELECT log_partition, argMax(last_projected_at, updated_at) FROM projector_lag GROUP BY log_partition",
            database=self.database,
        ).rows
        return {int(partition): at for partition, at in rows if at is not None}

    def write_lag(self, lags: list[PartitionLag], at: datetime) -> None:
        """Report how far each partition is behind (`projector_lag`; partitions whose end offset
        is not known yet are left out)."""
        known = [lag for lag in lags if lag.end_offset is not None and lag.records_behind is not None]
        if not known:
            return
        columns: list[list[Any]] = [[lag.partition for lag in known], [lag.next_offset for lag in known],
                                    [lag.end_offset for lag in known], [lag.records_behind for lag in known],
                                    [lag.last_projected_at for lag in known], [lag.lag_s for lag in known],
                                    [at] * len(known)]
        self.backend.insert("projector_lag", LAG_COLUMNS, columns, database=self.database)

    def has_jobs(self) -> bool:
        return bool(self.backend.query("SELECT count() FROM (SELECT 1 FROM jobs LIMIT 1)",
                                       database=self.database).scalar())

    def load_jobs(self, job_ids: Iterable[str]) -> dict[str, ProjectedJob]:
        """The latest projected state of these jobs (one query), forgotten jobs included and flagged
        (the projector folds their next event from no state)."""
        ids = sorted(set(job_ids))
        if not ids:
            return {}
        result = self.backend.query(
            f"SELECT {', '.join(RESUME_COLUMNS)} FROM jobs FINAL WHERE job_id IN {{ids:Array(String)}}",
            {"ids": ids}, database=self.database,
        )
        return {row["job_id"]: job_from_row(row) for row in result.dicts()}

    def committed(self, positions: dict[int, int]) -> bool:
        """Whether job_events already holds rows up to these offsets (after an ambiguous failure)."""
        done = self.positions().events_done
        return all(done.get(partition, -1) >= offset for partition, offset in positions.items())

    def write(self, batch: Batch) -> None:
        """Write a batch: event rows (the commit point) first, then the idempotent state rows."""
        # only after a failed try can the rows already be there (a timeout after the commit)
        if batch.event_rows and not batch.events_written:
            if batch.event_attempts and self.committed(batch.event_positions()):
                self.repair_views(self.positions())  # the unanswered INSERT may have stopped before its views
            else:
                batch.event_attempts += 1
                self.backend.insert("job_events", JOB_EVENT_COLUMNS,
                                    columns_of(batch.event_rows, len(JOB_EVENT_COLUMNS)), database=self.database)
        batch.events_written = True
        if not batch.states_written:
            self._write_states(batch)
            batch.states_written = True

    def _write_states(self, batch: Batch) -> None:
        if batch.jobs:
            rows = [job_row(job) for job in batch.jobs.values()]
            self.backend.insert("jobs", JOB_COLUMNS, columns_of(rows, len(JOB_COLUMNS)), database=self.database)
        dead = [dead_letter_row(batch.jobs[job_id]) for job_id in sorted(batch.dead_letter_jobs) if job_id in batch.jobs]
        if dead:
            self.backend.insert("dead_letters", DEAD_LETTER_COLUMNS, columns_of(dead, len(DEAD_LETTER_COLUMNS)),
                                database=self.database)
        if batch.last_offsets:
            partitions = sorted(batch.last_offsets)
            self.backend.insert("projector_progress", ["log_partition", "state_offset"],
                                [partitions, [batch.last_offsets[p] for p in partitions]], database=self.database)
