"""Run a process's services side by side, and stop all of them when one of them fails; within a
service, the first failure of any of its tasks stops the service (`Supervised`).

Why this module exists: a service that dies quietly while the others go on is the worst kind of
failure (the processor keeps committing while its timers never fire, say). Each service is a
coroutine that returns when `stop` is set; the first one that raises sets `stop` for the others,
waits for them, and is re-raised, so the process logs why and exits non-zero and whatever
supervises it (systemd, Kubernetes, docker compose) restarts it. A service that returns while
`stop` is not set is a failure too: nothing may end unnoticed.

The same rule holds inside one service: the worker, the lifecycle processor, the timer service
and the schedule service each keep their first failure (`Supervised.failure`), and the
background tasks they start (`Supervised._supervised`) report an error, or an end nobody asked
for, as such a failure. The service's loop sees it and stops, raising it.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Coroutine, Mapping
from typing import Any


class ServiceEnded(RuntimeError):
    """A service returned although it was not asked to stop."""


class Supervised:
    """The first failure of a service, and its background tasks, whose failure is the service's.

    A service calls `_supervise_as` in its constructor. `_fail` keeps the first failure (logged
    once, as `<who> stops: <error>`) and sets `halt` if the service has one, so its loops stop;
    a service without one checks `failure` in its loop. An ownership listener's `on_error` is
    `_fail`: a partition whose take failed would otherwise never be served.
    """

    failure: BaseException | None
    _who: str
    _log: logging.Logger
    _halt: asyncio.Event | None
    # how a task's error reads in the failure: "<what> failed: <error>" (or "ended: ", the processor's)
    _ended_by_error = "failed"

    def _supervise_as(self, who: str, log: logging.Logger, halt: asyncio.Event | None = None) -> None:
        """Supervision for the service `who` (named in the log line), logged to `log`; `halt` is set on failure."""
        self.failure = None
        self._who = who
        self._log = log
        self._halt = halt

    def _fail(self, error: BaseException) -> None:
        """Stop the service because of `error` (the first failure is the one reported)."""
        if self.failure is None:
            self._log.error("%s stops: %s", self._who, error)
            self.failure = error
        if self._halt is not None:
            self._halt.set()

    def _supervised(self, work: Coroutine[Any, Any, None], what: str) -> asyncio.Task[None]:
        """A background task whose failure, or end before the service halts (a service without
        `halt`: any end but a cancel), stops the service instead of leaving it alive and
        silently doing nothing."""
        task: asyncio.Task[None] = asyncio.create_task(work, name=what)

        def ended(task: asyncio.Task[None]) -> None:
            if task.cancelled():
                return
            error = task.exception()
            if error is not None:
                self._fail(RuntimeError(f"{what} {self._ended_by_error}: {error!r}"))
            elif self._halt is None or not self._halt.is_set():
                self._fail(RuntimeError(f"{what} ended unexpectedly"))

        task.add_done_callback(ended)
        return task


async def run_services(stop: asyncio.Event, services: Mapping[str, Coroutine[Any, Any, None]]) -> None:
    """Run `services` (name -> coroutine) until `stop` is set; the first failure stops them all and is raised."""
    tasks = {asyncio.create_task(service, name=name): name for name, service in services.items()}
    failure: BaseException | None = None
    pending = set(tasks)
    try:
        while pending:
            done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                error = task.exception() if not task.cancelled() else None
                if error is None and not stop.is_set() and not task.cancelled():
                    error = ServiceEnded(f"the {tasks[task]} ended by itself")
                if error is not None and failure is None:
                    failure = error
                    stop.set()
    finally:
        for task in pending:  # cancelled from outside: stop the rest
            task.cancel()
        if pending:
            await asyncio.gather(*pending, return_exceptions=True)
    if failure is not None:
        raise failure
