"""Snooze end to end: a handler returns Snooze(delay) and runs again later without using an attempt."""

from __future__ import annotations

from datetime import timedelta

from eventjobs.core.state import JobStatus
from tests.e2e.conftest import Runtime, job_events
from tests.e2e.test_dependencies import wf_app, wf_runtime  # noqa: F401 - fixtures


async def test_snoozes_do_not_use_attempts(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker()
    app = wf_runtime.app
    # snoozy has max_attempts=2: three snoozes and one failure still leave an attempt to succeed
    job_id = await app.enqueue("snoozy", {"snoozes": 3, "fail_once": True, "delay": 0.3})
    state = await app.wait(job_id, timeout=30)
    assert state.status is JobStatus.COMPLETED, state
    assert state.result == {"attempt": 4}
    assert state.workflow is not None and state.workflow.snoozes == 3
    assert state.max_attempts == 2 + 3  # the budget grew by one per snooze
    events = await job_events(app.settings, job_id)
    types = [e.type for e in events]
    assert types.count("attempt_snoozed") == 3 and types.count("attempt_failed") == 1
    assert types.count("scheduled") == 3  # each snooze schedules the next run
    snoozed = [e for e in events if e.type == "attempt_snoozed"]
    started = [e for e in events if e.type == "attempt_started"]
    for snooze, next_start in zip(snoozed, started[1:]):
        assert next_start.occurred_at - snooze.occurred_at >= timedelta(seconds=0.3)  # the delay was kept


async def test_snoozing_past_max_snoozes_fails_the_attempt(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker()
    app = wf_runtime.app
    job_id = await app.enqueue("sleepless", {})  # max_snoozes=1, max_attempts=1
    state = await app.wait(job_id, timeout=30)
    assert state.status is JobStatus.DEAD_LETTERED
    assert state.last_error is not None and state.last_error.error_type == "SnoozeLimitExceeded"
    assert "max_snoozes (1)" in state.last_error.message
    assert state.attempts_started == 2
