"""What the hook points cost one attempt, in-process (no Kafka): the worker's calls per attempt.

    .venv/bin/python benchmarks/bench_hooks.py [--attempts 200000] [--repeat 5]

Per attempt, the median of `--repeat` runs of:
  * no hooks: the chain is empty, the worker builds no `AttemptInfo` (its `_watch_attempts` check);
  * metrics inline: what the worker did under `if self.metrics` before the metrics became a hook
    (started, wait and duration observed);
  * MetricsHook: the same through the chain (an `AttemptInfo`, `before_attempt`, an
    `AttemptOutcome`, `after_attempt`);
  * MetricsHook + a no-op async hook, + a raising hook (logged once, then counted).
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from eventjobs.core.commands import attempt_timed_out_event  # noqa: E402
from eventjobs.hooks import AttemptInfo, AttemptOutcome, Hook, Hooks, WorkerInfo  # noqa: E402
from eventjobs.hooks.prometheus import MetricsHook  # noqa: E402
from eventjobs.metrics import Metrics, seconds_between  # noqa: E402
from benchmarks.bench_throughput import machine_info  # noqa: E402

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
WORKER = WorkerInfo(worker_id="w", queues=("default",), capabilities=(), concurrency=200, threads=32, busy=lambda: 0)
END = attempt_timed_out_event("job", 0, timeout_s=1.0, now=NOW, actor="worker:w", claim_id="c")


class NoOp(Hook):
    async def before_attempt(self, attempt: AttemptInfo) -> None:
        pass

    async def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> None:
        pass


class Raising(Hook):
    def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> None:
        raise RuntimeError("broken")


async def through_chain(hooks: Hooks, attempts: int) -> float:
    watch = hooks.wants("before_attempt") or hooks.wants("after_attempt")
    begun = time.perf_counter()
    for _ in range(attempts):
        if watch:
            info = AttemptInfo(job_id="job", name="noop", queue="default", priority="normal", attempt=0,
                               max_attempts=3, worker_id="w", claim_id="c", enqueued_at=NOW, ready_at=NOW,
                               started_at=datetime.now(timezone.utc))
            await hooks.before_attempt(info)
            await hooks.after_attempt(info, AttemptOutcome(END, 0.001, None))
    return (time.perf_counter() - begun) / attempts


async def inline(metrics: Metrics, attempts: int) -> float:
    begun = time.perf_counter()
    for _ in range(attempts):
        metrics.jobs_started.inc("noop", "default")
        metrics.job_wait.observe("noop", "default", seconds_between(NOW, datetime.now(timezone.utc)))
        metrics.job_duration.observe("noop", "default", 0.001)
    return (time.perf_counter() - begun) / attempts


async def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--attempts", type=int, default=200_000)
    parser.add_argument("--repeat", type=int, default=5)
    options = parser.parse_args()
    logging.getLogger("eventjobs.hooks").setLevel(logging.CRITICAL)  # the raising hook's first line
    print(f"machine: {machine_info()}")
    cases = {
        "no hooks": lambda: through_chain(Hooks(), options.attempts),
        "metrics inline (before hooks)": lambda: inline(Metrics(), options.attempts),
        "MetricsHook": lambda: through_chain(_with(), options.attempts),
        "MetricsHook + a no-op async hook": lambda: through_chain(_with(NoOp()), options.attempts),
        "MetricsHook + a raising hook": lambda: through_chain(_with(Raising()), options.attempts),
    }
    for name, case in cases.items():
        runs = [await case() for _ in range(options.repeat)]
        print(f"{name:<34} {statistics.median(runs) * 1e6:6.2f} us per attempt (median of {options.repeat})")


def _with(*hooks: Hook) -> Hooks:
    metrics = Metrics()
    return Hooks([MetricsHook(metrics, WORKER), *hooks], metrics=metrics)


if __name__ == "__main__":
    asyncio.run(main())
