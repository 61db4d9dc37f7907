"""Handlers a Python worker runs for jobs that producers in other languages enqueue."""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

from eventjobs import App, JobContext

EXECUTIONS: Counter[str] = Counter()  # job id -> handler runs in this process


def build_contract_app(namespace: str, **settings: Any) -> App:
    app = App(namespace, **settings)

    @app.job(queue="default")
    async def add(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        EXECUTIONS[ctx.job_id] += 1
        await ctx.progress(50, "adding")  # a worker event besides claim, start and outcome
        return {"sum": args["a"] + args["b"]}

    @app.job(queue="default")
    async def long_job(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
        """Runs `seconds`, well past the worker's lease: only its heartbeats keep the lease."""
        EXECUTIONS[ctx.job_id] += 1
        seconds = float(args["seconds"])
        steps = max(1, int(seconds / 0.5))
        for step in range(steps):
            await asyncio.sleep(seconds / steps)
            await ctx.progress(100 * (step + 1) / steps, f"step {step + 1} of {steps}")
        return {"slept": seconds, "attempt": ctx.attempt}

    return app
