"""A lease is the processor's own timer (core/housekeeping.py): a claim whose worker is never heard
of again ends with `lease_expired`, written by the processor, with no timer record for it."""

from __future__ import annotations

import asyncio

from eventjobs.core.clock import SystemClock
from eventjobs.core.codec import encode
from eventjobs.core.commands import claimed_event
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


async def test_a_lease_that_runs_out_ends_the_attempt_once(runtime: Runtime) -> None:
    app, settings = runtime.app, runtime.app.settings
    partitions = len(await partitions_of(settings, app.names.events))
    # Given a pending job, and no worker
    job_id = await app.enqueue("add", {"a": 1, "b": 2})
    await wait_for_status(runtime, job_id, JobStatus.PENDING)
    # When a worker claims it with a 1 s lease and is never heard of again
    sender = producer(settings)
    await sender.start()
    try:
        claim = claimed_event(job_id, 0, worker_id="gone", now=SystemClock().now(), actor="worker:gone",
                              lease_s=LEASE_S)
        await sender.send_and_wait(app.names.events, encode(claim), key=job_id.encode(),
                                   partition=job_partition(job_id, partitions))
    finally:
        await sender.stop()

    # Then the lease expires and the job is retried: attempt 1 waits for the next worker
    await pending_on(runtime, job_id, attempt=1)
    # the processor expired the lease, once, and wrote no timer record for it
    events = await job_events(settings, job_id)
    expiries = [e for e in events if e.type == "lease_expired"]
    assert [e.actor.split(":")[0] for e in expiries] == ["processor"], expiries
    assert [e.type for e in events].count("retry_scheduled") == 1
    assert set(await timer_keys_of(runtime, job_id)) == {f"{job_id}:retry:1".encode()}  # its retry's only


async def pending_on(runtime: Runtime, job_id: str, *, attempt: int, timeout: float = 30) -> JobState:
    """The job's committed state once it is pending on `attempt` (its retry's backoff passed)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await runtime.app.state(job_id)
        if state is not None and state.status is JobStatus.PENDING and state.attempt == attempt:
            return state
        assert asyncio.get_running_loop().time() < deadline, f"job {job_id} never pending on attempt {attempt}: {state}"
        await asyncio.sleep(0.05)
