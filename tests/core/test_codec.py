"""encode/decode: exact round trips, strict decoding, and errors that name the field."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventjobs.core.codec import DEFAULT_MAX_EVENT_BYTES, EventDecodeError, EventEncodeError, decode, encode
from eventjobs.core.events import EVENT_TYPES, Event
from tests.core.builders import T0, JobLog
from tests.core.strategies import any_event, events_of, json_values

KNOWN = ", ".join(EVENT_TYPES)


def claimed_dict(**changes: Any) -> dict[str, Any]:
    data = orjson.loads(encode(JobLog().claimed()))
    data.update(changes)
    return data


def decode_error(data: bytes, **kwargs: Any) -> EventDecodeError:
    with pytest.raises(EventDecodeError) as info:
        decode(data, **kwargs)
    return info.value


# --------------------------------------------------------------------------------------------
# round trips
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", list(EVENT_TYPES.values()), ids=list(EVENT_TYPES))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_every_event_type_round_trips_unchanged(cls: type[Event], data: Any) -> None:
    event = data.draw(events_of(cls))
    encoded = encode(event)
    decoded = decode(encoded)
    assert type(decoded) is cls
    assert decoded == event
    assert encode(decoded) == encoded  # byte-exact, so re-encoding after a replay changes nothing
    assert encoded == event.model_dump_json().encode()  # orjson writes what pydantic would


def test_encoding_is_flat_json_in_declaration_order() -> None:
    event = JobLog().claimed(attempt=2, worker="w9")
    assert encode(event) == (
        b'{"event_id":"job-1-e001","job_id":"job-1","type":"claimed","occurred_at":"2025-01-01T12:00:00.000Z",'
        b'"schema_version":1,"causation_id":null,"actor":"worker:w9","attempt":2,"worker_id":"w9",'
        b'"lease_deadline":"2025-01-01T12:01:00.000Z"}'
    )


def test_decode_accepts_bytearray_and_memoryview() -> None:
    data = encode(JobLog().claimed())
    assert decode(bytearray(data)) == decode(memoryview(data)) == decode(data)


def test_optional_envelope_fields_may_be_omitted() -> None:
    data = claimed_dict()
    del data["causation_id"], data["schema_version"]
    event = decode(orjson.dumps(data))
    assert (event.causation_id, event.schema_version) == (None, 1)


def test_timestamps_with_fewer_fraction_digits_are_accepted() -> None:
    for text, micro in (("2025-01-01T12:00:00Z", 0), ("2025-01-01T12:00:00.5Z", 500_000), ("2025-01-01T12:00:00.12Z", 120_000)):
        event = decode(orjson.dumps(claimed_dict(occurred_at=text)))
        assert event.occurred_at == T0.replace(microsecond=micro)


# --------------------------------------------------------------------------------------------
# errors name the field, say what is allowed, and show what was found
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("changes", "message", "field"),
    [
        ({"attempt": "x"}, "field 'attempt' of 'claimed' event: expected an integer >= 0 and <= 1000000, got 'x'", "attempt"),
        ({"attempt": -1}, "field 'attempt' of 'claimed' event: expected an integer >= 0 and <= 1000000, got -1", "attempt"),
        ({"attempt": 1.0}, "field 'attempt' of 'claimed' event: expected an integer >= 0 and <= 1000000, got 1.0", "attempt"),
        ({"attempt": True}, "field 'attempt' of 'claimed' event: expected an integer >= 0 and <= 1000000, got True", "attempt"),
        ({"attempt": "1"}, "field 'attempt' of 'claimed' event: expected an integer >= 0 and <= 1000000, got '1'", "attempt"),
        (
            {"occurred_at": "2025-01-01T12:00:00"},
            "field 'occurred_at' of 'claimed' event: expected a UTC timestamp like '2024-01-31T12:00:00.123Z', "
            "got '2025-01-01T12:00:00'",
            "occurred_at",
        ),
        (
            {"occurred_at": "2025-01-01T12:00:00.123456Z"},
            "field 'occurred_at' of 'claimed' event: expected a UTC timestamp like '2024-01-31T12:00:00.123Z', "
            "got '2025-01-01T12:00:00.123456Z'",
            "occurred_at",
        ),
        (
            {"lease_deadline": "2025-13-01T00:00:00Z"},
            "field 'lease_deadline' of 'claimed' event: expected a UTC timestamp like '2024-01-31T12:00:00.123Z', "
            "got '2025-13-01T00:00:00Z' (month must be in 1..12)",
            "lease_deadline",
        ),
        ({"schema_version": 2}, "field 'schema_version' of 'claimed' event: expected an integer equal to 1, got 2", "schema_version"),
        ({"event_id": ""}, "field 'event_id' of 'claimed' event: expected a string of 1-128 characters, got ''", "event_id"),
        ({"causation_id": 7}, "field 'causation_id' of 'claimed' event: expected a string of 1-128 characters or null, got 7", "causation_id"),
        (
            {"surprise": 1},
            "field 'surprise' of 'claimed' event is not allowed (fields of 'claimed': event_id, job_id, type, "
            "occurred_at, schema_version, causation_id, actor, attempt, worker_id, lease_deadline)",
            "surprise",
        ),
    ],
)
def test_invalid_fields_are_named_with_what_is_allowed(changes: dict[str, Any], message: str, field: str) -> None:
    error = decode_error(orjson.dumps(claimed_dict(**changes)))
    assert str(error) == message
    assert (error.event_type, error.field) == ("claimed", field)


def test_a_missing_field_is_named() -> None:
    data = claimed_dict()
    del data["worker_id"]
    error = decode_error(orjson.dumps(data))
    assert str(error) == "field 'worker_id' of 'claimed' event is missing (expected a string of 1-200 characters)"


def test_several_problems_are_listed() -> None:
    data = claimed_dict(attempt=-1, worker_id="", lease_deadline=None, actor="", event_id="")
    message = str(decode_error(orjson.dumps(data)))
    assert message.count("field '") == 3
    assert message.endswith("(and 2 more problems)")


def test_unknown_event_types_list_the_known_ones() -> None:
    error = decode_error(orjson.dumps(claimed_dict(type="foo")))
    assert str(error) == f"unknown event type 'foo' (known: {KNOWN})"
    assert error.field == "type"


def test_an_event_without_a_type_is_refused() -> None:
    data = claimed_dict()
    del data["type"]
    assert str(decode_error(orjson.dumps(data))) == f"event has no 'type' field (known types: {KNOWN})"


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"event_id": x}', "not valid JSON at byte 13: unexpected character, expected a JSON value"),
        (b'{"\xc3\xa9": x}', "not valid JSON at byte 7: unexpected character, expected a JSON value"),
        (b"", "not valid JSON at byte 0: Input is a zero-length, empty document"),
        (b"\xff\xfe{}", "not valid JSON at byte 0: str is not valid UTF-8: surrogates not allowed"),
        (b'{"a": 1} x', "not valid JSON at byte 9: unexpected content after document"),
        (b"[1, 2]", "an event must be a JSON object, got an array"),
        (b'"claimed"', "an event must be a JSON object, got a string"),
        (b"null", "an event must be a JSON object, got null"),
        (b"42", "an event must be a JSON object, got a number"),
    ],
)
def test_malformed_documents_are_explained(data: bytes, message: str) -> None:
    assert str(decode_error(data)) == message


def test_oversized_events_are_refused_before_parsing() -> None:
    assert str(decode_error(b"x" * 2_000_000)) == "event is 2,000,000 bytes, over the limit of 1,048,576"
    data = encode(JobLog().claimed())
    assert str(decode_error(data, max_bytes=100)) == f"event is {len(data)} bytes, over the limit of 100"
    assert decode(data, max_bytes=len(data)) is not None


def test_non_bytes_input_is_refused() -> None:
    assert str(decode_error("{}")) == "an event must be bytes, got str"  # type: ignore[arg-type]
    assert str(decode_error(None)) == "an event must be bytes, got NoneType"  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("args", "problem"),
    [
        (b"[1]", "expected a JSON object, got [1]"),
        (b'{"n":1e400}', "n: inf is not a finite number"),
        (b'{"n":NaN}', "n: nan is not a finite number"),
        (b'{"n":{"m":[Infinity]}}', "n.m[0]: inf is not a finite number"),
        (f'{{"n":{2**70}}}'.encode(), f"n: integer {2**70} is outside the 64-bit range"),
    ],
)
def test_args_must_be_a_json_object_of_finite_values(args: bytes, problem: str) -> None:
    template = encode(JobLog().enqueued(args={"placeholder": 0}))
    data = template.replace(b'{"placeholder":0}', args)
    assert str(decode_error(data)) == f"field 'args' of 'enqueued' event: {problem}"


def test_nested_option_errors_are_named() -> None:
    data = orjson.loads(encode(JobLog().enqueued()))
    data["options"]["max_attempts"] = 0
    message = str(decode_error(orjson.dumps(data)))
    assert message == "field 'options.max_attempts' of 'enqueued' event: input should be greater than or equal to 1, got 0"
    data["options"]["max_attempts"] = 3
    data["priority"] = "urgent"
    message = str(decode_error(orjson.dumps(data)))
    assert message == "field 'priority' of 'enqueued' event: expected one of 'critical', 'high', 'normal', 'low', got 'urgent'"


def test_deep_nesting_is_a_decode_error() -> None:
    assert isinstance(decode_error(b"[" * 100_000), EventDecodeError)
    deep = b'{"type":"enqueued","args":' + b'{"a":' * 5000 + b"1" + b"}" * 5000 + b"}"
    assert isinstance(decode_error(deep), EventDecodeError)


def test_encode_refuses_oversized_events() -> None:
    event = JobLog().enqueued(args={"blob": "x" * 2_000_000})
    with pytest.raises(EventEncodeError, match=r"'enqueued' event job-1-e001 is 2,000,\d+ bytes, over the limit of 1,048,576"):
        encode(event)
    assert len(encode(event, max_bytes=None)) > DEFAULT_MAX_EVENT_BYTES


# --------------------------------------------------------------------------------------------
# garbage never raises anything but EventDecodeError
# --------------------------------------------------------------------------------------------

GARBAGE = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@GARBAGE
@given(data=st.binary(max_size=600))
def test_random_bytes_raise_only_the_decode_error(data: bytes) -> None:
    try:
        decode(data)
    except EventDecodeError as error:
        assert str(error)


@GARBAGE
@given(value=json_values)
def test_random_json_raises_only_the_decode_error(value: Any) -> None:
    with pytest.raises(EventDecodeError):
        decode(orjson.dumps(value))


@GARBAGE
@given(event=any_event, data=st.data())
def test_corrupted_events_raise_only_the_decode_error(event: Event, data: Any) -> None:
    # Given a valid encoded event, with some bytes replaced, inserted or removed
    raw = bytearray(encode(event))
    for _ in range(data.draw(st.integers(1, 4), label="edits")):
        at = data.draw(st.integers(0, len(raw)), label="at")
        kind = data.draw(st.sampled_from(["replace", "insert", "delete"]), label="kind")
        byte = data.draw(st.binary(min_size=1, max_size=3), label="bytes")
        if kind == "replace":
            raw[at : at + len(byte)] = byte
        elif kind == "insert":
            raw[at:at] = byte
        else:
            del raw[at : at + len(byte)]
    # Then decoding either gives a valid event or raises EventDecodeError, nothing else
    try:
        decoded = decode(bytes(raw))
    except EventDecodeError as error:
        assert str(error)
    else:
        assert decode(encode(decoded)) == decoded


@GARBAGE
@given(event=any_event, data=st.data())
def test_fields_replaced_by_random_json_raise_only_the_decode_error(event: Event, data: Any) -> None:
    document = orjson.loads(encode(event))
    field = data.draw(st.sampled_from(sorted(document)), label="field")
    action = data.draw(st.sampled_from(["replace", "delete", "add"]), label="action")
    if action == "replace":
        document[field] = data.draw(json_values, label="value")
    elif action == "delete":
        del document[field]
    else:
        document[data.draw(st.text(max_size=10), label="new field")] = data.draw(json_values, label="value")
    try:
        decoded = decode(orjson.dumps(document))
    except EventDecodeError as error:
        assert str(error)
    else:
        assert isinstance(decoded, Event)


def test_a_decode_error_is_a_value_error() -> None:
    assert issubclass(EventDecodeError, ValueError)


def test_attempt_events_written_before_claim_ids_decode_without_one() -> None:
    old = (
        b'{"event_id":"e1","job_id":"j","type":"attempt_succeeded","occurred_at":"2025-01-01T12:00:00.000Z",'
        b'"schema_version":1,"causation_id":null,"actor":"worker:w1","attempt":0,"result":null}'
    )
    event = decode(old)
    assert event.type == "attempt_succeeded" and event.claim_id is None
    due = decode(old.replace(b'"attempt_succeeded"', b'"due"').replace(b',"result":null', b',"timer":"retry"'))
    assert (due.timer, due.sequence) == ("retry", None)
