"""Job lifecycles end to end: real broker, real processor, timer service and worker."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from eventjobs.core.state import JobStatus
from tests.e2e.conftest import Runtime, job_events, wait_for_status
from tests.support.jobs_app import EXECUTIONS


async def test_happy_path_returns_the_result(runtime: Runtime) -> None:
    await runtime.start_worker()
    job_id = await runtime.app.enqueue("add", {"a": 2, "b": 3})
    state = await runtime.app.wait(job_id, timeout=30)
    assert state.status is JobStatus.COMPLETED
    assert state.result == {"sum": 5}
    assert state.attempts_started == 1
    types = [e.type for e in await job_events(runtime.app.settings, job_id)]
    assert types == ["enqueued", "attempt_started", "attempt_succeeded", "completed"]  # the start is also the claim


async def test_flaky_job_retries_with_backoff_then_succeeds(runtime: Runtime) -> None:
    await runtime.start_worker()
    job_id = await runtime.app.enqueue("flaky", {"fail_times": 2})
    state = await runtime.app.wait(job_id, timeout=30)
    assert state.status is JobStatus.COMPLETED and state.result == {"attempt": 2}
    assert state.attempts_started == 3 and EXECUTIONS[job_id] == 3
    events = await job_events(runtime.app.settings, job_id)
    failed = [e for e in events if e.type == "attempt_failed"]
    started = [e for e in events if e.type == "attempt_started"]
    assert [e.attempt for e in started] == [0, 1, 2]
    assert all(f.error_type == "ConnectionError" and "transient failure" in f.traceback for f in failed)
    for failure, next_start in zip(failed, started[1:]):
        assert next_start.occurred_at - failure.occurred_at >= timedelta(seconds=0.5)  # the configured backoff


async def test_cancel_marker_fails_at_once_without_retry(runtime: Runtime) -> None:
    await runtime.start_worker()
    job_id = await runtime.app.enqueue("gives_up", {})
    state = await runtime.app.wait(job_id, timeout=30)
    assert state.status is JobStatus.DEAD_LETTERED
    assert state.attempts_started == 1 and EXECUTIONS[job_id] == 1
    assert state.last_error is not None and state.last_error.error_type == "Cancel"
    assert "refunded" in state.last_error.message


async def test_retry_on_only_retries_listed_errors(runtime: Runtime) -> None:
    await runtime.start_worker()
    retried = await runtime.app.enqueue("picky", {"error": "connection"})
    not_retried = await runtime.app.enqueue("picky", {"error": "key"})
    first = await runtime.app.wait(retried, timeout=30)
    second = await runtime.app.wait(not_retried, timeout=30)
    assert first.status is JobStatus.DEAD_LETTERED and first.attempts_started == 4  # max_attempts
    assert second.status is JobStatus.DEAD_LETTERED and second.attempts_started == 1
    assert second.last_error is not None and second.last_error.error_type == "KeyError"


async def test_timeout_is_reported_and_dead_lettered(runtime: Runtime) -> None:
    await runtime.start_worker()
    job_id = await runtime.app.enqueue("too_slow", {})
    state = await runtime.app.wait(job_id, timeout=30)
    assert state.status is JobStatus.DEAD_LETTERED
    types = [e.type for e in await job_events(runtime.app.settings, job_id)]
    assert "attempt_timed_out" in types and types[-1] == "dead_lettered"


async def test_exhausted_job_is_retried_from_the_dead_letter_queue(runtime: Runtime) -> None:
    await runtime.start_worker()
    app = runtime.app
    job_id = await app.enqueue("fails_until_retried", {})
    dead = await app.wait(job_id, timeout=30)
    assert dead.status is JobStatus.DEAD_LETTERED and dead.attempts_started == 2
    entries = [e for e in await app.dead_letters() if e.job_id == job_id]
    assert len(entries) == 1 and entries[0].error_type == "RuntimeError"

    await app.retry_dead_letter(job_id)
    done = await wait_for_status(runtime, job_id, JobStatus.COMPLETED)
    assert done.result == {"attempt": 2} and done.attempts_started == 3
    assert [e for e in await app.dead_letters() if e.job_id == job_id] == []


async def test_enqueue_sync_for_scripts_and_sync_handlers(runtime: Runtime) -> None:
    await runtime.start_worker()
    job_id = await asyncio.to_thread(runtime.app.enqueue_sync, "add", {"a": 4, "b": 5})
    state = await runtime.app.wait(job_id, timeout=30)
    assert state.status is JobStatus.COMPLETED and state.result == {"sum": 9}
