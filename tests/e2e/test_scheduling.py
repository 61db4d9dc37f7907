"""Idempotency, timers (run_at, TTL), priority, capabilities, cancel and child jobs end to end."""

from __future__ import annotations

import asyncio
import time
from datetime import datetime, timedelta, timezone

from eventjobs.core.options import ConstantBackoff
from eventjobs.core.state import JobStatus
from tests.e2e.conftest import Runtime, job_events, wait_for_status
from tests.support.jobs_app import EXECUTIONS, STARTED


async def test_same_idempotency_key_fifty_times_runs_once(runtime: Runtime) -> None:
    await runtime.start_worker()
    ids = await asyncio.gather(
        *(runtime.app.enqueue("add", {"a": 1, "b": 1}, idempotency_key="order-42") for _ in range(50))
    )
    assert len(set(ids)) == 1
    state = await runtime.app.wait(ids[0], timeout=30)
    assert state.status is JobStatus.COMPLETED
    await asyncio.sleep(1.0)  # give any wrongly accepted duplicate time to run
    assert EXECUTIONS[ids[0]] == 1
    events = await job_events(runtime.app.settings, ids[0])
    assert sum(e.type == "enqueued" for e in events) == 50
    assert sum(e.type == "duplicate_rejected" for e in events) == 49
    assert sum(e.type == "attempt_started" for e in events) == 1


async def test_scheduled_jobs_start_within_100_ms_of_run_at(runtime: Runtime) -> None:
    await runtime.start_worker()
    await runtime.app.wait(await runtime.app.enqueue("add", {"a": 0, "b": 0}), timeout=30)  # warm up
    base = datetime.now(timezone.utc).replace(microsecond=0) + timedelta(seconds=2)
    run_ats = [base + timedelta(milliseconds=250 * i) for i in range(5)]
    job_ids = [await runtime.app.enqueue("add", {"a": i, "b": 0}, run_at=at) for i, at in enumerate(run_ats)]
    lateness_ms = []
    for job_id, run_at in zip(job_ids, run_ats):
        assert (await runtime.app.wait(job_id, timeout=30)).status is JobStatus.COMPLETED
        events = await job_events(runtime.app.settings, job_id)
        assert [e.type for e in events][:3] == ["enqueued", "scheduled", "due"]
        started = next(e for e in events if e.type == "attempt_started").occurred_at
        lateness_ms.append((started - run_at).total_seconds() * 1000)
    assert all(late >= 0 for late in lateness_ms), f"a job started before its run_at: {lateness_ms}"
    assert sorted(lateness_ms)[2] <= 100, f"median lateness over 100 ms: {lateness_ms}"
    assert max(lateness_ms) <= 250, f"lateness {lateness_ms}"


async def test_ttl_expires_a_job_that_did_not_start(runtime: Runtime) -> None:
    job_id = await runtime.app.enqueue("add", {"a": 1, "b": 1}, ttl=0.5)  # no worker runs
    state = await runtime.app.wait(job_id, timeout=30)
    assert state.status is JobStatus.DEAD_LETTERED
    assert state.reason is not None and "expired" in state.reason
    assert EXECUTIONS[job_id] == 0


async def test_cancel_pending_scheduled_and_retrying_jobs(runtime: Runtime) -> None:
    app = runtime.app
    pending = await app.enqueue("add", {"a": 1, "b": 1})  # no worker yet
    scheduled = await app.enqueue("add", {"a": 1, "b": 1}, delay=30)
    await asyncio.sleep(0.5)
    await app.cancel(pending)
    await app.cancel(scheduled)
    assert (await app.wait(pending, timeout=30)).status is JobStatus.CANCELLED
    assert (await app.wait(scheduled, timeout=30)).status is JobStatus.CANCELLED

    await runtime.start_worker()
    retrying = await app.enqueue("flaky", {"fail_times": 99}, backoff=ConstantBackoff(delay_s=30))
    await wait_for_status(runtime, retrying, JobStatus.RETRYING)
    await app.cancel(retrying)
    state = await app.wait(retrying, timeout=30)
    assert state.status is JobStatus.CANCELLED and EXECUTIONS[pending] == 0 and EXECUTIONS[scheduled] == 0


async def test_cancel_running_job_stops_at_its_next_heartbeat(runtime: Runtime) -> None:
    await runtime.start_worker(lease_s=0.9)  # heartbeats every 0.3 s
    job_id = await runtime.app.enqueue("sleepy", {"seconds": 20})
    await wait_for_status(runtime, job_id, JobStatus.RUNNING)
    started = time.monotonic()
    await runtime.app.cancel(job_id)
    state = await runtime.app.wait(job_id, timeout=30)
    assert state.status is JobStatus.CANCELLED
    assert time.monotonic() - started < 10


async def test_priority_order_under_a_backlog_of_low_jobs(runtime: Runtime) -> None:
    app = runtime.app
    STARTED.clear()
    low = [app._build_enqueue("mark_start", {"tag": "low"}, priority="low") for _ in range(10_000)]
    for chunk in range(0, len(low), 2000):
        await app.writer.append(low[chunk:chunk + 2000])
    await asyncio.sleep(3)  # the processor publishes the backlog to the low ready topic
    critical = [await app.enqueue("mark_start", {"tag": "critical"}, priority="critical") for _ in range(5)]
    await asyncio.sleep(1)
    await runtime.start_worker(concurrency=2)
    for job_id in critical:
        await app.wait(job_id, timeout=60)
    order = [tag for _, tag, _ in STARTED]
    last_critical = max(i for i, tag in enumerate(order) if tag == "critical")
    # only what the worker had already fetched of the low backlog may start before them
    assert last_critical < 200, f"critical jobs started at positions {[i for i, t in enumerate(order) if t == 'critical']}"


async def test_capability_routing(runtime: Runtime) -> None:
    plain = await runtime.start_worker(queues=["render"], worker_id="plain")
    job_id = await runtime.app.enqueue("render", {})
    await asyncio.sleep(3)
    state = await runtime.app.state(job_id)
    assert state is not None and state.status is JobStatus.PENDING  # nobody with "gpu" yet
    assert plain.completed == 0
    await runtime.start_worker(queues=["render"], capabilities=["gpu"], worker_id="gpu-box")
    done = await runtime.app.wait(job_id, timeout=30)
    assert done.status is JobStatus.COMPLETED and done.worker_id == "gpu-box"


async def test_child_jobs_are_recorded_with_their_parent(runtime: Runtime) -> None:
    await runtime.start_worker()
    parent = await runtime.app.enqueue("parent", {})
    state = await runtime.app.wait(parent, timeout=30)
    child = state.result["child"]  # type: ignore[index]
    child_state = await runtime.app.wait(child, timeout=30)
    assert child_state.parent_job_id == parent and child_state.result == {"sum": 2}


async def test_retry_marker_with_its_own_delay(runtime: Runtime) -> None:
    await runtime.start_worker()
    job_id = await runtime.app.enqueue("retry_later", {})
    state = await runtime.app.wait(job_id, timeout=30)
    assert state.status is JobStatus.COMPLETED and state.result == {"attempt": 1}
    scheduled = next(e for e in await job_events(runtime.app.settings, job_id) if e.type == "retry_scheduled")
    assert scheduled.delay_s == 0.3
