"""Job handlers used by the end-to-end tests, registered on an App per test namespace.

Worker subprocesses load it with `--app tests.support.jobs_app:app` and EVENTJOBS_NAMESPACE set;
in-process tests call `build_app(namespace)`.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections import Counter
from typing import Any

from eventjobs import App, Cancel, JobContext, Retry
from eventjobs.core.options import ConstantBackoff, NoBackoff

EXECUTIONS: Counter[str] = Counter()  # job id -> handler runs in this process
STARTED: list[tuple[str, str, float]] = []  # (job id, priority tag, wall time) in start order


def build_app(namespace: str, **settings: Any) -> App:
    app = App(namespace, **settings)

    @app.job(queue="default")
    async def add(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        EXECUTIONS[ctx.job_id] += 1
        return {"sum": args["a"] + args["b"]}

    @app.job(queue="default", max_attempts=5, backoff=ConstantBackoff(delay_s=0.5))
    def flaky(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        EXECUTIONS[ctx.job_id] += 1
        if ctx.attempt < args.get("fail_times", 2):
            raise ConnectionError(f"transient failure on attempt {ctx.attempt}")
        return {"attempt": ctx.attempt}

    @app.job(queue="default", max_attempts=5)
    async def gives_up(args: dict[str, Any], ctx: JobContext) -> Any:
        EXECUTIONS[ctx.job_id] += 1
        return Cancel("the order was refunded")

    @app.job(queue="default", max_attempts=4, backoff=NoBackoff(), retry_on=(ConnectionError,))
    async def picky(args: dict[str, Any], ctx: JobContext) -> None:
        EXECUTIONS[ctx.job_id] += 1
        if args["error"] == "connection":
            raise ConnectionError("network down")
        raise KeyError("missing field")

    @app.job(queue="default", max_attempts=1, timeout=0.5)
    async def too_slow(args: dict[str, Any], ctx: JobContext) -> None:
        EXECUTIONS[ctx.job_id] += 1
        await asyncio.sleep(5)

    @app.job(queue="default", max_attempts=2, backoff=NoBackoff())
    async def fails_until_retried(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        EXECUTIONS[ctx.job_id] += 1
        if ctx.attempt < 2:
            raise RuntimeError(f"attempt {ctx.attempt} fails")
        return {"attempt": ctx.attempt}

    @app.job(queue="default")
    async def mark_start(args: dict[str, Any], ctx: JobContext) -> None:
        STARTED.append((ctx.job_id, args.get("tag", ""), time.time()))

    @app.job(queue="render", capabilities=("gpu",))
    async def render(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        return {"rendered_by": os.getpid()}

    @app.job(queue="default", max_attempts=3, backoff=NoBackoff(), timeout=60)
    async def sleepy(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        await ctx.progress(10, "started")
        await asyncio.sleep(args.get("seconds", 3))
        return {"slept": args.get("seconds", 3)}

    @app.job(queue="default")
    async def parent(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        child = await ctx.enqueue("add", {"a": 1, "b": 1})
        return {"child": child}

    @app.job(queue="default", max_attempts=2, backoff=NoBackoff())
    async def huge_error(args: dict[str, Any], ctx: JobContext) -> Any:
        """Fails with an error of `chars` characters (returned as a Cancel marker with `marker`)."""
        text = args.get("char", "E") * args["chars"]
        if args.get("marker"):
            return Cancel(text)
        raise ValueError(text)

    @app.job(queue="default", max_attempts=2, backoff=NoBackoff())
    async def huge_result(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        return {"blob": "r" * args["bytes"]}

    @app.job(queue="default")
    async def retry_later(args: dict[str, Any], ctx: JobContext) -> Any:
        if ctx.attempt == 0:
            return Retry("not yet", delay=0.3)
        return {"attempt": ctx.attempt}

    return app


app = build_app(os.environ.get("EVENTJOBS_NAMESPACE", "testjobs"))
