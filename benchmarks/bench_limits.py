"""What a concurrency limit costs a job: records written and the wait from enqueue to start.

Three namespaces, one in-process processor and worker each (the real broker, KAFKA_BOOTSTRAP_SERVERS):
``plain`` jobs without a limit; ``limited`` jobs with a limit that is never full (each job has its
own key: the cost of asking and releasing alone); ``keyed`` jobs with a limit that is never full
but one key for all (the owner's table written at each change); ``rated`` jobs with a rate that
never binds (100/s, one key for all, no max: the cost of the rate's path, its start lag included). Jobs are enqueued one after another,
``--gap`` apart, so the wait measured is latency, not queueing. Every topic of the namespace is read
back (read_committed) and its records counted per job.

    python benchmarks/bench_limits.py --jobs 200
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from typing import Any

from eventjobs import App, Limit
from eventjobs.core.codec import decode
from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.clients import partitions_of, read_to_end
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.runtime.processor import run_processor
from eventjobs.runtime.worker import Worker


def build(namespace: str, mode: str) -> App:
    app = App(namespace, kafka_bootstrap=os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092"))
    limit = None
    if mode == "limited":
        limit = Limit(key=lambda args: f"k{args['n']}", max=1_000)
    elif mode == "keyed":
        limit = Limit(key="one", max=1_000)
    elif mode == "rated":
        limit = Limit(rate="100/s")

    @app.job(concurrency=limit)
    async def noop(args: dict[str, Any]) -> dict[str, Any]:
        return {}

    return app


async def run(mode: str, jobs: int, gap_s: float) -> dict[str, float]:
    namespace = f"benchlim{mode}{os.urandom(3).hex()}"
    app = build(namespace, mode)
    await apply_topics(app.settings, ["default"])
    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_processor(app.settings, stop))]
    worker = Worker(app, queues=["default"], lease_s=10)
    tasks.append(asyncio.create_task(worker.run(stop)))
    await asyncio.wait_for(worker.started.wait(), 60)
    warm = await app.enqueue("noop", {"n": -1})
    await app.wait(warm, timeout=60)
    ids = []
    for n in range(jobs):
        ids.append(await app.enqueue("noop", {"n": n}))
        await asyncio.sleep(gap_s)
    for job_id in ids:
        await app.wait(job_id, timeout=120)
    await asyncio.sleep(1.0)  # the last commits
    stop.set()
    await asyncio.gather(*tasks, return_exceptions=True)
    settings = app.settings
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    enqueued, started, claimed = {}, {}, {}
    total = 0
    by_topic: dict[str, int] = {}
    for topic, _ in names.planned(["default"]):
        if topic == names.workers:
            continue
        async for record in read_to_end(settings, await partitions_of(settings, topic)):
            total += 1
            by_topic[topic.removeprefix(namespace + ".")] = by_topic.get(topic.removeprefix(namespace + "."), 0) + 1
            if topic == names.events and record.value is not None:
                event = decode(record.value)
                if event.type == "enqueued":
                    enqueued[event.job_id] = event.occurred_at
                elif event.type == "attempt_started":
                    started[event.job_id] = event.occurred_at
                elif event.type == "claimed":
                    claimed[event.job_id] = event.occurred_at
    await app.close()
    waits = sorted((started[j] - enqueued[j]).total_seconds() * 1000 for j in ids)
    count = jobs + 1  # and the warm-up job
    # where the wait goes: to the claim (the slot's round trip, the ready record, a worker's claim;
    # a derived slot_granted carries its trigger's time, so it is not timed itself), and from the
    # claim to the start (a limited job's worker waits for the changelog to show its claim accepted)
    # (a job whose worker starts it at once has no `claimed`: its attempt_started is the claim)
    to_claim = sorted((claimed.get(j, started[j]) - enqueued[j]).total_seconds() * 1000 for j in ids)
    claim_to_start = sorted((started[j] - claimed.get(j, started[j])).total_seconds() * 1000 for j in ids)
    return {
        "records_per_job": total / count,
        **{f"{topic}_per_job": n / count for topic, n in sorted(by_topic.items())},
        "wait_p50_ms": statistics.median(waits),
        "wait_p95_ms": waits[int(len(waits) * 0.95) - 1],
        "to_claim_p50_ms": statistics.median(to_claim),
        "claim_to_start_p50_ms": statistics.median(claim_to_start),
    }


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--gap", type=float, default=0.05, help="seconds between two enqueues")
    parser.add_argument("--modes", default="plain,limited,keyed,rated", help="comma-separated: plain, limited, keyed, rated")
    options = parser.parse_args()
    for mode in options.modes.split(","):
        begun = time.monotonic()
        result = await run(mode, options.jobs, options.gap)
        shown = ", ".join(f"{k} {v:.2f}" for k, v in result.items())
        print(f"{mode:8} ({time.monotonic() - begun:.0f} s): {shown}", flush=True)


if __name__ == "__main__":
    asyncio.run(main())
