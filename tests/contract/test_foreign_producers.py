"""Producers in other languages, against the real broker: jobs enqueued by librdkafka with its
default partitioner and by the Java client complete, each job's events stay on its partition
(but for a foreign enqueue the processor moved), and a foreign job that runs past its lease,
heartbeating, runs once. The producers are the examples of docs/producers.md, run as processes."""

from __future__ import annotations

import asyncio
import json
import logging
import socket
import zlib
from collections import defaultdict
from typing import Any

import pytest
from aiokafka import ConsumerRecord

from eventjobs.core.codec import decode
from eventjobs.core.ids import job_id_for_key
from eventjobs.core.partitioning import job_partition
from eventjobs.core.state import JobStatus
from eventjobs.runtime.processor import MOVED_FROM_HEADER
from eventjobs.runtime.state_check import compare_state
from eventjobs.settings import Settings
from tests.contract.conftest import Services, event_records, java_example, python_example, run_example
from tests.contract.jobs import EXECUTIONS

pytestmark = pytest.mark.kafka
PARTITIONS = 6  # topics/events.yaml


def enqueued_lines(lines: list[list[str]]) -> dict[str, tuple[int, int]]:
    """job id -> (partition the producer wrote to, the job's partition), from `enqueued` lines."""
    return {job: (int(written), int(rule)) for kind, job, written, rule in (l for l in lines if l[0] == "enqueued")}


def done_lines(lines: list[list[str]]) -> dict[str, tuple[str, Any]]:
    return {job: (kind, json.loads(result)) for _, job, kind, result in (l for l in lines if l[0] == "done")}


def placement(records: list[ConsumerRecord[bytes, bytes]], jobs: set[str]) -> dict[str, list[tuple[int, Any]]]:
    """job id -> [(partition, record)] of every record of these jobs, in log order per partition."""
    found: dict[str, list[tuple[int, Any]]] = defaultdict(list)
    for record in records:
        job = record.key.decode() if record.key else None
        if job in jobs:
            found[job].append((record.partition, record))
    return found


def check_one_partition_per_job(records: list[ConsumerRecord[bytes, bytes]], written: dict[str, tuple[int, int]],
                                topic: str) -> int:
    """Every event of every job is on the job's partition, except a misrouted enqueue, whose copy
    (naming it in its moved-from header) is there too. Returns how many enqueues were moved."""
    moved = 0
    for job, entries in placement(records, set(written)).items():
        at, home = written[job]
        assert home == job_partition(job, PARTITIONS)
        elsewhere = [(p, r) for p, r in entries if p != home]
        types = [decode(r.value).type for p, r in entries if p == home]
        if at == home:
            assert elsewhere == [], f"job {job} has events on {sorted({p for p, _ in elsewhere})} besides {home}"
            continue
        moved += 1
        assert len(elsewhere) == 1, f"job {job}: only its foreign enqueue may be elsewhere: {elsewhere}"
        partition, original = elsewhere[0]
        assert partition == at and decode(original.value).type == "enqueued"
        copies = [r for p, r in entries if p == home and dict(r.headers).get(MOVED_FROM_HEADER)]
        assert [dict(c.headers)[MOVED_FROM_HEADER].decode() for c in copies] == [
            f"{topic}/{original.partition}/{original.offset}"]
        assert copies[0].value == original.value  # the same event, byte for byte
        assert types[0] == "enqueued", types
        assert {"attempt_started", "progress", "attempt_succeeded", "completed"} <= set(types), types  # the start claims
    return moved


async def test_jobs_enqueued_by_librdkafka_with_its_default_partitioner_complete_on_one_partition(
    services: Services, settings: Settings, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="eventjobs.runtime.processor")
    await services.start_worker(concurrency=20)
    common = ["--bootstrap", settings.kafka_bootstrap, "--namespace", settings.namespace, "--name", "add",
              "--args", '{"a": 1, "b": 2}', "--wait-s", "120"]
    lines = await run_example(python_example(*common, "--count", "60"))
    written, done = enqueued_lines(lines), done_lines(lines)
    assert len(written) == len(done) == 60
    assert all(outcome == ("completed", {"sum": 3}) for outcome in done.values())
    misrouted = {job for job, (at, home) in written.items() if at != home}
    assert len(misrouted) >= 30, "librdkafka's default partitioner should disagree with murmur2 for most ids"

    for job in written:
        state = await services.app.wait(job, timeout=30)
        assert state.status is JobStatus.COMPLETED and state.attempt == 0 and state.result == {"sum": 3}
        assert EXECUTIONS[job] == 1

    # the recommended ways: the rule computed by the producer, or librdkafka's murmur2_random; nothing to move
    before = services.processor.moved_events
    rule_written: dict[str, tuple[int, int]] = {}
    for partitioner in ("job", "murmur2_random"):
        rule_lines = await run_example(python_example(*common, "--count", "10", "--partitioner", partitioner))
        assert len(done_lines(rule_lines)) == 10
        rule_written.update(enqueued_lines(rule_lines))
    assert all(at == home for at, home in rule_written.values()) and len(rule_written) == 20
    assert services.processor.moved_events == before == len(misrouted)
    producer = f"producer:librdkafka:{socket.gethostname()}"
    assert services.processor.moved_from == {producer: len(misrouted)}
    logged = [r.getMessage() for r in caplog.records if "writes events to other partitions" in r.getMessage()]
    assert len(logged) == 1 and repr(producer) in logged[0]  # once per producer, not once per event

    records = await event_records(settings)
    topic = f"{settings.namespace}.events"
    assert check_one_partition_per_job(records, written, topic) == len(misrouted)
    assert check_one_partition_per_job(records, rule_written, topic) == 0

    # the fold of the log (what `eventjobs replay --state` checks) is the processor's table
    comparison = await compare_state(settings)
    assert comparison.differences == [], comparison.differences[:3]


async def test_a_foreign_job_that_runs_past_its_lease_heartbeating_runs_once(
    services: Services, settings: Settings,
) -> None:
    # an idempotency key whose job id librdkafka's default partitioner (CRC32) puts elsewhere
    key = next(f"long-{n}-" for n in range(100) if zlib.crc32(job_id_for_key("long_job", f"long-{n}-0").encode())
               % PARTITIONS != job_partition(job_id_for_key("long_job", f"long-{n}-0"), PARTITIONS))
    await services.start_worker(lease_s=1.5)  # heartbeats every 0.5 s; the job runs 5 s
    lines = await run_example(python_example(
        "--bootstrap", settings.kafka_bootstrap, "--namespace", settings.namespace, "--name", "long_job",
        "--args", '{"seconds": 5}', "--count", "1", "--key-prefix", key, "--timeout-s", "30", "--wait-s", "60"))
    (job, (at, home)), = enqueued_lines(lines).items()
    assert job == job_id_for_key("long_job", f"{key}0")  # the example computed the key's job id
    assert at != home, "the enqueue should have arrived on another partition than the job's"
    assert done_lines(lines) == {job: ("completed", {"slept": 5.0, "attempt": 0})}

    state = await services.app.wait(job, timeout=30)
    assert state.status is JobStatus.COMPLETED and state.attempt == 0
    assert EXECUTIONS[job] == 1
    records = await event_records(settings)
    events = [(r.partition, decode(r.value)) for r in records if r.key == job.encode()]
    types = [e.type for p, e in events if p == home]
    assert "lease_expired" not in types and "retry_scheduled" not in types
    assert types.count("claimed") == 0 and types.count("attempt_started") == 1  # one start, which is also the claim
    assert types.count("heartbeat") >= 5  # the lease (1.5 s) was extended again and again ...
    heartbeats = [e for p, e in events if e.type == "heartbeat"]
    assert all(p == home for p, e in events if e.type in ("heartbeat", "progress"))  # ... on the job's partition
    assert len(heartbeats) == types.count("heartbeat")
    assert check_one_partition_per_job(records, {job: (at, home)}, f"{settings.namespace}.events") == 1


async def test_jobs_enqueued_by_the_java_client_complete_on_one_partition(
    services: Services, settings: Settings, java_classpath: str,
) -> None:
    await services.start_worker(concurrency=20)
    lines = await run_example(java_example(
        java_classpath, "--bootstrap", settings.kafka_bootstrap, "--namespace", settings.namespace, "--name", "add",
        "--args", '{"a": 2, "b": 3}', "--count", "20", "--key-prefix", "java-order-", "--wait-s", "120"))
    written, done = enqueued_lines(lines), done_lines(lines)
    # the Java client computed the idempotency-key job ids, and its default partitioner is the rule
    assert list(written) == [job_id_for_key("add", f"java-order-{n}") for n in range(20)]
    assert all(at == home for at, home in written.values())
    assert done == {job: ("completed", {"sum": 5}) for job in written}
    for job in written:
        assert EXECUTIONS[job] == 1
    assert services.processor.moved_events == 0
    assert check_one_partition_per_job(await event_records(settings), written, f"{settings.namespace}.events") == 0

    # the same idempotency key from Python names the same job, which is not run again
    again = await services.app.enqueue("add", {"a": 2, "b": 3}, idempotency_key="java-order-0")
    assert again == next(iter(written))
    assert await duplicate_rejected(settings, again)
    assert EXECUTIONS[again] == 1


async def duplicate_rejected(settings: Settings, job: str, timeout: float = 10) -> bool:
    """Whether the processor refused a second enqueue of `job` (within `timeout`)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        records = await event_records(settings)
        if any(decode(r.value).type == "duplicate_rejected" for r in records if r.key == job.encode()):
            return True
        await asyncio.sleep(0.2)
    return False
