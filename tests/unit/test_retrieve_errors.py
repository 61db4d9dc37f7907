"""A fenced transaction fails every write queued in it: the processor reports the cause once, and
asyncio does not log each write's error as "exception was never retrieved" (a soak with
processor kills logged 9,507 such ERROR lines before)."""

from __future__ import annotations

import asyncio
import gc
import logging

import pytest

from eventjobs.runtime.processor import retrieve_errors


async def _fail_unseen(count: int, seen: bool) -> None:
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(count)]
    if seen:
        retrieve_errors(futures[: count // 2])  # some before they fail
    for future in futures:
        future.set_exception(RuntimeError("fenced"))
    if seen:
        retrieve_errors(futures[count // 2:])  # some after
    await asyncio.sleep(0)  # the done callbacks run
    del futures


@pytest.mark.parametrize("seen", [False, True])
async def test_errors_of_writes_failed_together_are_retrieved(seen: bool, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.ERROR, logger="asyncio"):
        await _fail_unseen(6, seen)
        gc.collect()
    unretrieved = [r for r in caplog.records if "never retrieved" in r.getMessage()]
    assert len(unretrieved) == (0 if seen else 6)
