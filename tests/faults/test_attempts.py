"""Fenced attempts and ready records that go missing, against the real broker.

* A ready record delivered twice (a duplicate written by hand to another partition of the ready
  topic, as a redelivery after a worker died would) reaches two workers. Both claim; the fold
  accepts the first claim and refuses the second. The refused worker cannot know and runs the
  handler too (the extra execution at-least-once allows), and it finishes first: its outcome is
  in the log, rejected, and the job's outcome is the accepted claim's.
* A re-published copy of a ready record (marked as the processor marks one) that reaches another
  worker after the job ran: that worker claims it asking for the verdict, the lane refuses the
  claim and says so on the changelog, and the handler does not run again.
* A pending job whose ready record no worker ever sees (consumed and committed past by hand, as a
  lost record would be) is re-published by the processor's republish timer and completes.
* A ready record revoked by a TTL expiry does not revoke the attempt a dead-letter retry makes
  ready afterwards: the revocation names the attempt.
* Without a broker: a worker's partitions revoked in a rebalance lose their buffered records and
  commit nothing afterwards; a revocation names its attempt (and the job's incarnation).

Every wait polls with a deadline; no fixed sleep is an assertion.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from eventjobs import App, JobContext
from eventjobs.core.housekeeping import ReadyRepublish
from eventjobs.core.events import JobEvent, is_claim
from eventjobs.core.fold import replay
from eventjobs.core.options import JobOptions, Priority
from eventjobs.core.records import ReadyRecord, ready_attempt, republished_headers, revocation_headers
from eventjobs.core.state import JobStatus
from eventjobs.kafka.clients import consumer, key_partition, partitions_of, producer
from eventjobs.kafka.topics import PRIORITIES
from eventjobs.runtime.intake import Item as _Item, Offsets as _Offsets
from eventjobs.runtime.worker import Worker
from tests.e2e.conftest import Runtime, job_events, processor_runtime, wait_for_status
from tests.support.jobs_app import EXECUTIONS

pytestmark = pytest.mark.kafka

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
RUNS: Counter[str] = Counter()  # job id -> handler runs in this process (both workers run in it)


def register_jobs(app: App) -> None:
    @app.job(queue="default", max_attempts=1)
    async def first_run_is_slow(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """The first run (the accepted claim) takes `first_s`; any later run returns at once."""
        RUNS[ctx.job_id] += 1
        run = RUNS[ctx.job_id]
        if run == 1:
            await asyncio.sleep(args["first_s"])
        return {"run": run}


async def until(check: Any, what: str, timeout: float = 30.0) -> Any:
    """Poll `check()` (sync or async) until it returns something truthy."""
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        value = check()
        if asyncio.iscoroutine(value):
            value = await value
        if value:
            return value
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")


def assignment(worker: Worker) -> set[TopicPartition]:
    return {tp for source in worker.intake.consumers for tp in source.assignment()}


async def ready_record_bytes(app: App, topic: str, partition: int, job_id: str) -> bytes:
    """The ready record of `job_id` on `topic`/`partition`, read from the beginning."""
    reader = consumer(app.settings, group_id=None, isolation_level="read_uncommitted")
    await reader.start()
    try:
        tp = TopicPartition(topic, partition)
        reader.assign([tp])
        await reader.seek_to_beginning(tp)
        deadline = asyncio.get_running_loop().time() + 30
        while asyncio.get_running_loop().time() < deadline:
            batch = await reader.getmany(tp, timeout_ms=500)
            for record in batch.get(tp, []):
                if record.key == job_id.encode() and record.value is not None:
                    return record.value
        raise AssertionError(f"no ready record of {job_id} on {topic}/{partition}")
    finally:
        await reader.stop()


def decisions_of(events: list[JobEvent]) -> list[tuple[JobEvent, Any]]:
    """Each event of the log with what the fold decided for it (as the processor did)."""
    return list(replay(events, {}))


# -- a ready record delivered twice: only the accepted claim decides ---------------------------------


async def test_a_ready_record_delivered_twice_is_decided_by_the_accepted_claim_only(runtime: Runtime) -> None:
    app = runtime.app
    register_jobs(app)
    first, second = await runtime.start_worker(worker_id="wa"), await runtime.start_worker(worker_id="wb")
    topics = [app.names.ready("default", priority) for priority in PRIORITIES]
    everything = {tp for topic in topics for tp in await partitions_of(app.settings, topic)}
    # Given two workers of the queue sharing its ready partitions between them
    await until(lambda: assignment(first) and assignment(second) and assignment(first) | assignment(second) == everything,
                "both workers to own ready partitions")

    # When a job's ready record reaches one of them, which claims it and starts a slow first run
    job_id = await app.enqueue("first_run_is_slow", {"first_s": 6.0})
    topic = app.names.ready("default", "normal")
    partition = key_partition(job_id.encode(), len(await partitions_of(app.settings, topic)))
    owner, other = (first, second) if TopicPartition(topic, partition) in assignment(first) else (second, first)
    running = await wait_for_status(runtime, job_id, JobStatus.RUNNING)
    assert running.worker_id == owner.worker_id and running.claim_id is not None
    # And a duplicate of that ready record reaches the other worker (written by hand to a partition it owns)
    value = await ready_record_bytes(app, topic, partition, job_id)
    elsewhere = min(tp.partition for tp in assignment(other) if tp.topic == topic)
    send = producer(app.settings)
    await send.start()
    try:
        await (await send.send(topic, value, key=job_id.encode(), partition=elsewhere))
    finally:
        await send.stop()

    # Then the job completes with the accepted claim's result, although the other run finished first
    done = await app.wait(job_id, timeout=60)
    assert (done.status, done.result, done.worker_id, done.claim_id) == (
        JobStatus.COMPLETED, {"run": 1}, owner.worker_id, running.claim_id
    )
    assert RUNS[job_id] == 2  # the refused claim's handler ran too: at-least-once, and it decided nothing

    events = await job_events(app.settings, job_id)
    decided = decisions_of(events)
    claims = [(e, d) for e, d in decided if is_claim(e)]  # each worker's start, which is also its claim
    assert [e.type for e, _ in claims] == ["attempt_started", "attempt_started"]
    assert [(e.worker_id, d.rejected) for e, d in claims] == [
        (owner.worker_id, None), (other.worker_id, "attempt 0 is already claimed by " + owner.worker_id)
    ]
    refused_claim = claims[1][0].event_id
    outcomes = [(e, d) for e, d in decided if e.type == "attempt_succeeded"]
    assert [e.claim_id for e, _ in outcomes] == [refused_claim, running.claim_id]  # the refused one came first
    (late, late_decision), (accepted, accepted_decision) = outcomes
    assert late.result == {"run": 2} and late.actor == f"worker:{other.worker_id}"
    assert late_decision.rejected == (
        f"claim {refused_claim} is not the accepted claim of attempt 0 (claim {running.claim_id} of worker "
        f"{owner.worker_id}); recorded, no effect"
    )
    assert accepted.result == {"run": 1} and accepted_decision.accepted
    assert [e.result for e in events if e.type == "completed"] == [{"run": 1}]


async def test_a_republished_ready_record_whose_claim_is_refused_is_not_run(runtime: Runtime) -> None:
    app = runtime.app
    register_jobs(app)
    first, second = await runtime.start_worker(worker_id="wa"), await runtime.start_worker(worker_id="wb")
    topics = [app.names.ready("default", priority) for priority in PRIORITIES]
    everything = {tp for topic in topics for tp in await partitions_of(app.settings, topic)}
    # Given two workers of the queue sharing its ready partitions, and a job one of them ran
    await until(lambda: assignment(first) and assignment(second) and assignment(first) | assignment(second) == everything,
                "both workers to own ready partitions")
    job_id = await app.enqueue("first_run_is_slow", {"first_s": 0.0})
    done = await app.wait(job_id, timeout=60)
    assert done.status is JobStatus.COMPLETED and RUNS[job_id] == 1
    topic = app.names.ready("default", "normal")
    partition = key_partition(job_id.encode(), len(await partitions_of(app.settings, topic)))
    other = second if TopicPartition(topic, partition) in assignment(first) else first

    # When a re-published copy of its ready record reaches the other worker (written by hand, with
    # the mark the processor puts on a re-publish, to a partition that worker owns)
    value = await ready_record_bytes(app, topic, partition, job_id)
    elsewhere = min(tp.partition for tp in assignment(other) if tp.topic == topic)
    send = producer(app.settings)
    await send.start()
    try:
        await (await send.send(topic, value, key=job_id.encode(), partition=elsewhere,
                               headers=republished_headers(0)))
    finally:
        await send.stop()

    # Then that worker claims it, the claim is refused, and once the worker is done with it (not
    # running it, its offset settled) the handler has still run once
    async def claimed_by_other() -> bool:
        return any(e.type == "claimed" and e.actor == f"worker:{other.worker_id}"
                   for e in await job_events(app.settings, job_id))

    await until(claimed_by_other, "the other worker's claim of the copy")
    await until(lambda: not any(ready.job_id == job_id for ready, _ in other.running.values())
                and not any(other.offsets[key].outstanding for key in other.offsets), "the copy to be settled")
    assert RUNS[job_id] == 1
    events = await job_events(app.settings, job_id)
    decided = decisions_of(events)
    # the first run's start was its claim; the copy's claim is a `claimed` that waits for its verdict
    claims = [(e.type, e.worker_id, d.rejected) for e, d in decided if is_claim(e)]
    assert claims == [("attempt_started", done.worker_id, None),
                      ("claimed", other.worker_id, "job is completed (terminal): 'claimed' changes nothing")], claims
    assert [e.actor for e in events if e.type == "attempt_started"] == [f"worker:{done.worker_id}"]
    assert (await app.state(job_id)) == done  # the refusal wrote the same state again, nothing else


# -- a pending job whose ready record was never seen is re-published -------------------------------


@pytest.fixture
async def fast_republish(app: App) -> AsyncIterator[Runtime]:
    """The runtime with a processor that re-publishes a pending job's ready record after 1 s, then 2 s."""
    async with processor_runtime(app, republish=ReadyRepublish(first_s=1.0, cap_s=2.0)) as rt:
        yield rt


async def consume_past(app: App, job_id: str) -> None:
    """What a lost ready record looks like to the workers: a member of their group reads the job's
    ready record and commits past it without claiming it."""
    thief = consumer(app.settings, group_id=app.names.worker_group("default"), isolation_level="read_uncommitted")
    await thief.start()
    try:
        thief.subscribe([app.names.ready("default", priority) for priority in PRIORITIES])
        deadline = asyncio.get_running_loop().time() + 60
        while asyncio.get_running_loop().time() < deadline:
            batch = await thief.getmany(timeout_ms=500)
            if any(r.key == job_id.encode() for records in batch.values() for r in records):
                await thief.commit()
                return
        raise AssertionError(f"the ready record of {job_id} never came")
    finally:
        await thief.stop()


async def test_a_pending_job_whose_ready_record_was_lost_is_republished_and_completes(
    fast_republish: Runtime,
) -> None:
    runtime = fast_republish
    app = runtime.app
    # Given a pending job whose ready record the workers' group has consumed past (lost)
    job_id = await app.enqueue("add", {"a": 2, "b": 3})
    await consume_past(app, job_id)
    # When a worker of the queue starts (it begins after the lost record)
    await runtime.start_worker()
    # Then the processor publishes the ready record again, and the job completes
    done = await app.wait(job_id, timeout=60)
    assert (done.status, done.result) == (JobStatus.COMPLETED, {"sum": 5})
    assert done.ready_republishes >= 1
    events = await job_events(app.settings, job_id)
    decided = decisions_of(events)
    republished = [e for e, d in decided if e.type == "due" and e.timer == "republish" and d.accepted]
    assert [e.sequence for e in republished] == list(range(len(republished))) and republished
    claimed_at = next(i for i, e in enumerate(events) if e.type == "claimed")
    assert events.index(republished[0]) < claimed_at  # claimed from a re-published record
    # And each re-publish happened once in effect, all of them while the job was pending
    assert len({(e.attempt, e.sequence) for e in republished}) == len(republished) == done.ready_republishes
    # And the re-published copy (whose claim waited for its verdict) ran the handler once
    assert EXECUTIONS[job_id] == 1
    assert [e.type for e in events].count("claimed") == 1


# -- a revoked ready record does not revoke the next attempt ------------------------------------


async def test_a_ttl_revocation_does_not_revoke_the_attempt_a_dead_letter_retry_makes_ready(runtime: Runtime) -> None:
    app = runtime.app
    # Given a job that expired while pending (its ready record revoked) and was retried from the
    # dead-letter queue (a new ready record for attempt 1), all before any worker ran
    job_id = await app.enqueue("add", {"a": 1, "b": 1}, ttl=1)
    expired = await wait_for_status(runtime, job_id, JobStatus.DEAD_LETTERED)
    assert expired.reason is not None and expired.reason.startswith("expired")
    await until(lambda: _in_dead_letters(app, job_id), "the dead-letter entry")
    await app.retry_dead_letter(job_id)
    await wait_for_status(runtime, job_id, JobStatus.PENDING)
    # When a worker reads the ready topic: attempt 0's record, its tombstone, attempt 1's record
    await runtime.start_worker()
    # Then attempt 1 runs (the tombstone revoked attempt 0 only) and the job completes
    done = await app.wait(job_id, timeout=30)
    assert (done.status, done.attempt, done.result) == (JobStatus.COMPLETED, 1, {"sum": 2})


async def _in_dead_letters(app: App, job_id: str) -> bool:
    return any(e.job_id == job_id for e in await app.dead_letters())


# -- the worker's side, without a broker: rebalances and revocations --------------------------------


class FakeSource:
    """Stands in for a worker's consumer: what it owns, and the offsets committed through it."""

    def __init__(self, owned: set[TopicPartition]) -> None:
        self.owned = owned
        self.commits: list[dict[TopicPartition, int]] = []

    def assignment(self) -> set[TopicPartition]:
        return set(self.owned)

    async def commit(self, offsets: dict[TopicPartition, Any]) -> None:
        self.commits.append({tp: meta.offset for tp, meta in offsets.items()})


def ready_bytes(job_id: str, attempt: int, enqueued_at: datetime = T0) -> bytes:
    return ReadyRecord(
        job_id=job_id, attempt=attempt, name="add", queue="default", priority=Priority.NORMAL, args={"a": 1, "b": 2},
        options=JobOptions().to_spec(), enqueued_at=enqueued_at, ready_at=enqueued_at,
    ).encode()


def kafka_record(topic: str, partition: int, offset: int, key: str, value: bytes | None,
                 headers: list[tuple[str, bytes]] | None = None) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord(topic, partition, offset, 0, 0, key.encode(), value, None, len(key), len(value or b""),
                          headers or [])


def offline_worker(namespace: str, *sources: FakeSource) -> Worker:
    worker = Worker(App(namespace), queues=["default"])
    worker.intake.consumers = list(sources)  # type: ignore[list-item]
    return worker


async def test_a_revoked_partitions_buffered_records_are_dropped_and_never_committed_later(namespace: str) -> None:
    topic = f"{namespace}.ready.default.normal"
    mine, lost = TopicPartition(topic, 0), TopicPartition(topic, 1)
    source = FakeSource({mine, lost})
    worker = offline_worker(namespace, source)
    # Given buffered ready records of two partitions; on the lost one offset 10 is claimed (settled)
    # and offsets 11 and 12 wait in the buffer
    for tp, offsets in ((mine, (5, 6)), (lost, (10, 11, 12))):
        state = worker.offsets.setdefault((0, tp), _Offsets())
        for offset in offsets:
            record = kafka_record(topic, tp.partition, offset, f"job-{tp.partition}-{offset}", ready_bytes("j", 0))
            state.outstanding.add(offset)
            state.next_offset = offset + 1
            worker.buffers["normal"].append(_Item(source, record))  # type: ignore[arg-type]
    worker.intake.settled(worker.buffers["normal"][2])  # offset 10: its claim was acknowledged
    worker.buffers["normal"].remove(worker.buffers["normal"][2])
    # When the lost partition is revoked in a rebalance
    source.owned.discard(lost)
    await worker.intake._release(source, [lost])  # type: ignore[arg-type]
    # Then its buffered records are dropped (the new owner gets them), what was settled before them
    # is committed while it is still owned, and nothing of it is committed afterwards
    assert [i.record.offset for i in worker.buffers["normal"]] == [5, 6]
    assert source.commits == [{lost: 11}]
    assert (0, lost) not in worker.offsets
    worker.intake.settled(_Item(source, kafka_record(topic, 1, 11, "late", b"")))  # type: ignore[arg-type]
    await worker.intake.commit()
    assert source.commits[-1] == {mine: 5}
    # And when it is assigned again, its offsets start afresh from what the group committed
    worker.offsets[(0, lost)] = _Offsets(outstanding={11}, next_offset=13)
    await worker.intake._take(source, [lost])  # type: ignore[arg-type]
    assert (0, lost) not in worker.offsets


async def test_a_revocation_names_the_attempt_it_revokes(namespace: str) -> None:
    topic = f"{namespace}.ready.default.normal"
    source = FakeSource({TopicPartition(topic, 0)})
    worker = offline_worker(namespace, source)
    # Given buffered ready records of attempts 0 and 1 of a job, and of attempt 0 of an older
    # incarnation of the same job id (enqueued again after its retention passed)
    older = T0 - timedelta(days=2)
    for offset, (attempt, enqueued_at) in enumerate(((0, older), (0, T0), (1, T0))):
        worker.buffers["normal"].append(_Item(source, kafka_record(  # type: ignore[arg-type]
            topic, 0, offset, "job-1", ready_bytes("job-1", attempt, enqueued_at))))
    # When the processor revokes attempt 0 of the current incarnation
    revoked = ReadyRecord.decode(ready_bytes("job-1", 0))
    worker.intake._revoke(kafka_record(topic, 0, 3, "job-1", None, revocation_headers(revoked)), "normal")
    # Then only that record is dropped, and only that attempt is remembered as revoked
    left = [ReadyRecord.decode(i.record.value) for i in worker.buffers["normal"]]
    assert [(r.attempt, r.enqueued_at) for r in left] == [(0, older), (1, T0)]
    assert list(worker.revoked) == [("job-1", 0, ready_attempt(revoked)[2])]
    assert ready_attempt(ReadyRecord.decode(ready_bytes("job-1", 1))) not in worker.revoked
    # And a tombstone that names no attempt (the processor writes none) revokes nothing: it is
    # skipped and counted
    worker.intake._revoke(kafka_record(topic, 0, 4, "job-1", None), "normal")
    still = [ReadyRecord.decode(i.record.value) for i in worker.buffers["normal"]]
    assert [(r.attempt, r.enqueued_at) for r in still] == [(0, older), (1, T0)]
    assert len(worker.revoked) == 1 and worker.intake.bad_tombstones.counts == {"revokes no attempt": 1}
    assert worker.skipped_records == 1
