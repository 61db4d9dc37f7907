"""Run a process's services side by side, and stop all of them when one of them fails.

Why this module exists: a service that dies quietly while the others go on is the worst kind of
failure (the processor keeps committing while its timers never fire, say). Each service is a
coroutine that returns when `stop` is set; the first one that raises sets `stop` for the others,
waits for them, and is re-raised, so the process logs why and exits non-zero and whatever
supervises it (systemd, Kubernetes, docker compose) restarts it. A service that returns while
`stop` is not set is a failure too: nothing may end unnoticed.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Mapping
from typing import Any


class ServiceEnded(RuntimeError):
    """A service returned although it was not asked to stop."""


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
