"""Memory and load time of the timer service with many pending timers.

    .venv/bin/python benchmarks/bench_timers.py [--timers 1000000] [--runs 3] [--index-only]

First the index alone: in a fresh child process per run, N timers (keyed `job_id:kind` as the
processor writes them, due over N ms an hour ahead) are set into the packed `TimerIndex` and
into the heap-and-dict index it replaced (`timer_index_heap.py`), and the child reports the
growth of its resident memory (/proc/self/statm) and the load time; medians over the runs, side
by side. Then (unless --index-only) the service: N timer records are written to a fresh
namespace's compacted timer topic, the timer service is started in a child process per run (over
each of the two indexes, interleaved), and once it has rebuilt its index from the topic the
child's resident memory (VmRSS) and load time are reported, medians over the runs. The broker is KAFKA_BOOTSTRAP_SERVERS, or a local one
started for the run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
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
                record = TimerRecord(job_id=new_job_id(), kind=("run_at", "retry", "ttl")[i % 3], attempt=i % 5,
                                     due_at=due + timedelta(milliseconds=i))
                futures.append(await sender.send(topic, record.encode(), key=record.key, partition=i % 6))
            await asyncio.gather(*futures)
    finally:
        await sender.stop()
    return time.perf_counter() - started


async def child(bootstrap: str, namespace: str, which: str) -> None:
    from eventjobs.runtime import timers
    from eventjobs.runtime.timers import TimerService

    if which == "heap":  # the same service over the index it had before
        from benchmarks.timer_index_heap import HeapTimerIndex

        timers.TimerIndex = HeapTimerIndex  # type: ignore[misc, assignment]

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


INDEXES = {"heap": "heap and dict (before)", "packed": "packed (now)"}


def index_child(which: str, count: int) -> None:
    """Set `count` timers into one index and print the growth of this process's RSS."""
    if which == "heap":
        from benchmarks.timer_index_heap import HeapTimerIndex as Index
    else:
        from eventjobs.core.timer_index import TimerIndex as Index
    page = os.sysconf("SC_PAGE_SIZE")

    def rss() -> int:
        return int(Path("/proc/self/statm").read_text().split()[1]) * page

    kinds = ("lease", "ttl", "run_at")
    due = int(time.time() * 1000) + 3_600_000
    index = Index()
    before = rss()
    started = time.perf_counter()
    for i in range(count):  # keys as the processor writes them: job id, kind (a retry's attempt)
        key = f"{new_job_id()}:retry:{i % 5}" if i % 4 == 3 else f"{new_job_id()}:{kinds[i % 4]}"
        index.set(key.encode(), due + i, i % 5)
    load_s = time.perf_counter() - started
    first = index.next_due_ms()  # the packed index sorts its earliest bucket here
    print(json.dumps({"pending": len(index), "rss_delta_mb": (rss() - before) / 2**20, "load_s": load_s,
                      "first_due_ok": first == due}), flush=True)


def compare_indexes(count: int, runs: int) -> None:
    results: dict[str, list[dict[str, float]]] = {which: [] for which in INDEXES}
    for _ in range(runs):
        for which in INDEXES:  # interleaved, so that both see the same machine
            out = subprocess.run([sys.executable, __file__, "--index-child", which, str(count)],
                                 capture_output=True, text=True, cwd=ROOT, timeout=1800, check=True)
            results[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"index alone, {count:,} pending timers, median of {runs} fresh processes:")
    for which, label in INDEXES.items():
        rss = statistics.median(r["rss_delta_mb"] for r in results[which])
        load = statistics.median(r["load_s"] for r in results[which])
        runs_text = " / ".join(f"{r['rss_delta_mb']:.0f}" for r in results[which])
        print(f"  {label:24} RSS +{rss:6.1f} MB ({rss * 2**20 / count:.0f} B per timer; runs {runs_text} MB), "
              f"set all in {load:.1f} s ({load / count * 1e6:.1f} us per timer)")


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timers", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes per measurement (medians)")
    parser.add_argument("--index-only", action="store_true", help="only the index alone, no broker")
    parser.add_argument("--child", nargs=3, metavar=("BOOTSTRAP", "NAMESPACE", "INDEX"))
    parser.add_argument("--index-child", nargs=2, metavar=("INDEX", "COUNT"))
    options = parser.parse_args()
    if options.child:
        await child(*options.child)
        return
    if options.index_child:
        index_child(options.index_child[0], int(options.index_child[1]))
        return
    print(f"machine: {machine_info()}")
    compare_indexes(options.timers, options.runs)
    if options.index_only:
        return
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
        results: dict[str, list[dict[str, float]]] = {which: [] for which in INDEXES}
        for _ in range(options.runs):
            for which in INDEXES:  # interleaved, so that both see the same machine
                out = subprocess.run([sys.executable, __file__, "--child", bootstrap, settings.namespace, which],
                                     capture_output=True, text=True, cwd=ROOT, timeout=1800, check=True)
                results[which].append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"timer service, {options.timers:,} pending timers rebuilt from the topic, median of {options.runs} "
              "fresh processes:")
        for which, label in INDEXES.items():
            runs = results[which]
            rss = statistics.median(r["rss_mb"] for r in runs)
            baseline = statistics.median(r["baseline_mb"] for r in runs)
            load = statistics.median(r["load_s"] for r in runs)
            runs_text = " / ".join(f"{r['rss_mb']:.0f}" for r in runs)
            print(f"  {label:24} RSS {rss:4.0f} MB (runs {runs_text} MB; {baseline:.0f} MB before loading), "
                  f"loaded in {load:.1f} s ({runs[0]['pending']:,} pending)")
    finally:
        if broker is not None:
            broker.down()


if __name__ == "__main__":
    asyncio.run(main())
