"""The example of docs/hooks.md runs as written, against the real broker, processor and worker,
and writes the log lines the page shows: one JSON line per attempt, with its outcome."""

from __future__ import annotations

import asyncio
import json
import logging

import pytest

from eventjobs.settings import Settings
from tests.e2e.conftest import doc_example

PAGE = "hooks.md"


async def test_the_attempt_log_example_writes_one_line_per_attempt(
        settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="shop.attempts"):
        async with doc_example(PAGE, "attempt-log", settings, concurrency=4) as (scope, worker):
            receipt, payment = await scope["main"]()
            deadline = asyncio.get_running_loop().time() + 10  # the line follows the ending event's send
            while len([r for r in caplog.records if r.name == "shop.attempts"]) < 2 and \
                    asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name == "shop.attempts"]
    by_job = {line["job_id"]: line for line in lines}
    assert len(lines) == 2 and set(by_job) == {receipt, payment}
    assert by_job[receipt] | {"duration_ms": 0, "waited_ms": 0} == {
        "job_id": receipt, "job": "send_receipt", "queue": "emails", "attempt": 0, "worker": worker.worker_id,
        "outcome": "succeeded", "duration_ms": 0, "waited_ms": 0, "error": None}
    assert by_job[payment]["outcome"] == "failed" and by_job[payment]["error"] == "ValueError"
    assert all(line["duration_ms"] >= 0 and line["waited_ms"] >= 0 for line in lines)
    assert not worker.hooks.failures
