"""The schedule service with many schedules: load time, event-loop stalls, tick lateness.

    .venv/bin/python benchmarks/bench_schedules.py [--schedules 100000] [--seconds 60] [--repeat 3]
                                                  [--with-processor] [--tree PATH]

Writes N schedule definitions to a fresh namespace's schedules topic (9 in 10 daily crons in four
time zones, 1 in 10 `every` of 10 to 20 minutes, and `--minutely` crons of every minute, so that
some ticks fall in the run), then runs the schedule service in a child process against the real
broker, `--repeat` times. A probe task on the same event loop sleeps 5 ms over and over and
records by how much each sleep overshot (wall clock) and how much CPU time the loop's thread used
meanwhile: the longest overshoot is the longest stall the loop had. Phases: **load** from the
start until every partition is read and every next tick computed, plus one second; **steady**
the `--seconds` after. Tick lateness is measured when the service writes a tick's `fired` record
(after the job's enqueue was acknowledged), from the tick's time.

The child tunes the garbage collector as `eventjobs processor` does (`tune_for_service`).
`--with-processor` runs the lifecycle processor and the timer service in the same loop, as
`eventjobs processor` does. `--tree PATH` runs the child with the `eventjobs` package found at
PATH (e.g. an export of an older commit: `git archive <commit> eventjobs topics | tar -x -C PATH`),
to compare. The broker is KAFKA_BOOTSTRAP_SERVERS, or a local one started for the run.
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
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TREE = os.environ.get("BENCH_SCHEDULES_TREE")  # the child's eventjobs, for comparisons
if TREE:
    sys.path[:0] = [TREE]
    sys.path.append(str(ROOT))  # for `benchmarks` only
else:
    sys.path.insert(0, str(ROOT))

from eventjobs.settings import Settings  # noqa: E402

PROBE_S = 0.005
ZONES = ("UTC", "Europe/Paris", "America/New_York", "Australia/Sydney")


def quantile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))] if ordered else float("nan")


# -- the parent: fill the topic, run the children, print medians ---------------------------------


async def fill(settings: Settings, count: int, minutely: int) -> float:
    from eventjobs.core.options import JobOptions
    from eventjobs.core.partitioning import job_partition
    from eventjobs.core.schedules import define_schedule, encode_schedule_event, record_key, schedule_created_event
    from eventjobs.kafka.admin import apply_topics, ensure_single_topics
    from eventjobs.kafka.clients import partitions_of, producer

    await apply_topics(settings)
    await ensure_single_topics(settings, ["schedules"])
    topic = f"{settings.namespace}.schedules"
    partitions = len(await partitions_of(settings, topic))
    now = datetime.now(timezone.utc)
    templates: dict[tuple[object, ...], object] = {}

    def rule(i: int) -> tuple[object, ...]:
        if i < minutely:
            return ("cron", "* * * * *", "UTC")
        if i % 10 == 0:
            return ("every", f"{600 + (i // 10) % 600}s", "UTC")
        return ("cron", f"{i % 60} {i % 24} * * *", ZONES[i % 4])

    sender = producer(settings, linger_ms=20)
    await sender.start()
    started = time.perf_counter()
    try:
        for chunk in range(0, count, 5000):
            sends = []
            for i in range(chunk, min(count, chunk + 5000)):
                key = rule(i)
                template = templates.get(key)
                if template is None:
                    kind, text, zone = key
                    template = templates[key] = define_schedule(
                        "report", {"n": 1}, JobOptions(), now=now, timezone=zone,  # type: ignore[arg-type]
                        **({"every": text} if kind == "every" else {"cron": text}))
                definition = template.model_copy(update={"schedule_id": f"bench-{i}"})  # type: ignore[attr-defined]
                event = schedule_created_event(definition, None, now=now, actor="bench")
                sends.append(await sender.send(topic, encode_schedule_event(event), key=record_key(event).encode(),
                                               partition=job_partition(definition.schedule_id, partitions)))
            await asyncio.gather(*sends)
    finally:
        await sender.stop()
    return time.perf_counter() - started


def run_child(bootstrap: str, namespace: str, options: argparse.Namespace) -> dict[str, float]:
    env = {**os.environ, **({"BENCH_SCHEDULES_TREE": str(Path(options.tree).resolve())} if options.tree else {})}
    args = [sys.executable, __file__, "--child", bootstrap, namespace, "--seconds", str(options.seconds),
            "--schedules", str(options.schedules)] + (["--with-processor"] if options.with_processor else [])
    out = subprocess.run(args, capture_output=True, text=True, cwd=ROOT, env=env, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"the child failed:\n{out.stdout[-2000:]}\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


ROWS = [
    ("load_s", "load: start until every partition is read and every next tick computed", "{:.1f} s"),
    ("load_max_ms", "load: longest loop stall (probe overshoot, wall)", "{:.0f} ms"),
    ("load_max_cpu_ms", "load: most CPU the loop used in one probe interval", "{:.0f} ms"),
    ("load_p99_ms", "load: p99 probe overshoot", "{:.1f} ms"),
    ("steady_max_ms", "steady: longest loop stall (wall)", "{:.0f} ms"),
    ("steady_max_cpu_ms", "steady: most CPU the loop used in one probe interval", "{:.0f} ms"),
    ("steady_p99_ms", "steady: p99 probe overshoot", "{:.1f} ms"),
    ("ticks", "steady: ticks fired", "{:.0f}"),
    ("late_p50_ms", "steady: tick lateness p50 (tick time to fired record)", "{:.0f} ms"),
    ("late_p99_ms", "steady: tick lateness p99", "{:.0f} ms"),
    ("late_max_ms", "steady: tick lateness max", "{:.0f} ms"),
]


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schedules", type=int, default=100_000)
    parser.add_argument("--minutely", type=int, default=100, help="schedules of '* * * * *' among them")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the steady phase")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--with-processor", action="store_true", help="the lifecycle processor in the same loop")
    parser.add_argument("--tree", help="run the service of the eventjobs package under this directory")
    parser.add_argument("--child", nargs=2, metavar=("BOOTSTRAP", "NAMESPACE"), help=argparse.SUPPRESS)
    options = parser.parse_args()
    if options.child:
        await child(*options.child, seconds=options.seconds, with_processor=options.with_processor)
        return
    from benchmarks.bench_throughput import machine_info
    from eventjobs.dev.broker import LocalKafka, free_port

    print(f"machine: {machine_info()}; load average {os.getloadavg()[0]:.1f}")
    print(f"service code: {options.tree or ROOT}; {'with' if options.with_processor else 'without'} the lifecycle "
          f"processor in the loop")
    bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
    broker = None
    if not bootstrap:
        broker = LocalKafka(home=Path(tempfile.mkdtemp()) / "kafka", port=free_port(), controller_port=free_port(),
                            heap="1g")
        bootstrap = broker.up().bootstrap
    try:
        settings = Settings(kafka_bootstrap=bootstrap, namespace=f"sbench{uuid.uuid4().hex[:8]}")
        fill_s = await fill(settings, options.schedules, options.minutely)
        print(f"wrote {options.schedules:,} schedule definitions in {fill_s:.1f} s")
        runs = []
        for n in range(options.repeat):
            runs.append(run_child(bootstrap, settings.namespace, options))
            print(f"run {n + 1}: " + ", ".join(f"{key} {runs[-1][key]:.1f}" for key, _, _ in ROWS), flush=True)
        print(f"medians of {len(runs)} runs, {options.schedules:,} schedules:")
        for key, label, shape in ROWS:
            print(f"  {label}: {shape.format(statistics.median(run[key] for run in runs))}")
    finally:
        if broker is not None:
            broker.down()


# -- the child: the service, a loop-lag probe, the lateness of each fired tick --------------------


async def child(bootstrap: str, namespace: str, *, seconds: float, with_processor: bool) -> None:
    from eventjobs.runtime.gc_pause import tune_for_service
    from eventjobs.runtime.processor import run_processor
    from eventjobs.runtime.schedules import ScheduleService

    tune_for_service()  # as `eventjobs processor` does
    settings = Settings(kafka_bootstrap=bootstrap, namespace=namespace)
    service = ScheduleService(settings)
    lateness: list[float] = []
    record_fired = service.writer.append_schedule_records

    async def recording(events: list[object]) -> None:
        await record_fired(events)
        now = datetime.now(timezone.utc)
        lateness.extend((now - event.tick).total_seconds() * 1000 for event in events)  # type: ignore[attr-defined]

    service.writer.append_schedule_records = recording  # type: ignore[method-assign]
    samples: list[tuple[float, float]] = []  # (overshoot ms, loop CPU ms) of each probe sleep
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            wall, cpu = time.perf_counter(), time.thread_time()
            await asyncio.sleep(PROBE_S)
            samples.append(((time.perf_counter() - wall - PROBE_S) * 1000, (time.thread_time() - cpu) * 1000))

    probing = asyncio.create_task(probe())
    started = time.perf_counter()
    running = asyncio.create_task(run_processor(settings, stop, with_services={"schedule service": service.run(stop)})
                                  if with_processor else service.run(stop))
    while not (len(service.states) == 3 and not service.loading and not getattr(service, "_unsettled", None)):
        if running.done():
            running.result()
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # the first passes after the load (which computed every next tick before this change)
    load_s = time.perf_counter() - started - 1.0
    load, fired_before = len(samples), len(lateness)
    await asyncio.sleep(seconds)
    stop.set()
    await running
    await probing
    steady, late = samples[load:], lateness[fired_before:]
    print(json.dumps({
        "load_s": load_s,
        "load_max_ms": max(s for s, _ in samples[:load]), "load_max_cpu_ms": max(c for _, c in samples[:load]),
        "load_p99_ms": quantile([s for s, _ in samples[:load]], 0.99),
        "steady_max_ms": max(s for s, _ in steady), "steady_max_cpu_ms": max(c for _, c in steady),
        "steady_p99_ms": quantile([s for s, _ in steady], 0.99),
        "ticks": len(late), "late_p50_ms": quantile(late, 0.5), "late_p99_ms": quantile(late, 0.99),
        "late_max_ms": max(late, default=float("nan")),
    }), flush=True)


if __name__ == "__main__":
    asyncio.run(main())
