"""`eventjobs replay`: rebuilt projections equal the live ones row by row, queries answer throughout;
the processor's job-state changelog is compared with the fold of the log and corrected."""

from __future__ import annotations

import asyncio
import json
import random
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import orjson
import pytest

from eventjobs.readside import queries as query
from eventjobs.clickhouse import Backend, ClickHouseError
from eventjobs.core.clock import FrozenClock
from eventjobs.core.fold import fold
from eventjobs.core.state import JobStatus, encode_state
from eventjobs.kafka.clients import producer
from eventjobs.runtime.processor import LifecycleProcessor
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import Projector, ProjectorOptions
from eventjobs.readside.replay import replay_projections
from eventjobs.settings import Settings
from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.topics import TopicNames, load_specs
from tests.readside.fastlog import QUEUES, job_log, produce_fast
from tests.readside.tables import (
    assert_same_projections,
    cli_env,
    read_api,
    run_cli,
    start_projector,
    stop_process,
    wait_for_count,
)
from tests.support.event_log import end_offsets

pytestmark = pytest.mark.kafka


async def _project_live(backend: Backend, settings: Settings) -> None:
    await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
    projector = Projector(backend, settings, control=False, stop_at=await end_offsets(settings),
                          options=ProjectorOptions(batch_max_events=2000, batch_max_wait_s=0.1))
    await asyncio.wait_for(projector.run(asyncio.Event()), 120)


async def test_replay_rebuilds_identical_tables_on_both_backends(backend: Backend, settings: Settings) -> None:
    # Given a log projected by the live projector
    await apply_topics(settings)
    log = job_log(6000, seed=3)
    await produce_fast(settings, log)
    await _project_live(backend, settings)
    # When the projections are replayed from the beginning, keeping the replaced tables
    seen: list[tuple[int, int]] = []
    report = await replay_projections(settings, backend, keep_old=True, progress=lambda d, t: seen.append((d, t)),
                                      options=ProjectorOptions(batch_max_events=1500, batch_max_wait_s=0.1))
    # Then the swapped-in tables equal the live ones row by row, and progress reached the total
    assert report.kept_old_in and not report.paused_live_projector
    counts = assert_same_projections(backend, report.kept_old_in, backend.database)
    assert counts["job_events"] == len(log) and counts["jobs"] == len(fold(log))
    assert seen[-1] == (report.events, report.events) == (len(log), len(log))
    backend.command(f"DROP DATABASE IF EXISTS `{report.kept_old_in}` SYNC", database="")


async def test_replay_since_keeps_earlier_rows_and_equals_a_full_replay(backend: Backend, settings: Settings) -> None:
    # Given a log written in two parts, a moment apart, and projected live
    await apply_topics(settings)
    log = job_log(4000, seed=5)
    jobs_first = {e.job_id for e in log[:2000]}
    await produce_fast(settings, log[:2000])
    await asyncio.sleep(1.0)
    since = datetime.now(timezone.utc)
    await asyncio.sleep(0.2)
    await produce_fast(settings, log[2000:])
    await _project_live(backend, settings)
    # When only the part since that moment is replayed
    report = await replay_projections(settings, backend, since=since, keep_old=True,
                                      options=ProjectorOptions(batch_max_events=700, batch_max_wait_s=0.1))
    # Then only that part was read from the log, and the result equals the live projection
    assert 0 < report.events < len(log)
    assert report.kept_old_in is not None
    assert_same_projections(backend, report.kept_old_in, backend.database)
    assert len(jobs_first) < len(fold(log))
    backend.command(f"DROP DATABASE IF EXISTS `{report.kept_old_in}` SYNC", database="")


def _query_continuously(settings: Settings, job_ids: list[str], expected_rows: int, stop: threading.Event,
                        answers: list[float], errors: list[str]) -> None:
    backend = read_api(settings)
    rng = random.Random(1)
    try:
        while not stop.is_set():
            try:
                rows = backend.query("SELECT count() FROM job_events").scalar()
                if rows != expected_rows:
                    errors.append(f"job_events had {rows} rows")
                query.show_job(backend, rng.choice(job_ids))
                if not query.list_jobs(backend, limit=5) or not query.job_stats(backend):
                    errors.append("empty answer")
                answers.append(time.monotonic())
            except ClickHouseError as error:
                errors.append(str(error))
    finally:
        backend.close()


async def test_replay_of_100k_events_equals_the_live_tables_while_queries_keep_answering(
        settings: Settings, tmp_path: Path) -> None:
    # Given a log of over 100,000 events projected by a live projector (chdb, serving the read API)
    await apply_topics(settings)
    state_dir = tmp_path / "state"
    settings = settings.model_copy(update={"state_dir": state_dir})
    log = job_log(100_000, seed=1)
    await produce_fast(settings, log)
    projector = start_projector(settings, state_dir, "--batch-size", "20000", "--batch-wait", "0.2")
    try:
        backend = await asyncio.to_thread(read_api, settings)
        await asyncio.to_thread(wait_for_count, backend, len(log), 240)
        # When `eventjobs replay --projections` runs (through the projector's read API) while
        # another thread queries the read side all the time
        stop, answers, errors = threading.Event(), [], []
        job_ids = sorted({e.job_id for e in log})
        reader = threading.Thread(target=_query_continuously,
                                  args=(settings, job_ids, len(log), stop, answers, errors))
        reader.start()
        try:
            result = await asyncio.to_thread(run_cli, ["replay", "--projections", "--from-beginning", "--keep-old",
                                                       "--json"], cli_env(settings, state_dir), 300)
        finally:
            stop.set()
            reader.join(30)
        # Then it swapped in tables equal row by row to what the live projector built
        assert result.returncode == 0, result.stderr
        report = json.loads(result.stdout)
        assert report["paused_live_projector"] and report["events"] >= len(log)
        counts = assert_same_projections(backend, report["kept_old_in"], settings.namespace)
        assert counts["job_events"] == len(log)
        # and every query during the rebuild and the swap answered, with complete data
        assert not errors, errors[:5]
        # (answers all through it: the read side never stopped answering for long)
        assert len(answers) >= 5, answers
        assert max(later - earlier for earlier, later in zip(answers, answers[1:])) < 15, answers
        # and the live projector resumed on the swapped-in tables
        more = job_log(300, seed=2)
        await produce_fast(settings, more)
        await asyncio.to_thread(wait_for_count, backend, len(log) + len(more), 60)
        old = backend.query(f"SELECT count() FROM `{report['kept_old_in']}`.job_events").scalar()
        assert old == len(log)
        backend.close()
    finally:
        stop_process(projector)


async def _write_changelog(settings: Settings, states: dict[str, tuple[int, bytes | None]]) -> None:
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    client = producer(settings)
    await client.start()
    try:
        futures = [await client.send(names.job_state, value, key=job_id.encode(), partition=partition)
                   for job_id, (partition, value) in states.items()]
        await asyncio.gather(*futures)
    finally:
        await client.stop()


async def test_replay_state_finds_and_corrects_drift_and_refuses_while_the_processor_runs(
        settings: Settings) -> None:
    # Given a log processed by a real processor (which writes the changelog), then stopped
    # (every topic created up front: sends that fail with NotLeaderForPartition right after a
    # topic is created are lost from a processor transaction that still commits; see the report)
    await apply_topics(settings, list(QUEUES))
    await _write_changelog(settings, {f"warm-up-{p}": (p, None) for p in range(6)})
    await asyncio.sleep(1.0)
    log = [e for e in job_log(600, seed=9) if e.type == "enqueued"][:60]
    await produce_fast(settings, log)
    # (its clock at the log's time: the log's jobs stay pending, and the enqueue times of this
    # generated log are long past, so on the real clock their re-publish timers would be due)
    processor = LifecycleProcessor(settings, clock=FrozenClock(max(e.occurred_at for e in log)))
    stop = asyncio.Event()
    task = asyncio.create_task(processor.run(stop))
    env = cli_env(settings)
    try:
        deadline = time.monotonic() + 60
        while processor.processed < len(log):
            assert time.monotonic() < deadline and not task.done(), "processor did not process the log"
            await asyncio.sleep(0.1)
        # (while it runs, writing corrections is refused)
        refused = await asyncio.to_thread(run_cli, ["replay", "--state", "--write"], env)
        assert refused.returncode == 1
        assert f"{settings.namespace}.processor" in refused.stderr and "member" in refused.stderr
    finally:
        stop.set()
        await asyncio.wait_for(task, 60)
    # Then the changelog equals the fold of the log
    same = await asyncio.to_thread(run_cli, ["replay", "--state", "--json"], env)
    assert same.returncode == 0, same.stdout[:3000]
    assert json.loads(same.stdout)["identical"] is True
    assert json.loads(same.stdout)["bounded_by_processor_offsets"] is True
    # When the changelog drifts: a job missing, a job altered, a job the log does not know
    folded = fold(log)
    missing, altered = log[0].job_id, log[1].job_id
    partition_of = await _partitions_of_jobs(settings, [missing, altered])
    wrong = {**orjson.loads(encode_state(folded[altered])), "status": JobStatus.COMPLETED.value}
    ghost = {**orjson.loads(encode_state(folded[log[2].job_id])), "job_id": "ghost-job"}
    await _write_changelog(settings, {missing: (partition_of[missing], None),
                                      altered: (partition_of[altered], orjson.dumps(wrong)),
                                      "ghost-job": (0, orjson.dumps(ghost))})
    # Then the comparison names exactly those (exit code 2), and --write corrects only those
    drift = await asyncio.to_thread(run_cli, ["replay", "--state", "--json"], env)
    assert drift.returncode == 2, drift.stderr
    kinds = {d["job_id"]: (d["kind"], d["fields"]) for d in json.loads(drift.stdout)["differences"]}
    assert kinds == {missing: ("missing", []), altered: ("different", ["status"]), "ghost-job": ("extra", [])}
    fixed = await asyncio.to_thread(run_cli, ["replay", "--state", "--write", "--json"], env)
    assert fixed.returncode == 0, fixed.stderr
    assert json.loads(fixed.stdout)["corrections_written"] == 3
    again = await asyncio.to_thread(run_cli, ["replay", "--state"], env)
    assert again.returncode == 0, again.stdout + again.stderr
    assert "equals the fold" in again.stdout


async def _partitions_of_jobs(settings: Settings, job_ids: list[str]) -> dict[str, int]:
    from aiokafka.partitioner import DefaultPartitioner

    from eventjobs.kafka.clients import partitions_of
    from eventjobs.readside.projector import events_topic

    partitions = [tp.partition for tp in await partitions_of(settings, events_topic(settings))]
    return {job_id: DefaultPartitioner()(job_id.encode(), partitions, partitions) for job_id in job_ids}

