"""Read-side query latency: what each dashboard page and each CLI read command asks, over a large log.

    .venv/bin/python benchmarks/bench_queries.py [--events 10000000] [--runs 20]

Builds about `--events` rows of `job_events` with their metrics, `jobs` and `dead_letters` rows in
a temporary chdb directory (`bench_readside.build_query_table`: a 100,000-event log folded by the
projector's own row mapping, then copied with new ids one day later per copy; no broker needed),
then times, over one open backend (as a page does, minus opening it), the questions of:

* each dashboard page (`eventjobs/web/pages.py`): the overview, the jobs list unfiltered and
  filtered, one job, the dead letters, the queues page, each with the freshness line;
* each CLI read command: `jobs list`, `jobs show`, `history`, `stats`, `deadletters list`, and the
  `--as-of` forms of `jobs list`, `jobs show` and `stats` as of the middle of the log (and of
  `jobs list` also an hour before its end).

Prints the machine, the table size, and p50 / p95 / max in ms of `--runs` runs of each (after one
warm-up run).
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_readside import build_query_table, machine_info  # noqa: E402
from eventjobs.clickhouse import Backend, ChdbBackend  # noqa: E402
from eventjobs.readside import queries  # noqa: E402
from eventjobs.readside.migrations import apply_migrations, default_projections_dir  # noqa: E402
from eventjobs.readside.as_of import (  # noqa: E402
    AsOf, list_jobs_as_of, show_job_as_of, stats_as_of, status_counts_as_of)

PAGE_SIZE = 50  # the dashboard's jobs page (it asks for one more, to know whether a next page exists)


def questions(backend: Backend) -> list[tuple[str, Callable[[], Any]]]:
    """(label, what is asked) for every page and command timed; the moments are the log's own."""
    newest = backend.query("SELECT max(occurred_at) FROM job_events").scalar()
    hour_ago = newest - timedelta(hours=1)
    # a job from the middle of the log, and a moment in the middle of its life
    job_id, middle = backend.query(
        "SELECT job_id, occurred_at FROM job_events WHERE type = 'attempt_started' AND occurred_at >= "
        "(SELECT quantileExact(0.5)(occurred_at) FROM job_events) ORDER BY occurred_at LIMIT 1").rows[0]
    dead_id = backend.query("SELECT job_id FROM dead_letters FINAL WHERE deleted = 0 LIMIT 1").scalar()
    as_of = AsOf(at=middle)
    recent = AsOf(at=hour_ago)

    def fresh() -> Any:
        return queries.freshness(backend, None)

    return [
        ("page /  (overview, last hour)", lambda: (
            queries.queue_depth(backend), queries.job_stats_by_queue_and_name(backend, since=hour_ago),
            queries.dead_letter_count(backend),
            queries.minute_series(backend, since=hour_ago), queries.reported_lag(backend), fresh())),
        ("page /jobs", lambda: (queries.list_jobs(backend, limit=PAGE_SIZE + 1), fresh())),
        ("page /jobs?status=dead_lettered", lambda: (
            queries.list_jobs(backend, status="dead_lettered", limit=PAGE_SIZE + 1), fresh())),
        ("page /jobs?queue=emails&name=send_email", lambda: (
            queries.list_jobs(backend, queue="emails", name="send_email", limit=PAGE_SIZE + 1), fresh())),
        ("page /jobs?args=...", lambda: (
            queries.list_jobs(backend, args_contain="no such text", limit=PAGE_SIZE + 1), fresh())),
        ("page /jobs/<id>", lambda: (queries.show_job(backend, job_id), queries.job_history(backend, job_id), fresh())),
        ("page /jobs/<id> (dead-lettered)", lambda: (
            queries.show_job(backend, dead_id), queries.job_history(backend, dead_id), fresh())),
        ("page /dead-letters", lambda: (queries.dead_letters(backend, limit=500), fresh())),
        ("page /queues", lambda: (queries.queue_depth(backend), queries.limit_keys(backend, limit=50))),
        ("jobs list", lambda: queries.list_jobs(backend)),
        ("jobs list --status pending", lambda: queries.list_jobs(backend, status="pending")),
        ("jobs show ID", lambda: queries.show_job(backend, job_id)),
        ("history ID", lambda: queries.job_history(backend, job_id)),
        ("stats", lambda: queries.job_stats(backend, by="name")),
        ("stats --by queue --since 1h", lambda: queries.job_stats(backend, by="queue", since=hour_ago)),
        ("deadletters list", lambda: queries.dead_letters(backend)),
        ("jobs show ID --as-of T", lambda: show_job_as_of(backend, job_id, as_of)),
        ("jobs list --as-of T", lambda: list_jobs_as_of(backend, as_of)),
        ("jobs list --as-of (an hour before the end)", lambda: list_jobs_as_of(backend, recent)),
        ("stats --as-of T", lambda: (stats_as_of(backend, as_of), status_counts_as_of(backend, as_of))),
        ("  its metrics (stats_as_of)", lambda: stats_as_of(backend, as_of)),
        ("  its status counts (status_counts_as_of)", lambda: status_counts_as_of(backend, as_of)),
    ]


def time_each(asked: list[tuple[str, Callable[[], Any]]], runs: int) -> list[tuple[str, list[float]]]:
    timed = []
    for label, ask in asked:
        ask()  # warm: the first read of a part loads its marks
        samples = []
        for _ in range(runs):
            started = time.perf_counter()
            ask()
            samples.append((time.perf_counter() - started) * 1000)
        timed.append((label, samples))
    return timed


def p95(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, round(0.95 * len(ordered)) - 1)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--only", default="", help="time only the questions whose label contains this text")
    parser.add_argument("--dir", type=Path, help="keep the tables in this directory, and use them if built there before "
                                                 "(with the migrations of projections/ applied again)")
    options = parser.parse_args()
    print(f"machine: {machine_info()}")
    work = options.dir or Path(tempfile.mkdtemp(prefix="eventjobs-bench-queries-"))
    builder = ChdbBackend(work / "chdb", "default", role="bench")
    try:
        started = time.perf_counter()
        built = builder.query("SELECT count() FROM system.tables WHERE database = 'qbig' AND name = 'job_events'",
                              database="").scalar()
        if options.dir is not None and built:
            apply_migrations(builder, default_projections_dir(), "qbig")
        else:
            build_query_table(builder, options.events, database="qbig")
        backend = ChdbBackend(work / "chdb", "qbig", role="bench")
        rows = backend.query("SELECT count() FROM job_events").scalar()
        jobs = backend.query("SELECT count() FROM jobs FINAL").scalar()
        print(f"tables: {rows:,} job_events rows, {jobs:,} jobs, ready in {time.perf_counter() - started:.0f} s")
        asked = [(label, ask) for label, ask in questions(backend) if options.only in label]
        print(f"{'question':44} {'p50 ms':>8} {'p95 ms':>8} {'max ms':>8}   ({options.runs} runs each)")
        for label, samples in time_each(asked, options.runs):
            print(f"{label:44} {statistics.median(samples):8.1f} {p95(samples):8.1f} {max(samples):8.1f}")
    finally:
        builder.close()
        if options.dir is None:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
