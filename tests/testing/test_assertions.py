"""The kit's assertions: a failure names what was expected and how each near miss differs."""

from __future__ import annotations

import pytest

from eventjobs.testing import JobTester, assert_completed, assert_enqueued, assert_not_enqueued


async def test_assert_enqueued_finds_a_child_by_name_args_and_fields(job_tester: JobTester) -> None:
    run = await job_tester.run("place_order", {"order": 3, "items": ["pen"]})
    child = assert_enqueued(run, "price_item", {"item": "pen"}, queue="default", max_attempts=20)
    assert child.parent_job_id == run.job_id
    total = assert_enqueued(run, "total", depends_on=[child.job_id], priority="normal")
    assert total.args == {"order": 3}
    assert assert_enqueued(job_tester, "place_order").job_id == run.job_id  # a tester: every job


async def test_assert_enqueued_shows_how_each_enqueued_job_differs(job_tester: JobTester) -> None:
    run = await job_tester.run("place_order", {"order": 3, "items": ["pen"]})
    [pen, total] = [event.job_id for event in run.enqueued]
    with pytest.raises(AssertionError) as failure:
        assert_enqueued(run, "price_item", {"item": "ink", "size": 2}, queue="inks")
    assert str(failure.value) == (
        f"expected an enqueued job 'price_item' args={{'item': 'ink', 'size': 2}} queue='inks' by job {run.job_id}'s "
        f"handler; none of the 2 enqueued matches:\n"
        f"  - price_item {pen} args={{'item': 'pen'}}: args: 'item' is 'pen', expected 'ink'; 'size' missing; "
        f"queue is 'default', expected 'inks'\n"
        f"  - total {total} args={{'order': 3}}: another name"
    )


async def test_assert_enqueued_says_when_nothing_was_enqueued(job_tester: JobTester) -> None:
    run = await job_tester.run("price_item", {"item": "pen"})
    with pytest.raises(AssertionError, match=rf"^expected an enqueued job 'total' by job {run.job_id}'s handler, but "
                                             rf"no job was enqueued by job {run.job_id}'s handler$"):
        assert_enqueued(run, "total")


async def test_an_unexpected_arg_is_named(job_tester: JobTester) -> None:
    run = await job_tester.run("place_order", {"order": 3, "items": ["pen"]})
    with pytest.raises(AssertionError, match=r"args: 'item' is 'pen', expected 'ink'; 'extra' missing"):
        assert_enqueued(run, "price_item", {"item": "ink", "extra": 1})
    with pytest.raises(AssertionError, match=r"args: 'item': 'pen' not expected"):
        assert_enqueued(run, "price_item", {})


async def test_a_field_that_cannot_be_compared_lists_those_that_can(job_tester: JobTester) -> None:
    with pytest.raises(TypeError, match=r"cannot compare delay: compare args=, or one of queue, priority, run_at, .* "
                                        r"or an option: max_attempts, backoff, timeout_s"):
        assert_enqueued(job_tester, "price_item", delay=10)


async def test_assert_not_enqueued(job_tester: JobTester) -> None:
    run = await job_tester.run("place_order", {"order": 3, "items": ["pen"]})
    assert_not_enqueued(run, "price_item", {"item": "ink"})
    assert_not_enqueued(run, "refund")
    with pytest.raises(AssertionError, match=r"expected no enqueued job 'price_item', found 1:\n  - price_item "):
        assert_not_enqueued(run, "price_item")


async def test_assert_completed_shows_the_last_error_and_the_events(job_tester: JobTester) -> None:
    run = await job_tester.run("deliver", {})
    with pytest.raises(AssertionError) as failure:
        assert_completed(run)
    message = str(failure.value)
    assert message.startswith(f"job deliver {run.job_id} is dead_lettered, not completed (attempt 0, 1 started, "
                              f"max_attempts 4)\nreason: ")
    assert "last error: ValueError: no such address\nTraceback (most recent call last):" in message
    assert message.endswith("ValueError: no such address\nevents: enqueued, attempt_started, attempt_failed, "
                            "failed, dead_lettered")


async def test_assert_completed_compares_the_result(job_tester: JobTester) -> None:
    run = await job_tester.run("price_item", {"item": "pen"})
    assert assert_completed(run, {"price": 3}).result == {"price": 3}
    with pytest.raises(AssertionError, match=r"completed with result \{'price': 3\}, expected \{'price': 4\}: "
                                             r"result: 'price' is 3, expected 4"):
        assert_completed(run, {"price": 4})
