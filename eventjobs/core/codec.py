"""Bytes <-> events: the only way an event enters or leaves the process.

Why this module exists: whatever arrives from Kafka may be garbage (a bug in another producer,
a truncated record, a hostile payload). ``decode`` either returns a valid ``JobEvent`` or raises
``EventDecodeError`` with one line a human can act on, naming the field, what is allowed and
what was found; it never raises anything else, so the shell can quarantine the record with the
reason and carry on. ``encode`` writes flat JSON with orjson and refuses to produce anything
``decode`` would reject (too large, not JSON).

Decoding runs pydantic-core's JSON parser and validators natively in one pass over the union
(the ``type`` discriminator picks the model without trying the others). The slow path (working
out a good message) only runs after a failure.
"""

from __future__ import annotations

import functools
from datetime import datetime
from typing import Any

import orjson
from pydantic import BaseModel, ValidationError

from eventjobs.core.clock import format_utc_ms
from eventjobs.core.events import EVENT_ADAPTER, EVENT_TYPES, TIMESTAMP_PATTERN, Event, JobEvent
from eventjobs.core.limits import DEFAULT_MAX_EVENT_BYTES, MIN_MAX_EVENT_BYTES, size_limits, truncate_text
from eventjobs.core.refused import Refused

__all__ = ["DEFAULT_MAX_EVENT_BYTES", "EventDecodeError", "EventEncodeError", "admit", "decode", "encode"]

_validate_json = EVENT_ADAPTER.validator.validate_json  # the SchemaValidator itself: no Python wrapper frame
_KNOWN_TYPES = ", ".join(EVENT_TYPES)
_MAX_PROBLEMS = 3


class EventDecodeError(ValueError):
    """A record is not a valid event. ``str(error)`` is the reason to log or quarantine with.

    ``event_type`` and ``field`` say where the (first) problem is, when known.
    """

    def __init__(self, message: str, *, event_type: str | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.event_type = event_type
        self.field = field


class EventEncodeError(ValueError):
    """An event cannot be written (not JSON-serializable, or over the size limit)."""


# --------------------------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------------------------


def _encode_default(value: Any) -> Any:
    if type(value) is datetime or isinstance(value, datetime):
        return format_utc_ms(value)
    if isinstance(value, BaseModel):  # nested models: options spec, backoff spec
        return value.__dict__
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def encode(event: Event, *, max_bytes: int | None = DEFAULT_MAX_EVENT_BYTES) -> bytes:
    """The event as flat JSON bytes (field order as declared: envelope first).

    Raises ``EventEncodeError`` if the result would exceed ``max_bytes`` (None: no limit), so a
    producer learns about an oversized payload before it reaches the topic.
    """
    try:
        data = orjson.dumps(event.__dict__, default=_encode_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except (TypeError, orjson.JSONEncodeError) as exc:
        raise EventEncodeError(f"cannot encode {getattr(event, 'type', '?')!r} event: {exc}") from None
    if max_bytes is not None and len(data) > max_bytes:
        raise EventEncodeError(
            f"{event.type!r} event {event.event_id} is {len(data):,} bytes, over the limit of {max_bytes:,}"
        )
    return data


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------


def decode(data: bytes | bytearray | memoryview, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> JobEvent:
    """Parse and validate one event. Raises only ``EventDecodeError`` (a ``ValueError``)."""
    if type(data) is not bytes:
        if isinstance(data, (bytearray, memoryview)):
            data = bytes(data)
        else:
            raise EventDecodeError(f"an event must be bytes, got {type(data).__name__}")
    size = len(data)
    if size > max_bytes:
        raise EventDecodeError(f"event is {size:,} bytes, over the limit of {max_bytes:,}")
    try:
        return _validate_json(data)  # type: ignore[no-any-return]  # the JobEvent adapter's value is an event
    except ValidationError as exc:
        raise _explain(exc, data) from None
    except RecursionError:
        raise EventDecodeError("event is nested too deeply") from None
    except Exception as exc:  # noqa: BLE001 - defensive: nothing but EventDecodeError may escape
        raise EventDecodeError(f"undecodable event: {type(exc).__name__}: {exc}") from None


def admit(value: bytes | None, key: bytes | None, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES) -> JobEvent | Refused:
    """The event an event-log record carries, or why it is not admitted (`Refused`: the quarantine
    kind and reason).

    Why one function: the processor, the projector and the state check must agree on which
    records are events, or the projections and the rebuilt states would fold records the
    processor quarantined. A record is admitted when it has a value, decodes, and its key (if
    any) is the event's job id: a mis-keyed event sits on a partition whose owner does not own
    that job. The size budgets of ``eventjobs.core.limits`` apply too (they keep every job state
    within ``max_bytes``): an enqueued event or a result over its budget is refused, and error
    and reason texts over theirs are truncated (the writers' rule, for producers that skip it).
    """
    if value is None:
        return Refused("tombstone", "empty record (tombstone) on the event log")
    try:
        event = decode(value, max_bytes=max_bytes)
    except EventDecodeError as error:
        return Refused(UNDECODABLE, str(error))
    if key is not None and key != event.job_id.encode():
        return Refused("mis-keyed event", f"record key {key!r} is not the event's job_id {event.job_id!r}")
    if len(value) > _ADMIT_ANY_SIZE and event.type in _SIZE_RULES and max_bytes >= MIN_MAX_EVENT_BYTES:
        return _SIZE_RULES[event.type](event, len(value), size_limits(max_bytes))
    return event


#: The kind of a record that does not decode, or breaks a size budget (counted with them).
UNDECODABLE = "undecodable event"

#: Below this, no event can break a size budget (the smallest budget is the error message's).
_ADMIT_ANY_SIZE = 8_000


def _enqueued_size(event: Any, size: int, limits: Any) -> JobEvent | Refused:
    if size > limits.enqueue_bytes:
        return Refused(UNDECODABLE, f"enqueued event is {size:,} bytes, over the limit of {limits.enqueue_bytes:,} for args and options "
                f"(max_event_bytes {limits.max_event_bytes:,}): its job's state could not be written")
    return event  # type: ignore[no-any-return]  # an event, typed Any to read its fields


def _result_size(event: Any, size: int, limits: Any) -> JobEvent | Refused:
    if event.result is not None and size > limits.result_bytes:
        result = len(orjson.dumps(event.result))
        if result > limits.result_bytes:
            return Refused(UNDECODABLE, f"{event.type} result is {result:,} bytes, over the limit of {limits.result_bytes:,} "
                    f"(max_event_bytes {limits.max_event_bytes:,}): its job's state could not be written")
    return event  # type: ignore[no-any-return]  # an event, typed Any to read its fields


def _text_sizes(event: Any, size: int, limits: Any) -> JobEvent | Refused:
    """Error and reason texts over their budgets (from a producer that does not truncate them) are
    truncated here, by the same rule as the writers apply, so every reader admits the same event."""
    budgets = {"message": limits.error_message_bytes, "traceback": limits.traceback_bytes,
               "reason": limits.reason_bytes}
    update = {}
    for name, budget in budgets.items():
        text = getattr(event, name, None)
        if text is not None:
            cut = truncate_text(text, budget, keep_end=name == "traceback")
            if cut is not text:
                update[name] = cut
    return event.model_copy(update=update) if update else event  # type: ignore[no-any-return]  # an event, typed Any to read its fields


_SIZE_RULES = {
    "enqueued": _enqueued_size,
    "attempt_succeeded": _result_size,
    "dependency_resolved": _result_size,
    "attempt_failed": _text_sizes,
    "cancel_requested": _text_sizes,
    "dead_letter_retried": _text_sizes,
    "discarded": _text_sizes,
    "expired": _text_sizes,
}


def _explain(exc: ValidationError, data: bytes) -> EventDecodeError:
    errors = exc.errors(include_url=False)
    first = errors[0]
    kind = first["type"]
    loc = first["loc"]
    if kind == "json_invalid":
        return EventDecodeError(_json_problem(data, first))
    if not loc:
        if kind == "union_tag_not_found":
            return EventDecodeError(f"event has no 'type' field (known types: {_KNOWN_TYPES})", field="type")
        if kind == "union_tag_invalid":
            tag = (first.get("ctx") or {}).get("tag")
            return EventDecodeError(f"unknown event type {_short(tag)} (known: {_KNOWN_TYPES})", field="type")
        return EventDecodeError(f"an event must be a JSON object, got {_json_kind(first.get('input'))}")
    event_type = str(loc[0])
    problems = [_field_problem(error) for error in errors[:_MAX_PROBLEMS]]
    more = len(errors) - _MAX_PROBLEMS
    message = "; ".join(problems) + (f" (and {more} more problem{'s' if more > 1 else ''})" if more > 0 else "")
    field = ".".join(str(part) for part in loc[1:]) or None
    return EventDecodeError(message, event_type=event_type, field=field)


def _json_problem(data: bytes, error: Any) -> str:
    try:
        orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        text = data.decode("utf-8", "surrogateescape")
        byte = len(text[: exc.pos].encode("utf-8", "surrogateescape"))
        return f"not valid JSON at byte {byte}: {exc.msg}"
    # orjson accepted what pydantic-core refused (e.g. a bare NaN inside args)
    detail = (error.get("ctx") or {}).get("error", error.get("msg", ""))
    return f"not valid JSON: {detail}"


def _field_problem(error: Any) -> str:
    loc = error["loc"]
    event_type = str(loc[0])
    path = ".".join(str(part) for part in loc[1:])
    kind = error["type"]
    where = f"field '{path}' of '{event_type}' event"
    if kind == "missing":
        return f"{where} is missing (expected {_allowed(event_type, path)})"
    if kind == "extra_forbidden":
        known = ", ".join(EVENT_TYPES[event_type].model_fields) if event_type in EVENT_TYPES else "?"
        return f"{where} is not allowed (fields of '{event_type}': {known})"
    if kind == "value_error":
        detail = str((error.get("ctx") or {}).get("error", error["msg"]))
        return f"{where}: {detail}"
    got = _short(error.get("input"))
    parse_error = (error.get("ctx") or {}).get("error")
    if parse_error and kind.startswith(("datetime", "date", "time")):
        got = f"{got} ({parse_error})"
    if len(loc) == 2:  # a top-level field: describe what it accepts
        return f"{where}: expected {_allowed(event_type, path)}, got {got}"
    message = error["msg"]
    return f"{where}: {message[:1].lower()}{message[1:]}, got {got}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _json_kind(value: Any) -> str:
    if isinstance(value, list):
        return "an array"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if value is None:
        return "null"
    return type(value).__name__


@functools.cache
def _allowed(event_type: str, field: str) -> str:
    """What a field accepts, in words, from the model's JSON schema (cached per field)."""
    model = EVENT_TYPES.get(event_type)
    if model is None:
        return "a valid value"
    schema = model.model_json_schema(mode="validation")
    prop = schema.get("properties", {}).get(field)
    if prop is None:
        return "a valid value"
    return _describe_schema(prop, schema.get("$defs", {}))


def _describe_schema(prop: dict[str, Any], defs: dict[str, Any]) -> str:
    if "anyOf" in prop:
        options = [p for p in prop["anyOf"] if p.get("type") != "null"]
        nullable = len(options) < len(prop["anyOf"])
        text = " or ".join(_describe_schema(p, defs) for p in options)
        return f"{text} or null" if nullable else text
    if "$ref" in prop:
        name = prop["$ref"].rsplit("/", 1)[-1]
        target = defs.get(name, {})
        if "enum" in target:
            return _describe_schema(target, defs)
        return f"a {name} object"
    if "const" in prop:
        return repr(prop["const"])
    if "enum" in prop:
        return "one of " + ", ".join(repr(v) for v in prop["enum"])
    kind = prop.get("type")
    if kind == "integer" or kind == "number":
        noun = "an integer" if kind == "integer" else "a number"
        bounds = []
        if "minimum" in prop and prop.get("maximum") == prop["minimum"]:
            return f"{noun} equal to {prop['minimum']}"
        if "minimum" in prop:
            bounds.append(f">= {prop['minimum']}")
        if "exclusiveMinimum" in prop:
            bounds.append(f"> {prop['exclusiveMinimum']}")
        if "maximum" in prop:
            bounds.append(f"<= {prop['maximum']}")
        if "exclusiveMaximum" in prop:
            bounds.append(f"< {prop['exclusiveMaximum']}")
        return " ".join([noun, " and ".join(bounds)]).strip()
    if kind == "string":
        if prop.get("format") == "date-time" and prop.get("pattern") == TIMESTAMP_PATTERN:
            return "a UTC timestamp like '2024-01-31T12:00:00.123Z'"
        parts = ["a string"]
        low, high = prop.get("minLength"), prop.get("maxLength")
        if low and high:
            parts.append(f"of {low}-{high} characters")
        elif high:
            parts.append(f"of at most {high} characters")
        elif low:
            parts.append(f"of at least {low} character{'s' if low > 1 else ''}")
        if "pattern" in prop:
            parts.append(f"matching {prop['pattern']}")
        return " ".join(parts)
    if kind == "boolean":
        return "true or false"
    if kind == "object":
        return "a JSON object"
    if kind == "array":
        return "an array"
    return "a valid value"
