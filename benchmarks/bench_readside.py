"""Read-side benchmark: projector ingestion into chdb, replay, and `stats` latency over 1M events.

    .venv/bin/python benchmarks/bench_readside.py [--events 200000] [--runs 3] [--query-events 1000000]

Prints the machine, then medians of `--runs` runs of:
  1. ingestion: the projector (`Projector`, chdb in this process, batches of 20,000) reading an
     event log of `--events` events from Kafka into fresh tables: events/s. The same batches
     are also timed in parts (Kafka fetch, fold = decode + apply + row mapping, ClickHouse insert)
     so the total can be read as where the time goes;
  2. replay: `replay_projections` (fresh tables, then EXCHANGE) of the same log: events/s;
  3. query: `stats` (by name and by queue) and `jobs list` over `--query-events` event rows.
     Those rows are not produced through Kafka (that would take minutes here): a 100,000-event
     log is mapped through the projector's own row mapping (`project_event`) and inserted, then
     copied with new job and event ids (INSERT ... SELECT, one day later per copy) up to the
     count, so the metric view sees every row as it would from the projector.
The broker is KAFKA_BOOTSTRAP_SERVERS, or a local one started for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import chdb  # noqa: E402

from eventjobs.readside import queries as query  # noqa: E402
from eventjobs.clickhouse import ChdbBackend  # noqa: E402
from eventjobs.core.codec import encode  # noqa: E402
from eventjobs.clickhouse.backend import quote_identifier  # noqa: E402
from eventjobs.dev.broker import LocalKafka, free_port  # noqa: E402
from eventjobs.kafka.clients import consumer  # noqa: E402
from eventjobs.readside.migrations import apply_migrations, default_projections_dir  # noqa: E402
from eventjobs.readside.projector import BatchFolder, JobCache, Projector, ProjectorOptions, events_topic  # noqa: E402
from eventjobs.readside.replay import replay_projections  # noqa: E402
from eventjobs.readside.rows import (  # noqa: E402
    DEAD_LETTER_COLUMNS, JOB_COLUMNS, JOB_EVENT_COLUMNS, columns_of, dead_letter_row, job_row, project_event)
from eventjobs.readside.store import ProjectionStore  # noqa: E402
from eventjobs.settings import Settings  # noqa: E402
from eventjobs.kafka.admin import apply_topics  # noqa: E402
from benchmarks.bench_throughput import machine_info as throughput_machine_info  # noqa: E402
from tests.readside.fastlog import job_log, produce_fast  # noqa: E402


def machine_info() -> str:
    return f"{throughput_machine_info()}, chdb {chdb.__version__}"


async def read_all(settings: Settings) -> list:
    """Every record of the event log (to time the fold and the insert without Kafka)."""
    from eventjobs.kafka.clients import partitions_of

    partitions = await partitions_of(settings, events_topic(settings))
    reader = consumer(settings, group_id=None, max_partition_fetch_bytes=4 * 1024 * 1024)
    await reader.start()
    try:
        reader.assign(partitions)
        ends = await reader.end_offsets(partitions)
        await reader.seek_to_beginning(*partitions)
        records = []
        while any([await reader.position(tp) < ends[tp] for tp in partitions]):
            for batch in (await reader.getmany(timeout_ms=500, max_records=20_000)).values():
                records.extend(batch)
        return records
    finally:
        await reader.stop()


async def ingestion(backend: ChdbBackend, settings: Settings, n: int) -> dict[str, float]:
    database = f"ingest_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir(), database)
    from tests.support.event_log import end_offsets

    projector = Projector(backend, settings, database=database, control=False, stop_at=await end_offsets(settings),
                          options=ProjectorOptions(batch_max_events=20_000, batch_max_wait_s=0.2))
    started = time.perf_counter()
    await projector.run(asyncio.Event())
    elapsed = time.perf_counter() - started
    assert backend.query(f"SELECT count() FROM {database}.job_events", database="").scalar() == n
    backend.command(f"DROP DATABASE {database} SYNC", database="")
    backend.forget_database(database)
    return {"events_per_s": n / elapsed, "elapsed_s": elapsed}


async def parts(backend: ChdbBackend, settings: Settings, records: list) -> dict[str, float]:
    """The projector's two stages on records already in memory: fold (decode + apply + rows), insert."""
    database = f"parts_{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir(), database)
    store = ProjectionStore(backend, database)
    cache = JobCache(500_000)
    cache.reset(complete=True)
    folder = BatchFolder(store, cache, settings.max_event_bytes)
    fold_s = insert_s = 0.0
    done: dict[int, int] = {}
    for start in range(0, len(records), 20_000):
        chunk = records[start:start + 20_000]
        t0 = time.perf_counter()
        batch = folder.fold(chunk, done)
        t1 = time.perf_counter()
        store.write(batch)
        insert_s += time.perf_counter() - t1
        fold_s += t1 - t0
    backend.command(f"DROP DATABASE {database} SYNC", database="")
    backend.forget_database(database)
    n = len(records)
    return {"fold_per_s": n / fold_s, "insert_per_s": n / insert_s, "fold_s": fold_s, "insert_s": insert_s}


async def replay(backend: ChdbBackend, settings: Settings, n: int) -> dict[str, float]:
    database = f"live_{uuid.uuid4().hex[:8]}"
    live = ChdbBackend(backend.path, database, role="bench")
    try:
        await asyncio.to_thread(apply_migrations, live, default_projections_dir(), database)
        report = await replay_projections(settings, live, options=ProjectorOptions(batch_max_events=20_000,
                                                                                  batch_max_wait_s=0.2))
        assert report.events == n
        live.command(f"DROP DATABASE {database} SYNC", database="")
        live.forget_database(database)
    finally:
        live.close()
    return {"events_per_s": report.events / report.elapsed_s, "elapsed_s": report.elapsed_s}


def build_query_table(backend: ChdbBackend, target: int, database: str = "q1m") -> int:
    """About `target` job_events rows, with their metrics and the `jobs` and `dead_letters` rows
    of their jobs, in `database` (see the module doc). The base log's last 2,000 events are left
    out, so about 200 jobs stay open (pending, claimed, running, retrying) in every copy. Copy k
    prefixes job and event ids with `cKKKK-`, so a later copy's ids sort after an earlier one's as
    uuid7 ids of later jobs do (the tables' parts then hold ranges of ids as they do in a live
    read side); the ids inside the stored payloads and states are not renamed."""
    backend.command(f"DROP DATABASE IF EXISTS {database} SYNC", database="")
    apply_migrations(backend, default_projections_dir(), database)
    log = job_log(102_000, seed=42)[:-2_000]
    jobs: dict = {}
    rows = []
    for offset, event in enumerate(log):
        projected = project_event(jobs.get(event.job_id), event, encode(event), 0, offset)
        if projected.job is not None:
            jobs[event.job_id] = projected.job
        rows.append(projected.row)
    backend.insert("job_events", JOB_EVENT_COLUMNS, columns_of(rows, len(JOB_EVENT_COLUMNS)), database=database)
    backend.insert("jobs", JOB_COLUMNS, columns_of([job_row(job) for job in jobs.values()], len(JOB_COLUMNS)),
                   database=database)
    dead = [dead_letter_row(job) for job in jobs.values() if job.state.status.value == "dead_lettered"]
    backend.insert("dead_letters", DEAD_LETTER_COLUMNS, columns_of(dead, len(DEAD_LETTER_COLUMNS)), database=database)
    base = len(rows)
    copies = max(0, (target - base + base - 1) // base)
    shifted = {"occurred_at", "enqueued_at", "run_at", "started_at", "finished_at", "updated_at", "next_due_at",
               "ready_at", "dead_lettered_at"}
    for copy in range(1, copies + 1):
        for table, names, where in (("job_events", JOB_EVENT_COLUMNS, f"log_offset < {base}"),
                                    ("jobs", JOB_COLUMNS, "length(job_id) = 36"),
                                    ("dead_letters", DEAD_LETTER_COLUMNS, "length(job_id) = 36")):
            select = ", ".join(
                f"concat('c{copy:04d}-', {c})" if c in ("job_id", "event_id") else
                f"{c} + INTERVAL {copy} DAY" if c in shifted else
                f"log_offset + {copy * base}" if c == "log_offset" else quote_identifier(c)
                for c in names)
            columns = ", ".join(quote_identifier(c) for c in names)
            backend.command(f"INSERT INTO {database}.{table} ({columns}) SELECT {select} FROM {database}.{table} "
                            f"WHERE {where}", database="")
    backend.command(f"OPTIMIZE TABLE {database}.job_metrics_1m FINAL", database="")
    backend.command(f"INSERT INTO {database}.projector_progress (log_partition, state_offset) SELECT log_partition, "
                    f"max(log_offset) FROM {database}.job_events GROUP BY log_partition", database="")  # all written
    return int(backend.query(f"SELECT count() FROM {database}.job_events", database="").scalar())


def query_latency(backend: ChdbBackend, repeat: int) -> dict[str, float]:
    q = ChdbBackend(backend.path, "q1m", role="bench")
    last_day = q.query("SELECT max(occurred_at) - INTERVAL 1 DAY FROM job_events").scalar()
    try:
        timings: dict[str, float] = {}
        for label, action in (("stats --by name", lambda: query.job_stats(q, by="name")),
                              ("stats --by queue", lambda: query.job_stats(q, by="queue")),
                              ("stats --queue emails --since (last day)",
                               lambda: query.job_stats(q, queue="emails", since=last_day))):
            action()  # warm
            samples = []
            for _ in range(repeat):
                t0 = time.perf_counter()
                action()
                samples.append(time.perf_counter() - t0)
            timings[label] = statistics.median(samples) * 1000
        samples = []
        for _ in range(repeat):
            t0 = time.perf_counter()
            q.query("SELECT type, count() FROM job_events GROUP BY type")
            samples.append(time.perf_counter() - t0)
        timings["GROUP BY type over job_events (raw scan)"] = statistics.median(samples) * 1000
        return timings
    finally:
        q.close()


def rates(runs: list[dict[str, float]]) -> str:
    return ", ".join(f"{run['events_per_s']:,.0f}" for run in runs)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=200_000)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--query-events", type=int, default=1_000_000)
    parser.add_argument("--skip", default="", help="comma-separated: ingestion,parts,replay,query")
    options = parser.parse_args()
    skip = set(filter(None, options.skip.split(",")))
    print(f"machine: {machine_info()}")
    work = Path(tempfile.mkdtemp(prefix="eventjobs-bench-readside-"))
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not bootstrap:
        broker = LocalKafka(home=work / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
        bootstrap = broker.up().bootstrap
    print(f"broker: {bootstrap}; chdb in {work / 'chdb'}")
    backend = ChdbBackend(work / "chdb", "default", role="bench")
    try:
        settings = Settings(kafka_bootstrap=bootstrap, namespace=f"bench{uuid.uuid4().hex[:8]}",
                            topics_dir=ROOT / "topics")
        if not {"ingestion", "parts", "replay"} <= skip:
            await apply_topics(settings)
            t0 = time.perf_counter()
            log = job_log(options.events, seed=7)
            t1 = time.perf_counter()
            await produce_fast(settings, log)
            print(f"log: {len(log):,} events of {len({e.job_id for e in log}):,} jobs built in {t1 - t0:.1f} s, "
                  f"produced in {time.perf_counter() - t1:.1f} s")
            n = len(log)
            del log
            if "ingestion" not in skip:
                runs = [await ingestion(backend, settings, n) for _ in range(options.runs)]
                print(f"ingestion (projector, Kafka -> chdb): median {statistics.median(r['events_per_s'] for r in runs):,.0f} "
                      f"events/s  (runs: {rates(runs)})")
            if "parts" not in skip:
                records = await read_all(settings)
                t0 = time.perf_counter()
                await read_all(settings)
                fetch_s = time.perf_counter() - t0
                runs = [await parts(backend, settings, records) for _ in range(options.runs)]
                print(f"  where the time goes (median): Kafka fetch {n / fetch_s:,.0f} events/s; "
                      f"fold (decode+apply+rows) {statistics.median(r['fold_per_s'] for r in runs):,.0f} events/s; "
                      f"ClickHouse insert (job_events+MV, jobs, dead_letters) "
                      f"{statistics.median(r['insert_per_s'] for r in runs):,.0f} events/s")
                del records
            if "replay" not in skip:
                runs = [await replay(backend, settings, n) for _ in range(options.runs)]
                print(f"replay --projections (chdb in-process): median "
                      f"{statistics.median(r['events_per_s'] for r in runs):,.0f} events/s  "
                      f"(runs: {rates(runs)})")
        if "query" not in skip:
            t0 = time.perf_counter()
            rows = await asyncio.to_thread(build_query_table, backend, options.query_events)
            print(f"query table: {rows:,} job_events rows built in {time.perf_counter() - t0:.1f} s")
            for label, ms in query_latency(backend, 20).items():
                print(f"  {label}: median {ms:.1f} ms (20 runs)")
    finally:
        backend.close()
        if broker is not None:
            broker.down()
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    asyncio.run(main())
