"""The timer service's firing decision, driven by chosen times: no broker, no sleeping.

`TimerService.take_due(now)` is the pure half of `run_once(now)`: it removes from the in-memory
indexes what is due at `now` and builds the events those timers cause; `run_once` only sends
them. So feeding timer records and calling `take_due` at chosen times shows exactly what a pass
at that time fires, and in which order.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

from eventjobs.core.records import TimerRecord
from eventjobs.core.timer_index import TimerIndex
from eventjobs.runtime.timers import FIRE_BATCH, MAX_WAIT_MS, TimerService
from eventjobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


def service_owning(*partitions: int) -> TimerService:
    """A service that owns `partitions`, already loaded (as after its rebuild reached the end)."""
    service = TimerService(Settings(kafka_bootstrap="127.0.0.1:1", namespace="clock", topics_dir=ROOT / "topics"))
    service.indexes.update({partition: TimerIndex() for partition in partitions})
    return service


def timer(job_id: str, kind: str, seconds: float, attempt: int = 0) -> tuple[bytes, bytes]:
    record = TimerRecord(job_id=job_id, kind=kind, attempt=attempt, due_at=T0 + timedelta(seconds=seconds))
    return record.key, record.encode()


def fired_at(service: TimerService, seconds: float) -> list[tuple[str, str, str]]:
    """(partition actor, job, event type) of everything a pass at T0 + seconds fires."""
    now = T0 + timedelta(seconds=seconds)
    return [(event.actor, event.job_id, event.type) for firing in service.take_due(now) for event in firing.events]


def test_a_pass_fires_exactly_the_timers_due_at_its_time_in_due_order() -> None:
    service = service_owning(0)
    service.index_timers(0, [
        timer("late", "run_at", 30),
        timer("short", "ttl", 9, attempt=2),
        timer("early", "run_at", 5),
        timer("retry", "retry", 10, attempt=1),
        timer("ttl", "ttl", 20),
    ])
    assert fired_at(service, 4.999) == []
    assert fired_at(service, 5) == [("timer:0", "early", "due")]
    assert fired_at(service, 19) == [("timer:0", "short", "expired"), ("timer:0", "retry", "due")]
    assert fired_at(service, 19) == []  # fired once: taken out of the index
    assert fired_at(service, 60) == [("timer:0", "ttl", "expired"), ("timer:0", "late", "due")]
    assert service.pending == 0


def test_replaced_and_cancelled_timers_fire_as_they_are_now() -> None:
    service = service_owning(0)
    service.index_timers(0, [timer("a", "retry", 10, attempt=1), timer("b", "run_at", 10), timer("c", "run_at", 10)])
    service.index_timers(0, [timer("a", "retry", 40, attempt=1), (b"b:run_at", None)])  # moved; cancelled
    assert fired_at(service, 30) == [("timer:0", "c", "due")]
    (firing,) = service.take_due(T0 + timedelta(seconds=40))
    (event,) = firing.events
    assert event.type == "due" and event.attempt == 1  # type: ignore[union-attr]
    assert firing.timers == [(b"a:retry:1", int((T0 + timedelta(seconds=40)).timestamp() * 1000), 1)]


def test_a_partition_still_loading_fires_nothing_and_a_foreign_one_is_ignored() -> None:
    service = service_owning(0, 1)
    service.loading[1] = 123
    service.index_timers(0, [timer("mine", "run_at", 1)])
    service.index_timers(1, [timer("loading", "run_at", 1)])
    service.index_timers(2, [timer("not-ours", "run_at", 1)])
    assert fired_at(service, 5) == [("timer:0", "mine", "due")]
    del service.loading[1]
    assert fired_at(service, 5) == [("timer:1", "loading", "due")]


def test_a_repeated_fire_of_the_same_timer_has_the_same_event_id() -> None:
    first, second = service_owning(0), service_owning(0)
    for service in (first, second):
        service.index_timers(0, [timer("j", "retry", 3, attempt=4)])
    (a,) = first.take_due(T0 + timedelta(seconds=3))
    (b,) = second.take_due(T0 + timedelta(seconds=9))  # a restart fires it again, later
    assert a.events[0].event_id == b.events[0].event_id
    assert a.events[0].occurred_at == T0 + timedelta(seconds=3) and b.events[0].occurred_at == T0 + timedelta(seconds=9)


def test_one_pass_fires_at_most_a_batch_per_partition() -> None:
    service = service_owning(0)
    service.index_timers(0, [timer(f"j{n}", "run_at", n / 1000) for n in range(FIRE_BATCH + 5)])
    assert len(fired_at(service, 60)) == FIRE_BATCH
    assert len(fired_at(service, 60)) == 5


def test_a_timer_whose_kind_is_unknown_is_left_out() -> None:
    service = service_owning(0)
    service.indexes[0].set(b"j:snooze", int(T0.timestamp() * 1000), 0)
    service.index_timers(0, [timer("j", "run_at", 0)])
    (firing,) = service.take_due(T0)
    assert [(e.job_id, e.type) for e in firing.events] == [("j", "due")]
    assert [key for key, _, _ in firing.timers] == [b"j:run_at"]


def test_the_loop_sleeps_until_the_next_due_timer() -> None:
    service = service_owning(0)
    assert service.wait_ms(T0) == MAX_WAIT_MS  # nothing pending
    service.index_timers(0, [timer("j", "run_at", 0.040)])
    assert service.wait_ms(T0) == 40
    assert service.wait_ms(T0 + timedelta(seconds=1)) == 1  # overdue: come back at once
    service.index_timers(0, [timer("k", "run_at", 60)])
    service.take_due(T0 + timedelta(seconds=1))
    assert service.wait_ms(T0 + timedelta(seconds=1)) == MAX_WAIT_MS  # next one is far away
