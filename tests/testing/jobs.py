"""The app the testing kit's own tests run: one handler per behaviour under test."""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

from eventjobs import App, Cancel, JobContext, JobsNotCompleted, Retry, Snooze
from eventjobs.core.limits import size_limits

app = App("kit")


class MailboxBusy(Exception):
    pass


@app.job(max_attempts=3)
async def send_receipt(args: dict[str, Any], ctx: JobContext) -> dict[str, Any] | Retry:
    """Asks for a retry in 2 s on its first attempt, then sends."""
    if ctx.attempt == 0:
        return Retry("mail server busy", delay=2)
    await ctx.progress(50, "rendered")
    return {"sent": args["order"], "attempt": ctx.attempt}


@app.job(max_attempts=4, retry_on=("MailboxBusy",))
async def deliver(args: dict[str, Any]) -> None:
    """Raises: retried with the default backoff if the error is listed in retry_on."""
    raise MailboxBusy("try later") if args.get("busy") else ValueError("no such address")


@app.job()
async def poll_export(args: dict[str, Any], ctx: JobContext) -> dict[str, Any] | Snooze:
    """Snoozes 30 s until its third attempt number."""
    if ctx.attempt < 2:
        return Snooze(30)
    return {"ready_at_attempt": ctx.attempt}


@app.job()
async def place_order(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Fans out one child per item and a total that depends on them all."""
    children = [await ctx.enqueue("price_item", {"item": item}) for item in args["items"]]
    total = await ctx.enqueue("total", {"order": args["order"]}, depends_on=children)
    return {"children": children, "total": total}


@app.job()
async def price_item(args: dict[str, Any]) -> dict[str, Any]:
    return {"price": len(args["item"])}


@app.job()
async def total(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    return {"order": args["order"], "sum": sum(result["price"] for result in ctx.dependency_results.values())}


@app.job()
def resize(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A sync handler: runs in a thread, and calls ctx's methods without await."""
    ctx.progress(10, "loading")
    ctx.heartbeat()
    child = ctx.enqueue("price_item", {"item": "thumbnail"})
    return {"in_a_thread": threading.current_thread() is not threading.main_thread(), "child": child}


@app.job(timeout=0.2, max_attempts=2)
async def hang(args: dict[str, Any]) -> None:
    await asyncio.sleep(30)


@app.job(timeout=0.2, max_attempts=1)
def hang_sync(args: dict[str, Any]) -> None:
    time.sleep(0.5)


@app.job()
async def huge_result(args: dict[str, Any]) -> dict[str, Any]:
    return {"blob": "x" * (size_limits().result_bytes + 1)}


@app.job(max_attempts=5)
async def refund(args: dict[str, Any]) -> Cancel | dict[str, Any]:
    return Cancel("order already refunded") if args.get("refunded") else {"refunded": True}


@app.job()
async def combine(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Waits for jobs of its own (holding its slot) with ctx.wait_for_jobs."""
    ids = [await ctx.enqueue("price_item", {"item": item}) for item in args["items"]]
    results = await ctx.wait_for_jobs(ids)
    return {"sum": sum(result["price"] for result in results.values())}


@app.job()
async def combine_failing(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Waits for a job that retries: it has not ended when the wait returns."""
    job = await ctx.enqueue("deliver", {"busy": True})
    try:
        await ctx.wait_for_jobs([job])
    except JobsNotCompleted as error:
        return {"problems": error.problems}
    return {}


@app.job(max_attempts=3, backoff=lambda attempt: 5.0 * (attempt + 1))
async def flaky(args: dict[str, Any]) -> None:
    raise ConnectionError("reset")


@app.job(max_snoozes=1_000_000)
async def forever(args: dict[str, Any]) -> Snooze:
    return Snooze(0)
