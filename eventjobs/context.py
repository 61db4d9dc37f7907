"""`JobContext`: what a running handler can know and do about its own job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class JobLogger(logging.LoggerAdapter):  # type: ignore[type-arg]
    """A logger bound to one job: every line carries the job id, name and attempt."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.pop("extra", {}) or {})
        kwargs["extra"] = {"job": extra}
        return f"[{extra['job_name']} {extra['job_id']} attempt {extra['attempt']}] {msg}", kwargs


class JobContext:
    """Passed as the second argument to handlers that accept it.

    `attempt` is 0-based. `progress` and `heartbeat` append events (a heartbeat also extends the
    lease, so long jobs are not re-run while still alive); `enqueue` submits a child job recorded
    with this job as its parent.
    """

    def __init__(
        self,
        *,
        job_id: str,
        name: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        send_progress: Callable[[float, str], Awaitable[None]],
        send_heartbeat: Callable[[], Awaitable[None]],
        enqueue_child: Callable[..., Awaitable[str]],
        loop: asyncio.AbstractEventLoop,
        cancel_requested: Callable[[], bool] = lambda: False,
    ) -> None:
        self._loop = loop
        self.job_id = job_id
        self.name = name
        self.queue = queue
        self.attempt = attempt
        self.max_attempts = max_attempts
        self._send_progress = send_progress
        self._send_heartbeat = send_heartbeat
        self._enqueue_child = enqueue_child
        self._cancel_requested = cancel_requested
        self.log = JobLogger(
            logging.getLogger(f"eventjobs.job.{name}"),
            {"job_id": job_id, "job_name": name, "attempt": attempt, "queue": queue},
        )

    def _submit(self, coroutine: Coroutine[Any, Any, T]) -> Any:
        """Await-able from an async handler; from a sync handler's thread, runs it and returns its value."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=60)
        return asyncio.ensure_future(coroutine)

    def progress(self, percent: float, message: str = "") -> Any:
        """Record progress (0-100). `await` it in async handlers; sync handlers just call it."""
        if not 0 <= percent <= 100:
            raise ValueError(f"progress percent must be between 0 and 100, got {percent}")
        return self._submit(self._send_progress(float(percent), message))

    def heartbeat(self) -> Any:
        """Extend the lease now. `await` it in async handlers; sync handlers just call it."""
        return self._submit(self._send_heartbeat())

    def enqueue(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> Any:
        """Enqueue a child job (same validation and idempotency rules as `App.enqueue`).

        Async handlers: `child_id = await ctx.enqueue(...)`; sync handlers: `child_id = ctx.enqueue(...)`.
        """
        return self._submit(self._enqueue_child(name, args, parent_job_id=self.job_id, **options))

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel for this job was seen; a long handler may stop early."""
        return self._cancel_requested()
