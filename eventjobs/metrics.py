"""Prometheus metrics of the services (worker, processor with its timer and schedule services, projector).

Every metric name is defined here, once. Each service gets its own `Metrics` (its own
`CollectorRegistry`, so several services or tests in one process do not collide); a metric
family is registered on first use, so a service exposes only what it measures.

Labels are bounded: job names, queues and the event log's partition numbers only, never job ids, and at most `MAX_LABEL_VALUES`
distinct values per label (later ones are counted under `OTHER`). Hot paths use the labelled
children cached by `(name, queue)`: one dict lookup and one `inc` per event.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, UTC
from functools import cached_property
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

log = logging.getLogger("eventjobs.metrics")

#: Distinct values a label (job name, queue) takes per service; later values are counted as `OTHER`.
MAX_LABEL_VALUES = 200
OTHER = "other"

# -- names (docs/operations.md, "Metrics", lists each one) ---------------------------------------
JOBS_ENQUEUED = "eventjobs_jobs_enqueued_total"
JOBS_STARTED = "eventjobs_jobs_started_total"
JOBS_COMPLETED = "eventjobs_jobs_completed_total"
JOBS_FAILED = "eventjobs_jobs_failed_total"
JOBS_RETRIED = "eventjobs_jobs_retried_total"
JOBS_DEAD_LETTERED = "eventjobs_jobs_dead_lettered_total"
JOBS_CANCELLED = "eventjobs_jobs_cancelled_total"
JOB_DURATION = "eventjobs_job_duration_seconds"
JOB_WAIT = "eventjobs_job_wait_seconds"
QUEUE_DEPTH = "eventjobs_queue_depth"
WORKER_BUSY_SLOTS = "eventjobs_worker_busy_slots"
WORKER_SLOTS = "eventjobs_worker_slots"
PROCESSOR_LAG = "eventjobs_processor_lag_records"
TIMERS_PENDING = "eventjobs_timers_pending"
HOUSEKEEPING_TIMERS = "eventjobs_processor_housekeeping_timers"
TIMER_LATENESS = "eventjobs_timer_lateness_seconds"
QUARANTINED = "eventjobs_quarantined_total"
RECORDS_SKIPPED = "eventjobs_records_skipped_total"
PROJECTOR_LAG = "eventjobs_projector_lag_seconds"
PROJECTOR_RECORDS_BEHIND = "eventjobs_projector_records_behind"
SCHEDULES_SET_ASIDE = "eventjobs_schedules_set_aside"
HOOK_FAILURES = "eventjobs_hook_failures_total"
LIMIT_SLOTS_IN_USE = "eventjobs_limit_slots_in_use"
LIMIT_JOBS_WAITING = "eventjobs_limit_jobs_waiting"

JOB_LABELS = ("name", "queue")
DURATION_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
WAIT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600, 21600, 86400)
LATENESS_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 60)

#: Event types the processor counts (applied input events and derived events), by counter name.
#: Failed attempts are the worker's failure outcomes and the lease expiries (the processor's own lease timers).
COUNTED_EVENTS: dict[str, str] = {
    "enqueued": JOBS_ENQUEUED,
    "completed": JOBS_COMPLETED,
    "attempt_failed": JOBS_FAILED,
    "attempt_timed_out": JOBS_FAILED,
    "lease_expired": JOBS_FAILED,
    "retry_scheduled": JOBS_RETRIED,
    "dead_lettered": JOBS_DEAD_LETTERED,
    "cancelled": JOBS_CANCELLED,
}


def _base(name: str) -> str:
    """prometheus_client adds `_total` to a counter's name itself."""
    return name.removesuffix("_total")


def seconds_between(earlier: datetime, later: datetime) -> float:
    """`later - earlier` in seconds, at least 0 (a naive time is UTC)."""
    if earlier.tzinfo is None:
        earlier = earlier.replace(tzinfo=UTC)
    if later.tzinfo is None:
        later = later.replace(tzinfo=UTC)
    return max(0.0, (later - earlier).total_seconds())


class LabelCap:
    """Admits the first `limit` distinct values of a label; any later value becomes `OTHER`."""

    def __init__(self, limit: int = MAX_LABEL_VALUES) -> None:
        self.limit = limit
        self.admitted: set[str] = set()

    def __call__(self, value: str) -> str:
        if value in self.admitted:
            return value
        if len(self.admitted) < self.limit:
            self.admitted.add(value)
            return value
        return OTHER


class JobFamily:
    """A counter or histogram labelled (name, queue), its children cached by the raw values.

    Only admitted (name, queue) pairs are cached, so the cache is bounded by the caps too.
    """

    def __init__(self, family: Any, names: LabelCap, queues: LabelCap) -> None:
        self.family = family
        self._names = names
        self._queues = queues
        self._children: dict[tuple[str, str], Any] = {}

    def child(self, name: str, queue: str) -> Any:
        key = (name, queue)
        child = self._children.get(key)
        if child is None:
            label_name, label_queue = self._names(name), self._queues(queue)
            child = self.family.labels(label_name, label_queue)
            if label_name is name and label_queue is queue:  # admitted: cache it (bounded by the caps)
                self._children[key] = child
        return child

    def inc(self, name: str, queue: str, amount: float = 1) -> None:
        self.child(name, queue).inc(amount)

    def observe(self, name: str, queue: str, value: float) -> None:
        self.child(name, queue).observe(value)


class Metrics:
    """One service's metrics, in its own registry. Families register on first use."""

    def __init__(self, *, max_label_values: int = MAX_LABEL_VALUES) -> None:
        self.registry = CollectorRegistry()
        self.names = LabelCap(max_label_values)
        self.queues = LabelCap(max_label_values)
        self._depth_children: dict[tuple[str, str], Any] = {}
        self.hook_names = LabelCap(max_label_values)
        self.limits = LabelCap(max_label_values)  # concurrency limits' names (never their keys)

    def _jobs_counter(self, name: str, doc: str) -> JobFamily:
        return JobFamily(Counter(_base(name), doc, JOB_LABELS, registry=self.registry), self.names, self.queues)

    def _jobs_histogram(self, name: str, doc: str, buckets: tuple[float, ...]) -> JobFamily:
        return JobFamily(Histogram(name, doc, JOB_LABELS, buckets=buckets, registry=self.registry),
                         self.names, self.queues)

    # -- processor: from the events it applies and derives ------------------------------------
    @cached_property
    def jobs_enqueued(self) -> JobFamily:
        return self._jobs_counter(JOBS_ENQUEUED, "Jobs enqueued (accepted enqueued events; duplicates not counted).")

    @cached_property
    def jobs_completed(self) -> JobFamily:
        return self._jobs_counter(JOBS_COMPLETED, "Jobs completed.")

    @cached_property
    def jobs_failed(self) -> JobFamily:
        return self._jobs_counter(JOBS_FAILED, "Failed attempts (attempt_failed, attempt_timed_out, lease_expired).")

    @cached_property
    def jobs_retried(self) -> JobFamily:
        return self._jobs_counter(JOBS_RETRIED, "Retries scheduled (retry_scheduled events).")

    @cached_property
    def jobs_dead_lettered(self) -> JobFamily:
        return self._jobs_counter(JOBS_DEAD_LETTERED, "Jobs dead-lettered.")

    @cached_property
    def jobs_cancelled(self) -> JobFamily:
        return self._jobs_counter(JOBS_CANCELLED, "Jobs cancelled.")

    def event_counters(self) -> dict[str, JobFamily]:
        """Event type -> the counter it increments (`COUNTED_EVENTS`), registering them all."""
        by_name = {JOBS_ENQUEUED: self.jobs_enqueued, JOBS_COMPLETED: self.jobs_completed,
                   JOBS_FAILED: self.jobs_failed, JOBS_RETRIED: self.jobs_retried,
                   JOBS_DEAD_LETTERED: self.jobs_dead_lettered, JOBS_CANCELLED: self.jobs_cancelled}
        return {event_type: by_name[name] for event_type, name in COUNTED_EVENTS.items()}

    # -- worker ---------------------------------------------------------------------------------
    @cached_property
    def jobs_started(self) -> JobFamily:
        return self._jobs_counter(JOBS_STARTED, "Attempts started by this worker.")

    @cached_property
    def job_duration(self) -> JobFamily:
        return self._jobs_histogram(JOB_DURATION, "Handler run time of an attempt, in seconds.", DURATION_BUCKETS)

    @cached_property
    def job_wait(self) -> JobFamily:
        return self._jobs_histogram(JOB_WAIT, "From a job becoming ready (enqueued or due) to its start, in seconds.",
                                    WAIT_BUCKETS)

    @cached_property
    def queue_depth(self) -> Gauge:
        return Gauge(QUEUE_DEPTH, "Ready records not yet consumed, on the ready partitions this worker consumes "
                     "(sum over workers for a queue's total).", ("queue", "priority"), registry=self.registry)

    def set_queue_depth(self, queue: str, priority: str, depth: float) -> None:
        key = (queue, priority)
        child = self._depth_children.get(key)
        if child is None:
            label = self.queues(queue)
            child = self.queue_depth.labels(label, priority)
            if label is queue:
                self._depth_children[key] = child
        child.set(depth)

    @cached_property
    def worker_busy_slots(self) -> Gauge:
        return Gauge(WORKER_BUSY_SLOTS, "Jobs running now.", registry=self.registry)

    @cached_property
    def worker_slots(self) -> Gauge:
        return Gauge(WORKER_SLOTS, "Jobs this worker runs at once at most (its concurrency).", registry=self.registry)

    # -- processor, timer service, projector ------------------------------------------------------
    @cached_property
    def processor_lag(self) -> Gauge:
        return Gauge(PROCESSOR_LAG, "Events on the owned event-log partitions not yet folded.", registry=self.registry)

    @cached_property
    def timers_pending(self) -> Gauge:
        return Gauge(TIMERS_PENDING, "Timers armed on the owned timer partitions.", registry=self.registry)

    @cached_property
    def housekeeping_timers(self) -> Gauge:
        return Gauge(HOUSEKEEPING_TIMERS, "The processor's own lease, re-publish and retention timers on its "
                     "owned partitions: one per claimed or running, pending, or retained (finished, not yet "
                     "forgotten) job.",
                     registry=self.registry)

    @cached_property
    def limit_slots_in_use(self) -> Gauge:
        return Gauge(LIMIT_SLOTS_IN_USE, "Concurrency limits: slots held (granted, not yet released) over the keys "
                     "whose owner is on this processor's partitions, by limit name (sum over processors for a "
                     "limit's total).", ("limit",), registry=self.registry)

    @cached_property
    def limit_jobs_waiting(self) -> Gauge:
        return Gauge(LIMIT_JOBS_WAITING, "Concurrency limits: jobs queued for a slot over the keys whose owner is on "
                     "this processor's partitions, by limit name.", ("limit",), registry=self.registry)

    @cached_property
    def timer_lateness(self) -> Histogram:
        return Histogram(TIMER_LATENESS, "How late a timer fired after its due time, in seconds.",
                         buckets=LATENESS_BUCKETS, registry=self.registry)

    @cached_property
    def quarantined(self) -> Counter:
        return Counter(_base(QUARANTINED), "Records copied to the quarantine topic by this service.",
                       registry=self.registry)

    @cached_property
    def records_skipped(self) -> Counter:
        return Counter(_base(RECORDS_SKIPPED), "Records this service read and could not use, by kind (the fixed kinds "
                       "of log/bad_records.py's callers): skipped (and, on the timer topic, tombstoned); the first of "
                       "each kind is logged with its reason.", ("kind",), registry=self.registry)

    def skipped(self, kind: str) -> None:
        self.records_skipped.labels(kind).inc()

    @cached_property
    def schedules_set_aside(self) -> Gauge:
        return Gauge(SCHEDULES_SET_ASIDE, "Schedules the schedule service has set aside, by reason (one of a fixed "
                     "few): they fire nothing until their definition changes.", ("reason",), registry=self.registry)

    @cached_property
    def projector_lag(self) -> Gauge:
        return Gauge(PROJECTOR_LAG, "Per event-log partition: 0 when the projector has written every record "
                     "of it to ClickHouse, else now minus the log time of the last record it wrote "
                     "(readside/lag.py; NaN until Kafka answered its end offset).", ("partition",),
                     registry=self.registry)

    @cached_property
    def projector_records_behind(self) -> Gauge:
        return Gauge(PROJECTOR_RECORDS_BEHIND, "Per event-log partition: the log's end offset (asked every few "
                     "seconds) minus the next offset the projector writes to ClickHouse (NaN until Kafka "
                     "answered).", ("partition",), registry=self.registry)

    # -- hooks (eventjobs.hooks) ------------------------------------------------------------------
    @cached_property
    def hook_failures_family(self) -> Counter:
        return Counter(_base(HOOK_FAILURES), "Exceptions raised by hooks, by hook name and hook point (logged, "
                       "then ignored: the work went on).", ("hook", "method"), registry=self.registry)

    def hook_failures(self, hook: str, method: str) -> Any:
        """The counter of `hook`'s failures in `method` (a hook point: a fixed few)."""
        return self.hook_failures_family.labels(self.hook_names(hook), method)

    def gauge_from(self, gauge: Gauge, read: Callable[[], float]) -> None:
        """Read `gauge` (a family without labels, or one labelled child) at scrape time; a failing
        read reports 0 rather than failing the scrape."""

        def safe() -> float:
            try:
                return float(read())
            except Exception:  # noqa: BLE001 - read from the HTTP thread while the loop changes things
                return 0.0

        gauge.set_function(safe)


class MetricsServer:
    """`/metrics` of one registry over HTTP, in a daemon thread (prometheus_client's server)."""

    def __init__(self, metrics: Metrics, host: str, port: int) -> None:
        self.server, self.thread = start_http_server(port, addr=host, registry=metrics.registry)
        self.host = host
        self.port = self.server.server_port

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/metrics"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@contextmanager
def serving(port: int | None, host: str = "127.0.0.1") -> Iterator[Metrics | None]:
    """A service's `Metrics`, served on `host:port` while the block runs (None: metrics are off)."""
    if port is None:
        yield None
        return
    metrics = Metrics()
    server = MetricsServer(metrics, host, port)
    log.info("metrics at %s", server.url)
    try:
        yield metrics
    finally:
        server.close()
