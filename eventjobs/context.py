"""`JobContext`: what a running handler can know and do about its own job."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class JobLogger(logging.LoggerAdapter[logging.Logger]):
    """A logger bound to one job: every line carries the job id, name and attempt."""

    def process(self, msg: Any, kwargs: Any) -> tuple[Any, Any]:
        extra = dict(self.extra or {})
        extra.update(kwargs.pop("extra", {}) or {})
        kwargs["extra"] = {"job": extra}
        return f"[{extra['job_name']} {extra['job_id']} attempt {extra['attempt']}] {msg}", kwargs


class JobsNotCompleted(RuntimeError):
    """`ctx.wait_for_jobs` saw jobs end otherwise than completed, or not end in time.

    `problems` maps each such job id to what happened to it; `results` holds the results of the
    jobs that did complete.
    """

    def __init__(self, problems: dict[str, str], results: dict[str, Any]) -> None:
        listed = "; ".join(f"{job_id}: {problem}" for job_id, problem in list(problems.items())[:10])
        more = f" (and {len(problems) - 10} more)" if len(problems) > 10 else ""
        super().__init__(f"{len(problems)} of {len(problems) + len(results)} jobs did not complete: {listed}{more}")
        self.problems = problems
        self.results = results


class JobContext:
    """Passed as the second argument to handlers that accept it.

    `attempt` is 0-based. `progress` and `heartbeat` append events (a heartbeat also extends the
    lease, so long jobs are not re-run while still alive); `enqueue` submits a child job recorded
    with this job as its parent. A job enqueued with `depends_on` sees how they ended:
    `dependency_results` (job id -> result of each that completed) and `dependencies` (job id ->
    {"status", "result", "result_omitted"} of each, completed or not).
    """

    def __init__(
        self,
        *,
        job_id: str,
        name: str,
        queue: str,
        attempt: int,
        max_attempts: int,
        send_progress: Callable[[float, str], Coroutine[Any, Any, None]],
        send_heartbeat: Callable[[], Coroutine[Any, Any, None]],
        enqueue_child: Callable[..., Coroutine[Any, Any, str]],
        loop: asyncio.AbstractEventLoop,
        cancel_requested: Callable[[], bool] = lambda: False,
        dependencies: dict[str, dict[str, Any]] | None = None,
        wait_for_jobs: Callable[[list[str], float], Coroutine[Any, Any, dict[str, Any]]] | None = None,
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
        self.dependencies: dict[str, dict[str, Any]] = dependencies or {}
        self.dependency_results: dict[str, Any] = {
            job_id: outcome.get("result") for job_id, outcome in self.dependencies.items()
            if outcome.get("status") == "completed"
        }
        self._wait_for_jobs = wait_for_jobs
        self.log = JobLogger(
            logging.getLogger(f"eventjobs.job.{name}"),
            {"job_id": job_id, "job_name": name, "attempt": attempt, "queue": queue},
        )

    def _submit(self, coroutine: Coroutine[Any, Any, T], timeout: float = 60) -> Any:
        """Await-able from an async handler; from a sync handler's thread, runs it and returns its value."""
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=timeout)
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

    def wait_for_jobs(self, job_ids: list[str], timeout: float = 60.0) -> Any:
        """Wait until every job in `job_ids` has ended; returns {job id: result}.

        Raises `JobsNotCompleted` naming each job that ended otherwise than completed or did not
        end within `timeout` seconds. This job holds its worker slot meanwhile (its heartbeats
        keep its lease, its `timeout` option still applies): to fan in without holding a slot,
        enqueue the combining job with `depends_on=job_ids` instead.
        """
        if self._wait_for_jobs is None:
            raise RuntimeError("wait_for_jobs needs a worker's context")
        ids = list(dict.fromkeys(job_ids))
        return self._submit(self._wait_for_jobs(ids, float(timeout)), timeout=timeout + 60)

    @property
    def cancel_requested(self) -> bool:
        """True once a cancel for this job was seen; a long handler may stop early."""
        return self._cancel_requested()
