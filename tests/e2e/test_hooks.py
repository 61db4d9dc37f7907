"""Hooks on the real broker, processor and worker: a hook sees each attempt begin and end (a
success, a failure), and one that raises at every point changes no outcome and is counted."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from eventjobs import App, AttemptInfo, AttemptOutcome, Hook, WorkerInfo
from eventjobs.core.events import EnqueuedEvent
from eventjobs.core.state import JobStatus
from eventjobs.hooks import HOOK_POINTS
from eventjobs.metrics import HOOK_FAILURES, JOB_DURATION, JOBS_STARTED, Metrics
from tests.e2e.conftest import Runtime, job_events


class Seen(Hook):
    """Records every call, in one list shared with the other hooks (so their order shows)."""

    def __init__(self, calls: list[tuple[str, str, Any]]) -> None:
        self.calls = calls

    def on_worker_start(self, worker: WorkerInfo) -> None:
        self.calls.append(("seen", "on_worker_start", worker.worker_id))

    def on_worker_stop(self, worker: WorkerInfo) -> None:
        self.calls.append(("seen", "on_worker_stop", worker.worker_id))

    def before_enqueue(self, event: EnqueuedEvent) -> None:
        self.calls.append(("seen", "before_enqueue", event.job_id))

    async def before_attempt(self, attempt: AttemptInfo) -> None:
        self.calls.append(("seen", "before_attempt", attempt))

    async def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> None:
        self.calls.append(("seen", "after_attempt", (attempt, outcome)))


class Raises(Hook):
    """Raises at every point, after noting the call."""

    def __init__(self, calls: list[tuple[str, str, Any]]) -> None:
        self.calls = calls

    def _fail(self, point: str) -> None:
        self.calls.append(("raises", point, None))
        raise RuntimeError(f"broken in {point}")

    def on_worker_start(self, worker: WorkerInfo) -> None:
        self._fail("on_worker_start")

    def on_worker_stop(self, worker: WorkerInfo) -> None:
        self._fail("on_worker_stop")

    def before_enqueue(self, event: EnqueuedEvent) -> None:
        self._fail("before_enqueue")

    def before_attempt(self, attempt: AttemptInfo) -> None:
        self._fail("before_attempt")

    async def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> None:
        self._fail("after_attempt")

    def on_quarantined(self, record: Any) -> None:
        self._fail("on_quarantined")

    def on_queue_depth(self, depth: Any) -> None:
        self._fail("on_queue_depth")


def _samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metrics.registry.collect() for s in family.samples}


async def test_a_hook_sees_each_attempt_and_a_raising_hook_changes_nothing(app: App) -> None:
    calls: list[tuple[str, str, Any]] = []
    app.add_hook(Seen(calls))
    app.add_hook(Raises(calls))
    metrics = Metrics()
    runtime = Runtime(app)
    runtime.start_processor()
    try:
        worker = await runtime.start_worker(queues=["default"], concurrency=4, metrics=metrics)
        ok = await app.enqueue("add", {"a": 2, "b": 3})
        retried = await app.enqueue("flaky", {"fail_times": 1})  # fails once (ConnectionError), then completes
        dead = await app.enqueue("picky", {"error": "key"})  # KeyError is not retried: dead-lettered
        assert (await app.wait(ok, timeout=60)).result == {"sum": 5}
        assert (await app.wait(retried, timeout=60)).status is JobStatus.COMPLETED
        dead_state = await app.wait(dead, timeout=60)
        assert dead_state.status is JobStatus.DEAD_LETTERED
        assert dead_state.last_error is not None and dead_state.last_error.error_type == "KeyError"
        deadline = asyncio.get_running_loop().time() + 10  # after_attempt follows the ending event's send
        while sum(1 for _, point, _ in calls if point == "after_attempt") < 8 and \
                asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
    finally:
        await runtime.close()
    log = await job_events(app.settings)

    # each hook ran once per point and call, "before" in the order added, "after" reversed
    enqueues = [(who, value) for who, point, value in calls if point == "before_enqueue"]
    assert enqueues == [("seen", ok), ("raises", None), ("seen", retried), ("raises", None),
                        ("seen", dead), ("raises", None)]
    assert [(who, point) for who, point, _ in calls if point in ("on_worker_start", "on_worker_stop")] == [
        ("seen", "on_worker_start"), ("raises", "on_worker_start"), ("raises", "on_worker_stop"),
        ("seen", "on_worker_stop")]
    attempt_calls = [(who, point) for who, point, _ in calls if point in ("before_attempt", "after_attempt")]
    assert attempt_calls.count(("seen", "before_attempt")) == 4  # add, flaky twice, picky
    befores = [i for i, c in enumerate(attempt_calls) if c == ("seen", "before_attempt")]
    afters = [i for i, c in enumerate(attempt_calls) if c == ("seen", "after_attempt")]
    assert all(attempt_calls[i + 1] == ("raises", "before_attempt") for i in befores)
    assert all(attempt_calls[i - 1] == ("raises", "after_attempt") for i in afters)

    # what `after_attempt` saw is what the log holds: the ending event, its kind, the handler's error
    ended = {(attempt.job_id, attempt.attempt): outcome
             for who, point, (attempt, outcome) in (c for c in calls if c[:2] == ("seen", "after_attempt"))}
    ends = {(e.job_id, e.attempt): e for e in log  # type: ignore[attr-defined]
            if e.type in ("attempt_succeeded", "attempt_failed", "attempt_timed_out", "attempt_snoozed")}
    assert ended.keys() == ends.keys() == {(ok, 0), (retried, 0), (retried, 1), (dead, 0)}
    assert all(outcome.event == ends[key] for key, outcome in ended.items())
    assert {key: outcome.kind for key, outcome in ended.items()} == {
        (ok, 0): "succeeded", (retried, 0): "failed", (retried, 1): "succeeded", (dead, 0): "failed"}
    assert isinstance(ended[(retried, 0)].error, ConnectionError) and isinstance(ended[(dead, 0)].error, KeyError)
    assert ended[(ok, 0)].error is None and all(o.duration_s >= 0 for o in ended.values())
    started = [(s.job_id, s.attempt) for who, point, s in calls if (who, point) == ("seen", "before_attempt")]
    assert sorted(started) == sorted(ended)

    # the raising hook: counted per point, in the worker's metrics too; the app counts its enqueues
    assert app.hooks.failures == {("Raises", "before_enqueue"): 3}
    depth_failures = worker.hooks.failures[("Raises", "on_queue_depth")]  # measured every 2 s: at least once
    assert depth_failures >= 1
    assert worker.hooks.failures == Counter({("Raises", "on_worker_start"): 1, ("Raises", "on_worker_stop"): 1,
                                             ("Raises", "before_attempt"): 4, ("Raises", "after_attempt"): 4,
                                             ("Raises", "on_queue_depth"): depth_failures})
    samples = _samples(metrics)
    for point in HOOK_POINTS:
        if point != "before_enqueue":
            assert samples[(HOOK_FAILURES, (("hook", "Raises"), ("method", point)))] == \
                worker.hooks.failures[("Raises", point)], point
    # and the metrics hook beside it counted what the log holds
    starts = sum(1 for e in log if e.type == "attempt_started")
    assert starts == 4
    assert sum(v for (name, _), v in samples.items() if name == JOBS_STARTED) == starts
    assert sum(v for (name, _), v in samples.items() if name == JOB_DURATION + "_count") == starts


async def test_an_attempt_handed_back_at_shutdown_is_ended_once_for_the_hooks(app: App) -> None:
    """The worker stops while a job runs: `_drain` writes `WorkerShutdown`, and `after_attempt`
    sees that end, once, with the handler's run time so far (the metrics' duration count too)."""
    calls: list[tuple[str, str, Any]] = []
    app.add_hook(Seen(calls))
    metrics = Metrics()
    runtime = Runtime(app)
    runtime.start_processor()
    try:
        await runtime.start_worker(queues=["default"], concurrency=2, grace_s=0.5, metrics=metrics)
        job_id = await app.enqueue("sleepy", {"seconds": 30})
        deadline = asyncio.get_running_loop().time() + 30
        while not any(point == "before_attempt" for _, point, _ in calls):
            assert asyncio.get_running_loop().time() < deadline, "the job never started"
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)
    finally:
        await runtime.close()
    ended = [value for who, point, value in calls if point == "after_attempt"]
    assert len(ended) == 1
    attempt, outcome = ended[0]
    assert attempt.job_id == job_id and outcome.kind == "failed" and outcome.error is None
    assert outcome.event.error_type == "WorkerShutdown" and 0.5 <= outcome.duration_s < 30  # type: ignore[attr-defined]
    failed = [e for e in await job_events(app.settings, job_id) if e.type == "attempt_failed"]
    assert failed == [outcome.event]
    samples = _samples(metrics)
    assert sum(v for (name, _), v in samples.items() if name == JOB_DURATION + "_count") == 1
