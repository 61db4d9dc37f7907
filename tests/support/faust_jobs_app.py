"""A real Faust app for the Faust integration test: orders in, jobs enqueued, completions out.

Run by the test as a Faust worker subprocess (`python -m faust -A tests.support.faust_jobs_app
worker`), configured by environment so it gets the session broker and the test's namespace:
FAUST_JOBS_BROKER (host:port), FAUST_JOBS_NAMESPACE (the eventjobs namespace; the topics
`<ns>.faust-orders` and `<ns>.faust-notices` must exist).

* `enqueue_orders` consumes orders (JSON `{"order_id", "a", "b", "job"}`) and enqueues one `add`
  job per order with the idempotency key `order-<id>`, so a redelivered or repeated order is the
  same job. An order naming an unknown job gets a `rejected` notice carrying the exception.
* `completions` consumes the job event log as `JobEventRecord`s and writes a `completed` notice
  (job id, result, plus what the record looked like) for every `completed` event.
"""

from __future__ import annotations

import os
from datetime import datetime
from typing import Any

import faust

from eventjobs import UnknownJob
from eventjobs.integrations.faust import FaustEnqueuer, JobEventRecord, job_events_topic
from tests.support.jobs_app import build_app

BROKER = os.environ["FAUST_JOBS_BROKER"]
NAMESPACE = os.environ["FAUST_JOBS_NAMESPACE"]

jobs = build_app(NAMESPACE, kafka_bootstrap=BROKER)

app = faust.App(
    f"{NAMESPACE}-faust-jobs",
    broker=f"kafka://{BROKER}",
    store="memory://",
    web_enabled=False,
    topic_replication_factor=1,
    topic_partitions=1,
    broker_commit_every=10,
)


class Order(faust.Record, serializer="json"):
    order_id: str
    a: int
    b: int
    job: str = "add"


orders = app.topic(f"{NAMESPACE}.faust-orders", key_type=str, value_type=Order)
notices = app.topic(f"{NAMESPACE}.faust-notices", key_type=str, value_serializer="json")
job_events = job_events_topic(app, jobs)
enqueuer = FaustEnqueuer(jobs, app)


@app.agent(orders)
async def enqueue_orders(stream: faust.StreamT[Order]) -> None:
    async for order in stream:
        try:
            job_id = await enqueuer.enqueue(order.job, {"a": order.a, "b": order.b},
                                            idempotency_key=f"order-{order.order_id}")
        except UnknownJob as error:
            await notices.send(key=order.order_id, value={
                "kind": "rejected", "order_id": order.order_id, "error": type(error).__qualname__,
                "error_module": type(error).__module__, "message": str(error),
            })
        else:
            await notices.send(key=order.order_id,
                               value={"kind": "enqueued", "order_id": order.order_id, "job_id": job_id})


@app.agent(job_events)
async def completions(stream: faust.StreamT[JobEventRecord]) -> None:
    async for record in stream:
        if record.type != "completed":
            continue
        event = record.to_event()
        notice: dict[str, Any] = {
            "kind": "completed", "job_id": record.job_id, "event_id": record.event_id,
            "attempt": record.attempt, "result": record.result,
            "record_class": type(record).__name__, "event_class": type(event).__name__,
            "occurred_at_is_datetime": isinstance(record.occurred_at, datetime),
            "wire_occurred_at": record.to_representation()["occurred_at"],
        }
        await notices.send(key=record.job_id, value=notice)
