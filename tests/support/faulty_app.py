"""The end-to-end jobs app, with one fault injected into a service, chosen by EVENTJOBS_TEST_FAULT.

Service subprocesses load it with `--app tests.support.faulty_app:app`; importing it patches the
service class in that process only (the worker's parts: `CancelWatcher`, `Intake`):

- `cancel-watcher`: the worker's cancel watcher fails one second after it started;
- `committer-returns`: the worker's offset committer returns at once, as if its loop had ended;
- `timer-take`: the timer service cannot take its partitions (the processor process runs it);
- `housekeeping`: the processor's lease, re-publish and retention timers fail one second after start;
- `dependency-abort`: the first transaction of the processor that carries a `dependency_resolved`
  is held open for DEPENDENCY_ABORT_HOLD_S seconds after its writes reached the broker (the other
  lane, reading uncommitted, applies the answer meanwhile and the job runs), then aborted; the
  file named by EVENTJOBS_TEST_FAULT_ONCE marks it done, so a restarted processor runs plainly.
"""

from __future__ import annotations

import asyncio
import os
from pathlib import Path
from typing import Any

from eventjobs.core.housekeeping import Housekeeping
from eventjobs.runtime.cancels import CancelWatcher
from eventjobs.runtime.intake import Intake
from eventjobs.runtime.processor import LifecycleProcessor
from eventjobs.runtime.timers import TimerService
from tests.support.jobs_app import build_app

FAULT = os.environ.get("EVENTJOBS_TEST_FAULT", "")
MESSAGE = f"injected fault {FAULT!r}"


async def _failing_cancel_watcher(self: CancelWatcher, stop: asyncio.Event) -> None:
    await asyncio.sleep(1)
    raise RuntimeError(f"{MESSAGE}: the changelog cannot be read")


async def _returning_committer(self: Intake, stop: asyncio.Event) -> None:
    return None


async def _failing_take(self: TimerService, assigned: list[Any]) -> None:
    raise RuntimeError(f"{MESSAGE}: the timer partitions cannot be taken")


_real_due_timers = Housekeeping.due_timers
_first_look: list[float] = []  # when the processor first looked at its housekeeping timers


def _failing_due_timers(self: Housekeeping, table: Any, now: Any, **options: Any) -> Any:
    if not _first_look:
        _first_look.append(now.timestamp())
    if now.timestamp() - _first_look[0] >= 1:
        raise RuntimeError(f"{MESSAGE}: the housekeeping timers cannot be read")
    return _real_due_timers(self, table, now, **options)


DEPENDENCY_ABORT_HOLD_S = 6.0
_real_send = LifecycleProcessor._send


async def _aborting_send(self: LifecycleProcessor, txn: Any, partition: int, result: Any) -> Any:
    acks = await _real_send(self, txn, partition, result)
    once = Path(os.environ["EVENTJOBS_TEST_FAULT_ONCE"])
    if once.exists() or not any(event.type == "dependency_resolved" for event in result.effects.events):
        return acks
    once.touch()
    await txn.flush()  # this transaction's writes are on the broker: readers of uncommitted data see them
    await asyncio.sleep(DEPENDENCY_ABORT_HOLD_S)
    raise RuntimeError(f"{MESSAGE}: the transaction answering a dependency aborts")


if FAULT == "cancel-watcher":
    CancelWatcher.watch = _failing_cancel_watcher  # type: ignore[method-assign]
elif FAULT == "committer-returns":
    Intake.commit_loop = _returning_committer  # type: ignore[method-assign]
elif FAULT == "timer-take":
    TimerService._take = _failing_take  # type: ignore[method-assign]
elif FAULT == "dependency-abort":
    LifecycleProcessor._send = _aborting_send  # type: ignore[method-assign]
elif FAULT == "housekeeping":
    Housekeeping.due_timers = _failing_due_timers  # type: ignore[method-assign]
elif FAULT:
    raise ValueError(f"unknown EVENTJOBS_TEST_FAULT {FAULT!r}")

app = build_app(os.environ.get("EVENTJOBS_NAMESPACE", "testjobs"))
