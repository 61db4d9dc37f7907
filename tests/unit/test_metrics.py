"""eventjobs.metrics: names in one place, bounded labels, one registry per service, and the
processor's counts (what `fold_batch` collects) equal to what the log holds."""

from __future__ import annotations

from collections import Counter

from prometheus_client import generate_latest

from eventjobs import metrics
from eventjobs.metrics import COUNTED_EVENTS, MAX_LABEL_VALUES, OTHER, LabelCap, Metrics
from tests.unit.test_fold_batch import Writer, records_of, run


def _sample(m: Metrics, metric: str, **labels: str) -> float | None:
    return m.registry.get_sample_value(metric, labels)


def test_label_values_are_capped_and_the_rest_counted_as_other() -> None:
    m = Metrics(max_label_values=3)
    for i in range(10):
        m.jobs_enqueued.inc(f"job{i}", "default")
    assert [_sample(m, metrics.JOBS_ENQUEUED, name=f"job{i}", queue="default") for i in range(4)] == [1, 1, 1, None]
    assert _sample(m, metrics.JOBS_ENQUEUED, name=OTHER, queue="default") == 7
    # queues are capped the same way, independently of names; the cache holds admitted pairs only
    for i in range(10):
        m.jobs_enqueued.inc("job0", f"q{i}")
    assert _sample(m, metrics.JOBS_ENQUEUED, name="job0", queue=OTHER) == 8
    assert len(m.jobs_enqueued._children) <= 3 * 3
    text = generate_latest(m.registry).decode()
    assert "job3" not in text and "q3" not in text


def test_the_default_cap_is_one_named_constant() -> None:
    cap = LabelCap()
    assert cap.limit == MAX_LABEL_VALUES
    values = [cap(str(i)) for i in range(MAX_LABEL_VALUES + 5)]
    assert values[:MAX_LABEL_VALUES] == [str(i) for i in range(MAX_LABEL_VALUES)]
    assert set(values[MAX_LABEL_VALUES:]) == {OTHER}


def test_queue_depth_is_capped_too() -> None:
    m = Metrics(max_label_values=1)
    m.set_queue_depth("a", "high", 5)
    m.set_queue_depth("b", "high", 7)
    assert _sample(m, metrics.QUEUE_DEPTH, queue="a", priority="high") == 5
    assert _sample(m, metrics.QUEUE_DEPTH, queue=OTHER, priority="high") == 7


def test_each_service_has_its_own_registry() -> None:
    first, second = Metrics(), Metrics()
    first.jobs_started.inc("add", "default")
    second.jobs_started.inc("add", "default")  # no "Duplicated timeseries" error
    assert _sample(first, metrics.JOBS_STARTED, name="add", queue="default") == 1
    assert _sample(second, metrics.JOBS_STARTED, name="add", queue="default") == 1
    assert _sample(Metrics(), metrics.JOBS_STARTED, name="add", queue="default") is None


def test_a_service_exposes_only_the_families_it_uses() -> None:
    m = Metrics()
    m.worker_slots.set(4)
    text = generate_latest(m.registry).decode()
    assert metrics.WORKER_SLOTS in text and metrics.TIMERS_PENDING not in text


def test_every_name_is_an_eventjobs_metric() -> None:
    names = [value for key, value in vars(metrics).items() if key.isupper() and isinstance(value, str)
             and value.startswith("eventjobs_")]
    assert len(names) == len(set(names)) == 24
    assert set(COUNTED_EVENTS.values()) <= set(names)


def test_the_processor_counts_what_the_log_holds() -> None:
    """Every counted event type (accepted input, derived) is collected once, also when the derived
    events come back through the log (as they do: the processor reads its own output)."""
    log = []
    retried = Writer("job-retried")
    retried.enqueue(max_attempts=3)
    retried.claim(), retried.start(), retried.outcome(RuntimeError("boom"))
    retried.due(), retried.claim(), retried.start(), retried.outcome({"ok": True})
    dead = Writer("job-dead")
    dead.enqueue(max_attempts=1)
    dead.claim(), dead.start(), dead.outcome(RuntimeError("boom"))
    cancelled = Writer("job-cancelled")
    cancelled.enqueue()
    cancelled.cancel()
    for writer in (retried, dead, cancelled):
        log += writer.log
    result = run({}, records_of(log))
    counted = Counter(event_type for event_type, _ in result.counted)
    expected = Counter(e.type for e in log if e.type in COUNTED_EVENTS)
    assert counted == expected
    assert expected["retry_scheduled"] == 1 and expected["dead_lettered"] == 1 and expected["cancelled"] == 1
    assert expected["completed"] == 1 and expected["attempt_failed"] == 2 and expected["enqueued"] == 3
    assert {(state.name, state.queue) for _, state in result.counted} == {("send_email", "default")}
