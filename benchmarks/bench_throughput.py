"""End-to-end job throughput and latency on one machine, beside the raw Kafka floor.

    .venv/bin/python benchmarks/bench_throughput.py [--jobs 20000] [--rate 500] [--seconds 10]

Producer (this process), one processor process, one worker process and the broker share the
machine. Phases, each in a fresh namespace:
  1. throughput: N no-op jobs enqueued as fast as possible -> all completed (jobs/s);
  2. latency: no-op jobs at a fixed rate -> enqueue-to-start p50/p99 (from the events' times);
  3. timers: jobs scheduled over a window at a moderate rate -> timer lateness p50/p99;
  4. raw floor: plain aiokafka producing and consuming the same number of records per job as
     the pipeline writes, so the result is a ratio.
The broker is KAFKA_BOOTSTRAP_SERVERS, or a local one started for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer  # noqa: E402
from aiokafka.admin import NewTopic  # noqa: E402

from eventjobs.core.codec import decode  # noqa: E402
from eventjobs.dev.broker import LocalKafka, free_port  # noqa: E402
from eventjobs.dev.processes import stop_processes  # noqa: E402
from eventjobs.kafka.clients import admin_client, partitions_of, read_to_end  # noqa: E402
from eventjobs.settings import Settings  # noqa: E402
from eventjobs.kafka.admin import apply_topics, wait_for_topics  # noqa: E402
from eventjobs.kafka.topics import TopicNames, load_specs  # noqa: E402
from benchmarks.bench_app import build_app  # noqa: E402


def machine_info() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()} {platform.release()}"


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q / 100 * (len(ordered) - 1))))]


class Stack:
    """One processor and one worker process for a namespace."""

    def __init__(self, settings: Settings, logs: Path, concurrency: int) -> None:
        env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
               "EVENTJOBS_NAMESPACE": settings.namespace, "PYTHONPATH": str(ROOT)}
        cli = [sys.executable, "-m", "eventjobs.cli"]
        self.procs = [
            subprocess.Popen([*cli, "processor", "--namespace", settings.namespace], env=env, cwd=ROOT,
                             stdout=open(logs / f"{settings.namespace}-processor.log", "wb"), stderr=subprocess.STDOUT),
            subprocess.Popen([*cli, "worker", "--app", "benchmarks.bench_app:app", "--concurrency", str(concurrency)],
                             env=env, cwd=ROOT, stdout=open(logs / f"{settings.namespace}-worker.log", "wb"),
                             stderr=subprocess.STDOUT),
        ]

    def stop(self) -> None:
        stop_processes(self.procs)


async def count_completed(settings: Settings, expected: int, timeout_s: float) -> float:
    """Seconds until `expected` jobs are completed, watching the state changelog (cheap substring test)."""
    topic = f"{settings.namespace}.job-state"
    reader = AIOKafkaConsumer(bootstrap_servers=settings.kafka_bootstrap, isolation_level="read_committed",
                              auto_offset_reset="earliest", enable_auto_commit=False)
    await reader.start()
    reader.assign(await partitions_of(settings, topic))
    done: set[bytes] = set()
    deadline = time.perf_counter() + timeout_s
    try:
        while len(done) < expected:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"only {len(done)} of {expected} jobs completed in {timeout_s} s")
            batch = await reader.getmany(timeout_ms=200, max_records=20_000)
            for records in batch.values():
                for record in records:
                    if record.value and b'"status":"completed"' in record.value:
                        done.add(record.key)
        return time.perf_counter()
    finally:
        await reader.stop()


async def fresh(bootstrap: str, queues: list[str] | None = None) -> Settings:
    settings = Settings(kafka_bootstrap=bootstrap, namespace=f"bench{uuid.uuid4().hex[:8]}")
    await apply_topics(settings, queues or ["default"])
    return settings


async def start_stack(settings: Settings, logs: Path, concurrency: int) -> Stack:
    stack = Stack(settings, logs, concurrency)
    app = build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap)
    warm = await app.enqueue("noop", {})  # wait until processor and worker are up
    await app.wait(warm, timeout=120)
    await app.close()
    return stack


async def throughput(bootstrap: str, jobs: int, logs: Path, concurrency: int) -> dict[str, float]:
    settings = await fresh(bootstrap)
    stack = await start_stack(settings, logs, concurrency)
    try:
        app = build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap)
        events = [app._build_enqueue("noop", {"i": i}) for i in range(jobs)]
        watcher = asyncio.create_task(count_completed(settings, jobs + 1, timeout_s=600))
        started = time.perf_counter()
        for chunk in range(0, jobs, 1000):
            await app.writer.append(events[chunk:chunk + 1000])
        enqueued = time.perf_counter()
        finished = await watcher
        await app.close()
        return {"jobs": jobs, "enqueue_s": enqueued - started, "total_s": finished - started,
                "jobs_per_s": jobs / (finished - started)}
    finally:
        stack.stop()


async def job_timings(settings: Settings) -> dict[str, dict[str, datetime]]:
    topic = f"{settings.namespace}.events"
    times: dict[str, dict[str, datetime]] = {}
    async for record in read_to_end(settings, await partitions_of(settings, topic)):
        event = decode(record.value)
        slot = times.setdefault(event.job_id, {})
        slot.setdefault(event.type, event.occurred_at)
        if event.type == "enqueued" and event.run_at is not None:
            slot["run_at"] = event.run_at
    return times


async def hint_times(settings: Settings) -> dict[str, datetime]:
    """When the processor produced each job's ready record (the record's Kafka timestamp)."""
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    topics = [names.ready("default", priority) for priority in ("critical", "high", "normal", "low")]
    partitions = [tp for topic in topics for tp in await partitions_of(settings, topic)]
    times: dict[str, datetime] = {}
    async for record in read_to_end(settings, partitions):
        if record.key is not None and record.value is not None:
            times.setdefault(record.key.decode(), datetime.fromtimestamp(record.timestamp / 1000, timezone.utc))
    return times


async def latency(bootstrap: str, rate: int, seconds: float, logs: Path, concurrency: int) -> dict[str, float]:
    settings = await fresh(bootstrap)
    stack = await start_stack(settings, logs, concurrency)
    try:
        app = build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap)
        total = int(rate * seconds)
        start = time.perf_counter()
        ids = []
        for i in range(total):
            target = start + i / rate
            delay = target - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            ids.append(app._build_enqueue("noop", {"i": i}))
            await app.writer.append([ids[-1]])
        await count_completed(settings, total + 1, timeout_s=300)
        await app.close()
        times = await job_timings(settings)
        hints = await hint_times(settings)
        waits = [(times[e.job_id]["attempt_started"] - times[e.job_id]["enqueued"]).total_seconds() * 1000 for e in ids]
        # where the wait goes: enqueue -> the processor publishes the ready record (its Kafka
        # timestamp) -> the worker claims it -> the worker starts it
        to_hint = [(hints[e.job_id] - times[e.job_id]["enqueued"]).total_seconds() * 1000 for e in ids]
        # (a worker that starts a job at once writes no `claimed`: its attempt_started is the claim, 0 ms apart)
        claimed = {e.job_id: times[e.job_id].get("claimed", times[e.job_id]["attempt_started"]) for e in ids}
        to_claim = [(claimed[e.job_id] - hints[e.job_id]).total_seconds() * 1000 for e in ids]
        to_start = [(times[e.job_id]["attempt_started"] - claimed[e.job_id]).total_seconds() * 1000 for e in ids]
        return {"jobs": total, "rate": rate, "p50_ms": pct(waits, 50), "p99_ms": pct(waits, 99), "max_ms": max(waits),
                "hops": {"enqueue->ready record": to_hint, "ready record->claimed": to_claim,
                         "claimed->started": to_start}}
    finally:
        stack.stop()


async def timers(bootstrap: str, count: int, window_s: float, logs: Path, concurrency: int) -> dict[str, float]:
    settings = await fresh(bootstrap)
    stack = await start_stack(settings, logs, concurrency)
    try:
        app = build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap)
        base = datetime.now(timezone.utc) + timedelta(seconds=3)
        events = [app._build_enqueue("noop", {"i": i}, run_at=base + timedelta(seconds=window_s * i / count))
                  for i in range(count)]
        for chunk in range(0, count, 500):
            await app.writer.append(events[chunk:chunk + 500])
        await count_completed(settings, count + 1, timeout_s=window_s + 300)
        await app.close()
        times = await job_timings(settings)
        fire = [(times[e.job_id]["due"] - times[e.job_id]["run_at"]).total_seconds() * 1000 for e in events]
        start = [(times[e.job_id]["attempt_started"] - times[e.job_id]["run_at"]).total_seconds() * 1000 for e in events]
        return {"timers": count, "per_s": count / window_s, "fire_p50_ms": pct(fire, 50), "fire_p99_ms": pct(fire, 99),
                "start_p50_ms": pct(start, 50), "start_p99_ms": pct(start, 99)}
    finally:
        stack.stop()


async def raw_floor(bootstrap: str, jobs: int, per_job: int) -> dict[str, float]:
    """Plain aiokafka: produce jobs*per_job 200-byte records (acks=all, idempotent) and consume them."""
    topic = f"raw{uuid.uuid4().hex[:8]}"
    settings = Settings(kafka_bootstrap=bootstrap)
    admin = admin_client(settings)
    await admin.start()
    await admin.create_topics([NewTopic(topic, 6, 1)])
    await wait_for_topics(admin, [topic])
    await admin.close()
    total = jobs * per_job
    payload = b"x" * 200
    consumer = AIOKafkaConsumer(topic, bootstrap_servers=bootstrap, auto_offset_reset="earliest",
                                group_id=f"{topic}-g", enable_auto_commit=True)
    await consumer.start()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=1)
    await producer.start()

    async def consume() -> float:
        seen = 0
        while seen < total:
            batch = await consumer.getmany(timeout_ms=500, max_records=20_000)
            seen += sum(len(v) for v in batch.values())
        return time.perf_counter()

    reader = asyncio.create_task(consume())
    started = time.perf_counter()
    for i in range(0, total, 1000):
        futures = [await producer.send(topic, payload, key=str(j % 5000).encode()) for j in range(i, min(total, i + 1000))]
        await asyncio.gather(*futures)
    finished = await reader
    await producer.stop()
    await consumer.stop()
    return {"records": total, "per_job": per_job, "total_s": finished - started,
            "job_equivalents_per_s": jobs / (finished - started)}


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rate", type=int, default=500)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--timers", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=200, help="the worker's --concurrency")
    parser.add_argument("--repeat", type=int, default=1)
    parser.add_argument("--phases", default="throughput,latency,timers",
                        help="comma-separated subset of throughput,latency,timers")
    parser.add_argument("--records-per-job", type=int, default=12,
                        help="records the pipeline writes per no-op job (5 events, 4 state writes, 1 ready, 2 timer)")
    options = parser.parse_args()
    print(f"machine: {machine_info()}")
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    logs = Path(tempfile.mkdtemp(prefix="eventjobs-bench-"))
    if not bootstrap:
        broker = LocalKafka(home=logs / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
        bootstrap = broker.up().bootstrap
    print(f"broker: {bootstrap}; logs in {logs}")
    try:
        phases = set(options.phases.split(","))
        runs = []
        for _ in range(options.repeat if "throughput" in phases else 0):
            result = {
                "throughput": await throughput(bootstrap, options.jobs, logs, options.concurrency),
                "raw": await raw_floor(bootstrap, options.jobs, options.records_per_job),
            }
            runs.append(result)
            print(f"  run: {result['throughput']['jobs_per_s']:.0f} jobs/s; raw floor "
                  f"{result['raw']['job_equivalents_per_s']:.0f} job-equivalents/s", flush=True)
        if runs:
            tput = statistics.median(r["throughput"]["jobs_per_s"] for r in runs)
            raw = statistics.median(r["raw"]["job_equivalents_per_s"] for r in runs)
            print(f"throughput: {options.jobs} no-op jobs, median {tput:.0f} jobs/s over {options.repeat} run(s)")
            print(f"raw aiokafka floor ({options.records_per_job} records/job produced+consumed): median {raw:.0f} "
                  f"job-equivalents/s; eventjobs / raw = {tput / raw:.2f}")
        if "latency" in phases:
            lat = await latency(bootstrap, options.rate, options.seconds, logs, options.concurrency)
            print(f"latency at {lat['rate']} jobs/s ({lat['jobs']} jobs): enqueue->start p50 {lat['p50_ms']:.1f} ms, "
                  f"p99 {lat['p99_ms']:.1f} ms, max {lat['max_ms']:.1f} ms")
            for hop, values in lat["hops"].items():
                print(f"  {hop:<24} p50 {pct(values, 50):6.1f} ms, p99 {pct(values, 99):6.1f} ms")
        if "timers" in phases:
            tim = await timers(bootstrap, options.timers, 10.0, logs, options.concurrency)
            print(f"timers: {tim['timers']} scheduled jobs over 10 s ({tim['per_s']:.0f}/s): fire lateness p50 "
                  f"{tim['fire_p50_ms']:.1f} ms, p99 {tim['fire_p99_ms']:.1f} ms; run_at->start p50 "
                  f"{tim['start_p50_ms']:.1f} ms, p99 {tim['start_p99_ms']:.1f} ms")
    finally:
        if broker is not None:
            broker.down()


if __name__ == "__main__":
    asyncio.run(main())
