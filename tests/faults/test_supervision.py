"""Supervision: no background task fails silently.

A failure that cannot be recovered in place stops the service, which says why in its log and
exits non-zero (its supervisor restarts it): a worker whose cancel watcher fails or whose offset
committer ends, a processor whose timer service cannot take its partitions or whose own
lease, re-publish and retention timers fail. A failure that may
pass (a send that fails transiently) is retried with backoff and logged, not in a tight loop.

The fault is injected into a real service subprocess by `tests/support/faulty_app.py`, chosen
with EVENTJOBS_TEST_FAULT. The timer service's backoff is driven with chosen times and a sender
that fails as told (no broker).
"""

from __future__ import annotations

import asyncio
import logging
import time
from datetime import timedelta
from pathlib import Path
from subprocess import Popen
from typing import Any

import pytest
from aiokafka.errors import KafkaTimeoutError, TopicAuthorizationFailedError

from eventjobs import App
from eventjobs.runtime.timers import GIVE_UP_S, TimerService
from tests.e2e.conftest import spawn
from tests.unit.test_timer_service import T0, service_owning, timer

FAULTY_APP = "tests.support.faulty_app:app"


# -- the timer service's sends: retried with backoff, or the service stops ----------------------


class FlakySender:
    """Fails the first `failures` sends with `error`, then acknowledges every send at once."""

    def __init__(self, error: BaseException, failures: int) -> None:
        self.error = error
        self.failures = failures
        self.calls = 0

    async def send(self, topic: str, value: bytes | None, *, key: bytes, partition: int) -> asyncio.Future[Any]:
        self.calls += 1
        if self.failures > 0:
            self.failures -= 1
            raise self.error
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done


def _flaky_service(error: BaseException, failures: int) -> tuple[TimerService, FlakySender]:
    service = service_owning(0)
    service.index_timers(0, [timer("j", "run_at", 0)])
    sender = FlakySender(error, failures)
    service._sender = sender  # type: ignore[assignment]
    return service, sender


def _at(ms: int) -> Any:
    return T0 + timedelta(milliseconds=ms)


async def test_a_transient_send_failure_is_retried_with_backoff_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    service, sender = _flaky_service(KafkaTimeoutError(), failures=3)
    with caplog.at_level(logging.WARNING, logger="eventjobs.runtime.timers"):
        assert await service.run_once(_at(0)) == []
        assert service.wait_ms(_at(10)) == 90  # the loop sleeps through the backoff, not 1 ms
        passes = {ms: len(await service.run_once(_at(ms))) for ms in range(10, 1000, 10)}  # a pass every 10 ms
    # tried at 0, then after 100, 200 and 400 ms of backoff: not on every pass
    assert sender.calls == 3 + 2  # three failures, then the event and the tombstone
    assert [ms for ms, fired in passes.items() if fired] == [700]
    assert service.failure is None and service.pending == 0
    messages = [r.getMessage() for r in caplog.records]
    assert sum("firing the timers of partition 0 failed" in m for m in messages) == 2  # the 1st, 2nd, 4th, 8th ...
    assert any("timers of partition 0 are sent again (after 3 failed tries)" in m for m in messages)


async def test_a_send_failure_that_cannot_pass_stops_the_timer_service() -> None:
    service, _ = _flaky_service(TopicAuthorizationFailedError(), failures=1)
    await service.run_once(_at(0))
    assert isinstance(service.failure, RuntimeError)
    assert "sending the timers of partition 0 failed" in str(service.failure)
    assert service.pending == 1  # the timer is still pending; a restart fires it


async def test_a_transient_failure_that_lasts_stops_the_timer_service() -> None:
    service, _ = _flaky_service(KafkaTimeoutError(), failures=10**6)
    for seconds in range(0, int(GIVE_UP_S) + 15, 5):
        await service.run_once(_at(seconds * 1000))
    assert service.failure is not None and "has failed for" in str(service.failure)


# -- service processes that stop on a failure, with the reason ----------------------------------


def _exit_code(process: Popen[bytes], timeout: float) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return process.returncode
        time.sleep(0.2)
    return None


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("cancel-watcher", "the cancel watcher failed: RuntimeError(\"injected fault 'cancel-watcher'"),
        ("committer-returns", "the offset committer ended unexpectedly"),
    ],
)
async def test_a_worker_whose_background_task_fails_exits_non_zero_with_the_reason(
    app: App, tmp_path: Path, processes: list[Popen[bytes]], fault: str, reason: str
) -> None:
    log = tmp_path / "worker.log"
    worker = spawn(["worker", "--app", FAULTY_APP], app.settings, log, EVENTJOBS_TEST_FAULT=fault)
    processes.append(worker)
    code = await asyncio.to_thread(_exit_code, worker, 40)
    text = log.read_text(errors="replace")
    assert code is not None, f"the worker is still running (a silent stall):\n{text[-2000:]}"
    assert code != 0
    assert "ERROR eventjobs.runtime.worker: worker" in text and f"stops: {reason}" in text, text[-3000:]


@pytest.mark.parametrize(
    ("fault", "reason"),
    [
        ("timer-take", "timer service stops: injected fault 'timer-take': the timer partitions cannot be taken"),
        ("housekeeping", "stops: the housekeeping timers (lease, re-publish, retention) ended: RuntimeError(\"injected fault "
                         "'housekeeping': the housekeeping timers cannot be read"),
    ],
)
async def test_a_processor_whose_background_task_fails_exits_non_zero_with_the_reason(
    app: App, tmp_path: Path, processes: list[Popen[bytes]], fault: str, reason: str
) -> None:
    log = tmp_path / "processor.log"
    processor = spawn(["processor", "--app", FAULTY_APP], app.settings, log, EVENTJOBS_TEST_FAULT=fault)
    processes.append(processor)
    code = await asyncio.to_thread(_exit_code, processor, 40)
    text = log.read_text(errors="replace")
    assert code is not None, f"the processor is still running (a silent stall):\n{text[-2000:]}"
    assert code != 0
    assert reason in text, text[-3000:]
