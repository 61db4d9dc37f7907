"""What a re-published ready record's guarded start costs: claim -> start, against an ordinary start.

    .venv/bin/python benchmarks/bench_guarded.py [--jobs 200] [--repeat 3] [--concurrency 200]

One processor (`--republish-after 1s`) and one worker process (`--concurrency`) of a fresh
namespace, on KAFKA_BOOTSTRAP_SERVERS or a local broker started for the run. Per repeat:

1. guarded: `jobs` no-op jobs enqueued while the worker is stopped; a member of the workers'
   group reads their ready records and commits past them (as a lost record looks); the processor
   finds them read and publishes each again, marked, about a second later; then the worker
   starts and runs the copies, each only after its claim is seen accepted on the changelog
   (with `--concurrency 200` all copies are claimed in one burst; with 1, one after another);
2. plain: `jobs` no-op jobs at 50/s with the worker running (ordinary ready records).

For each job: claimed -> attempt_started (the worker's own event times), p50 / p99 / max. An
ordinary start writes no `claimed` (its `attempt_started` is the claim), so its hop is 0 ms: the
guarded one is what the verdict adds.
The guarded one holds the round trip the verdict takes: the claim to the processor, the lane's
transaction (commit interval 100 ms), the changelog to the worker.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eventjobs.dev.broker import LocalKafka, free_port  # noqa: E402
from eventjobs.kafka.admin import apply_topics  # noqa: E402
from eventjobs.kafka.clients import consumer  # noqa: E402
from eventjobs.kafka.topics import PRIORITIES, TopicNames, load_specs  # noqa: E402
from eventjobs.settings import Settings  # noqa: E402
from benchmarks.bench_app import build_app  # noqa: E402
from benchmarks.bench_throughput import job_timings, machine_info, pct  # noqa: E402


def service(settings: Settings, logs: Path, name: str, *args: str) -> subprocess.Popen[bytes]:
    env = {**os.environ, "KAFKA_BOOTSTRAP_SERVERS": settings.kafka_bootstrap,
           "EVENTJOBS_NAMESPACE": settings.namespace, "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "eventjobs.cli", *args], env=env, cwd=ROOT,
                            stdout=open(logs / f"{settings.namespace}-{name}.log", "wb"), stderr=subprocess.STDOUT)


def stop(process: subprocess.Popen[bytes]) -> None:
    process.terminate()
    try:
        process.wait(timeout=60)
    except subprocess.TimeoutExpired:
        process.kill()


async def read_past(settings: Settings, count: int) -> None:
    """A member of the workers' group reads `count` ready records and commits past them."""
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    thief = consumer(settings, group_id=names.worker_group("default"), isolation_level="read_uncommitted")
    await thief.start()
    try:
        thief.subscribe([names.ready("default", priority) for priority in PRIORITIES])
        seen = 0
        while seen < count:
            batch = await thief.getmany(timeout_ms=1000)
            seen += sum(len(records) for records in batch.values())
        await thief.commit()
    finally:
        await thief.stop()


async def republished(settings: Settings, job_ids: list[str], timeout_s: float = 120) -> None:
    app = build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap)
    deadline = asyncio.get_running_loop().time() + timeout_s
    try:
        for job_id in job_ids:
            while True:
                state = await app.state(job_id)
                if state is not None and state.ready_republishes >= 1:
                    break
                if asyncio.get_running_loop().time() > deadline:
                    raise TimeoutError(f"job {job_id} was not published again within {timeout_s:g} s")
                await asyncio.sleep(0.1)
    finally:
        await app.close()


async def claim_to_start(settings: Settings, job_ids: list[str]) -> list[float]:
    times = await job_timings(settings)
    # an ordinary start is also its claim (no `claimed` event): 0 ms by construction
    return [(times[j]["attempt_started"] - times[j].get("claimed", times[j]["attempt_started"])).total_seconds() * 1000
            for j in job_ids]


async def one_run(bootstrap: str, jobs: int, logs: Path, concurrency: int) -> tuple[list[float], list[float]]:
    settings = Settings(kafka_bootstrap=bootstrap, namespace=f"bench{uuid.uuid4().hex[:8]}")
    await apply_topics(settings, ["default"])
    processor = service(settings, logs, "processor", "processor", "--republish-after", "1s")
    worker: subprocess.Popen[bytes] | None = None
    app = build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap)
    try:
        guarded = [await app.enqueue("noop", {"i": i}) for i in range(jobs)]
        await read_past(settings, jobs)
        await republished(settings, guarded)
        worker = service(settings, logs, "worker", "worker", "--app", "benchmarks.bench_app:app",
                         "--concurrency", str(concurrency))
        for job_id in guarded:
            await app.wait(job_id, timeout=300)
        plain = []
        for i in range(jobs):
            plain.append(await app.enqueue("noop", {"i": jobs + i}))
            await asyncio.sleep(0.02)
        for job_id in plain:
            await app.wait(job_id, timeout=300)
        return await claim_to_start(settings, guarded), await claim_to_start(settings, plain)
    finally:
        await app.close()
        if worker is not None:
            stop(worker)
        stop(processor)


def summary(values: list[float]) -> str:
    return f"p50 {pct(values, 50):6.1f} ms, p99 {pct(values, 99):6.1f} ms, max {max(values):6.1f} ms"


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--jobs", type=int, default=200)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=200, help="the worker's --concurrency")
    options = parser.parse_args()
    print(f"machine: {machine_info()}")
    logs = Path(tempfile.mkdtemp(prefix="eventjobs-bench-"))
    broker = None
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = LocalKafka(home=logs / "kafka", port=free_port(), controller_port=free_port(), heap="1g")
        bootstrap = broker.up().bootstrap
    print(f"broker: {bootstrap}; logs in {logs}")
    try:
        medians: dict[str, list[float]] = {"guarded": [], "plain": []}
        for run in range(options.repeat):
            guarded, plain = await one_run(bootstrap, options.jobs, logs, options.concurrency)
            print(f"run {run + 1}: claimed->started, re-published (guarded) {summary(guarded)}; "
                  f"ordinary {summary(plain)}", flush=True)
            medians["guarded"].append(pct(guarded, 50))
            medians["plain"].append(pct(plain, 50))
        print(f"median of the runs' p50: guarded {statistics.median(medians['guarded']):.1f} ms, "
              f"ordinary {statistics.median(medians['plain']):.1f} ms ({options.jobs} jobs each, {options.repeat} runs, "
              f"worker concurrency {options.concurrency})")
    finally:
        if broker is not None:
            broker.down()


if __name__ == "__main__":
    asyncio.run(main())
