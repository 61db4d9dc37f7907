"""The worker's Prometheus metrics, as a hook: the worker emits hook points, this counts them.

Same names and labels as before it was a hook (`eventjobs.metrics` defines them): started
attempts and their wait from ready to start, handler durations, quarantined ready records,
queue depth, and the worker's slots. The worker adds it first to its chain when it is given a
`Metrics` (`--metrics-port`), so its `after_attempt` runs after every other hook's.
"""

from __future__ import annotations

from collections.abc import Mapping

from eventjobs.hooks.base import AttemptInfo, AttemptOutcome, Hook, Quarantined, WorkerInfo
from eventjobs.metrics import Metrics, seconds_between


class MetricsHook(Hook):
    """Counts a worker's attempts into its `Metrics` registry."""

    name = "metrics"

    def __init__(self, metrics: Metrics, worker: WorkerInfo) -> None:
        # the worker's slots are exported as it is made, not at `on_worker_start`: its /metrics
        # serves before `run` begins, and a scrape then already shows them (as before the hook)
        self.metrics = metrics
        metrics.worker_slots.set(worker.concurrency)
        metrics.gauge_from(metrics.worker_busy_slots, worker.busy)
        metrics.quarantined.inc(0)  # exported from 0 on

    def before_attempt(self, attempt: AttemptInfo) -> None:
        self.metrics.jobs_started.inc(attempt.name, attempt.queue)
        self.metrics.job_wait.observe(attempt.name, attempt.queue, seconds_between(attempt.ready_at, attempt.started_at))

    def after_attempt(self, attempt: AttemptInfo, outcome: AttemptOutcome) -> None:
        self.metrics.job_duration.observe(attempt.name, attempt.queue, outcome.duration_s)

    def on_quarantined(self, record: Quarantined) -> None:
        self.metrics.quarantined.inc()

    def on_queue_depth(self, depth: Mapping[tuple[str, str], int]) -> None:
        for (queue, priority), value in depth.items():
            self.metrics.set_queue_depth(queue, priority, value)
