"""Memory and load time of the timer service with many pending timers.

    .venv/bin/python benchmarks/bench_timers.py [--timers 1000000]

Writes N timer records (due in an hour, so none fires) to a fresh namespace's compacted timer
topic, then starts the timer service in a child process, waits until it has rebuilt its index
from the topic, and reports the child's resident memory (VmRSS) and the load time. The broker is
KAFKA_BOOTSTRAP_SERVERS, or a local one started for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.bench_throughput import machine_info  # noqa: E402
from eventjobs.core.ids import new_job_id  # noqa: E402
from eventjobs.dev.broker import LocalKafka, free_port  # noqa: E402
from eventjobs.kafka.clients import producer  # noqa: E402
from eventjobs.core.records import TimerRecord  # noqa: E402
from eventjobs.settings import Settings  # noqa: E402
from eventjobs.kafka.admin import apply_topics  # noqa: E402


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


async def fill(settings: Settings, count: int) -> float:
    topic = f"{settings.namespace}.timers"
    sender = producer(settings, linger_ms=20)
    await sender.start()
    due = datetime.now(timezone.utc) + timedelta(hours=1)
    started = time.perf_counter()
    try:
        for chunk in range(0, count, 10_000):
            futures = []
            for i in range(chunk, min(count, chunk + 10_000)):
                record = TimerRecord(job_id=new_job_id(), kind=("lease", "retry", "ttl")[i % 3], attempt=i % 5,
                                     due_at=due + timedelta(milliseconds=i))
                futures.append(await sender.send(topic, record.encode(), key=record.key, partition=i % 6))
            await asyncio.gather(*futures)
    finally:
        await sender.stop()
    return time.perf_counter() - started


async def child(bootstrap: str, namespace: str) -> None:
    from eventjobs.runtime.timers import TimerService

    settings = Settings(kafka_bootstrap=bootstrap, namespace=namespace)
    service = TimerService(settings)
    stop = asyncio.Event()
    baseline = rss_mb(os.getpid())
    started = time.perf_counter()
    task = asyncio.create_task(service.run(stop))
    await service.loaded.wait()
    loaded = time.perf_counter() - started
    await asyncio.sleep(2)
    print(json.dumps({"pending": service.pending, "load_s": loaded, "rss_mb": rss_mb(os.getpid()),
                      "baseline_mb": baseline}), flush=True)
    stop.set()
    await task


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timers", type=int, default=1_000_000)
    parser.add_argument("--child", nargs=2, metavar=("BOOTSTRAP", "NAMESPACE"))
    options = parser.parse_args()
    if options.child:
        await child(*options.child)
        return
    print(f"machine: {machine_info()}")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not bootstrap:
        broker = LocalKafka(home=Path(tempfile.mkdtemp()) / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
        bootstrap = broker.up().bootstrap
    try:
        settings = Settings(kafka_bootstrap=bootstrap, namespace=f"tbench{uuid.uuid4().hex[:8]}")
        await apply_topics(settings)
        fill_s = await fill(settings, options.timers)
        print(f"wrote {options.timers:,} timers in {fill_s:.1f} s")
        out = subprocess.run([sys.executable, __file__, "--child", bootstrap, settings.namespace],
                             capture_output=True, text=True, cwd=ROOT, timeout=1800)
        result = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"timer service: {result['pending']:,} pending timers loaded in {result['load_s']:.1f} s; "
              f"RSS {result['rss_mb']:.0f} MB (process baseline before loading {result['baseline_mb']:.0f} MB)")
    finally:
        if broker is not None:
            broker.down()


if __name__ == "__main__":
    asyncio.run(main())
