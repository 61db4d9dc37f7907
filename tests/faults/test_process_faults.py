"""Process faults against the real broker, every service in its own OS process.

What `tests/e2e/test_crashes.py` already proves is not repeated here, only extended:

* worker SIGKILLed mid-job: there, one job with an in-process processor, rerun after the lease.
  Here (`test_workers_killed_mid_job_...`) several jobs at once with the processor in its own
  process too; handler runs counted through a side channel (`tests/support/fault_app.py`): each
  job ran once on the killed worker and once more after its lease, completed exactly once, and
  the changelog equals the fold of the log.
* worker SIGSTOPped past its lease, then SIGCONTed: not covered there. The job runs again
  elsewhere after the lease; the stale worker's late result reaches the log but decides nothing.
* processor SIGKILLed under load: there, one kill (`test_processor_killed_under_load_resumes_to_the_same_state`),
  plus a kill with timers pending (`test_timers_survive_a_processor_kill_and_fire_once_in_effect`).
  Here the processor is killed twice, the second time right after its successor took its
  partitions (while it restores and redoes what its predecessor left uncommitted), under a mixed
  load (retries, dead letters, delayed jobs, duplicate enqueues); the whole changelog is then
  compared with the fold of the log (`eventjobs replay --state`'s check).
* processor SIGKILLed during a rebalance with two processors: not covered there. Each of two
  processors is killed in the middle of a partition hand-over.
* a paused processor is fenced when it wakes up: `test_crashes.py::test_paused_processor_is_fenced_when_it_wakes_up`.

Every wait polls with a deadline; no fixed sleep is an assertion.
"""

from __future__ import annotations

import asyncio
import os
import random
import signal
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from subprocess import Popen

import pytest

from eventjobs import App
from eventjobs.core.events import DERIVED_TYPES, JobEvent
from eventjobs.core.state import JobState, JobStatus
from eventjobs.kafka.clients import admin_client, partitions_of
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.runtime.state_check import compare_state, processor_committed, read_changelog
from eventjobs.settings import Settings
from tests.e2e.conftest import built_app, job_events, spawn
from tests.support.fault_app import EXECUTIONS_ENV, build_app, execution_lines, read_executions

pytestmark = pytest.mark.kafka
APP = "tests.support.fault_app:app"


# -- helpers shared by the fault tests (also imported by test_broker_restart.py and test_clickhouse_outage.py)


@pytest.fixture
async def fault_app(settings: Settings) -> AsyncIterator[App]:
    """The fault app (tests/support/fault_app.py) on the test's namespace, topics applied."""
    async with built_app(settings, build_app, ["default"]) as application:
        yield application


@dataclass
class Services:
    """Starts processor and worker subprocesses of one namespace, logging to `logs/<name>.log`,
    and counting handler runs in `executions/` (the fault app's side channel)."""

    settings: Settings
    logs: Path
    started: list[Popen[bytes]]
    executions: Path = field(init=False)

    def __post_init__(self) -> None:
        self.executions = self.logs / "executions"
        self.executions.mkdir(parents=True, exist_ok=True)

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def start(self, kind: str, name: str, *args: str) -> Popen[bytes]:
        extra = ["--worker-id", name] if kind == "worker" else []
        process = spawn([kind, "--app", APP, *extra, *args], self.settings, self.log(name),
                        **{EXECUTIONS_ENV: str(self.executions), "FAULT_WORKER_NAME": name})
        self.started.append(process)
        return process

    def tail(self, name: str, chars: int = 3000) -> str:
        path = self.log(name)
        return path.read_text(errors="replace")[-chars:] if path.exists() else "(no log)"


async def poll(check: Callable[[], Awaitable[bool] | bool], timeout: float, what: str, every: float = 0.05) -> None:
    """Wait until `check()` is true, or fail saying what did not happen within `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if isinstance(result, Awaitable):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(every)


def log_has(path: Path, text: str, after: int = 0) -> bool:
    """Whether `text` appears in the log file at or after byte `after`."""
    try:
        with open(path, "rb") as handle:
            handle.seek(after)
            return text.encode() in handle.read()
    except FileNotFoundError:
        return False


def log_size(path: Path) -> int:
    return path.stat().st_size if path.exists() else 0


def sigkill(process: Popen[bytes]) -> None:
    os.kill(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


async def stop_cleanly(services: Services, processes_: list[Popen[bytes]], timeout: float = 60) -> None:
    """SIGTERM the live ones and expect exit code 0 from each."""
    live = [p for p in processes_ if p.poll() is None]
    for process in live:
        process.send_signal(signal.SIGTERM)
    for process in live:
        code = await asyncio.to_thread(process.wait, timeout)
        assert code == 0, f"pid {process.pid} exited with {code}"


@dataclass
class Expected:
    """What a job of the mixed load must end as."""

    status: JobStatus
    attempt: int


def mixed_load(app: App, count: int, seed: int, start: int = 0) -> tuple[list[JobEvent], dict[str, Expected]]:
    """`count` jobs: 10 % fail once, 1 % always fail (dead-lettered after 3 attempts), 5 % delayed
    by 0.5-2 s, 3 % enqueued twice with one idempotency key (the second is refused). Returns the
    events to append (duplicates included) and the expected end of each job."""
    rng = random.Random(seed)
    events: list[JobEvent] = []
    expected: dict[str, Expected] = {}
    now = datetime.now(timezone.utc)
    for i in range(start, start + count):
        args: dict[str, object] = {"i": i}
        options: dict[str, object] = {}
        outcome = Expected(JobStatus.COMPLETED, 0)
        roll = rng.random()
        if roll < 0.01:
            args["always_fail"] = True
            outcome = Expected(JobStatus.DEAD_LETTERED, 2)
        elif roll < 0.11:
            args["fail_times"] = 1
            outcome = Expected(JobStatus.COMPLETED, 1)
        elif roll < 0.16:
            options["run_at"] = now + timedelta(seconds=rng.uniform(0.5, 2.0))
        if rng.random() < 0.03:
            options["idempotency_key"] = f"order-{seed}-{i}"
        event = app._build_enqueue("work", args, **options)
        events.append(event)
        if "idempotency_key" in options:  # the same job enqueued again: refused by the processor
            events.append(app._build_enqueue("work", {**args, "again": True}, **options))
        expected[event.job_id] = outcome
    return events, expected


async def wait_all_terminal(app: App, job_ids: list[str], timeout: float) -> dict[str, JobState]:
    deadline = time.monotonic() + timeout
    states: dict[str, JobState] = {}
    for job_id in job_ids:
        remaining = deadline - time.monotonic()
        assert remaining > 0, f"only {len(states)} of {len(job_ids)} jobs ended within {timeout:.0f} s"
        states[job_id] = await app.wait(job_id, timeout=remaining)
    return states


@dataclass
class Verdict:
    events: int
    jobs: int
    duplicated_transitions: list[tuple[str, str, int | None]]
    executions: Counter[tuple[str, int]]


async def check_against_the_log(settings: Settings, expected: dict[str, Expected],
                                executions_dir: Path | None) -> Verdict:
    """With every processor stopped: the changelog equals the fold of the log (up to the offsets the
    processors committed), every expected job is in it in its expected state, no state transition
    was committed twice, and every job's handler ran (at least once)."""
    comparison = await compare_state(settings)
    assert comparison.identical, [
        (d.job_id, d.kind, d.fields, d.folded and d.folded.status, d.changelog and d.changelog.status)
        for d in comparison.differences[:10]]
    assert comparison.undecodable_changelog_records == 0
    changelog, _ = await read_changelog(settings)
    wrong = {job_id: (changelog[job_id][1].status.value, changelog[job_id][1].attempt) if job_id in changelog else None
             for job_id, want in expected.items()
             if job_id not in changelog or (changelog[job_id][1].status, changelog[job_id][1].attempt)
             != (want.status, want.attempt)}
    assert not wrong, f"{len(wrong)} job(s) lost or in a wrong state: {dict(list(wrong.items())[:10])}"
    events = await job_events(settings)
    transitions = Counter((e.job_id, e.type, getattr(e, "attempt", None)) for e in events
                          if e.type in DERIVED_TYPES and e.type != "duplicate_rejected")
    derived_ids = Counter(e.event_id for e in events if e.type in DERIVED_TYPES)
    duplicated = [key for key, n in transitions.items() if n > 1]
    assert not duplicated, f"state transitions committed twice: {duplicated[:10]}"
    assert all(n == 1 for n in derived_ids.values()), "a derived event was committed twice"
    runs = read_executions(executions_dir) if executions_dir is not None else Counter()
    if executions_dir is not None:  # at least once: every job that ended ran its handler
        ran = {job_id for job_id, _ in runs}
        assert not [job_id for job_id in expected if job_id not in ran], "a job ended without running"
    return Verdict(len(events), comparison.jobs_folded, duplicated, runs)


# -- (a) a worker SIGKILLed mid-job ----------------------------------------------------------------


async def test_workers_killed_mid_job_rerun_after_the_lease_and_complete_once(
        fault_app: App, tmp_path: Path, processes: list[Popen[bytes]]) -> None:
    app, settings = fault_app, fault_app.settings
    services = Services(settings, tmp_path, processes)
    processor = services.start("processor", "processor")
    doomed = services.start("worker", "doomed", "--lease", "2s", "--concurrency", "10")
    job_ids = [await app.enqueue("work", {"i": i, "sleep": 4}) for i in range(6)]

    async def all_running() -> bool:
        states = [await app.state(job_id) for job_id in job_ids]
        return all(s is not None and s.status is JobStatus.RUNNING for s in states)

    await poll(all_running, 60, "six jobs running on the doomed worker")
    sigkill(doomed)  # mid-job: every handler is inside its 4 s sleep
    killed_at = datetime.now(timezone.utc)
    rescuer = services.start("worker", "rescuer", "--lease", "10s", "--concurrency", "10")
    states = await wait_all_terminal(app, job_ids, timeout=60)

    assert all(s.status is JobStatus.COMPLETED and s.worker_id == "rescuer" and s.attempt == 1
               for s in states.values()), {j: (s.status, s.worker_id, s.attempt) for j, s in states.items()}
    log = await job_events(settings)
    for job_id in job_ids:
        mine = [e for e in log if e.job_id == job_id]
        types = [e.type for e in mine]
        assert types.count("lease_expired") == 1 and types.count("completed") == 1, types
        expired = next(e for e in mine if e.type == "lease_expired")
        rerun = next(e for e in mine if e.type == "attempt_started" and e.attempt == 1)
        assert expired.occurred_at >= killed_at and rerun.occurred_at >= expired.occurred_at  # after the lease
    await stop_cleanly(services, [processor, rescuer])
    verdict = await check_against_the_log(settings, {j: Expected(JobStatus.COMPLETED, 1) for j in job_ids},
                                          services.executions)
    for job_id in job_ids:  # ran on the killed worker, then exactly once more
        assert verdict.executions[(job_id, 0)] >= 1 and verdict.executions[(job_id, 1)] == 1, verdict.executions


# -- (b) a worker SIGSTOPped past its lease, then SIGCONTed -----------------------------------------


async def test_worker_paused_past_its_lease_is_overtaken_and_its_late_result_decides_nothing(
        fault_app: App, tmp_path: Path, processes: list[Popen[bytes]]) -> None:
    app, settings = fault_app, fault_app.settings
    services = Services(settings, tmp_path, processes)
    processor = services.start("processor", "processor")
    stale = services.start("worker", "stale", "--lease", "2s")
    job_id = await app.enqueue("work", {"i": 1, "sleep": 3})
    await poll(lambda: _status_is(app, job_id, JobStatus.RUNNING), 60, "the job running on the stale worker")
    # and its ready record's offset committed: otherwise the rescuer gets that record again and
    # runs attempt 0 too (at least once, but not the late result this test is about)
    await poll(lambda: _worker_group_committed(settings, "default"), 30, "the stale worker's offset commit", every=0.1)
    os.kill(stale.pid, signal.SIGSTOP)  # mid-job, and it stays paused well past its 2 s lease
    try:
        rescuer = services.start("worker", "rescuer", "--lease", "10s")
        state = await app.wait(job_id, timeout=60)
    finally:
        os.kill(stale.pid, signal.SIGCONT)  # wakes up inside its handler, believing it still runs the job
    assert state.status is JobStatus.COMPLETED and state.worker_id == "rescuer" and state.attempt == 1, state
    assert state.result is not None and state.result["worker"] == "rescuer"

    async def late_result() -> JobEvent | None:
        return next((e for e in await job_events(settings, job_id)
                     if e.type == "attempt_succeeded" and e.attempt == 0), None)

    await poll(late_result, 30, "the stale worker's late result in the log", every=0.2)
    late = await late_result()
    assert late is not None and late.actor == "worker:stale" and late.result["worker"] == "stale"  # type: ignore[attr-defined]
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    partitions = await partitions_of(settings, names.events)
    late_offset = await _offset_of(settings, late)

    async def processed() -> bool:  # the processor committed past the late result
        committed = await processor_committed(settings, partitions)
        return committed.get(late_offset[0], -1) > late_offset[1]

    await poll(processed, 30, "the processor to fold the late result", every=0.2)
    assert (await app.state(job_id)).model_dump(exclude={"recent_event_ids"}) == state.model_dump(  # type: ignore[union-attr]
        exclude={"recent_event_ids"}), "the late result changed the state"
    events = await job_events(settings, job_id)
    assert [e.type for e in events].count("completed") == 1
    succeeded = [(e.attempt, e.actor) for e in events if e.type == "attempt_succeeded"]  # type: ignore[attr-defined]
    assert succeeded[0] == (1, "worker:rescuer") and (0, "worker:stale") in succeeded, timeline(events)
    assert all(actor == "worker:stale" for _, actor in succeeded[1:]), timeline(events)  # recorded, decided nothing
    # the stale worker is not harmed by it: it serves again (a fresh job completes on one of them)
    assert stale.poll() is None, services.tail("stale")
    another = await app.enqueue("work", {"i": 2})
    assert (await app.wait(another, timeout=60)).status is JobStatus.COMPLETED
    await stop_cleanly(services, [processor, rescuer, stale])
    await check_against_the_log(settings, {job_id: Expected(JobStatus.COMPLETED, 1)}, services.executions)
    runs = Counter((attempt, pid) for job, attempt, pid in execution_lines(services.executions) if job == job_id)
    assert runs[(0, stale.pid)] == 1 and runs[(1, rescuer.pid)] == 1, (runs, timeline(events))
    # At least once, not at most once: waking up, the stale worker may still fetch from the ready
    # partition it owned before its pause (a fetch needs no group membership; it learns of the
    # rebalance only at its next heartbeat) and run attempt 1 once more, after the job completed.
    # Its claim is refused and its result decides nothing (checked above); the run is counted.
    assert set(runs) <= {(0, stale.pid), (1, rescuer.pid), (1, stale.pid)} and runs[(1, stale.pid)] <= 1, runs


def timeline(events: list[JobEvent]) -> str:
    """A job's events, one line each (for failure messages)."""
    return "\n".join(f"{e.occurred_at:%H:%M:%S.%f} {e.type} attempt={getattr(e, 'attempt', '-')} {e.actor}"
                     for e in events)


async def _worker_group_committed(settings: Settings, queue: str) -> bool:
    """Whether the workers' group of `queue` committed an offset past a ready record (the first)."""
    admin = admin_client(settings)
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(TopicNames(settings.namespace, load_specs(
            settings.topics_dir)).worker_group(queue))
    finally:
        await admin.close()
    return sum(max(0, meta.offset) for meta in offsets.values()) >= 1


async def _status_is(app: App, job_id: str, status: JobStatus) -> bool:
    state = await app.state(job_id)
    return state is not None and state.status is status


async def _offset_of(settings: Settings, wanted: JobEvent) -> tuple[int, int]:
    """(partition, offset) of an event in the log."""
    from eventjobs.core.codec import decode
    from eventjobs.kafka.clients import read_to_end

    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    async for record in read_to_end(settings, await partitions_of(settings, names.events)):
        if record.key == wanted.job_id.encode() and decode(record.value).event_id == wanted.event_id:
            return record.partition, record.offset
    raise AssertionError(f"event {wanted.event_id} is not in the log")


# -- (c) a processor SIGKILLed under load, twice ---------------------------------------------------


class Load:
    """Appends the mixed load in chunks in the background; `acknowledged` grows as the broker acks."""

    def __init__(self, app: App, events: list[JobEvent], chunk: int = 100, pause_s: float = 0.15) -> None:
        self.app = app
        self.events = events
        self.chunk = chunk
        self.pause_s = pause_s
        self.acknowledged = 0
        self.task = asyncio.create_task(self._run())

    async def _run(self) -> None:
        for start in range(0, len(self.events), self.chunk):
            await self.app.writer.append(self.events[start:start + self.chunk])
            self.acknowledged = min(len(self.events), start + self.chunk)
            await asyncio.sleep(self.pause_s)

    async def reached(self, fraction: float, timeout: float = 60) -> None:
        await poll(lambda: self.acknowledged >= fraction * len(self.events) or self.task.done(), timeout,
                   f"{fraction:.0%} of the load appended")
        if self.task.done():
            self.task.result()


async def test_processor_killed_twice_under_load_and_while_taking_over(
        fault_app: App, tmp_path: Path, processes: list[Popen[bytes]]) -> None:
    app, settings = fault_app, fault_app.settings
    services = Services(settings, tmp_path, processes)
    first = services.start("processor", "p1", "--max-batch", "100")
    worker = services.start("worker", "w", "--concurrency", "20")
    events, expected = mixed_load(app, 1500, seed=3)
    load = Load(app, events, pause_s=1.0)  # 15 chunks over about 15 s
    await load.reached(0.2)
    await poll(lambda: log_has(services.log("p1"), "owns partition"), 30, "p1 to own its partitions")
    sigkill(first)  # under load, with transactions in flight
    second = services.start("processor", "p2", "--max-batch", "100")
    # p2 joins once p1's session expired; kill it right after it took its first partition, while it
    # restores the others and redoes the batches p1 left uncommitted
    await poll(lambda: log_has(services.log("p2"), "owns partition"), 45, "p2 to take over", every=0.01)
    sigkill(second)
    third = services.start("processor", "p3")
    await load.task
    await wait_all_terminal(app, list(expected), timeout=90)
    assert worker.poll() is None, services.tail("w")
    await stop_cleanly(services, [third, worker])
    await check_against_the_log(settings, expected, services.executions)


# -- (d) a processor SIGKILLed during a rebalance, with two processors ----------------------------


async def test_processors_killed_during_rebalances_lose_nothing(
        fault_app: App, tmp_path: Path, processes: list[Popen[bytes]]) -> None:
    app, settings = fault_app, fault_app.settings
    services = Services(settings, tmp_path, processes)
    a1 = services.start("processor", "a1", "--max-batch", "100")
    worker = services.start("worker", "w", "--concurrency", "20")
    events, expected = mixed_load(app, 1500, seed=4)
    load = Load(app, events, pause_s=1.2)  # 15 chunks over about 18 s
    await poll(lambda: log_has(services.log("a1"), "owns partition"), 30, "a1 to own its partitions")
    await load.reached(0.1)
    # b1 joins: a1 hands partitions over (commits what it folded, releases them); kill a1 then
    mark = log_size(services.log("a1"))
    b1 = services.start("processor", "b1", "--max-batch", "100")
    await poll(lambda: log_has(services.log("a1"), "released partition", mark), 45, "a1 to release partitions",
               every=0.01)
    sigkill(a1)  # mid-hand-over; b1 gets every partition once a1's session expired
    await poll(lambda: log_has(services.log("b1"), "owns partition"), 45, "b1 to own partitions")
    # a2 joins: now b1 hands over; kill b1 as soon as a2 took its first partition
    a2 = services.start("processor", "a2", "--max-batch", "100")
    await poll(lambda: log_has(services.log("a2"), "owns partition"), 45, "a2 to take partitions", every=0.01)
    sigkill(b1)  # mid-hand-over again
    marks = {name: log_size(services.log(name)) for name in ("a2", "b2")}
    b2 = services.start("processor", "b2", "--max-batch", "100")
    # once b1's session expired, a2 and b2 share the partitions
    await poll(lambda: all(log_has(services.log(n), "owns partition", marks[n]) for n in marks), 60,
               "a2 and b2 to share the partitions")
    await load.task
    await wait_all_terminal(app, list(expected), timeout=90)
    for process, name in ((a2, "a2"), (b2, "b2"), (worker, "w")):
        assert process.poll() is None, services.tail(name)
    await stop_cleanly(services, [a2, b2, worker])
    await check_against_the_log(settings, expected, services.executions)
