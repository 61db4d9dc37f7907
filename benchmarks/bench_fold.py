"""Benchmark: decode + apply over a generated log of job events (the processor's pure hot path).

Run:  .venv/bin/python benchmarks/bench_fold.py            (1,000,000 events, 5 repetitions)
      .venv/bin/python benchmarks/bench_fold.py --events 200000 --repeat 3

What is measured: for every encoded event of the log, ``decode(bytes)`` then
``apply(states.get(job_id), event)`` and storing the new state, on one core, starting from an
empty state table each repetition. The log is produced by ``eventjobs.testing.simulation`` (many
jobs interleaved: retries, lease losses, cancellations, dead letters, operator actions, and the
processor's derived events, which apply recognises as already reflected). Generation and
encoding are not timed.

Also reported, to show what limits the number: decode alone, apply alone (on decoded events,
all kept alive, so the collector has more to scan), and the same loop with the cyclic garbage
collector's thresholds raised and with it disabled: every job state is a few container objects
that stay alive, so CPython's full collections, which scan all of them, get more expensive as
the state table grows.
"""

from __future__ import annotations

import argparse
import collections
import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import orjson  # noqa: E402
import pydantic  # noqa: E402
import pydantic_core  # noqa: E402

from eventjobs.core.codec import decode, encode  # noqa: E402
from eventjobs.core.fold import apply  # noqa: E402
from eventjobs.testing.simulation import generate_log  # noqa: E402
from eventjobs.core.state import JobState  # noqa: E402


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_info() -> list[str]:
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else []
    return [
        f"CPU: {cpu_model()}",
        f"cores: {os.cpu_count()} logical (benchmark pinned to CPU {affinity[0] if len(affinity) == 1 else affinity})",
        f"Python: {platform.python_implementation()} {platform.python_version()} ({platform.system()} {platform.release()})",
        f"pydantic {pydantic.VERSION}, pydantic-core {pydantic_core.__version__}, orjson {orjson.__version__}",
    ]


def decode_apply(data: list[bytes]) -> dict[str, JobState]:
    states: dict[str, JobState] = {}
    get = states.get
    for raw in data:
        event = decode(raw)
        decision = apply(get(event.job_id), event)
        if decision.state is not None:
            states[event.job_id] = decision.state
    return states


def decode_only(data: list[bytes]) -> None:
    for raw in data:
        decode(raw)


def apply_only(events: list) -> dict[str, JobState]:  # type: ignore[type-arg]
    states: dict[str, JobState] = {}
    get = states.get
    for event in events:
        decision = apply(get(event.job_id), event)
        if decision.state is not None:
            states[event.job_id] = decision.state
    return states


def load_average() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "n/a"


def measure(label: str, fn: Callable[[], object], n: int, repeat: int) -> tuple[float, float]:
    """Run ``fn`` ``repeat`` times; return the median rates by wall clock and by process CPU time."""
    wall_rates, cpu_rates = [], []
    for rep in range(repeat):
        gc.collect()
        cpu0, wall0 = time.process_time(), time.perf_counter()
        result = fn()
        wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
        del result
        wall_rates.append(n / wall)
        cpu_rates.append(n / cpu)
        print(
            f"  {label:<26} rep {rep + 1}: {wall:6.2f} s wall {n / wall:>9,.0f} events/s | "
            f"{cpu:6.2f} s cpu {n / cpu:>9,.0f} events/s",
            flush=True,
        )
    wall_median, cpu_median = statistics.median(wall_rates), statistics.median(cpu_rates)
    print(
        f"  {label:<26} median:  {wall_median:,.0f} events/s wall ({1e6 / wall_median:.2f} us/event), "
        f"{cpu_median:,.0f} events/s cpu",
        flush=True,
    )
    return wall_median, cpu_median


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--concurrency", type=int, default=1000, help="jobs in flight while generating the log")
    parser.add_argument("--no-pin", action="store_true", help="do not pin the process to one CPU")
    parser.add_argument("--quick", action="store_true", help="only the headline decode+apply measurement")
    args = parser.parse_args()

    if not args.no_pin and hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {max(os.sched_getaffinity(0))})
    print("eventjobs core benchmark: decode + apply")
    for line in machine_info():
        print("  " + line)
    print(f"  load average at start: {load_average()} (other processes on the machine skew wall-clock numbers)")

    start = time.perf_counter()
    log = generate_log(args.events, seed=args.seed, concurrency=args.concurrency)
    data = [encode(event) for event in log]
    kinds = collections.Counter(event.type for event in log)
    jobs = len({event.job_id for event in log})
    del log
    gc.collect()
    size = sum(map(len, data))
    print(
        f"log: {len(data):,} events of {jobs:,} jobs, {size / len(data):.0f} bytes/event on average "
        f"(generated and encoded in {time.perf_counter() - start:.1f} s, not timed)"
    )
    print("  by type: " + ", ".join(f"{k} {v / len(data):.1%}" for k, v in kinds.most_common()))

    print("\ndecode + apply, default gc settings (headline):")
    headline, headline_cpu = measure("decode+apply", lambda: decode_apply(data), len(data), args.repeat)
    if not args.quick:
        print("\nwhere the time goes:")
        measure("decode only", lambda: decode_only(data), len(data), args.repeat)
        events = [decode(raw) for raw in data]
        measure("apply only (decoded)", lambda: apply_only(events), len(data), args.repeat)
        del events
        gc.collect()
        thresholds = gc.get_threshold()
        gc.set_threshold(100_000, 50, 1000)
        print(f"\ndecode + apply, gc thresholds raised from {thresholds} to {gc.get_threshold()}:")
        measure("decode+apply, gc tuned", lambda: decode_apply(data), len(data), args.repeat)
        gc.set_threshold(*thresholds)
        print("\ndecode + apply, cyclic gc disabled (upper bound: what the collector costs):")
        gc.disable()
        measure("decode+apply, gc off", lambda: decode_apply(data), len(data), args.repeat)
        gc.enable()
    print(f"\nload average at end: {load_average()}")
    print(
        f"RESULT: {headline:,.0f} events/s decode+apply (median of {args.repeat}, single core, default gc, wall clock; "
        f"{headline_cpu:,.0f} events/s by process CPU time)"
    )


if __name__ == "__main__":
    main()
