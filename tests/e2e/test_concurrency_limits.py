"""Concurrency limits per key end to end: separate processor and worker processes, a worker SIGKILL.

The jobs live in `build_limits_app`; subprocesses load it as `--app tests.e2e.test_concurrency_limits:app`
with EVENTJOBS_NAMESPACE set. Each handler appends its own start and end (wall clock, one machine)
to the file named by LIMITS_RUNS_FILE, so the limit is checked from what the handlers did, not
from what the processors recorded.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections import defaultdict
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from pydantic import SecretStr

from eventjobs import App, JobContext, Limit
from eventjobs.clickhouse import ServerBackend
from eventjobs.readside import queries as query
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import Projector, ProjectorOptions
from tests.readside.conftest import chdb_path, server_url  # noqa: F401 - fixtures
from tests.readside.tables import cli_env, run_cli
from tests.support.event_log import end_offsets
from eventjobs.core.slots import decode_table
from eventjobs.core.state import JobStatus
from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.clients import partitions_of, read_to_end
from eventjobs.settings import Settings
from tests.e2e.conftest import Runtime, built_app, job_events, processor_runtime, spawn, wait_for_status

APP = "tests.e2e.test_concurrency_limits:app"
RUNS_ENV = "LIMITS_RUNS_FILE"


def _note(kind: str, args: dict[str, Any], ctx: JobContext) -> None:
    path = os.environ.get(RUNS_ENV)
    if path:
        line = json.dumps({"kind": kind, "job": ctx.job_id, "attempt": ctx.attempt, "key": args["key"],
                           "pid": os.getpid(), "at": time.time()})
        with open(path, "a") as handle:  # one short write per line: lines of processes do not interleave
            handle.write(line + "\n")


def build_limits_app(namespace: str, **settings: Any) -> App:
    app = App(namespace, **settings)

    @app.job(queue="default", concurrency=Limit(key=lambda args: args["key"], max=2), max_attempts=5)
    async def limited(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        _note("start", args, ctx)
        await asyncio.sleep(args.get("seconds", 0.4))
        _note("end", args, ctx)
        return {"key": args["key"]}

    @app.job(queue="default", concurrency=Limit(key=lambda args: args["key"], max=1, strategy="cancel_newest"))
    async def newest_cancelled(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        await asyncio.sleep(args.get("seconds", 0.0))
        return {"n": args["n"]}

    @app.job(queue="default", concurrency=Limit(key=lambda args: args["key"], max=1, strategy="cancel_in_progress"))
    async def superseded(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        await asyncio.sleep(args.get("seconds", 0))  # a cancel request stops it (the worker cancels the handler)
        return {"n": args["n"]}

    return app


app = build_limits_app(os.environ.get("EVENTJOBS_NAMESPACE", "testlimits"))


@pytest.fixture
async def limits_app(settings: Settings) -> AsyncIterator[App]:
    async with built_app(settings, build_limits_app, ["default"]) as application:
        yield application


@pytest.fixture
async def limits_runtime(limits_app: App) -> AsyncIterator[Runtime]:
    async with processor_runtime(limits_app) as rt:
        yield rt


def most_at_once(intervals: list[tuple[float, float]]) -> int:
    """The largest number of intervals that overlap at one moment (an end before a start at the same time)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    now = peak = 0
    for _, step in edges:
        now += step
        peak = max(peak, now)
    return peak


def runs_of(path: Path, killed_pid: int | None, killed_at: float | None) -> dict[str, list[tuple[float, float]]]:
    """Per key, each handler run's [start, end]; a run the kill cut short ends at the kill."""
    starts: dict[tuple[str, int, int], tuple[str, float]] = {}
    ends: dict[tuple[str, int, int], float] = {}
    for line in path.read_text().splitlines():
        note = json.loads(line)
        run = (note["job"], note["attempt"], note["pid"])
        if note["kind"] == "start":
            starts[run] = (note["key"], note["at"])
        else:
            ends[run] = note["at"]
    per_key: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for run, (key, start) in starts.items():
        end = ends.get(run)
        if end is None:
            assert run[2] == killed_pid and killed_at is not None, f"run {run} never ended and was not killed"
            end = killed_at
        per_key[key].append((start, end))
    return per_key


async def slot_tables(settings: Settings) -> dict[str, Any]:
    """The last slot table of every key in the limit-state changelog."""
    topic = f"{settings.namespace}.limit-state"
    tables: dict[str, Any] = {}
    async for record in read_to_end(settings, await partitions_of(settings, topic)):
        assert record.key is not None and record.value is not None
        tables[record.key.decode()] = decode_table(record.value)
    return tables


@pytest.mark.parametrize("kill", [False, True], ids=["no-kill", "worker-killed"])
async def test_forty_jobs_over_four_keys_never_run_more_than_two_of_a_key_even_when_a_worker_is_killed(
    limits_app: App, tmp_path: Path, processes: list[Any], kill: bool
) -> None:
    # Given two processor processes and two worker processes (8 handlers each: far more than the
    # limit allows), with short leases so that a killed worker's slots come back soon
    settings = limits_app.settings
    runs = tmp_path / "runs.jsonl"
    runs.touch()
    env = {RUNS_ENV: str(runs)}
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p1.log", **env))
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p2.log", **env))
    doomed = spawn(["worker", "--app", APP, "--lease", "2s", "--concurrency", "8", "--worker-id", "doomed"],
                   settings, tmp_path / "w1.log", **env)
    processes.append(doomed)
    processes.append(spawn(["worker", "--app", APP, "--lease", "2s", "--concurrency", "8", "--worker-id", "survivor"],
                           settings, tmp_path / "w2.log", **env))
    # When 40 jobs over 4 keys (limit 2 per key) are enqueued
    keys = [f"tenant-{n}" for n in range(4)]
    ids = [await limits_app.enqueue("limited", {"key": keys[n % 4], "n": n, "seconds": 0.4}) for n in range(40)]
    # and (worker-killed) the first worker is SIGKILLed while it runs handlers of limited jobs
    deadline = time.monotonic() + 90
    killed_at = None
    while kill and time.monotonic() < deadline:
        notes = [json.loads(line) for line in runs.read_text().splitlines()]
        open_runs = {(n["job"], n["attempt"]) for n in notes if n["pid"] == doomed.pid and n["kind"] == "start"} - {
            (n["job"], n["attempt"]) for n in notes if n["pid"] == doomed.pid and n["kind"] == "end"}
        done = sum(1 for n in notes if n["kind"] == "end")
        if open_runs and done >= 6:
            os.kill(doomed.pid, signal.SIGKILL)
            killed_at = time.time()
            break
        await asyncio.sleep(0.02)
    if kill:
        assert killed_at is not None, "the first worker never ran a handler"
        doomed.wait(timeout=10)
    # Then every job completes (the killed worker's runs after their lease expired)
    for job_id in ids:
        state = await limits_app.wait(job_id, timeout=180)
        assert state.status is JobStatus.COMPLETED, state
    # and no key ever had more than 2 handlers running at once, by the handlers' own clocks
    per_key = runs_of(runs, doomed.pid, killed_at)
    assert sorted(per_key) == keys
    peaks = {key: most_at_once(intervals) for key, intervals in per_key.items()}
    assert all(peak <= 2 for peak in peaks.values()), peaks
    assert max(peaks.values()) == 2, peaks  # the limit was reached, not just never approached
    cut_short = [run for run in per_key.values() for run in run if run[1] == killed_at]
    assert bool(cut_short) == kill, "the kill interrupted no handler"
    print(f"\nmost handlers of a key at once: {peaks}; runs cut short by the kill: {len(cut_short)}; handler "
          f"runs: {sum(len(v) for v in per_key.values())}")
    # and no slot leaked: every key's table is empty once all ended
    tables: dict[str, Any] = {}
    for _ in range(100):  # the last releases' commits may trail the completions by a commit interval
        tables = await slot_tables(settings)
        if len(tables) == 4 and all(not t.holders and not t.queue for t in tables.values()):
            break
        await asyncio.sleep(0.1)
    assert sorted(t.key for t in tables.values()) == keys
    assert all(not t.holders and not t.queue for t in tables.values()), tables
    # every grant and release is an event: grants = requests (queue strategy), one release per request
    events = [e for e in await job_events(settings) if e.type.startswith("slot_")]
    requests = {e.event_id for e in events if e.type == "slot_requested"}
    assert {e.causation_id for e in events if e.type == "slot_granted"} == requests
    assert {e.causation_id for e in events if e.type == "slot_released"} == requests
    assert len(requests) >= 40 + len(cut_short)  # a retried attempt asks again


async def test_a_processor_killed_mid_run_loses_no_grant_and_leaks_no_slot(
    limits_app: App, tmp_path: Path, processes: list[Any]
) -> None:
    # Given two processor processes and a worker, and 24 jobs over 3 keys (limit 2 per key)
    settings = limits_app.settings
    runs = tmp_path / "runs.jsonl"
    runs.touch()
    env = {RUNS_ENV: str(runs)}
    doomed = spawn(["processor", "--app", APP], settings, tmp_path / "p1.log", **env)
    processes.append(doomed)
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p2.log", **env))
    processes.append(spawn(["worker", "--app", APP, "--lease", "3s", "--concurrency", "12"], settings,
                           tmp_path / "w.log", **env))
    keys = [f"tenant-{n}" for n in range(3)]
    ids = [await limits_app.enqueue("limited", {"key": keys[n % 3], "n": n, "seconds": 0.3}) for n in range(24)]
    # When one processor is SIGKILLed once a few jobs ran (requests, grants and releases in flight),
    # and another takes its place
    deadline = time.monotonic() + 90
    while sum(1 for line in runs.read_text().splitlines() if '"end"' in line) < 5:
        assert time.monotonic() < deadline, "no job ran"
        await asyncio.sleep(0.02)
    os.kill(doomed.pid, signal.SIGKILL)
    doomed.wait(timeout=10)
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p3.log", **env))
    # Then every job completes, no key ever ran more than 2 at once, and every table ends empty
    for job_id in ids:
        state = await limits_app.wait(job_id, timeout=180)
        assert state.status is JobStatus.COMPLETED, state
    peaks = {key: most_at_once(intervals) for key, intervals in runs_of(runs, None, None).items()}
    assert sorted(peaks) == keys and all(peak <= 2 for peak in peaks.values()), peaks
    tables: dict[str, Any] = {}
    for _ in range(100):
        tables = await slot_tables(settings)
        if len(tables) == 3 and all(not t.holders and not t.queue for t in tables.values()):
            break
        await asyncio.sleep(0.1)
    assert len(tables) == 3 and all(not t.holders and not t.queue for t in tables.values()), tables


async def test_cancel_newest_cancels_a_job_that_asks_while_the_slot_is_taken(limits_runtime: Runtime) -> None:
    app = limits_runtime.app
    # Given a job that holds the key's only slot (no worker yet: it waits for one, pending)
    first = await app.enqueue("newest_cancelled", {"key": "k", "n": 1})
    await wait_for_status(limits_runtime, first, JobStatus.PENDING)
    # When a second job of the key asks
    second = await app.enqueue("newest_cancelled", {"key": "k", "n": 2})
    # Then the newest is cancelled, saying why; the first runs once a worker comes
    state = await wait_for_status(limits_runtime, second, JobStatus.CANCELLED)
    assert state.reason is not None and "every slot is taken" in state.reason and "cancel_newest" in state.reason
    await limits_runtime.start_worker()
    assert (await app.wait(first, timeout=30)).result == {"n": 1}
    # and the slot is free again: a third job runs
    third = await app.enqueue("newest_cancelled", {"key": "k", "n": 3})
    assert (await app.wait(third, timeout=30)).status is JobStatus.COMPLETED


async def test_cancel_in_progress_cancels_the_running_job_in_favour_of_the_newest(limits_runtime: Runtime) -> None:
    app = limits_runtime.app
    await limits_runtime.start_worker()
    # Given a job of the key running (it would run 20 s)
    first = await app.enqueue("superseded", {"key": "k", "n": 1, "seconds": 20})
    await wait_for_status(limits_runtime, first, JobStatus.RUNNING)
    # When a newer job of the key is enqueued
    second = await app.enqueue("superseded", {"key": "k", "n": 2})
    # Then the running one is cancelled (the worker stops its handler), and the newest runs after it
    state = await app.wait(first, timeout=30)
    assert state.status is JobStatus.CANCELLED and "cancel_in_progress" in (state.reason or ""), state
    done = await app.wait(second, timeout=30)
    assert done.status is JobStatus.COMPLETED and done.result == {"n": 2}
    assert done.started_at is not None and state.finished_at is not None and done.started_at >= state.finished_at


async def test_jobs_show_says_which_key_a_job_waits_for_and_its_place(limits_runtime: Runtime, server_url: str) -> None:  # noqa: F811
    # Given (no worker) 5 jobs of one key with a limit of 2: two hold the slots, three wait in the
    # order their requests reached the key's owner (the jobs live on different partitions)
    app = limits_runtime.app
    ids = [await app.enqueue("limited", {"key": "tenant-9", "n": n}) for n in range(5)]
    for _ in range(300):
        states = [await app.state(job_id) for job_id in ids]
        if sorted(s.status.value for s in states if s is not None) == ["pending"] * 2 + ["waiting"] * 3:
            break
        await asyncio.sleep(0.05)
    pending = [s.job_id for s in states if s is not None and s.status is JobStatus.PENDING]
    assert len(pending) == 2, states
    # When the log is projected into ClickHouse
    settings = app.settings.model_copy(update={"clickhouse_url": SecretStr(server_url)})
    backend = ServerBackend(server_url, settings.namespace)
    try:
        await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
        projector = Projector(backend, settings, control=False, stop_at=await end_offsets(settings),
                              options=ProjectorOptions(batch_max_events=1000, batch_max_wait_s=0.1))
        await asyncio.wait_for(projector.run(asyncio.Event()), 60)
        # Then `jobs show` says which key each waiting job waits for, and where it stands
        waits = {job_id: query.show_job(backend, job_id).slot_wait for job_id in ids}
        assert [waits[job_id] for job_id in pending] == [None, None]  # pending: they hold their slots
        places = {w.position: job_id for job_id, w in waits.items() if w is not None}
        assert sorted(places) == [1, 2, 3]
        shown = await asyncio.to_thread(run_cli, ["jobs", "show", places[3]], cli_env(settings))
        assert shown.returncode == 0, shown.stderr
        assert ("waiting for a slot of limit 'limited' key 'tenant-9' (position 3 of 3; 2 of 2 slots in use)"
                in shown.stdout), shown.stdout
        as_json = await asyncio.to_thread(run_cli, ["jobs", "show", places[3], "--json"], cli_env(settings))
        wait = json.loads(as_json.stdout)["job"]["slot_wait"]
        assert (wait["key"], wait["position"], wait["waiting"], wait["in_use"], wait["max"]) == ("tenant-9", 3, 3, 2, 2)
        # the owner's history has every request of the key, in the order the owner decided them
        owned = await asyncio.to_thread(run_cli, ["history", wait["owner_id"], "--json"], cli_env(settings))
        assert owned.returncode == 0, owned.stderr
        assert [e["type"] for e in json.loads(owned.stdout)["events"]] == ["slot_requested"] * 5
        # and the owner's events are no job of their own in the listing
        assert {j.job_id for j in query.list_jobs(backend, limit=100)} == set(ids)
    finally:
        backend.command(f"DROP DATABASE IF EXISTS `{settings.namespace}` SYNC", database="")
        backend.close()


async def test_the_processor_gauges_slots_in_use_and_jobs_waiting_per_limit(limits_app: App) -> None:
    from eventjobs.metrics import LIMIT_JOBS_WAITING, LIMIT_SLOTS_IN_USE, Metrics
    from eventjobs.runtime.processor import run_processor

    metrics = Metrics()
    runtime = Runtime(limits_app)
    runtime.tasks.append(asyncio.create_task(run_processor(limits_app.settings, runtime.stop, metrics=metrics)))

    def gauges() -> tuple[float | None, float | None]:
        labels = {"limit": "limited"}
        return (metrics.registry.get_sample_value(LIMIT_SLOTS_IN_USE, labels),
                metrics.registry.get_sample_value(LIMIT_JOBS_WAITING, labels))

    async def until(wanted: tuple[float, float]) -> None:
        for _ in range(400):
            if gauges() == wanted:
                return
            await asyncio.sleep(0.05)
        raise AssertionError(f"gauges {gauges()}, expected {wanted}")

    try:
        # Given 5 jobs of two keys (limit 2 each) and no worker: 2 + 1 hold slots, 2 wait
        ids = [await limits_app.enqueue("limited", {"key": "a" if n < 4 else "b", "n": n, "seconds": 0.1})
               for n in range(5)]
        # Then the gauges say so, per limit name (keys are never labels)
        await until((3, 2))
        # When a worker runs them all, the gauges come back to 0
        await runtime.start_worker()
        for job_id in ids:
            assert (await limits_app.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
        await until((0, 0))
    finally:
        await runtime.close()


async def test_a_grow_carries_the_slot_tables_and_the_waiting_jobs_run_within_the_limit(
    kafka_bootstrap: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import uuid

    from tests.e2e.test_grow_partitions import specs_with
    from tests.support.cli import run_cli as run_eventjobs

    specs = specs_with(tmp_path / "topics", 4)
    monkeypatch.setenv("EVENTJOBS_TOPICS_DIR", str(specs))
    runs = tmp_path / "runs.jsonl"
    runs.touch()
    monkeypatch.setenv(RUNS_ENV, str(runs))
    old_ns, new_ns = f"g{uuid.uuid4().hex[:10]}", f"g{uuid.uuid4().hex[:10]}"
    old = build_limits_app(old_ns, kafka_bootstrap=kafka_bootstrap, topics_dir=specs)
    await apply_topics(old.settings, ["default"])
    # Given 5 jobs of one key (limit 2) and no worker: 2 hold the slots, 3 wait; then the processor stops
    runtime = Runtime(old)
    runtime.start_processor()
    ids = [await old.enqueue("limited", {"key": "tenant-g", "n": n, "seconds": 0.3}) for n in range(5)]
    for _ in range(400):
        states = [await old.state(job_id) for job_id in ids]
        if sorted(s.status.value for s in states if s is not None) == ["pending"] * 2 + ["waiting"] * 3:
            break
        await asyncio.sleep(0.05)
    else:
        raise AssertionError(f"not 2 pending and 3 waiting: {states}")
    await runtime.close()  # closes `old` too
    producer_app = build_limits_app(old_ns, kafka_bootstrap=kafka_bootstrap, topics_dir=specs)
    late = await producer_app.enqueue("limited", {"key": "tenant-g", "n": 5, "seconds": 0.3})  # carried over unfolded
    await producer_app.close()
    # When the namespace grows from 4 to 8 partitions
    grown = await asyncio.to_thread(run_eventjobs, "partitions", "grow", "--namespace", old_ns, "--into", new_ns,
                                    "--to", "8", env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
    assert grown.returncode == 0, grown.stdout + grown.stderr
    assert ", 1 slot tables" in grown.stdout, grown.stdout
    # Then the new namespace's processor and worker run every job, never more than 2 at once
    new = build_limits_app(new_ns, kafka_bootstrap=kafka_bootstrap, topics_dir=specs)
    target = Runtime(new)
    target.start_processor()
    try:
        await target.start_worker(concurrency=10)
        for job_id in [*ids, late]:
            assert (await new.wait(job_id, timeout=90)).status is JobStatus.COMPLETED
        peaks = {key: most_at_once(intervals) for key, intervals in runs_of(runs, None, None).items()}
        assert peaks == {"tenant-g": 2}, peaks
        assert sum(len(v) for v in runs_of(runs, None, None).values()) == 6  # each ran once
        tables: dict[str, Any] = {}
        for _ in range(100):
            tables = await slot_tables(new.settings)
            if tables and all(not t.holders and not t.queue for t in tables.values()):
                break
            await asyncio.sleep(0.1)
        assert len(tables) == 1 and all(not t.holders and not t.queue for t in tables.values()), tables
    finally:
        await target.close()


async def test_an_idle_key_s_table_is_forgotten_and_the_key_limits_again(limits_app: App) -> None:
    """Memory follows the keys in use: an owner's lane drops a table that is empty and idle (here
    after 1 s, looked at every 0.5 s), a tombstone in limit-state, and a later job of the key gets
    a new table."""
    from eventjobs.runtime.processor import LifecycleProcessor

    settings = limits_app.settings
    stop = asyncio.Event()
    processor = LifecycleProcessor(settings, slot_idle_s=1.0, slot_sweep_s=0.5)
    running = asyncio.create_task(processor.run(stop))
    rt = Runtime(limits_app)
    try:
        await rt.start_worker(concurrency=4)
        keys = [f"tenant-{n}" for n in range(3)]
        ids = [await limits_app.enqueue("limited", {"key": keys[n % 3], "n": n, "seconds": 0.05}) for n in range(9)]
        for job_id in ids:
            assert (await limits_app.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
        # When the keys stay idle, their owners' lanes forget their tables
        deadline = time.monotonic() + 30
        while any(lane.slots for lane in processor.lanes.values()):
            assert time.monotonic() < deadline, {p: list(lane.slots) for p, lane in processor.lanes.items()}
            await asyncio.sleep(0.1)
        topic = f"{settings.namespace}.limit-state"
        latest: dict[str, bytes | None] = {}
        for _ in range(100):  # the tombstones commit with the lane's next transaction
            latest = {record.key.decode(): record.value  # type: ignore[union-attr]  # keyed by owner
                      async for record in read_to_end(settings, await partitions_of(settings, topic))}
            if len(latest) == 3 and all(value is None for value in latest.values()):
                break
            await asyncio.sleep(0.1)
        assert len(latest) == 3 and all(value is None for value in latest.values()), latest
        # Then a key used again limits again, from a new table
        again = [await limits_app.enqueue("limited", {"key": keys[0], "n": 100 + n, "seconds": 0.05}) for n in range(3)]
        for job_id in again:
            assert (await limits_app.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
        from eventjobs.core.slots import owner_id

        owner = owner_id("limited", keys[0]).encode()
        history: list[bytes | None] = []
        for _ in range(100):  # the owner's records in order: its table, the tombstone, a new table
            history = [record.value async for record in read_to_end(settings, await partitions_of(settings, topic))
                       if record.key == owner]
            tombstone = history.index(None) if None in history else len(history)
            after = [decode_table(value) for value in history[tombstone + 1:] if value is not None]
            if after and after[-1].granted_total == 3 and not after[-1].holders:
                break
            await asyncio.sleep(0.1)
        assert after and after[-1].granted_total == 3 and not after[-1].holders, history
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
        await rt.close()


async def test_an_operator_raises_a_key_s_max_at_run_time_and_the_waiting_jobs_start(
    limits_app: App, limits_runtime: Runtime, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`eventjobs limits set` (App.set_limit): the owner uses the operator's max from then on."""
    runs = tmp_path / "runs.jsonl"
    runs.touch()
    monkeypatch.setenv(RUNS_ENV, str(runs))
    await limits_runtime.start_worker(concurrency=8)
    # Given 8 jobs of one key whose jobs say max 2, each running 1 s
    ids = [await limits_app.enqueue("limited", {"key": "tenant-x", "n": n, "seconds": 1.0}) for n in range(8)]
    deadline = time.monotonic() + 30
    while '"start"' not in runs.read_text():
        assert time.monotonic() < deadline, "no job started"
        await asyncio.sleep(0.05)
    # When an operator raises the key's max to 4 while they run and wait
    owner = await limits_app.set_limit("limited", key="tenant-x", max=4)
    for job_id in ids:
        assert (await limits_app.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
    # Then up to 4 ran at once, never more, and the change is an event in the owner's history
    peak = most_at_once(runs_of(runs, None, None)["tenant-x"])
    assert peak == 4, peak
    changes = [e for e in await job_events(limits_app.settings, owner) if e.type == "limit_changed"]
    assert [(e.max, e.reset) for e in changes] == [(4, False)]
    # and a reset hands the max back to the jobs' option (2) from their next request
    await limits_app.reset_limit("limited", key="tenant-x")
    runs.write_text("")
    ids = [await limits_app.enqueue("limited", {"key": "tenant-x", "n": 10 + n, "seconds": 0.5}) for n in range(6)]
    for job_id in ids:
        assert (await limits_app.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
    assert most_at_once(runs_of(runs, None, None)["tenant-x"]) == 2


def test_a_bad_run_time_limit_is_refused_before_anything_is_sent(limits_app: App) -> None:
    from eventjobs.core.options import InvalidJobOptions

    with pytest.raises(InvalidJobOptions, match="limit 'limited': concurrency max must be an integer from 1 to 1,000"):
        asyncio.run(limits_app.set_limit("limited", key="k", max=0))
    with pytest.raises(InvalidJobOptions, match=r"give max .* rate .* or both"):
        asyncio.run(limits_app.set_limit("limited", key="k"))
    with pytest.raises(InvalidJobOptions, match="a reset hands max, rate and burst back"):
        from eventjobs.core.commands import limit_changed_event
        from eventjobs.core.clock import SystemClock
        limit_changed_event("limited", "k", max_=2, reset=True, now=SystemClock().now(), actor="test")
