"""Fan-out / fan-in end to end: children enqueued from a handler, combined by a job that depends on
them (no worker slot held) or awaited inside the handler; batches with a callback."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
from pathlib import Path
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError

from eventjobs import App, Batch, BatchIncomplete, InvalidJobArguments, PayloadTooLarge
from eventjobs.core.state import JobStatus
from tests.e2e.conftest import ROOT, Runtime, job_events, spawn
from tests.e2e.test_dependencies import APP, build_workflow_app, wf_app, wf_runtime  # noqa: F401 - fixtures

ITEMS = [("square", {"n": 2}), ("square", {"n": 3}), ("broken", {})]


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


async def test_an_oversized_callback_sends_nothing_not_even_the_batch(wf_app: App) -> None:
    # Given a valid batch whose callback's args are over the enqueue budget (3/8 of what 1 MiB
    # leaves after its reserve: 344,064 bytes)
    callback = ("summarize", {"blob": "x" * 400_000})
    # When it is enqueued, it is refused naming the callback's size
    with pytest.raises(PayloadTooLarge, match=r"args of job 'summarize' are too large: .* nothing was sent"):
        await wf_app.enqueue_batch(ITEMS, then=callback)
    # Then the broker's event log got no record at all: the batch was not sent before the check
    assert await job_events(wf_app.settings) == []


async def test_a_bad_batch_id_or_callback_sends_nothing(wf_app: App) -> None:
    with pytest.raises(InvalidJobArguments, match=r"batch_id must be a string of 1-200 printable characters"):
        await wf_app.enqueue_batch(ITEMS, then=("summarize", {}), batch_id="x" * 201)
    with pytest.raises(InvalidJobArguments, match=r"then: the callback depends on the batch; it takes no depends_on"):
        await wf_app.enqueue_batch(ITEMS, then=("summarize", {}, {"depends_on": []}))
    with pytest.raises(InvalidJobArguments, match=r"a batch with a callback holds at most 256 jobs .* got 257"):
        await wf_app.enqueue_batch([("square", {"n": n}) for n in range(257)], then=("summarize", {}))
    assert await job_events(wf_app.settings) == []


def _fail_the_second_send(app: App) -> None:
    """The app's second send fails as a broker timeout does (the first, the batch's jobs, goes
    through to the real broker): the failure between the two sends of a batch."""
    real_send = app.writer.send
    sends = 0

    async def send(*args: Any) -> None:
        nonlocal sends
        sends += 1
        if sends == 2:
            raise KafkaTimeoutError("no acknowledgement within the request timeout")
        await real_send(*args)

    app.writer.send = send  # type: ignore[method-assign]


async def _assert_ran_once_with_its_callback(runtime: Runtime, batch: Batch) -> None:
    """The callback ran once all three jobs ended, each job ran once, and every repeated
    `enqueued` was taken as a duplicate (no `duplicate_rejected`, no second attempt)."""
    assert batch.callback_id is not None
    callback = await runtime.app.wait(batch.callback_id, timeout=30)
    assert callback.status is JobStatus.COMPLETED, callback
    assert callback.result == {"completed": 2, "failed": 1}
    assert callback.workflow is not None
    assert {k: v.status for k, v in callback.workflow.dependencies.items()} == dict(
        zip(batch.job_ids, ["completed", "completed", "dead_lettered"])
    )
    events = await job_events(runtime.app.settings)
    for job_id in [*batch.job_ids, batch.callback_id]:
        mine = [e for e in events if e.job_id == job_id]
        assert [e.type for e in mine].count("attempt_started") == 1, [e.type for e in mine]
        assert "duplicate_rejected" not in [e.type for e in mine]
        assert len({e.event_id for e in mine if e.type == "enqueued"}) == 1


async def test_a_batch_whose_callback_send_failed_completes_when_called_again(wf_runtime: Runtime) -> None:
    await wf_runtime.start_worker()
    # Given a batch whose jobs reach the broker but whose callback's send fails
    first = build_workflow_app(wf_runtime.app.name, kafka_bootstrap=wf_runtime.app.settings.kafka_bootstrap)
    _fail_the_second_send(first)
    try:
        with pytest.raises(BatchIncomplete) as failed:
            await first.enqueue_batch(ITEMS, then=("summarize", {}))
    finally:
        await first.close()
    # Then the error says what was sent and how to complete it
    batch = failed.value.batch
    assert str(failed.value) == (
        f"batch {batch.batch_id} is incomplete: its 3 job(s) were acknowledged, its callback {batch.callback_id} may "
        f"not have been written (KafkaTimeoutError: no acknowledgement within the "
        f"request timeout). Call enqueue_batch again with the same items and then=, and "
        f"batch_id={batch.batch_id!r}: the events already written are taken as duplicates, so no job is enqueued twice"
    )
    # When another app (as another process would) calls again with the same items and batch id
    again = await wf_runtime.app.enqueue_batch(ITEMS, then=("summarize", {}), batch_id=batch.batch_id)
    # Then it names the same jobs, sends the same events, and the batch runs once with its callback
    assert again == batch
    enqueued = [e for e in await job_events(wf_runtime.app.settings) if e.type == "enqueued"]
    assert sorted(e.job_id for e in enqueued) == sorted([*batch.job_ids, *batch.job_ids, batch.callback_id])
    await _assert_ran_once_with_its_callback(wf_runtime, batch)


CRASH_BETWEEN_THE_SENDS = """
import asyncio, json, os, sys
from eventjobs.log.writer import LogWriter
from tests.e2e.test_dependencies import build_workflow_app

real_send = LogWriter.send
async def send(self, *args):
    if getattr(self, "sent_once", False):
        os._exit(9)  # dies after the batch's jobs were acknowledged, before the callback is sent
    await real_send(self, *args)
    self.sent_once = True
LogWriter.send = send

app = build_workflow_app(sys.argv[1], kafka_bootstrap=sys.argv[2])
asyncio.run(app.enqueue_batch(json.loads(sys.argv[4]), then=("summarize", {}), batch_id=sys.argv[3]))
"""


async def test_a_caller_that_died_between_the_sends_completes_its_batch_with_its_batch_id(
    wf_runtime: Runtime,
) -> None:
    await wf_runtime.start_worker()
    settings = wf_runtime.app.settings
    # Given a process that sends a batch under its own batch id and dies before the callback
    crashed = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASH_BETWEEN_THE_SENDS, settings.namespace, settings.kafka_bootstrap, "invoices-2024-05",
        json.dumps(ITEMS), cwd=ROOT,
    )
    assert await asyncio.wait_for(crashed.wait(), 60) == 9
    enqueued = [e for e in await job_events(settings) if e.type == "enqueued"]
    assert len(enqueued) == 3 and all(e.depends_on is None for e in enqueued)  # the jobs, no callback
    # When it is restarted and calls again with the same batch id
    batch = await wf_runtime.app.enqueue_batch(ITEMS, then=("summarize", {}), batch_id="invoices-2024-05")
    # Then the jobs are the ones already sent, and the batch runs once with its callback
    assert sorted(batch.job_ids) == sorted(e.job_id for e in enqueued)
    await _assert_ran_once_with_its_callback(wf_runtime, batch)


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
