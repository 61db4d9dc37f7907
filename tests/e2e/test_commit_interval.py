"""The processor's commit interval: transactions wait for it, a stop does not lose what waited."""

from __future__ import annotations

import asyncio

import pytest

from eventjobs import App
from eventjobs.core.state import JobStatus
from eventjobs.runtime.processor import LifecycleProcessor


async def _state_appears(app: App, job_id: str, within_s: float) -> bool:
    deadline = asyncio.get_running_loop().time() + within_s
    while asyncio.get_running_loop().time() < deadline:
        if await app.state(job_id) is not None:
            return True
        await asyncio.sleep(0.1)
    return False


async def test_a_long_commit_interval_holds_commits_back_and_a_stop_commits_them(app: App) -> None:
    stop = asyncio.Event()
    processor = LifecycleProcessor(app.settings, commit_interval_s=3600)
    running = asyncio.create_task(processor.run(stop))
    try:
        jobs = [await app.enqueue("add", {"a": i, "b": 2}) for i in range(3)]

        def folded() -> bool:
            return all(any(job_id in table for table in processor.tables.values()) for job_id in jobs)

        deadline = asyncio.get_running_loop().time() + 60
        while not folded():
            assert asyncio.get_running_loop().time() < deadline, "the processor never folded the jobs"
            await asyncio.sleep(0.1)
        await asyncio.sleep(2)
        for job_id in jobs:  # folded, but no transaction before the interval is over
            assert await app.state(job_id) is None, job_id
    finally:
        stop.set()
        await asyncio.wait_for(running, 60)
    for job_id in jobs:  # stopping committed what the lanes had folded
        assert await _state_appears(app, job_id, within_s=30), job_id
        state = await app.state(job_id)
        assert state is not None and state.status is JobStatus.PENDING


def test_a_negative_commit_interval_is_refused(app: App) -> None:
    with pytest.raises(ValueError, match="commit_interval_s must be >= 0"):
        LifecycleProcessor(app.settings, commit_interval_s=-1)
