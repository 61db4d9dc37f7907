"""The hook chain: "before" points in the order the hooks were added, "after" points reversed; a
hook's failure is logged with its name and point, counted, and ignored; bad hooks are refused
at registration with an error that names the fix."""

from __future__ import annotations

import asyncio
import logging
from datetime import datetime, timezone
from typing import Any

import pytest
from prometheus_client import generate_latest

from eventjobs import App, AttemptInfo, AttemptOutcome, Hook, InvalidHook, Quarantined, WorkerInfo
from eventjobs.core.commands import attempt_timed_out_event
from eventjobs.hooks import HOOK_POINTS, Hooks
from eventjobs.hooks.prometheus import MetricsHook
from eventjobs.metrics import HOOK_FAILURES, Metrics

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
WORKER = WorkerInfo(worker_id="w1", queues=("default",), capabilities=(), concurrency=4, threads=4, busy=lambda: 1)
ATTEMPT = AttemptInfo(job_id="job-1", name="add", queue="default", priority="normal", attempt=0, max_attempts=3,
                      worker_id="w1", claim_id="claim-1", enqueued_at=NOW, ready_at=NOW, started_at=NOW)
OUTCOME = AttemptOutcome(attempt_timed_out_event("job-1", 0, timeout_s=1.0, now=NOW, actor="worker:w1",
                                                 claim_id="claim-1"), duration_s=1.5)


class Recorder(Hook):
    """Appends (its label, point) to a shared list at every point; sync or async as asked."""

    def __init__(self, label: str, calls: list[tuple[str, str]], *, use_async: bool = False) -> None:
        self.label, self.calls, self.use_async = label, calls, use_async

    def _seen(self, point: str) -> Any:
        if not self.use_async:
            self.calls.append((self.label, point))
            return None

        async def later() -> None:
            await asyncio.sleep(0)
            self.calls.append((self.label, point))
        return later()

    def on_worker_start(self, worker: WorkerInfo) -> Any:
        return self._seen("on_worker_start")

    def on_worker_stop(self, worker: WorkerInfo) -> Any:
        return self._seen("on_worker_stop")

    def before_attempt(self, attempt: AttemptInfo) -> Any:
        return self._seen("before_attempt")

    def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> Any:
        return self._seen("after_attempt")

    def on_quarantined(self, record: Quarantined) -> Any:
        return self._seen("on_quarantined")

    def on_queue_depth(self, depth: Any) -> Any:
        return self._seen("on_queue_depth")

    def before_enqueue(self, event: Any) -> Any:
        return self._seen("before_enqueue")


class Broken(Hook):
    name = "broken"

    def before_attempt(self, attempt: AttemptInfo) -> None:
        raise RuntimeError("the hook's own bug")

    async def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> None:
        raise ValueError("an async hook's bug")


async def _every_point(hooks: Hooks) -> None:
    await hooks.on_worker_start(WORKER)
    await hooks.before_enqueue(None)  # type: ignore[arg-type]  # observed, never looked into here
    await hooks.before_attempt(ATTEMPT)
    await hooks.after_attempt(ATTEMPT, OUTCOME)
    await hooks.on_quarantined(Quarantined("ns.ready.default.normal", 0, 7, "not a ready record", "bad JSON"))
    await hooks.on_queue_depth({("default", "normal"): 3})
    await hooks.on_worker_stop(WORKER)


async def test_before_points_run_in_order_and_after_points_in_reverse() -> None:
    calls: list[tuple[str, str]] = []
    hooks = Hooks([Recorder("a", calls), Recorder("b", calls, use_async=True), Recorder("c", calls)])
    await _every_point(hooks)
    order = {point: [label for label, p in calls if p == point] for point in HOOK_POINTS}
    for point in ("on_worker_start", "before_enqueue", "before_attempt", "on_quarantined", "on_queue_depth"):
        assert order[point] == ["a", "b", "c"], point
    for point in ("after_attempt", "on_worker_stop"):
        assert order[point] == ["c", "b", "a"], point


async def test_a_failing_hook_is_logged_counted_and_ignored(caplog: pytest.LogCaptureFixture) -> None:
    calls: list[tuple[str, str]] = []
    metrics = Metrics()
    hooks = Hooks([Recorder("first", calls), Broken(), Recorder("last", calls)], metrics=metrics)
    with caplog.at_level(logging.ERROR, logger="eventjobs.hooks"):
        for _ in range(10):
            await hooks.before_attempt(ATTEMPT)
            await hooks.after_attempt(ATTEMPT, OUTCOME)
    # the hooks around it ran every time, in their order
    assert calls.count(("first", "before_attempt")) == calls.count(("last", "before_attempt")) == 10
    assert calls.count(("first", "after_attempt")) == calls.count(("last", "after_attempt")) == 10
    assert hooks.failures == {("broken", "before_attempt"): 10, ("broken", "after_attempt"): 10}
    # logged the first time with its traceback, then at the 10th: not once per failure
    lines = [r for r in caplog.records if r.name == "eventjobs.hooks"]
    assert len(lines) == 4
    first = lines[0]
    assert "hook broken failed in before_attempt" in first.getMessage() and "the hook's own bug" in first.getMessage()
    assert first.exc_info is not None
    assert "has failed 10 times in after_attempt" in lines[-1].getMessage()
    text = generate_latest(metrics.registry).decode()
    assert f'{HOOK_FAILURES}{{hook="broken",method="before_attempt"}} 10.0' in text
    assert f'{HOOK_FAILURES}{{hook="broken",method="after_attempt"}} 10.0' in text


async def test_failures_are_exported_from_zero_for_every_point_a_hook_uses() -> None:
    metrics = Metrics()
    Hooks([Broken()], metrics=metrics)
    text = generate_latest(metrics.registry).decode()
    assert f'{HOOK_FAILURES}{{hook="broken",method="before_attempt"}} 0.0' in text
    assert 'method="on_worker_start"' not in text  # not overridden: never called, not exported


async def test_a_cancellation_is_not_a_hook_failure() -> None:
    class Cancelled(Hook):
        def before_attempt(self, attempt: AttemptInfo) -> None:
            raise asyncio.CancelledError()

    hooks = Hooks([Cancelled()])
    with pytest.raises(asyncio.CancelledError):
        await hooks.before_attempt(ATTEMPT)
    assert not hooks.failures


def test_only_the_points_a_hook_overrides_are_in_its_chain() -> None:
    class OnlyAfter(Hook):
        def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> None:
            pass

    hooks = Hooks([OnlyAfter()])
    assert hooks.wants("after_attempt") and not hooks.wants("before_attempt") and not hooks.wants("on_queue_depth")
    assert not Hooks().wants("after_attempt")


def test_bad_hooks_are_refused_with_the_fix() -> None:
    class Typo(Hook):
        def after_atempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> None:
            pass

    with pytest.raises(InvalidHook, match=r"Typo defines after_atempt, which is not a hook point \(did you mean "
                                          r"after_attempt\?\)"):
        Hooks([Typo()])
    with pytest.raises(InvalidHook, match=r"got the class Recorder; pass an instance: Recorder\(\)"):
        Hooks([Recorder])  # type: ignore[list-item]
    with pytest.raises(InvalidHook, match="subclasses eventjobs.Hook"):
        Hooks([print])  # type: ignore[list-item]
    with pytest.raises(InvalidHook, match=r"hooks= takes a list of hooks"):
        App("hooked", hooks=Broken())  # type: ignore[arg-type]
    app = App("hooked")
    with pytest.raises(InvalidHook, match="subclasses eventjobs.Hook"):
        app.add_hook(object())  # type: ignore[arg-type]
    assert app.hooks.hooks == []


def test_the_outcome_kind_is_the_ending_event_without_its_prefix() -> None:
    assert OUTCOME.kind == "timed_out"


async def test_the_metrics_hook_counts_what_the_worker_counted_inline() -> None:
    """What the worker did under `if self.metrics`, now from the hook points: started and its wait,
    the duration, quarantines, depth; and the slots as the hook is made (as the worker was). The
    e2e metrics tests compare these with the log."""
    metrics = Metrics()
    hooks = Hooks([MetricsHook(metrics, WORKER)], metrics=metrics)  # the slots: exported at once
    later = ATTEMPT._replace(started_at=NOW.replace(second=2))  # two seconds after it was ready
    await hooks.before_attempt(later)
    await hooks.after_attempt(later, OUTCOME)
    await hooks.on_quarantined(Quarantined("t", 0, 1, "kind", "reason"))
    await hooks.on_queue_depth({("default", "high"): 3})
    sample = {(s.name, tuple(sorted(s.labels.items()))): s.value
              for family in metrics.registry.collect() for s in family.samples}
    job = (("name", "add"), ("queue", "default"))
    assert sample[("eventjobs_jobs_started_total", job)] == 1
    assert sample[("eventjobs_job_wait_seconds_sum", job)] == 2.0
    assert sample[("eventjobs_job_duration_seconds_sum", job)] == 1.5
    assert sample[("eventjobs_job_duration_seconds_count", job)] == 1
    assert sample[("eventjobs_quarantined_total", ())] == 1
    assert sample[("eventjobs_queue_depth", (("priority", "high"), ("queue", "default")))] == 3
    assert sample[("eventjobs_worker_slots", ())] == 4 and sample[("eventjobs_worker_busy_slots", ())] == 1
