"""Which records of a partition just assigned to a worker are guarded (run only once their claim
is seen accepted): its first HANDOVER_GUARD_RECORDS from where the fetch started, written before
the assignment or within HANDOVER_GUARD_MARGIN_MS after it; once one record is not, none after it."""

from __future__ import annotations

from aiokafka import ConsumerRecord

from eventjobs.runtime.intake import HANDOVER_GUARD_MARGIN_MS, HANDOVER_GUARD_RECORDS, Handover

ASSIGNED_MS = 1_000_000


def record(offset: int, timestamp: int) -> ConsumerRecord[bytes, bytes]:
    return ConsumerRecord("ns.ready.default.normal", 0, offset, timestamp, 0, b"job", b"{}", None, 3, 2, [])


def test_records_written_before_the_assignment_are_guarded_up_to_the_record_budget() -> None:
    handover = Handover(ASSIGNED_MS)
    start = 500  # the committed offset the fetch started from
    assert handover.guards(record(start, ASSIGNED_MS - 60_000))
    assert handover.guards(record(start + HANDOVER_GUARD_RECORDS - 1, ASSIGNED_MS - 1))
    assert not handover.guards(record(start + HANDOVER_GUARD_RECORDS, ASSIGNED_MS - 1))  # a backlog behind them


def test_records_written_after_the_assignment_and_its_margin_are_not_guarded() -> None:
    handover = Handover(ASSIGNED_MS)
    assert handover.guards(record(0, ASSIGNED_MS + HANDOVER_GUARD_MARGIN_MS))  # within the margin
    assert not handover.guards(record(1, ASSIGNED_MS + HANDOVER_GUARD_MARGIN_MS + 1))


def test_the_budget_counts_from_the_first_record_fetched_not_from_offset_zero() -> None:
    handover = Handover(ASSIGNED_MS)
    late_start = 10 * HANDOVER_GUARD_RECORDS
    assert handover.guards(record(late_start, ASSIGNED_MS))
    assert handover.first_offset == late_start
    assert handover.guards(record(late_start + 1, ASSIGNED_MS))
