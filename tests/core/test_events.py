"""The event models: catalogue completeness, envelope rules, strictness, immutability."""

from __future__ import annotations

import re
import typing
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from eventjobs.core.codec import decode, encode
from eventjobs.core.events import (
    DERIVED_TYPES,
    EVENT_ADAPTER,
    EVENT_TYPES,
    TIMESTAMP_PATTERN,
    ClaimedEvent,
    EnqueuedEvent,
    Event,
    JobEvent,
    is_claim,
    parse_wire_timestamp,
)
from eventjobs.core.options import JobOptions, Priority
from tests.core.builders import T0, JobLog

EXPECTED_TYPES = [
    "enqueued", "scheduled", "due", "claimed", "attempt_started", "progress", "heartbeat", "attempt_succeeded",
    "attempt_failed", "attempt_timed_out", "lease_expired", "retry_scheduled", "completed", "failed",
    "cancel_requested", "cancelled", "expired", "dead_lettered", "dead_letter_retried", "discarded", "retention_passed",
    "duplicate_rejected", "dependency_requested", "dependency_resolved", "dependency_reopened", "dependency_probe",
    "attempt_snoozed", "debounced", "slot_requested", "slot_released", "slot_granted", "slot_refused", "slot_revoked",
    "limit_changed",
]  # fmt: skip


def test_the_catalogue_covers_the_whole_lifecycle() -> None:
    assert list(EVENT_TYPES) == EXPECTED_TYPES
    union_members = typing.get_args(typing.get_args(JobEvent)[0])
    assert set(union_members) == set(EVENT_TYPES.values())
    for type_, cls in EVENT_TYPES.items():
        assert cls.model_fields["type"].default == type_
        assert issubclass(cls, Event)
        assert cls.written_by, f"{type_} does not say who writes it"
        assert cls.__doc__
    assert DERIVED_TYPES <= set(EVENT_TYPES)
    assert {t for t, c in EVENT_TYPES.items() if c.written_by == "processor (derived)"} == DERIVED_TYPES


def test_every_event_has_the_envelope() -> None:
    envelope = ["event_id", "job_id", "type", "occurred_at", "schema_version", "causation_id", "actor"]
    for cls in EVENT_TYPES.values():
        assert list(cls.model_fields)[:7] == envelope


def test_occurred_at_is_utc_truncated_to_milliseconds() -> None:
    local = datetime(2025, 1, 1, 14, 0, 0, 123_456, tzinfo=timezone(timedelta(hours=2)))
    event = JobLog().claimed(occurred_at=local)
    assert event.occurred_at == datetime(2025, 1, 1, 12, 0, 0, 123_000, tzinfo=timezone.utc)
    assert event.occurred_at.utcoffset() == timedelta(0)


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValidationError, match="occurred_at\n  Input should have timezone info"):
        JobLog().claimed(occurred_at=datetime(2025, 1, 1))


def test_events_are_frozen_and_forbid_unknown_fields() -> None:
    event = JobLog().claimed()
    with pytest.raises(ValidationError):
        event.attempt = 3  # type: ignore[misc]
    with pytest.raises(ValidationError, match="extra_forbidden|Extra inputs are not permitted"):
        ClaimedEvent(**event.model_dump(), colour="red")


def test_validation_is_strict_in_python_too() -> None:
    data = JobLog().claimed().model_dump()
    for field, value in (("attempt", "1"), ("attempt", 1.5), ("attempt", -1), ("lease_deadline", "2025-01-01T00:00:00Z")):
        with pytest.raises(ValidationError):
            ClaimedEvent(**{**data, field: value})


def test_args_must_be_json() -> None:
    log = JobLog()
    for args, problem in (({"ids": (1, 2)}, "ids: tuple is not a JSON value"), ({"x": {1, 2}}, "x: set is not a JSON value"),
                          ({"n": float("inf")}, "n: inf is not a finite number"), ({"n": 2**64}, "outside the 64-bit range"),
                          ({"d": {1: "a"}}, "d: key 1 is not a string")):
        with pytest.raises(ValidationError, match=problem):
            log.enqueued(args=args)
    assert log.enqueued(args={"ok": [1, 2.5, None, True, "s", {"n": -(2**63)}]}).args["ok"][5] == {"n": -(2**63)}


def test_priority_accepts_its_name() -> None:
    event = EnqueuedEvent(
        event_id="e", job_id="j", occurred_at=T0, actor="p", name="n", queue="q", args={}, options=JobOptions().to_spec(), priority="high",
    )
    assert event.priority is Priority.HIGH


def test_job_names_and_queues_are_constrained() -> None:
    base = {"event_id": "e", "job_id": "j", "occurred_at": T0, "actor": "p", "args": {}, "options": JobOptions().to_spec()}
    for name, queue in (("has space", "q"), ("ok", "bad queue"), ("", "q"), ("1starts_with_digit", "q")):
        with pytest.raises(ValidationError):
            EnqueuedEvent(**base, name=name, queue=queue)
    assert EnqueuedEvent(**base, name="mail.send_v2:fast", queue="mail-eu.1").name == "mail.send_v2:fast"


def test_the_adapter_dispatches_on_type() -> None:
    event = JobLog().claimed()
    assert EVENT_ADAPTER.validate_python(event.model_dump()) == event


# --------------------------------------------------------------------------------------------
# wire timestamps
# --------------------------------------------------------------------------------------------

_TIMESTAMP = re.compile(TIMESTAMP_PATTERN)


def _accepts(text: str) -> bool:
    try:
        parse_wire_timestamp(text)
    except ValueError:
        return False
    return True


@settings(max_examples=300, deadline=None)
@given(text=st.one_of(st.from_regex(TIMESTAMP_PATTERN, fullmatch=True), st.text(max_size=30),
                      st.from_regex(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{0,7})?[Z+z ]?", fullmatch=True)))
def test_wire_timestamps_are_exactly_the_pattern(text: str) -> None:
    # accepted if and only if it matches the pattern and is a real date and time
    if not _TIMESTAMP.fullmatch(text):
        assert not _accepts(text)
        return
    try:
        expected = datetime.strptime(text.rstrip("Z") + ("" if "." in text else ".0"), "%Y-%m-%dT%H:%M:%S.%f")
    except ValueError:
        assert not _accepts(text)
        return
    parsed = parse_wire_timestamp(text)
    assert parsed == expected.replace(tzinfo=timezone.utc)
    assert parsed.tzinfo is timezone.utc


def test_wire_timestamp_errors_say_what_is_expected() -> None:
    with pytest.raises(ValueError, match=r"^expected a UTC timestamp like '2024-01-31T12:00:00.123Z', got '2025-01-01 12:00:00Z'$"):
        parse_wire_timestamp("2025-01-01 12:00:00Z")
    with pytest.raises(ValueError, match=r"got '2025-02-30T12:00:00Z' \(day is out of range for month\)$"):
        parse_wire_timestamp("2025-02-30T12:00:00Z")


def test_decoded_timestamps_share_the_utc_singleton() -> None:
    # one shared tzinfo instead of one object per datetime: less for the garbage collector
    event = decode(encode(JobLog().claimed()))
    assert event.occurred_at.tzinfo is timezone.utc and event.lease_deadline.tzinfo is timezone.utc


def test_is_claim_names_a_claimed_and_a_start_that_is_also_the_claim() -> None:
    log = JobLog()
    assert is_claim(log.claimed(0))
    assert is_claim(log.claim_started(0)) and is_claim(log.claim_started(0, own_claim=False))
    assert not is_claim(log.started(0)) and not is_claim(log.heartbeat(0))
