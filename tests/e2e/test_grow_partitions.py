"""`eventjobs partitions grow`: a namespace with 4 partitions grown into one with 8, with jobs
pending, scheduled, waiting for a dependency, dead-lettered and completed (its idempotency key
still held), then run to the end by a processor and a worker of the new namespace, each in its
own process: every job completes exactly once, the scheduled one at its time, the waiting one
after its dependency, with its result.

Uses the session broker (it is not restarted); both namespaces are the test's own.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import uuid
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path
from subprocess import Popen

import pytest
import yaml

from eventjobs import App
from eventjobs.core.partitioning import job_partition
from eventjobs.core.state import JobStatus, encode_state
from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.clients import admin_client, partitions_of, producer
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.runtime.state_check import read_changelog
from eventjobs.settings import Settings
from tests.e2e.conftest import ROOT, job_events
from tests.faults.test_process_faults import Expected, Services, check_against_the_log, poll, stop_cleanly
from tests.support.cli import run_cli
from tests.support.fault_app import build_app, read_executions

pytestmark = pytest.mark.kafka

CO_PARTITIONED = ("events", "job-state", "timers", "limit-state")


def specs_with(directory: Path, partitions: int) -> Path:
    """topics/*.yaml, but the co-partitioned topics with `partitions` partitions."""
    directory.mkdir(parents=True)
    for path in (ROOT / "topics").glob("*.yaml"):
        spec = yaml.safe_load(path.read_text())
        if path.stem in CO_PARTITIONED:
            spec["partitions"] = partitions
        (directory / path.name).write_text(yaml.safe_dump(spec))
    return directory


async def _status(app: App, job_id: str, *statuses: JobStatus) -> bool:
    """Whether the job's latest state has one of `statuses`."""
    state = await app.state(job_id)
    return state is not None and state.status in statuses


def _stop(process: Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert process.wait(timeout=60) == 0


async def test_grow_4_to_8_carries_every_live_job_and_each_completes_once(
        kafka_bootstrap: str, tmp_path: Path, processes: list[Popen[bytes]], monkeypatch: pytest.MonkeyPatch) -> None:
    specs = specs_with(tmp_path / "topics", 4)
    monkeypatch.setenv("EVENTJOBS_TOPICS_DIR", str(specs))  # the services' and the CLI's specs
    old_ns, new_ns = f"g{uuid.uuid4().hex[:10]}", f"g{uuid.uuid4().hex[:10]}"
    source = Settings(kafka_bootstrap=kafka_bootstrap, namespace=old_ns, topics_dir=specs)
    await apply_topics(source, ["default"])
    old = build_app(old_ns, kafka_bootstrap=kafka_bootstrap, topics_dir=specs)
    old_services = Services(source, tmp_path, processes)
    processor = old_services.start("processor", "old-processor")
    worker = old_services.start("worker", "old-worker")
    try:
        # a job completed before the grow, whose idempotency key must hold after it
        done = await old.enqueue("work", {"i": 0}, idempotency_key="order-1")
        assert (await old.wait(done, timeout=60)).status is JobStatus.COMPLETED
        await asyncio.to_thread(_stop, worker)  # no worker from now on: what is enqueued stays live
        # a paused schedule and a queue paused and resumed: carried over as they are
        await old.schedule("work", {"i": 30}, every="1d", schedule_id="nightly")
        assert await old.pause_schedule("nightly")
        await old.pause_queue("default", "maintenance")
        await old.resume_queue("default", "maintenance done")
        pending = [await old.enqueue("work", {"i": i}) for i in range(1, 10)]
        run_at = datetime.now(timezone.utc) + timedelta(seconds=40)
        scheduled = await old.enqueue("work", {"i": 20}, run_at=run_at)
        waiting = await old.enqueue("merge", {"i": 21}, depends_on=[scheduled])
        expired = await old.enqueue("work", {"i": 22}, ttl=1)  # no worker takes it: dead-lettered by its TTL
        live = {**{job: JobStatus.PENDING for job in pending}, scheduled: JobStatus.SCHEDULED,
                waiting: JobStatus.WAITING, expired: JobStatus.DEAD_LETTERED}
        for job_id, status in live.items():
            await poll(lambda: _status(old, job_id, status), 30, f"{job_id} {status.value}", every=0.1)  # noqa: B023

        # refused while the processor runs
        refused = run_cli("partitions", "grow", "--namespace", old_ns, "--into", new_ns, "--to", "8",
                          env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})
        assert refused.returncode == 1, refused.stdout + refused.stderr
        assert f"error: services of {old_ns} are running: {old_ns}.processor (1 member(s)" in refused.stderr
        assert "Stop every processor and worker of the namespace" in refused.stderr
        await asyncio.to_thread(_stop, processor)
        # in flight when the processor stopped: not folded yet, carried over for the new processor to fold
        cancelled = pending.pop()
        await old.cancel(cancelled)
        late = await old.enqueue("merge", {"i": 23}, depends_on=[scheduled])

        def grow(to: str = "8") -> subprocess.CompletedProcess[str]:
            return run_cli("partitions", "grow", "--namespace", old_ns, "--into", new_ns, "--to", to,
                           env={"KAFKA_BOOTSTRAP_SERVERS": kafka_bootstrap})

        fewer = grow("4")
        assert fewer.returncode == 1 and f"{old_ns}.events has 4 partitions already; --to must be more" in fewer.stderr
        # a changelog that is not the fold of the log is not carried over, and the grow leaves nothing behind
        original = await _tamper(source, pending[0])
        differs = grow()
        assert differs.returncode == 1, differs.stdout + differs.stderr
        assert (f"the changelog of {old_ns} differs from the fold of its log up to the processor's committed offsets "
                f"for 1 job(s), e.g. ['{pending[0]}']") in differs.stderr
        await poll(lambda: _no_topics(source, new_ns), 30, f"the topics of {new_ns} deleted")
        await _tamper(source, pending[0], original)

        grown = grow()
        assert grown.returncode == 0, grown.stdout + grown.stderr
        print(grown.stdout)
        assert f"{old_ns} grown into {new_ns}: 4 -> 8 partitions" in grown.stdout
        carried = re.search(r"jobs carried over: (\d+) \(([^)]*)\)", grown.stdout)
        assert carried and int(carried.group(1)) == len(live) + 1, grown.stdout
        assert carried.group(2) == "completed 1, dead_lettered 1, pending 9, scheduled 1, waiting 1"
        assert ", 2 events not folded yet," in grown.stdout  # the cancel and the late enqueue
        assert ", 8 ready records," in grown.stdout  # not for the job whose cancel is in flight
        assert "1 schedule records, 1 queue pause or resume records" in grown.stdout  # the latest of each key
        assert f"paused in {old_ns}: default" in grown.stdout
        again = grow()
        assert again.returncode == 1 and f"namespace '{new_ns}' has topics already" in again.stderr
    finally:
        await old.close()

    # the new layout: 8 partitions, every job on its new job partition, the old queues paused
    target = Settings(kafka_bootstrap=kafka_bootstrap, namespace=new_ns, topics_dir=specs)
    names = TopicNames(new_ns, load_specs(specs))
    for topic in (names.events, names.job_state, names.timers):
        assert len(await partitions_of(target, topic)) == 8, topic
    changelog, _ = await read_changelog(target)
    assert set(changelog) == {done, *live}  # the late job is not folded yet: its enqueue is carried over
    assert all(partition == job_partition(job_id, 8) for job_id, (partition, _) in changelog.items())
    assert any(job_partition(job_id, 4) != job_partition(job_id, 8) for job_id in changelog)  # some moved
    async with App(old_ns, kafka_bootstrap=kafka_bootstrap, topics_dir=specs) as former:
        paused = {q.queue: q for q in await former.queues()}
    assert paused["default"].paused and new_ns in paused["default"].reason

    new = build_app(new_ns, kafka_bootstrap=kafka_bootstrap, topics_dir=specs)
    new_services = Services(target, tmp_path, processes)
    try:
        [nightly] = await new.schedules()
        assert (nightly.schedule_id, nightly.rule, nightly.args, nightly.paused) == ("nightly", "every 1d", {"i": 30}, True)
        queues = {q.queue: q for q in await new.queues()}
        assert not queues["default"].paused and queues["default"].reason == "maintenance done"
        services = [new_services.start("processor", "new-processor"), new_services.start("worker", "new-worker")]
        assert (await new.dead_letters())[0].job_id == expired  # the dead-letter queue came along
        await new.retry_dead_letter(expired)
        # until the new processor folds the retry, the job's latest state is still the dead letter, which
        # `wait` would answer at once
        retried = set(JobStatus) - {JobStatus.DEAD_LETTERED}
        await poll(lambda: _status(new, expired, *retried), 60, f"{expired} retried", every=0.1)
        finals = {job_id: await new.wait(job_id, timeout=90) for job_id in [*pending, expired]}
        serving_since = min(state.finished_at for state in finals.values())  # type: ignore[type-var]
        finals[scheduled] = await new.wait(scheduled, timeout=120)
        finals[waiting] = await new.wait(waiting, timeout=60)
        finals[late] = await new.wait(late, timeout=60)
        unfinished = {
            job_id: (state.status, state.name, state.reason, state.attempt, state.last_error)
            for job_id, state in finals.items()
            if state.status is not JobStatus.COMPLETED
        }
        assert not unfinished, unfinished
        assert (await new.wait(cancelled, timeout=30)).status is JobStatus.CANCELLED  # the cancel in flight
        # at its time: not before, and soon after (or soon after the new services ran, on a slow machine)
        started = finals[scheduled].started_at
        assert started is not None and run_at <= started <= max(run_at, serving_since) + timedelta(seconds=10), (
            run_at, serving_since, started)
        for dependent, i in ((waiting, 21), (late, 23)):  # after their dependency, with its result
            assert finals[dependent].started_at >= finals[scheduled].finished_at  # type: ignore[operator]
            assert finals[dependent].result == {"i": i, "seen": {scheduled: finals[scheduled].result}}
        # the idempotency key holds: the same key gives the same job, which is not run again
        assert await new.enqueue("work", {"i": 0}, idempotency_key="order-1") == done
        await poll(lambda: _has_event(target, done, "duplicate_rejected"), 30, "the duplicate refused")
        assert (await new.state(done)).status is JobStatus.COMPLETED  # type: ignore[union-attr]
        await stop_cleanly(new_services, services)
    finally:
        await new.close()

    expected = {job_id: Expected(JobStatus.COMPLETED, state.attempt) for job_id, state in finals.items()}
    expected[done] = Expected(JobStatus.COMPLETED, 0)
    await check_against_the_log(target, expected, new_services.executions)
    runs = Counter(job_id for job_id, _ in read_executions(new_services.executions).elements())
    assert runs == Counter({job_id: 1 for job_id in expected}), runs  # each ran once, before or after; not the cancelled
    completed = Counter(e.job_id for e in await job_events(target) if e.type == "completed")
    assert completed == Counter({job_id: 1 for job_id in expected}), completed


async def _tamper(settings: Settings, job_id: str, value: bytes | None = None) -> bytes:
    """Write `value` (by default: the job's state with other args) as the job's changelog record;
    returns the record it had."""
    changelog, _ = await read_changelog(settings)
    partition, state = changelog[job_id]
    writer = producer(settings)
    await writer.start()
    try:
        tampered = value or encode_state(state.model_copy(update={"args": {"i": -1}}))
        await writer.send_and_wait(f"{settings.namespace}.job-state", tampered, key=job_id.encode(), partition=partition)
    finally:
        await writer.stop()
    return encode_state(state)


async def _no_topics(settings: Settings, namespace: str) -> bool:
    admin = admin_client(settings)
    await admin.start()
    try:
        return not [t for t in await admin.list_topics() if t.startswith(f"{namespace}.")]
    finally:
        await admin.close()


async def _has_event(settings: Settings, job_id: str, event_type: str) -> bool:
    return any(e.type == event_type for e in await job_events(settings, job_id))
