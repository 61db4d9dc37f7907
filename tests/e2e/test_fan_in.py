"""Fan-out / fan-in end to end: children enqueued from a handler, combined by a job that depends on
them (no worker slot held) or awaited inside the handler; batches with a callback."""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from typing import Any

import pytest

from eventjobs import App, InvalidJobArguments
from eventjobs.core.state import JobStatus
from tests.e2e.conftest import Runtime, job_events, spawn
from tests.e2e.test_dependencies import APP, wf_app, wf_runtime  # noqa: F401 - fixtures


async def test_fan_in_over_100_children_by_dependencies(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker(concurrency=50)
    app = wf_runtime.app
    parent = await app.enqueue("fan_out", {"n": 100})
    done = await app.wait(parent, timeout=60)
    assert done.status is JobStatus.COMPLETED, done
    children, combine = done.result["children"], done.result["combine"]  # type: ignore[index]
    assert len(set(children)) == 100
    combined = await app.wait(combine, timeout=60)
    assert combined.status is JobStatus.COMPLETED, combined
    assert combined.result == {"total": sum(n * n for n in range(100)), "count": 100}
    # the children and the combining job name their parent; combine started after the last child completed
    events = await job_events(app.settings)
    enqueued = {e.job_id: e for e in events if e.type == "enqueued"}
    assert all(enqueued[c].parent_job_id == parent for c in [*children, combine])
    last_child = max(e.occurred_at for e in events if e.type == "completed" and e.job_id in set(children))
    started = [e.occurred_at for e in events if e.type == "attempt_started" and e.job_id == combine]
    assert len(started) == 1 and started[0] >= last_child


async def test_fan_in_by_waiting_inside_the_handler(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker(concurrency=10)
    app = wf_runtime.app
    parent = await app.enqueue("fan_out_and_wait", {"n": 20})
    done = await app.wait(parent, timeout=60)
    assert done.status is JobStatus.COMPLETED, done
    assert done.result == {"total": sum(n * n for n in range(20))}


async def test_a_batch_runs_its_callback_with_the_outcomes(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker()
    app = wf_runtime.app
    batch = await app.enqueue_batch(
        [("square", {"n": 2}), ("square", {"n": 3}), ("broken", {})], then=("summarize", {})
    )
    assert len(batch.job_ids) == 3 and batch.callback_id is not None
    callback = await app.wait(batch.callback_id, timeout=30)
    assert callback.status is JobStatus.COMPLETED, callback
    assert callback.result == {"completed": 2, "failed": 1}
    # the callback's state keeps each outcome's status (its own result took the results' room)
    assert callback.workflow is not None
    assert {k: v.status for k, v in callback.workflow.dependencies.items()} == dict(
        zip(batch.job_ids, ["completed", "completed", "dead_lettered"])
    )


async def test_a_bad_batch_sends_nothing(wf_app: App) -> None:
    with pytest.raises(InvalidJobArguments, match=r"items: expected \(name, args\) or \(name, args, options\)"):
        await wf_app.enqueue_batch([("square", {"n": 1}), "square"])
    with pytest.raises(Exception, match="no_such_job"):
        await wf_app.enqueue_batch([("square", {"n": 1})], then=("no_such_job", {}))
    assert await job_events(wf_app.settings) == []


async def test_waiting_for_a_child_that_fails_raises_naming_it(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker()
    app = wf_runtime.app
    parent = await app.wait(await app.enqueue("wait_for_a_failure", {}), timeout=60)
    assert parent.status is JobStatus.DEAD_LETTERED
    error = parent.last_error
    assert error is not None and error.error_type == "eventjobs.context.JobsNotCompleted"
    children = [e.job_id for e in await job_events(app.settings) if e.type == "enqueued" and e.parent_job_id == parent.job_id]
    names = {c: (await app.state(c)).name for c in children}  # type: ignore[union-attr]
    broken = next(c for c, name in names.items() if name == "broken")
    assert error.message == f"1 of 2 jobs did not complete: {broken}: ended dead_lettered: not retryable: Cancel"


async def test_a_processor_killed_during_a_fan_in_loses_nothing(wf_app: App, tmp_path: Path, processes: list[Any]) -> None:
    # Given a processor and a worker in their own processes, and a fan-out of 40 children under way
    settings = wf_app.settings
    first = spawn(["processor", "--app", APP], settings, tmp_path / "p1.log")
    processes.append(first)
    processes.append(spawn(["worker", "--app", APP, "--concurrency", "20"], settings, tmp_path / "w.log"))
    parent = await wf_app.enqueue("fan_out", {"n": 40})
    # When the processor is killed once the combining job's requests are committed (its answers,
    # and the children's ends, still to come), and another takes over from the changelog
    for _ in range(300):
        if any(e.type == "dependency_requested" for e in await job_events(settings)):
            break
        await asyncio.sleep(0.02)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=10)
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "p2.log"))
    # Then the combining job runs once, with all 40 results
    done = await wf_app.wait(parent, timeout=90)
    assert done.status is JobStatus.COMPLETED, done
    combined = await wf_app.wait(done.result["combine"], timeout=90)  # type: ignore[index]
    assert combined.status is JobStatus.COMPLETED, combined
    assert combined.result == {"total": sum(n * n for n in range(40)), "count": 40}
    events = await job_events(settings, combined.job_id)
    assert [e.type for e in events].count("attempt_succeeded") == 1
