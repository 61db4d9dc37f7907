"""Faust integration: enqueue jobs from a Faust agent, consume the job event log as typed records.

Why this module exists: teams that already run faust-streaming want to start jobs from their
agents and react to what happens to those jobs (a completion, a dead letter) without learning a
second consumer API, and without a second, laxer idea of what a valid job or event is. So:

* Enqueueing goes through the app's ``App._build_enqueue`` (the same validation: ``UnknownJob``,
  ``InvalidJobArguments``, ``InvalidJobOptions``; nothing is sent on bad input) and the same
  idempotency rule (``idempotency_key`` -> the job id, hence the Kafka key and partition, so the
  processor refuses a duplicate). The app's writer (``eventjobs.log.writer.LogWriter.append``) names the job's partition explicitly
  (``job_partition``), whatever partitioner the Faust app's own producer is configured with.
* Reading goes through the strict codec (``eventjobs.core.codec.decode``) and the same key check
  as the processor, so an agent never sees an event the processor would not have applied.

Sending path, and why it is the app's writer and not Faust's producer: ``LogWriter.append`` uses the
project's producer (acks=all, idempotent) whatever the Faust app's ``producer_acks`` says, checks
the payload size with the project's ``PayloadTooLarge`` error, and returns only once the broker
acknowledged the event. An agent that awaits ``enqueue`` therefore does not move on -- and Faust
does not commit the offset of the input record -- before the enqueue is durable: a crash in
between redelivers the input, and the idempotency key turns the second enqueue into the same job.
The one thing this does not give is atomicity with a Faust ``exactly_once`` transaction; with
an idempotency key it is not needed.

Bad records on the log (not an event, a schema violation, a tombstone, a key that is not the
event's job id) are acknowledged and skipped by ``JobEventsTopic`` with a WARNING on the
``eventjobs.integrations.faust`` logger (topic, partition, offset, reason), and handed to an optional
``on_invalid`` callback; they never reach the agent and never crash it. They are not copied
anywhere by this module: the eventjobs processor reads the same log and already quarantines each
one verbatim, with the reason, to ``<namespace>.quarantine``.
"""

from __future__ import annotations

import inspect
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from datetime import datetime
from typing import Any

import orjson

try:
    import faust
    from faust.exceptions import ValueDecodeError
    from faust.serializers.codecs import Codec
    from faust.types import AppT, Message
    from faust.types.models import ModelArg
except ImportError as error:  # pragma: no cover - the extra is part of the test install
    raise ImportError(
        "eventjobs.integrations.faust needs faust-streaming; install it with: pip install 'eventjobs[faust]'"
    ) from error

from eventjobs.app import App
from eventjobs.core.clock import format_utc_ms
from eventjobs.core.codec import DEFAULT_MAX_EVENT_BYTES, EventDecodeError, EventEncodeError, admit, decode, encode
from eventjobs.core.refused import Refused
from eventjobs.core.events import EVENT_TYPES, EnqueuedEvent, JobEvent

__all__ = [
    "FaustEnqueuer",
    "InvalidJobEventRecord",
    "JobEventCodec",
    "JobEventRecord",
    "JobEventSchema",
    "JobEventsTopic",
    "enqueue_from_faust",
    "job_events_topic",
]

log = logging.getLogger("eventjobs.integrations.faust")

_ACTOR_MAX = 200  # the envelope's limit on `actor`
#: Where a record keeps its validated event; Faust leaves "__"-names out of repr and asdict.
_EVENT_SLOT = "__eventjobs_event"


# --------------------------------------------------------------------------------------------
# Typed records
# --------------------------------------------------------------------------------------------


def _json_default(value: Any) -> Any:
    if isinstance(value, datetime):
        return format_utc_ms(value)
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def _event_from_mapping(data: Mapping[str, Any]) -> JobEvent:
    """A strict event from a flat mapping (a record's fields, or JSON read from any topic).

    Fields that are None and that the event's type does not declare are dropped first (a
    record carries every type's fields), then the mapping goes through the strict decoder, so
    the result is exactly what the log would hold. Datetimes are written in the wire form here
    rather than parsed by Faust: Faust's ISO-8601 parser reads ``.123Z`` as 123 microseconds.
    """
    model = EVENT_TYPES.get(str(data.get("type")))
    declared = model.model_fields if model is not None else {}
    wire = {key: value for key, value in data.items()
            if key != "__faust" and (value is not None or key in declared)}
    try:
        payload = orjson.dumps(wire, default=_json_default, option=orjson.OPT_PASSTHROUGH_DATETIME)
    except (TypeError, orjson.JSONEncodeError) as error:
        raise EventDecodeError(f"not a job event: {error}") from None
    return decode(payload, max_bytes=max(len(payload), DEFAULT_MAX_EVENT_BYTES))


class JobEventRecord(faust.Record, serializer="json", include_metadata=False):
    """One job event as a Faust record: the envelope, plus every payload field of the catalogue.

    Fields a given ``type`` does not have are None (see ``docs/events.md`` for which type has
    which field). Every record is backed by a strictly validated event: ``to_event()`` returns
    the pydantic model (``CompletedEvent``, ...), and the record serializes to exactly the wire
    form of the log (timestamps ``...T12:00:00.123Z``, no Faust metadata), so it can be forwarded
    to another topic or stored in a table and read back unchanged.
    """

    # envelope
    event_id: str
    job_id: str
    type: str
    occurred_at: datetime
    actor: str
    schema_version: int = 1
    causation_id: str | None = None
    # enqueued
    name: str | None = None
    queue: str | None = None
    args: dict[str, Any] | None = None
    options: dict[str, Any] | None = None
    run_at: datetime | None = None
    priority: str | None = None
    idempotency_key: str | None = None
    parent_job_id: str | None = None
    depends_on: list[str] | None = None
    on_dependency_failure: str | None = None
    # dependencies: a request to a dependency, its answer to the waiting job
    dependent_id: str | None = None
    dependency_id: str | None = None
    outcome: str | None = None
    # a dependency cycle probe: the waits it followed
    path: list[str] | None = None
    origin: str | None = None
    via: str | None = None
    # concurrency limits: a slot request to a key's owner, its release, the owner's answers
    requester_id: str | None = None
    limit: str | None = None
    key: str | None = None
    max: int | None = None
    strategy: str | None = None
    rate: str | None = None
    burst: int | None = None
    owner_id: str | None = None
    not_before: datetime | None = None
    reset: bool | None = None  # limit_changed: back to the jobs' options
    late_for_rate: bool | None = None  # attempt_snoozed: given back as too late for its rate's start
    # attempts, leases, progress
    attempt: int | None = None
    timer: str | None = None
    sequence: int | None = None
    worker_id: str | None = None
    claim_id: str | None = None
    lease_deadline: datetime | None = None
    percent: float | None = None
    message: str | None = None
    # outcomes
    result: dict[str, Any] | None = None
    error_type: str | None = None
    traceback: str | None = None
    retryable: bool | None = None
    retry_delay_s: float | None = None
    timeout_s: float | None = None
    due_at: datetime | None = None
    delay_s: float | None = None
    reason: str | None = None
    scope: str | None = None
    duplicate_event_id: str | None = None

    @classmethod
    def from_event(cls, event: JobEvent) -> JobEventRecord:
        """The record of a validated event (keeps the event for ``to_event``)."""
        data = event.model_dump(mode="json")  # plain values: enum -> str, nested options -> dict
        for key in data:
            value = getattr(event, key)
            if isinstance(value, datetime):
                data[key] = value  # keep the aware UTC datetime, not its string
        record = cls(**data)
        record.__dict__[_EVENT_SLOT] = event
        return record

    @classmethod
    def from_data(cls, data: Any, *, preferred_type: ModelArg | None = None) -> JobEventRecord:
        """Faust's entry point for deserialization: accepts an event, a record or a flat mapping.

        Raises ``EventDecodeError`` (a ``ValueError``, which Faust reports as a value decode
        error) for anything that is not a valid event.
        """
        if isinstance(data, JobEventRecord):
            return data
        if isinstance(data, Mapping):
            return cls.from_event(_event_from_mapping(data))
        if type(data) in EVENT_TYPES.values():
            return cls.from_event(data)
        raise EventDecodeError(f"not a job event: {type(data).__name__}")

    def to_event(self) -> JobEvent:
        """The strict pydantic event (validated again if this record was built by hand)."""
        event: JobEvent | None = self.__dict__.get(_EVENT_SLOT)
        if event is None:
            event = _event_from_mapping(self.asdict())
            self.__dict__[_EVENT_SLOT] = event
        return event

    def to_representation(self) -> Mapping[str, Any]:
        """The event's wire form (what ``encode`` writes), so ``dumps()`` matches the log."""
        return orjson.loads(encode(self.to_event(), max_bytes=None))  # type: ignore[no-any-return]  # orjson.loads of an encoded event: a mapping


# --------------------------------------------------------------------------------------------
# Codec, schema, topic
# --------------------------------------------------------------------------------------------


class JobEventCodec(Codec):
    """Faust codec for event values: eventjobs' strict ``decode`` / ``encode`` (not Faust's json).

    Loads to the pydantic event (``JobEventRecord.from_data`` turns it into a record when the
    topic's ``value_type`` is ``JobEventRecord``); dumps events, records or flat mappings.
    """

    def __init__(self, max_bytes: int = DEFAULT_MAX_EVENT_BYTES, **kwargs: Any) -> None:
        super().__init__(max_bytes=max_bytes, **kwargs)
        self.max_bytes = max_bytes

    def _loads(self, s: bytes) -> JobEvent:
        return decode(s, max_bytes=self.max_bytes)

    def _dumps(self, s: Any) -> bytes:
        if isinstance(s, JobEventRecord):
            s = s.to_event()
        elif isinstance(s, Mapping):
            s = _event_from_mapping(s)
        data = encode(s, max_bytes=self.max_bytes)
        if len(data) > 8_000 and s.type in ("enqueued", "attempt_succeeded"):  # args, results: budgets of the limit
            verdict = admit(data, None, max_bytes=self.max_bytes)
            if isinstance(verdict, Refused):
                raise EventEncodeError(f"{verdict.reason}; nothing was sent")
        return data


class JobEventSchema(faust.Schema[str, JobEventRecord]):
    """Keys are job ids (str); values are ``JobEventRecord`` via ``JobEventCodec``.

    Adds the processor's other check: the record key must be the event's job id (otherwise the
    event would sit on the wrong partition, out of order with the rest of its job).
    """

    def __init__(self, *, max_bytes: int = DEFAULT_MAX_EVENT_BYTES, value_type: type[JobEventRecord] = JobEventRecord) -> None:
        super().__init__(key_type=str, value_type=value_type, key_serializer="raw",
                         value_serializer=JobEventCodec(max_bytes), allow_empty=False)

    def loads_value(self, app: AppT, message: Message, *, loads: Callable[..., Any] | None = None,
                    serializer: Any = None) -> JobEventRecord:
        if message.value is None:
            raise ValueDecodeError("empty record (tombstone) on the job event log")
        record: JobEventRecord = super().loads_value(app, message, loads=loads, serializer=serializer)
        if message.key is not None and message.key != record.job_id.encode():
            raise ValueDecodeError(f"record key {message.key!r} is not the event's job_id {record.job_id!r}")
        return record


class InvalidJobEventRecord:
    """What ``on_invalid`` receives for a skipped record: where it is, the raw bytes, and why."""

    __slots__ = ("key", "offset", "partition", "reason", "topic", "value")

    def __init__(self, message: Message, reason: str) -> None:
        self.topic: str = message.topic
        self.partition: int = message.partition
        self.offset: int = message.offset
        self.key: bytes | None = message.key
        self.value: bytes | None = message.value
        self.reason = reason

    def __repr__(self) -> str:
        return f"<InvalidJobEventRecord {self.topic}[{self.partition}]@{self.offset}: {self.reason}>"


OnInvalid = Callable[[InvalidJobEventRecord], Awaitable[None] | None]


class JobEventsTopic(faust.Topic):
    """A Faust topic over the job event log that skips bad records instead of failing the agent.

    Faust's default on a decode error is to acknowledge the record and then raise the error in
    the agent's stream, which stops the agent. Here the record is acknowledged (Faust's
    conductor does that before calling us) and logged, ``on_invalid`` is called, and the stream
    carries on with the next record. ``skipped`` counts them in this process.
    """

    def __init__(self, *args: Any, on_invalid: OnInvalid | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_invalid = on_invalid
        self.skipped = 0

    def _clone_args(self) -> Mapping[str, Any]:
        return {**super()._clone_args(), "on_invalid": self.on_invalid}

    async def on_key_decode_error(self, exc: Exception, message: Message) -> None:
        await self._skip(exc, message)

    async def on_value_decode_error(self, exc: Exception, message: Message) -> None:
        await self._skip(exc, message)

    async def _skip(self, exc: Exception, message: Message) -> None:
        self.skipped += 1
        bad = InvalidJobEventRecord(message, str(exc) or type(exc).__name__)
        log.warning(
            "skipped record %s[%d]@%d of the job event log: %s "
            "(the eventjobs processor quarantines it with this reason)",
            bad.topic, bad.partition, bad.offset, bad.reason,
        )
        if self.on_invalid is not None:
            try:
                outcome = self.on_invalid(bad)
                if inspect.isawaitable(outcome):
                    await outcome
            except Exception:  # a broken callback must not stop the stream either
                log.exception("on_invalid callback failed for %r", bad)


def job_events_topic(faust_app: faust.App, ej_app: App, *, on_invalid: OnInvalid | None = None,
                     **topic_options: Any) -> JobEventsTopic:
    """The Faust topic over ``<namespace>.events``, delivering ``JobEventRecord`` values.

    Keys are job ids (str). Decoding is eventjobs' strict codec with the app's
    ``max_event_bytes``; bad records are skipped as described in ``JobEventsTopic``. The topic is
    the app's own log (never created or configured by Faust: create it with
    ``eventjobs topics apply``). Extra keyword arguments go to ``faust.Topic`` (e.g. ``maxsize``).
    """
    schema = JobEventSchema(max_bytes=ej_app.settings.max_event_bytes)
    return JobEventsTopic(faust_app, topics=[ej_app.names.events], schema=schema, on_invalid=on_invalid,
                          **topic_options)


# --------------------------------------------------------------------------------------------
# Enqueue from an agent
# --------------------------------------------------------------------------------------------


class FaustEnqueuer:
    """Enqueue jobs of ``ej_app`` from Faust agents.

    Same validation and idempotency as ``App.enqueue`` (it is ``App._build_enqueue`` + ``App.writer.append``);
    the event's ``actor`` names the Faust app (``faust:<app id>:<host>:<pid>``) so the log shows
    where a job came from. Given the Faust app, the eventjobs producer is closed when the Faust
    worker shuts down.
    """

    def __init__(self, ej_app: App, faust_app: faust.App | None = None) -> None:
        self.app = ej_app
        if faust_app is None:
            self.actor = ej_app.actor
        else:
            self.actor = f"faust:{faust_app.conf.id}:{socket.gethostname()}:{os.getpid()}"[:_ACTOR_MAX]
            faust_app.on_before_shutdown.connect(self._on_shutdown, weak=False)  # type: ignore[arg-type]  # faust awaits a coroutine receiver

    def build(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> EnqueuedEvent:
        """The validated ``enqueued`` event (nothing sent); raises like ``App.enqueue``."""
        event = self.app._build_enqueue(name, args, **options)
        if event.actor != self.actor:
            event = event.model_copy(update={"actor": self.actor})
        return event

    async def enqueue(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> str:
        """Validate, append with acks=all, return the job id once the broker acknowledged it.

        Raises ``UnknownJob``, ``InvalidJobArguments``, ``InvalidJobOptions`` before anything is
        sent, ``PayloadTooLarge`` for an oversized event, ``KafkaUnavailable`` if the broker
        cannot be reached. With ``idempotency_key`` a redelivered input record gives the same
        job id, and the processor refuses the duplicate.
        """
        event = self.build(name, args, **options)
        await self.app.writer.append([event])
        return event.job_id

    async def _on_shutdown(self, sender: Any, **kwargs: Any) -> None:
        await self.app.close()


async def enqueue_from_faust(ej_app: App, name: str, args: dict[str, Any] | None = None, **options: Any) -> str:
    """Enqueue from inside a Faust agent: ``FaustEnqueuer(ej_app).enqueue(name, args, **options)``.

    Prefer a module-level ``FaustEnqueuer(ej_app, faust_app)``: it tags events with the Faust
    app and closes the producer at shutdown.
    """
    return await FaustEnqueuer(ej_app).enqueue(name, args, **options)
