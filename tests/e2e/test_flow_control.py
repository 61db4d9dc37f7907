"""Uniqueness windows (unique_for, the throttle) and debounce end to end: the real broker, processor and worker."""

from __future__ import annotations

import asyncio
import time
from datetime import timedelta

import pytest

from eventjobs import EnqueueRefused
from eventjobs.core.flow import window_of
from eventjobs.core.state import JobStatus
from tests.e2e.conftest import Runtime, job_events
from tests.support.jobs_app import EXECUTIONS


async def _at_a_window_start(window_s: float, margin_s: float = 0.2) -> None:
    """Sleep until just after the next window of ``window_s`` begins, so a test's enqueues share a window."""
    now = time.time()
    await asyncio.sleep((now // window_s + 1) * window_s - now + margin_s)


async def test_unique_for_refuses_later_enqueues_with_the_winners_id_and_a_new_window_runs_a_new_job(
    runtime: Runtime,
) -> None:
    await runtime.start_worker()
    app = runtime.app
    await _at_a_window_start(6)
    # Given the first enqueue of key "report-7" in a 6-second window: it wins
    winner = await app.enqueue_unique("add", {"a": 1, "b": 1}, idempotency_key="report-7", unique_for="6s")
    # When the same key is enqueued again in the window, with other args
    with pytest.raises(EnqueueRefused) as refused:
        await app.enqueue_unique("add", {"a": 5, "b": 5}, idempotency_key="report-7", unique_for="6s")
    # Then it is refused, naming the winner, and plain enqueue names the winner too
    assert refused.value.winner_id == winner
    assert f"The window's job is {winner}" in str(refused.value)
    assert await app.enqueue("add", {"a": 9, "b": 9}, idempotency_key="report-7", unique_for="6s") == winner
    state = await app.wait(winner, timeout=30)
    assert state.status is JobStatus.COMPLETED and state.result == {"sum": 2}  # the winner's args ran, once
    assert refused.value.window_ends_at is not None
    events = await job_events(app.settings, winner)
    assert [e.type for e in events].count("duplicate_rejected") == 2
    assert [e.type for e in events].count("attempt_started") == 1
    # And after the window, the key runs a new job (the earlier one is still retained)
    await asyncio.sleep(max(0.0, refused.value.window_ends_at.timestamp() - time.time()) + 0.05)
    later = await app.enqueue_unique("add", {"a": 2, "b": 2}, idempotency_key="report-7", unique_for="6s")
    assert later != winner
    assert (await app.wait(later, timeout=30)).result == {"sum": 4}
    assert await app.state(winner) is not None  # retained: its id was not reused
    assert EXECUTIONS[winner] == 1 and EXECUTIONS[later] == 1


async def test_debounce_replaces_the_args_and_pushes_the_start_back(runtime: Runtime) -> None:
    await runtime.start_worker()
    app = runtime.app
    await _at_a_window_start(8)
    # Given three enqueues of one key, 0.5 s apart, in one 8-second debounce window (it starts 8 s after each)
    job_ids = []
    for n in (1, 2, 3):
        job_ids.append(await app.enqueue_unique("add", {"a": n, "b": 0}, idempotency_key="sync-1", debounce="8s"))
        await asyncio.sleep(0.5)
    # Then they are one job, run once, with the last args, 8 s after the last enqueue
    assert len(set(job_ids)) == 1
    job_id = job_ids[0]
    state = await app.wait(job_id, timeout=40)
    assert state.status is JobStatus.COMPLETED and state.result == {"sum": 3}
    assert EXECUTIONS[job_id] == 1
    events = await job_events(app.settings, job_id)
    enqueues = [e for e in events if e.type == "enqueued"]
    debounced = [e for e in events if e.type == "debounced"]
    assert len(enqueues) == 3 and len(debounced) == 2  # each replacement is in the job's history
    assert [d.causation_id for d in debounced] == [e.event_id for e in enqueues[1:]]
    assert [d.run_at for d in debounced] == [e.occurred_at + timedelta(seconds=8) for e in enqueues[1:]]
    started = next(e for e in events if e.type == "attempt_started")
    assert started.occurred_at >= enqueues[-1].occurred_at + timedelta(seconds=8)  # the start was pushed back
    # the first start's timer, if it fired, changed nothing
    assert [e.type for e in events].count("attempt_started") == 1
    assert window_of(enqueues[0].occurred_at, 8) == window_of(enqueues[-1].occurred_at, 8)
