"""The demo app: a small shop's background jobs, some of which fail on purpose.

Run it with `eventjobs demo`, or by hand:
    eventjobs processor --app eventjobs.dev.demo:app --project
    eventjobs worker --app eventjobs.dev.demo:app --queues default,emails
    eventjobs enqueue --app eventjobs.dev.demo:app send_receipt --args '{"order": 42}'
"""

from __future__ import annotations

import asyncio
import os
import random
from typing import Any

from eventjobs import App, Cancel, JobContext
from eventjobs.core.options import ConstantBackoff, ExponentialBackoff

app = App(os.environ.get("EVENTJOBS_NAMESPACE", "demo"))


@app.job(queue="emails", priority="high", timeout=10)
async def send_receipt(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """Always works: 'sends' an e-mail."""
    await asyncio.sleep(random.uniform(0.005, 0.03))
    return {"sent_to": f"customer-{args['order']}@example.com"}


@app.job(queue="default", max_attempts=5, backoff=ConstantBackoff(delay_s=0.5))
async def charge_card(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """The payment gateway times out twice, then accepts."""
    await ctx.progress(50, f"charging {args['amount']} EUR")
    if ctx.attempt < 2:
        raise ConnectionError(f"payment gateway timed out (attempt {ctx.attempt})")
    return {"charged": args["amount"], "attempts": ctx.attempt + 1}


@app.job(queue="default", max_attempts=3, backoff=ExponentialBackoff(base_s=0.2, cap_s=1))
async def sync_inventory(args: dict[str, Any], ctx: JobContext) -> None:
    """Broken for good: ends in the dead-letter queue after three attempts."""
    raise RuntimeError(f"warehouse API rejected SKU {args['sku']}: 422 Unprocessable Entity")


@app.job(queue="default")
async def ship_order(args: dict[str, Any], ctx: JobContext) -> Any:
    """Refuses orders that were refunded: a Cancel marker fails at once, no retry."""
    if args.get("refunded"):
        return Cancel(f"order {args['order']} was refunded")
    child = await ctx.enqueue("send_receipt", {"order": args["order"]})
    return {"shipped": args["order"], "receipt_job": child}


@app.job(queue="default", timeout=0.5, max_attempts=1)
def render_invoice(args: dict[str, Any], ctx: JobContext) -> dict[str, Any]:
    """A sync handler (runs in a thread); too slow for its timeout when the invoice is big."""
    import time

    time.sleep(2.0 if args.get("pages", 1) > 50 else 0.01)
    return {"pages": args.get("pages", 1)}
