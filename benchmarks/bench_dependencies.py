"""Benchmark: what the cycle check costs a workflow, in events between jobs and in fold time.

Run:  .venv/bin/python benchmarks/bench_dependencies.py            (5 repetitions)
      .venv/bin/python benchmarks/bench_dependencies.py --repeat 3

What is measured: a few workflow shapes (a chain, a fan-in, a layered graph, a ring) are enqueued
in one go, in two orders: dependencies first, as ``App.enqueue`` makes them (every dependency
exists before its dependent), and dependents first, as a producer that skips
``App.enqueue``'s dependency check may write them (a ring has no first job: "dependencies first" there
means each job after the one it waits for but one, "dependents first" each before it but one). Then every event the lanes derive for another job
(requests, answers, cycle probes) is delivered in the order written, through the pure fold
(``apply``), until none is left; the jobs never run, so every probe meets waiting jobs. Reported:
how many requests and probes were delivered (these are exact: a function of the shape and the
order) and the median wall time of that delivery, on one core.
"""

from __future__ import annotations

import argparse
import collections
import os
import platform
import statistics
import sys
import time
from datetime import timedelta

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from eventjobs.core import commands  # noqa: E402
from eventjobs.core.events import LINKED_TYPES  # noqa: E402
from eventjobs.core.fold import apply  # noqa: E402
from eventjobs.testing.simulation import EPOCH  # noqa: E402
from eventjobs.core.state import JobState  # noqa: E402


def machine_info() -> list[str]:
    cpu = "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:
        pass
    return [f"{cpu}, {os.cpu_count()} cores", f"Python {platform.python_version()} on {platform.platform()}"]


def shapes() -> dict[str, dict[str, list[str]]]:
    """name -> {job id: what it depends on}, jobs listed dependencies first."""
    chain = {f"j{k}": [f"j{k - 1}"] if k else [] for k in range(100)}
    fan_in = {**{f"c{k}": [] for k in range(100)}, "combine": [f"c{k}" for k in range(100)]}
    layers = [[f"l{i}_{k}" for k in range(4)] for i in range(10)]
    layered = {job: layers[i - 1] if i else [] for i, layer in enumerate(layers) for job in layer}
    ring = {f"r{k}": [f"r{(k + 1) % 32}"] for k in range(32)}  # each listed before the job it waits for (but the last)
    return {"chain of 100": chain, "fan-in of 100": fan_in, "10 layers of 4, each job on the 4 before": layered,
            "ring of 32 (a cycle)": ring}


def deliver(graph: dict[str, list[str]], order: list[str]) -> tuple[collections.Counter[str], float]:
    """Enqueue every job (one millisecond apart, in ``order``), then deliver what the lanes derive
    for other jobs until nothing is left; returns the types delivered and the seconds that took."""
    states: dict[str, JobState] = {}
    queue: collections.deque = collections.deque()  # type: ignore[type-arg]

    def fold(event: object) -> None:
        decision = apply(states.get(event.job_id), event)  # type: ignore[attr-defined,arg-type]
        if decision.state is not None:
            states[event.job_id] = decision.state  # type: ignore[attr-defined]
        queue.extend(d for d in decision.derived if d.type in LINKED_TYPES)

    for n, job_id in enumerate(order):
        fold(commands.enqueue("step", {}, now=EPOCH + timedelta(milliseconds=n), actor="producer:bench",
                              job_id=job_id, event_id=f"e-{job_id}", depends_on=graph[job_id] or None))
    delivered: collections.Counter[str] = collections.Counter()
    start = time.perf_counter()
    while queue:
        event = queue.popleft()
        delivered[event.type] += 1
        fold(event)
    return delivered, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    print("eventjobs core benchmark: the cost of dependency cycle probes")
    for line in machine_info():
        print("  " + line)
    print(f"  {'shape':<42} {'order':<20} {'jobs':>5} {'edges':>6} {'requests':>9} {'probes':>7} {'deliver (median)':>17}")
    for name, graph in shapes().items():
        labels = ("dependents first", "dependencies first") if "ring" in name else ("dependencies first", "dependents first")
        for label, order in ((labels[0], list(graph)), (labels[1], list(reversed(graph)))):
            runs = [deliver(graph, order) for _ in range(options.repeat)]
            counts = runs[0][0]
            median_ms = statistics.median(seconds for _, seconds in runs) * 1000
            edges = sum(len(d) for d in graph.values())
            print(f"  {name:<42} {label:<20} {len(graph):>5} {edges:>6} {counts['dependency_requested']:>9} "
                  f"{counts['dependency_probe']:>7} {median_ms:>14.1f} ms")


if __name__ == "__main__":
    main()
