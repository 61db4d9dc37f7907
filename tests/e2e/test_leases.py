"""A lease is the processor's own timer (core/housekeeping.py): a claim whose worker is never heard
of again ends with `lease_expired`, written by the processor, with no timer record for it. A
lease record an older processor wrote for the same lease (a rolling upgrade) is still fired by
the timer service: the same event id, so the attempt ends once."""

from __future__ import annotations

import asyncio

from eventjobs.core.clock import SystemClock
from eventjobs.core.codec import encode
from eventjobs.core.commands import claimed_event
from eventjobs.core.records import TimerRecord
from eventjobs.core.state import JobState, JobStatus
from eventjobs.kafka.clients import job_partition, partitions_of, producer, read_to_end
from tests.e2e.conftest import Runtime, job_events, wait_for_status

LEASE_S = 1.0


async def timer_keys_of(runtime: Runtime, job_id: str) -> list[bytes]:
    """The keys of every timer record (arms and tombstones) written for the job."""
    settings = runtime.app.settings
    topic = runtime.app.names.timers
    return [r.key async for r in read_to_end(settings, await partitions_of(settings, topic))
            if r.key is not None and r.key.startswith(job_id.encode())]


async def test_a_lease_that_runs_out_ends_the_attempt_once_with_or_without_an_older_processors_record(
    runtime: Runtime,
) -> None:
    app, settings = runtime.app, runtime.app.settings
    partitions = len(await partitions_of(settings, app.names.events))
    # Given two pending jobs, and no worker
    plain = await app.enqueue("add", {"a": 1, "b": 2})
    upgraded = await app.enqueue("add", {"a": 3, "b": 4})
    for job_id in (plain, upgraded):
        await wait_for_status(runtime, job_id, JobStatus.PENDING)
    # When a worker claims both with a 1 s lease and is never heard of again, and the timer topic
    # holds the lease record an older processor would have written for the second claim
    sender = producer(settings)
    await sender.start()
    try:
        for job_id in (plain, upgraded):
            claim = claimed_event(job_id, 0, worker_id="gone", now=SystemClock().now(), actor="worker:gone",
                                  lease_s=LEASE_S)
            partition = job_partition(job_id, partitions)
            await sender.send_and_wait(app.names.events, encode(claim), key=job_id.encode(), partition=partition)
            if job_id == upgraded:
                old = TimerRecord(job_id=job_id, kind="lease", attempt=0, due_at=claim.lease_deadline)
                await sender.send_and_wait(app.names.timers, old.encode(), key=old.key, partition=partition)
    finally:
        await sender.stop()

    # Then each lease expires and the job is retried: attempt 1 waits for the next worker
    for job_id in (plain, upgraded):
        await pending_on(runtime, job_id, attempt=1)
    # the processor expired the plain job's lease, and wrote no timer record for it
    plain_events = await job_events(settings, plain)
    expiries = [e for e in plain_events if e.type == "lease_expired"]
    assert [e.actor.split(":")[0] for e in expiries] == ["processor"], expiries
    assert [e.type for e in plain_events].count("retry_scheduled") == 1
    assert set(await timer_keys_of(runtime, plain)) == {f"{plain}:retry:1".encode()}  # its retry's only
    # the upgraded job's lease was fired by whichever came first, the other being the same event
    upgraded_events = await job_events(settings, upgraded)
    expiries = [e for e in upgraded_events if e.type == "lease_expired"]
    assert 1 <= len(expiries) <= 2 and len({e.event_id for e in expiries}) == 1, expiries
    assert [e.type for e in upgraded_events].count("retry_scheduled") == 1
    # and the timer service tombstoned the old record it fired
    keys = await timer_keys_of(runtime, upgraded)
    assert keys.count(f"{upgraded}:lease".encode()) == 2, keys  # the old record, then its tombstone


async def pending_on(runtime: Runtime, job_id: str, *, attempt: int, timeout: float = 30) -> JobState:
    """The job's committed state once it is pending on `attempt` (its retry's backoff passed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await runtime.app.state(job_id)
        if state is not None and state.status is JobStatus.PENDING and state.attempt == attempt:
            return state
        assert asyncio.get_running_loop().time() < deadline, f"job {job_id} never pending on attempt {attempt}: {state}"
        await asyncio.sleep(0.05)
