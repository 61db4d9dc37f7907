"""`JobTester`: the real handlers, context, outcome rules and fold, inline, on a frozen clock."""

from __future__ import annotations

from datetime import timedelta

import pytest

from eventjobs import PayloadTooLarge, UnknownDependency, UnknownJob
from eventjobs.core.fold import fold
from eventjobs.core.limits import size_limits
from eventjobs.core.state import JobStatus
from eventjobs.testing import FrozenClock, JobTester, StillRunnable, assert_completed, run_job, run_job_sync
from tests.testing.jobs import app

ATTEMPT = ["attempt_started"]  # the start is also the claim, as the worker writes it


def the_log_folds_to_the_testers_states(tester: JobTester) -> None:
    """What the processor guarantees: its table is the fold of the log."""
    assert fold(tester.events) == tester.lane.states


async def test_a_retry_is_stepped_by_the_clock(job_tester: JobTester) -> None:
    # Given a job whose first attempt asks for a retry in 2 s
    run = await job_tester.run("send_receipt", {"order": 7})
    assert run.status is JobStatus.RETRYING
    assert run.types == ["enqueued", *ATTEMPT, "attempt_failed", "retry_scheduled"]
    assert run.state.next_due_at == job_tester.clock.now() + timedelta(seconds=2)
    # When 1.999 s pass, nothing happens; at 2 s the retry timer fires and attempt 1 runs
    await job_tester.advance(1.999)
    assert run.status is JobStatus.RETRYING
    await job_tester.advance(0.001)
    # Then it completed on attempt 1, and its handler saw ctx.attempt 0 then 1
    assert_completed(run, {"sent": 7, "attempt": 1})
    assert run.types == ["enqueued", *ATTEMPT, "attempt_failed", "retry_scheduled", "due", *ATTEMPT, "progress",
                         "attempt_succeeded", "completed"]
    assert [e.attempt for e in run.events if e.type == "attempt_started"] == [0, 1]  # type: ignore[attr-defined]
    the_log_folds_to_the_testers_states(job_tester)


async def test_advancing_past_several_timers_fires_each_at_its_due_time(job_tester: JobTester) -> None:
    # attempts fail with a callable backoff of 5 s, then 10 s: a jump of 60 s runs all three at their times
    run = await job_tester.run("flaky", {})
    start = job_tester.clock.now()
    await job_tester.advance(60)
    assert run.status is JobStatus.DEAD_LETTERED and run.state.attempts_started == 3
    started = [e.occurred_at - start for e in run.events if e.type == "attempt_started"]
    assert started == [timedelta(0), timedelta(seconds=5), timedelta(seconds=15)]
    assert job_tester.clock.now() == start + timedelta(seconds=60)
    assert list(job_tester.dead_letters) == [run.job_id]


async def test_a_snooze_is_stepped_by_the_clock(job_tester: JobTester) -> None:
    run = await job_tester.run("poll_export", {})
    assert run.status is JobStatus.SCHEDULED and run.types[-2:] == ["attempt_snoozed", "scheduled"]
    await job_tester.advance(29)
    assert run.status is JobStatus.SCHEDULED
    await job_tester.advance(1)  # the run_at timer of attempt 1: it snoozes again
    assert run.status is JobStatus.SCHEDULED and run.state.attempt == 2
    await job_tester.advance(30)
    assert_completed(run, {"ready_at_attempt": 2})
    assert run.state.workflow is not None and run.state.workflow.snoozes == 2
    assert run.state.attempts_started == 3 and run.state.max_attempts == 22  # snoozes use no attempt of the budget


async def test_a_scheduled_job_runs_when_its_run_at_comes(job_tester: JobTester) -> None:
    run = await job_tester.run("price_item", {"item": "pen"}, delay=3600)
    assert run.status is JobStatus.SCHEDULED and run.state.run_at == job_tester.clock.now() + timedelta(hours=1)
    await job_tester.advance(hours=1)
    assert_completed(run, {"price": 3})


async def test_a_ttl_expires_a_job_that_did_not_start_in_time(job_tester: JobTester) -> None:
    # Given a job with a ttl of 30 s waiting for one that runs in 60 s
    first = job_tester.enqueue("price_item", {"item": "pen"}, delay=60)
    run = await job_tester.run("total", {"order": 1}, depends_on=[first], ttl=30)
    # When 30 s pass, its ttl timer fires
    await job_tester.advance(29.999)
    assert run.status is JobStatus.WAITING
    await job_tester.advance(0.001)
    assert run.status is JobStatus.DEAD_LETTERED and run.types[-2:] == ["expired", "dead_lettered"]
    assert run.state.reason == "expired: ttl of 30 s passed before the job started"


async def test_children_are_recorded_and_drained(job_tester: JobTester) -> None:
    # Given a handler that enqueues a child per item and a total depending on them
    run = await job_tester.run("place_order", {"order": 9, "items": ["pen", "paper"]})
    children, total = run.result["children"], run.result["total"]  # type: ignore[index]
    # Then the children are recorded, with their parent, and nothing of them ran yet
    assert [(e.name, e.args, e.parent_job_id) for e in run.enqueued] == [
        ("price_item", {"item": "pen"}, run.job_id), ("price_item", {"item": "paper"}, run.job_id),
        ("total", {"order": 9}, run.job_id)]
    assert [job_tester.state(child).status for child in children] == [JobStatus.PENDING] * 2
    assert job_tester.state(total).status is JobStatus.WAITING
    # When the tester drains
    await job_tester.drain()
    # Then the children ran, and the fan-in ran with their results, resolved through dependency events
    assert [job_tester.state(child).result for child in children] == [{"price": 3}, {"price": 5}]
    total_run = job_tester.job(total)
    assert_completed(total_run, {"order": 9, "sum": 8})
    assert total_run.types[:2] == ["enqueued", "dependency_resolved"] and total_run.types.count("dependency_resolved") == 2
    assert [e.type for e in job_tester.job(children[0]).events][:2] == ["enqueued", "dependency_requested"]
    the_log_folds_to_the_testers_states(job_tester)


async def test_a_fan_in_of_jobs_the_test_enqueued(job_tester: JobTester) -> None:
    a = job_tester.enqueue("price_item", {"item": "ink"})
    b = job_tester.enqueue("price_item", {"item": "stamp"}, delay=10)
    total = job_tester.enqueue("total", {"order": 1}, depends_on=[a, b])
    await job_tester.drain()
    assert job_tester.state(total).status is JobStatus.WAITING  # b runs in 10 s
    await job_tester.drain(advance_clock=True)
    assert_completed(job_tester.job(total), {"order": 1, "sum": 8})
    assert job_tester.clock.now() - job_tester.state(a).finished_at == timedelta(seconds=10)  # type: ignore[operator]


async def test_a_failed_dependency_cancels_its_dependent(job_tester: JobTester) -> None:
    bad = job_tester.enqueue("deliver", {})  # ValueError is not in retry_on: dead-lettered at once
    total = job_tester.enqueue("total", {"order": 1}, depends_on=[bad])
    await job_tester.drain()
    assert job_tester.state(bad).status is JobStatus.DEAD_LETTERED
    assert job_tester.state(total).status is JobStatus.CANCELLED and bad in (job_tester.state(total).reason or "")


async def test_a_sync_handler_runs_in_a_thread_with_a_working_context(job_tester: JobTester) -> None:
    run = await job_tester.run("resize", {})
    assert_completed(run)
    assert run.result["in_a_thread"] is True  # type: ignore[index]
    assert run.types == ["enqueued", *ATTEMPT, "progress", "heartbeat", "attempt_succeeded", "completed"]
    assert [e.args for e in run.enqueued] == [{"item": "thumbnail"}]
    assert run.state.progress_percent == 10.0 and run.state.progress_message == "loading"


async def test_a_timeout_ends_the_attempt_timed_out(job_tester: JobTester) -> None:
    run = await job_tester.run("hang", {})
    assert run.status is JobStatus.RETRYING and run.types[-2:] == ["attempt_timed_out", "retry_scheduled"]
    assert run.events[-2].timeout_s == 0.2  # type: ignore[attr-defined]
    await job_tester.advance(1)
    assert run.status is JobStatus.DEAD_LETTERED
    assert (run.state.last_error.error_type, run.state.last_error.message) == (  # type: ignore[union-attr]
        "TimeoutError", "attempt 1 timed out after 0.2 s")


async def test_a_sync_handler_times_out_too(job_tester: JobTester) -> None:
    run = await job_tester.run("hang_sync", {})
    assert run.status is JobStatus.DEAD_LETTERED and "attempt_timed_out" in run.types


async def test_a_result_over_its_budget_fails_the_attempt_for_good(job_tester: JobTester) -> None:
    run = await job_tester.run("huge_result", {})
    assert run.status is JobStatus.DEAD_LETTERED and run.state.attempts_started == 1
    error = run.state.last_error
    assert error is not None and error.error_type == "ResultTooLarge"
    assert f"over the limit of {size_limits().result_bytes:,}" in error.message


async def test_cancel_fails_the_job_at_once_without_retrying(job_tester: JobTester) -> None:
    run = await job_tester.run("refund", {"refunded": True})
    assert run.status is JobStatus.DEAD_LETTERED and run.state.attempts_started == 1
    assert (run.state.last_error.error_type, run.state.last_error.message) == ("Cancel", "order already refunded")  # type: ignore[union-attr]
    await job_tester.advance(days=1)
    assert run.state.attempts_started == 1


async def test_retry_on_decides_which_exceptions_retry(job_tester: JobTester) -> None:
    busy = await job_tester.run("deliver", {"busy": True})
    wrong = await job_tester.run("deliver", {})
    assert busy.status is JobStatus.RETRYING and wrong.status is JobStatus.DEAD_LETTERED
    assert busy.state.last_error.traceback.rstrip().endswith("MailboxBusy: try later")  # type: ignore[union-attr]


async def test_options_per_enqueue_override_the_job_types(job_tester: JobTester) -> None:
    run = await job_tester.run("deliver", {"busy": True}, max_attempts=1, queue="mail", priority="high")
    assert run.status is JobStatus.DEAD_LETTERED  # one attempt only, not the job type's 4
    assert (run.state.queue, run.state.priority.value, run.state.max_attempts) == ("mail", "high", 1)


async def test_an_operator_cancel_stops_a_retrying_job(job_tester: JobTester) -> None:
    run = await job_tester.run("deliver", {"busy": True})
    job_tester.cancel(run.job_id, "customer left")
    assert run.status is JobStatus.CANCELLED
    await job_tester.advance(hours=1)
    assert run.state.attempts_started == 1


async def test_an_idempotency_key_refuses_the_second_enqueue(job_tester: JobTester) -> None:
    first = await job_tester.run("price_item", {"item": "pen"}, idempotency_key="pen")
    second = await job_tester.run("price_item", {"item": "pen"}, idempotency_key="pen")
    assert first.job_id == second.job_id and first.types.count("attempt_started") == 1
    assert "duplicate_rejected" in first.types
    assert [event.type for event, _ in job_tester.rejected] == ["enqueued"]


async def test_wait_for_jobs_runs_the_jobs_it_waits_for(job_tester: JobTester) -> None:
    run = await job_tester.run("combine", {"items": ["a", "bb"]})
    assert_completed(run, {"sum": 3})
    assert all(job_tester.state(e.job_id).status is JobStatus.COMPLETED for e in run.enqueued)


async def test_wait_for_jobs_names_the_jobs_that_did_not_complete(job_tester: JobTester) -> None:
    run = await job_tester.run("combine_failing", {})
    assert list(run.result["problems"].values()) == [  # type: ignore[index]
        "did not end: retrying (the tester's clock stands still while a handler waits, so retries and scheduled "
        "runs do not come)"]


async def test_retention_forgets_a_finished_job_but_the_run_keeps_its_last_state(job_tester: JobTester) -> None:
    run = await job_tester.run("price_item", {"item": "pen"})
    await job_tester.advance(hours=24)
    assert run.job_id not in job_tester.lane.states and run.types[-1] == "retention_passed"
    assert_completed(run, {"price": 3})
    the_log_folds_to_the_testers_states(job_tester)


async def test_the_frozen_clock_is_the_events_clock() -> None:
    clock = FrozenClock()
    run = await run_job(app, "send_receipt", {"order": 1}, clock=clock)
    assert {event.occurred_at for event in run.events} == {clock.now()}
    await run.advance(2)
    assert run.events[-1].occurred_at == clock.now()


async def test_run_job_steps_its_own_tester() -> None:
    run = await run_job(app, "send_receipt", {"order": 3})
    await run.advance(2)
    assert_completed(run, {"sent": 3, "attempt": 1})


def test_the_sync_twins_run_without_an_event_loop() -> None:
    run = run_job_sync(app, "send_receipt", {"order": 5})
    assert run.status is JobStatus.RETRYING
    run.advance_sync(2)
    assert_completed(run, {"sent": 5, "attempt": 1})
    placed = run.tester.run_sync("place_order", {"order": 2, "items": ["x"]})
    placed.drain_sync()
    assert job_tester_state(placed.tester, placed.result["total"]) is JobStatus.COMPLETED  # type: ignore[index]


def job_tester_state(tester: JobTester, job_id: str) -> JobStatus:
    return tester.state(job_id).status


async def test_a_sync_twin_inside_an_event_loop_says_what_to_use() -> None:
    with pytest.raises(RuntimeError, match=r"run_job_sync is for code without a running event loop; in an async test "
                                           r"use `await run_job\(\.\.\.\)`"):
        run_job_sync(app, "send_receipt", {"order": 5})


async def test_an_unknown_job_name_lists_the_registered_ones(job_tester: JobTester) -> None:
    with pytest.raises(UnknownJob, match=r"unknown job 'send_reciept'; registered jobs: combine, combine_failing, deliver, flaky, "):
        await job_tester.run("send_reciept", {"order": 1})
    assert job_tester.events == []


async def test_a_dependency_the_tester_does_not_hold_is_refused(job_tester: JobTester) -> None:
    with pytest.raises(UnknownDependency, match="depends_on names job 'nope', which this tester does not hold"):
        job_tester.enqueue("total", {"order": 1}, depends_on=["nope"])
    assert job_tester.events == []


async def test_args_over_their_budget_are_refused_as_app_enqueue_refuses_them(job_tester: JobTester) -> None:
    with pytest.raises(PayloadTooLarge, match="args of job 'price_item' are too large"):
        await job_tester.run("price_item", {"item": "x" * size_limits().enqueue_bytes})
    assert job_tester.events == []


async def test_a_job_that_never_ends_stops_the_call_with_a_clear_error() -> None:
    tester = JobTester(app, max_attempts_per_call=50)
    run = await tester.run("forever", {})
    with pytest.raises(StillRunnable, match=r"50 attempts ran in this call and job forever .* may still run"):
        await tester.advance(1)
    assert run.state.attempts_started == 51


async def test_an_unknown_state_names_the_jobs_there_are(job_tester: JobTester) -> None:
    job_id = job_tester.enqueue("price_item", {"item": "pen"})
    with pytest.raises(KeyError, match=f"no job 'nope' in this tester \\(jobs: price_item {job_id}\\)"):
        job_tester.state("nope")


async def test_time_only_moves_forward(job_tester: JobTester) -> None:
    with pytest.raises(ValueError, match="time only moves forward"):
        await job_tester.advance(-1)



async def test_jobs_with_a_concurrency_limit_run_one_after_another_in_the_tester() -> None:
    from eventjobs import App, Limit

    limited_app = App("limited")

    @limited_app.job(concurrency=Limit(key=lambda args: args["tenant"], max=1))
    async def sync_tenant(args: dict[str, object]) -> dict[str, object]:
        return {"n": args["n"]}

    tester = JobTester(limited_app)
    # Given three jobs of one key (one slot) and one of another key
    ids = [tester.enqueue("sync_tenant", {"tenant": "a", "n": n}) for n in range(3)]
    other = tester.enqueue("sync_tenant", {"tenant": "b", "n": 9})
    # Then the first of each key holds its slot (pending), the others wait for it
    assert [tester.state(job_id).status for job_id in ids] == [JobStatus.PENDING, JobStatus.WAITING, JobStatus.WAITING]
    assert tester.state(other).status is JobStatus.PENDING
    # When the tester drains, every job runs, the key's in the order they asked
    await tester.drain()
    assert [tester.state(job_id).result for job_id in ids] == [{"n": 0}, {"n": 1}, {"n": 2}]
    started = [e.job_id for e in tester.events if e.type == "attempt_started"]
    assert [job_id for job_id in started if job_id in ids] == ids
    assert all(not table.holders and not table.queue for table in tester.lane.slot_tables.values())
    the_log_folds_to_the_testers_states(tester)


async def test_jobs_with_a_rate_wait_for_their_starts_on_the_testers_clock() -> None:
    from eventjobs import App, Limit

    rated_app = App("rated")

    @rated_app.job(concurrency=Limit(rate="2/s"))
    def ping(args: dict[str, object]) -> dict[str, object]:
        return {"n": args["n"]}

    tester = JobTester(rated_app)
    ids = [tester.enqueue("ping", {"n": n}) for n in range(4)]
    # Given 2 starts a second: the first runs now, the others are scheduled 500 ms apart
    await tester.drain()
    assert [tester.state(job_id).status for job_id in ids] == [JobStatus.COMPLETED] + [JobStatus.SCHEDULED] * 3
    # When the clock moves on, each runs at its start
    await tester.drain(advance_clock=True)
    finished = [tester.state(job_id).finished_at for job_id in ids]
    assert [round((f - finished[0]).total_seconds(), 3) for f in finished] == [0, 0.5, 1.0, 1.5]  # type: ignore[operator]
    the_log_folds_to_the_testers_states(tester)
