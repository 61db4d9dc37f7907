"""The end-to-end jobs app, with one fault injected into a service, chosen by EVENTJOBS_TEST_FAULT.

Service subprocesses load it with `--app tests.support.faulty_app:app`; importing it patches the
service class in that process only:

- `cancel-watcher`: the worker's cancel watcher fails one second after it started;
- `committer-returns`: the worker's offset committer returns at once, as if its loop had ended;
- `timer-take`: the timer service cannot take its partitions (the processor process runs it);
- `housekeeping`: the processor's re-publish and retention timers fail one second after start.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from eventjobs.core.housekeeping import Housekeeping
from eventjobs.runtime.timers import TimerService
from eventjobs.runtime.worker import Worker
from tests.support.jobs_app import build_app

FAULT = os.environ.get("EVENTJOBS_TEST_FAULT", "")
MESSAGE = f"injected fault {FAULT!r}"


async def _failing_cancel_watcher(self: Worker, stop: asyncio.Event) -> None:
    await asyncio.sleep(1)
    raise RuntimeError(f"{MESSAGE}: the changelog cannot be read")


async def _returning_committer(self: Worker, stop: asyncio.Event) -> None:
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


if FAULT == "cancel-watcher":
    Worker._watch_cancels = _failing_cancel_watcher  # type: ignore[method-assign]
elif FAULT == "committer-returns":
    Worker._commit_loop = _returning_committer  # type: ignore[method-assign]
elif FAULT == "timer-take":
    TimerService._take = _failing_take  # type: ignore[method-assign]
elif FAULT == "housekeeping":
    Housekeeping.due_timers = _failing_due_timers  # type: ignore[method-assign]
elif FAULT:
    raise ValueError(f"unknown EVENTJOBS_TEST_FAULT {FAULT!r}")

app = build_app(os.environ.get("EVENTJOBS_NAMESPACE", "testjobs"))
