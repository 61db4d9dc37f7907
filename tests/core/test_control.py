"""The operator control records: building, admitting (a bad record is a reason, never an
exception), worker presence and the queue list."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventjobs.core.refused import Refused
from eventjobs.core.control import (
    CANCELLABLE_STATUSES,
    GONE_AFTER_HEARTBEATS,
    QueueControl,
    QueueStatus,
    WorkerAnnouncement,
    admit_queue_control,
    admit_worker,
    queue_control,
    queue_of_route,
    queue_statuses,
    worker_announcement,
    worker_presence,
)
from eventjobs.core.records import capability_route

T0 = datetime(2026, 1, 1, 12, 0, tzinfo=timezone.utc)
queue_names = st.text("abcxyz019._-", min_size=1, max_size=30)


def announce(*, now: datetime = T0, heartbeat_s: float = 5.0, stopped: bool = False, worker_id: str = "w1") -> WorkerAnnouncement:
    return worker_announcement(worker_id=worker_id, host="h", pid=42, queues=["default"], capabilities=["gpu", "gpu"],
                               concurrency=4, busy=1, version="1.0", started_at=T0, now=now,
                               heartbeat_s=heartbeat_s, stopped=stopped)


def test_an_announcement_round_trips_through_its_record() -> None:
    sent = announce()
    assert sent.capabilities == ("gpu",) and sent.state == "running"
    assert admit_worker(b"w1", sent.encode()) == ("w1", sent)


def test_a_goodbye_is_stopped_with_no_busy_slots_claimed() -> None:
    assert announce(stopped=True).state == "stopped"
    assert worker_presence(announce(stopped=True), T0 + timedelta(days=5)) == "stopped"


@pytest.mark.parametrize(("silent_s", "expected"), [(0, "alive"), (14.999, "alive"), (15, "alive"), (15.001, "gone")])
def test_a_running_worker_is_gone_after_three_of_its_heartbeats(silent_s: float, expected: str) -> None:
    assert GONE_AFTER_HEARTBEATS == 3
    assert worker_presence(announce(heartbeat_s=5.0), T0 + timedelta(seconds=silent_s)) == expected


def test_an_explicit_gone_after_wins_over_the_heartbeat_rule() -> None:
    assert worker_presence(announce(heartbeat_s=5.0), T0 + timedelta(seconds=3), gone_after=2) == "gone"


@given(heartbeat=st.floats(0.1, 600), silent=st.floats(0, 3600))
def test_presence_is_alive_exactly_while_the_silence_is_within_three_heartbeats(heartbeat: float, silent: float) -> None:
    a = announce(heartbeat_s=heartbeat)
    now = T0 + timedelta(milliseconds=round(silent * 1000))
    expected = "alive" if (now - T0).total_seconds() <= 3 * heartbeat else "gone"
    assert worker_presence(a, now) == expected


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        (None, b"{}", "no key"),
        (b"", b"{}", "no key"),
        (b"\xff\xfe", b"{}", "key not UTF-8"),
        (b"w1", b"not json", "not a worker announcement"),
        (b"w1", b'{"worker_id": "w1"}', "not a worker announcement"),
        (b"w2", announce().encode(), "key does not match"),
    ],
)
def test_a_bad_worker_record_is_refused_with_its_kind(key: bytes | None, value: bytes, kind: str) -> None:
    refused = admit_worker(key, value)
    assert isinstance(refused, Refused) and refused.kind == kind and refused.reason


def test_a_tombstone_removes_a_worker_or_a_queue_record() -> None:
    assert admit_worker(b"w1", None) == ("w1", None)
    assert admit_queue_control(b"emails", b"") == ("emails", None)


@given(key=st.one_of(st.none(), st.binary(max_size=40)), value=st.one_of(st.none(), st.binary(max_size=200)))
def test_admission_never_raises_whatever_the_bytes(key: bytes | None, value: bytes | None) -> None:
    for admit in (admit_worker, admit_queue_control):
        result = admit(key, value)
        assert isinstance(result, (Refused, tuple))


@given(queue=queue_names, paused=st.booleans(), reason=st.text(max_size=50))
def test_a_queue_control_record_round_trips(queue: str, paused: bool, reason: str) -> None:
    control = queue_control(queue, paused=paused, reason=reason, now=T0, actor="producer:h:1")
    assert admit_queue_control(queue.encode(), control.encode()) == (queue, control)


def test_a_queue_control_record_of_another_queue_or_a_bad_name_is_refused() -> None:
    control = queue_control("emails", paused=True, reason="r", now=T0, actor="a")
    assert admit_queue_control(b"other", control.encode()).kind == "key does not match"  # type: ignore[union-attr]
    bad = control.model_dump_json().replace('"emails"', '"bad name!"').encode()
    assert admit_queue_control(b"bad name!", bad).kind == "not a queue control record"  # type: ignore[union-attr]
    with pytest.raises(ValueError, match="queue name 'bad name!' must be 1-100 letters"):
        queue_control("bad name!", paused=True, reason="r", now=T0, actor="a")


def test_a_long_reason_is_cut_to_its_budget() -> None:
    control = queue_control("emails", paused=True, reason="x" * 100_000, now=T0, actor="a")
    assert len(control.reason.encode()) < 20_000 and "truncated" in control.reason


@given(known=st.sets(queue_names, max_size=5), controlled=st.dictionaries(queue_names, st.booleans(), max_size=5))
def test_the_queue_list_holds_every_known_and_every_controlled_queue_once(
    known: set[str], controlled: dict[str, bool],
) -> None:
    controls = {q: queue_control(q, paused=p, reason="why", now=T0, actor="a") for q, p in controlled.items()}
    statuses = queue_statuses(known, controls)
    assert [s.queue for s in statuses] == sorted(known | set(controlled))
    for status in statuses:
        assert status.paused == controlled.get(status.queue, False)
        assert (status.changed_at is None) == (status.queue not in controlled)


def test_a_queue_never_changed_is_running() -> None:
    assert queue_statuses({"a"}, {}) == [QueueStatus(queue="a")]


@given(queue=queue_names, caps=st.lists(st.text("abc:.", min_size=1, max_size=5), max_size=3))
def test_a_capability_route_maps_back_to_its_queue(queue: str, caps: list[str]) -> None:
    assert queue_of_route(capability_route(queue, caps)) == queue


def test_cancellable_statuses_are_the_ones_not_started() -> None:
    assert {"pending", "scheduled", "retrying"} <= CANCELLABLE_STATUSES
    assert not CANCELLABLE_STATUSES & {"claimed", "running", "completed", "cancelled", "dead_lettered", "discarded"}


def test_records_are_strict() -> None:
    with pytest.raises(ValueError):
        QueueControl.model_validate({"queue": "q", "paused": True, "reason": "", "changed_at": T0, "changed_by": "a",
                                     "extra": 1})
