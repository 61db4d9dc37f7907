"""CPU per job: the throughput phase of bench_throughput.py, timed by the services' own CPU.

Wall-clock throughput on a shared machine moves with whatever else runs; the CPU time the
processor and the worker spend per job (utime + stime from /proc, between the first enqueue and
the last completion) moves far less, so it is the figure to compare two versions by, run
alternately on one warm broker (docs/benchmarks.md, "Concurrency limits: cost to jobs without a
limit"). Uses bench_throughput's own stack (one processor and one worker process, no-op jobs).

    KAFKA_BOOTSTRAP_SERVERS=127.0.0.1:9092 python benchmarks/bench_cpu_per_job.py --jobs 20000
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import eventjobs  # after the path is set: the checkout this runs in
from benchmarks import bench_throughput as throughput

TICKS_PER_S = os.sysconf("SC_CLK_TCK")


def cpu_s(pid: int) -> float:
    """utime + stime of process `pid`, in seconds."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICKS_PER_S


async def run(jobs: int) -> None:
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    logs = Path(tempfile.mkdtemp(prefix="eventjobs-bench-"))
    settings = await throughput.fresh(bootstrap)
    stack = await throughput.start_stack(settings, logs, 200)
    try:
        app = throughput.build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap)
        events = [app._build_enqueue("noop", {"i": i}) for i in range(jobs)]
        watcher = asyncio.create_task(throughput.count_completed(settings, jobs + 1, timeout_s=600))
        pids = [process.pid for process in stack.procs]  # the processor, then the worker
        before, enqueuer_before = [cpu_s(pid) for pid in pids], time.process_time()
        started = time.perf_counter()
        for chunk in range(0, jobs, 1000):
            await app.writer.append(events[chunk:chunk + 1000])
        finished = await watcher
        after, enqueuer_after = [cpu_s(pid) for pid in pids], time.process_time()
        await app.close()
        processor_s, worker_s = after[0] - before[0], after[1] - before[1]
        print(f"code: {eventjobs.__file__}; load average {os.getloadavg()[0]:.1f}")
        print(f"jobs/s {jobs / (finished - started):.0f}; CPU per job: processor {processor_s / jobs * 1e6:.0f} us, "
              f"worker {worker_s / jobs * 1e6:.0f} us, both {(processor_s + worker_s) / jobs * 1e6:.0f} us, "
              f"enqueuer {(enqueuer_after - enqueuer_before) / jobs * 1e6:.0f} us; {finished - started:.2f} s")
    finally:
        stack.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--jobs", type=int, default=20_000)
    asyncio.run(run(parser.parse_args().jobs))


if __name__ == "__main__":
    main()
