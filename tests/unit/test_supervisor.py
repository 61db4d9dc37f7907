"""run_services: the first failure stops every service and is raised; nothing ends unnoticed."""

from __future__ import annotations

import asyncio

import pytest

from eventjobs.runtime.supervisor import ServiceEnded, run_services


async def _until(stop: asyncio.Event, stopped: list[str], name: str) -> None:
    await stop.wait()
    stopped.append(name)


async def test_all_services_stop_when_stop_is_set() -> None:
    stop, stopped = asyncio.Event(), []
    runner = asyncio.create_task(run_services(stop, {"a": _until(stop, stopped, "a"), "b": _until(stop, stopped, "b")}))
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(runner, 1)
    assert sorted(stopped) == ["a", "b"]


async def test_a_failing_service_stops_the_others_and_its_error_is_raised() -> None:
    stop, stopped = asyncio.Event(), []

    async def broken() -> None:
        await asyncio.sleep(0.01)
        raise ValueError("timer index broken")

    with pytest.raises(ValueError, match="timer index broken"):
        await asyncio.wait_for(run_services(stop, {"timers": broken(), "processor": _until(stop, stopped, "p")}), 1)
    assert stop.is_set() and stopped == ["p"]


async def test_a_service_that_returns_by_itself_is_a_failure() -> None:
    stop, stopped = asyncio.Event(), []

    async def quits() -> None:
        await asyncio.sleep(0.01)

    with pytest.raises(ServiceEnded, match="the timer service ended by itself"):
        await asyncio.wait_for(run_services(stop, {"timer service": quits(), "p": _until(stop, stopped, "p")}), 1)
    assert stopped == ["p"]


async def test_the_first_failure_is_the_one_raised() -> None:
    stop = asyncio.Event()

    async def fails(after: float, message: str) -> None:
        await asyncio.sleep(after)
        raise RuntimeError(message)

    async def fails_when_stopped() -> None:
        await stop.wait()
        raise RuntimeError("second")

    with pytest.raises(RuntimeError, match="first"):
        await asyncio.wait_for(run_services(stop, {"a": fails(0.01, "first"), "b": fails_when_stopped()}), 1)
