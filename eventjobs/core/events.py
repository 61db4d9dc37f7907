"""The job event catalogue: every fact about a job, as frozen pydantic models.

Why this module exists: the event log is the source of truth, so the shape of an event is the
system's most important contract. Every event is flat JSON: the envelope (``event_id``,
``job_id``, ``type``, ``occurred_at``, ``schema_version``, ``causation_id``, ``actor``) sits
beside the type's own fields, with no nested "data" object. ``JobEvent`` is one union
discriminated on ``type``; ``EVENT_TYPES`` maps each type string to its model.

Validation is strict (no "1" for 1, no 1.0 for an int, no unknown fields) and uses
pydantic-core's native checks wherever possible, because decoding is on the hot path of every
processor. Timestamps are aware UTC with millisecond precision; on the wire they are
``2024-01-31T12:00:00.123Z`` (see ``UtcTimestamp``). ``args`` and ``result`` must be JSON objects
(finite floats, 64-bit integers), so any event survives encode/decode unchanged.

``docs/events.md`` is generated from these models (``python -m eventjobs.contract.docgen``): the
field descriptions and the ``written_by`` notes below are the documentation.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, ClassVar, Literal, Union, get_args

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, GetCoreSchemaHandler, GetJsonSchemaHandler, TypeAdapter
from pydantic.json_schema import JsonSchemaValue
from pydantic_core import core_schema

from eventjobs.core.clock import format_utc_ms, utc_ms
from eventjobs.core.limits import MAX_DEPENDENCIES, MAX_PROBE_HOPS
from eventjobs.core.options import MAX_DELAY_S, QUEUE_NAME_RE, DependencyFailure, JobOptionsSpec, Priority

__all__ = [
    "CURRENT_SCHEMA_VERSION",
    "DERIVED_TYPES",
    "EVENT_ADAPTER",
    "EVENT_TYPES",
    "LINKED_TYPES",
    "TIMESTAMP_PATTERN",
    "AttemptFailedEvent",
    "AttemptSnoozedEvent",
    "AttemptStartedEvent",
    "AttemptSucceededEvent",
    "AttemptTimedOutEvent",
    "CancelRequestedEvent",
    "CancelledEvent",
    "ClaimedEvent",
    "CompletedEvent",
    "DeadLetterRetriedEvent",
    "DeadLetteredEvent",
    "DependencyProbeEvent",
    "DependencyReopenedEvent",
    "DependencyRequestedEvent",
    "DependencyResolvedEvent",
    "DiscardedEvent",
    "RetentionPassedEvent",
    "DueEvent",
    "DuplicateRejectedEvent",
    "DebouncedEvent",
    "DEPENDENCY_OUTCOMES",
    "EnqueuedEvent",
    "ExpiredEvent",
    "FailedEvent",
    "HeartbeatEvent",
    "JobEvent",
    "LeaseExpiredEvent",
    "ProgressEvent",
    "RetryScheduledEvent",
    "ScheduledEvent",
    "UtcTimestamp",
    "check_json_object",
    "is_claim",
    "parse_wire_timestamp",
]

CURRENT_SCHEMA_VERSION = 1

# --------------------------------------------------------------------------------------------
# Field types
# --------------------------------------------------------------------------------------------

#: The only timestamp form accepted on the wire: UTC, "Z", at most millisecond precision.
TIMESTAMP_PATTERN = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,3})?Z$"  # [0-9], not \d: ASCII digits in Python and JSON Schema alike


_fromisoformat = datetime.fromisoformat
_TIMESTAMP_EXAMPLE = "a UTC timestamp like '2024-01-31T12:00:00.123Z'"


def parse_wire_timestamp(text: str) -> datetime:
    """Parse ``YYYY-MM-DDTHH:MM:SS[.f{1,3}]Z`` (exactly ``TIMESTAMP_PATTERN``) to an aware UTC datetime.

    The positional checks pin the format (so ``fromisoformat``'s other ISO forms are refused);
    ``fromisoformat`` checks the digits and ranges in C. The result's tzinfo is the
    ``timezone.utc`` singleton: pydantic's own parser would attach a new tzinfo object, which
    the garbage collector must track, to every datetime.
    """
    n = len(text)
    if (
        (n == 20 or 22 <= n <= 24)
        and text[-1] == "Z"
        and text[4] == "-"
        and text[7] == "-"
        and text[10] == "T"
        and text[13] == ":"
        and text[16] == ":"
        and text.isascii()
        and (n == 20 or (text[19] == "." and text[20:-1].isdigit()))
    ):
        try:
            return _fromisoformat(text)
        except ValueError as exc:
            raise ValueError(f"expected {_TIMESTAMP_EXAMPLE}, got {text!r} ({exc})") from None
    raise ValueError(f"expected {_TIMESTAMP_EXAMPLE}, got {text[:60]!r}")


class _UtcTimestampMarker:
    """Schema for ``UtcTimestamp``.

    From JSON: a string matching ``TIMESTAMP_PATTERN`` (UTC, ``Z``, at most milliseconds),
    parsed by ``parse_wire_timestamp``. From Python: an aware datetime, converted to UTC and
    truncated to milliseconds; naive datetimes are rejected. Serialized to JSON as
    ``YYYY-MM-DDTHH:MM:SS.mmmZ``.
    """

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: GetCoreSchemaHandler) -> core_schema.CoreSchema:
        from_json = core_schema.no_info_after_validator_function(parse_wire_timestamp, core_schema.str_schema())
        from_python = core_schema.no_info_after_validator_function(
            utc_ms, core_schema.datetime_schema(tz_constraint="aware")
        )
        return core_schema.json_or_python_schema(
            json_schema=from_json,
            python_schema=from_python,
            serialization=core_schema.plain_serializer_function_ser_schema(
                format_utc_ms, when_used="json", return_schema=core_schema.str_schema()
            ),
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, schema: core_schema.CoreSchema, handler: GetJsonSchemaHandler) -> JsonSchemaValue:
        return {"type": "string", "format": "date-time", "pattern": TIMESTAMP_PATTERN}


UtcTimestamp = Annotated[datetime, _UtcTimestampMarker]

_I64_MIN = -(2**63)
_U64_MAX = 2**64 - 1


def _json_problem(value: Any, path: str) -> str | None:
    """Why ``value`` is not a JSON value orjson can write and read back unchanged, or None."""
    kind = type(value)
    if kind is str or kind is bool or value is None:
        return None
    if kind is int:
        return None if _I64_MIN <= value <= _U64_MAX else f"{path}: integer {value} is outside the 64-bit range"
    if kind is float:
        return None if math.isfinite(value) else f"{path}: {value} is not a finite number"
    if kind is dict:
        for key, item in value.items():
            if type(key) is not str:
                return f"{path}: key {key!r} is not a string"
            problem = _json_problem(item, f"{path}.{key}")
            if problem:
                return problem
        return None
    if kind is list:
        for index, item in enumerate(value):
            problem = _json_problem(item, f"{path}[{index}]")
            if problem:
                return problem
        return None
    return f"{path}: {kind.__name__} is not a JSON value (use str, int, float, bool, None, list, dict)"


def check_json_object(value: dict[str, Any]) -> dict[str, Any]:
    """Accept a dict only if it is JSON all the way down (finite floats, 64-bit ints, lists, str keys)."""
    for key, item in value.items():
        kind = type(item)
        if kind is str or kind is bool or item is None:
            continue
        problem = _json_problem(item, str(key))
        if problem:
            raise ValueError(problem)
    return value


JsonObject = Annotated[dict[str, Any], AfterValidator(check_json_object)]
EventId = Annotated[str, Field(min_length=1, max_length=128)]
Text = Annotated[str, Field(max_length=1_000_000)]
Attempt = Annotated[int, Field(ge=0, le=1_000_000)]
Seconds = Annotated[float, Field(ge=0, allow_inf_nan=False)]
JobName = Annotated[str, Field(min_length=1, max_length=200, pattern=r"^[A-Za-z_][A-Za-z0-9_.:-]*$")]
QueueName = Annotated[str, Field(pattern=f"^{QUEUE_NAME_RE.pattern}$")]

# --------------------------------------------------------------------------------------------
# Envelope
# --------------------------------------------------------------------------------------------


#: ``written_by`` of the types only the processor writes (``DERIVED_TYPES`` is read from it).
DERIVED_WRITER = "processor (derived)"


class _Event(BaseModel):
    """Envelope fields shared by every event."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)

    #: Who appends this event (documentation; see docs/events.md).
    written_by: ClassVar[str] = ""

    event_id: EventId = Field(description="Unique, time-ordered id (UUIDv7; derived events: UUIDv8 from the cause).")
    job_id: EventId = Field(description="The job; also the Kafka key, so a job's events stay in order.")
    type: str = Field(description="Discriminator: which event this is.")
    occurred_at: UtcTimestamp = Field(description="When it happened (UTC, ms). The only clock the core knows.")
    schema_version: Annotated[int, Field(ge=1, le=CURRENT_SCHEMA_VERSION)] = Field(
        CURRENT_SCHEMA_VERSION, description="Envelope/payload version, for upcasting old events."
    )
    causation_id: EventId | None = Field(None, description="The event that caused this one, if any.")
    actor: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="Who wrote it: 'producer:host:pid', 'processor:3', 'worker:w1', 'timer:0', 'operator:alice'."
    )


_ATTEMPT = "0-based attempt number this event is about."

#: Attempt events name the claim they belong to (see the fold's claim check).
_CLAIM_ID_DOC = (
    "The claim this event is about: the event_id of the worker's `claimed` event for this attempt, or of its "
    "`attempt_started` when that start was also the claim (it carries `lease_deadline`). "
    "The fold accepts it only from the claim it accepted (the job's `claim_id`); an event of a refused or "
    "older claim is recorded as rejected and decides nothing. None (events written before claim ids "
    "existed, or by a writer that holds no claim): the attempt number and status are checked as before "
    "(and, for attempt_started, the worker_id), without the claim check."
)
ClaimId = Annotated[EventId | None, Field(description=_CLAIM_ID_DOC)]


class EnqueuedEvent(_Event):
    """A job was submitted."""

    written_by: ClassVar[str] = "producer (Python API, CLI, a handler's ctx.enqueue)"
    type: Literal["enqueued"] = "enqueued"
    name: JobName = Field(description="Job type: selects a handler registered in the app.")
    queue: QueueName = Field(description="Queue the job runs on.")
    args: JsonObject = Field(description="Arguments for the handler (a JSON object).")
    options: JobOptionsSpec = Field(description="Retry budget, backoff, timeout, ttl, retry_on, capabilities.")
    run_at: UtcTimestamp | None = Field(None, description="Do not run before this time (None: at once).")
    priority: Annotated[Priority, Field(strict=False)] = Field(
        Priority.NORMAL, description="critical > high > normal > low."
    )
    idempotency_key: Annotated[str, Field(min_length=1, max_length=512)] | None = Field(
        None, description="Deduplication key; the job id is derived from it."
    )
    parent_job_id: EventId | None = Field(None, description="The job that enqueued this one, if any.")
    depends_on: Annotated[list[EventId], Field(min_length=1, max_length=MAX_DEPENDENCIES)] | None = Field(
        None,
        description="Jobs that must end first (distinct ids, not this job's own): the job waits (status waiting) until "
        "each has an outcome, then runs if all completed (or with on_dependency_failure 'run'), else is cancelled.",
    )
    on_dependency_failure: DependencyFailure | None = Field(
        None, description="With depends_on: 'cancel' (the default) or 'run' when a dependency does not complete."
    )


class ScheduledEvent(_Event):
    """The job waits for its ``run_at`` (derived from an ``enqueued`` with a future run_at)."""

    written_by: ClassVar[str] = DERIVED_WRITER
    type: Literal["scheduled"] = "scheduled"
    run_at: UtcTimestamp = Field(description="When the timer service makes the job due.")


class DueEvent(_Event):
    """A timer fired: a scheduled job's run_at, or a retry's backoff, has passed; or a pending job's
    ready record is lost and is published again (timer ``republish``).

    A ready record is a hint and can be lost (a ready topic's retention, a record the workers'
    group read past without a claim that stands). While a job stays pending, the processor looks
    at its ready record after 1 hour, then after 2, 4, 8, 16 and every 24 hours
    (``housekeeping.ReadyRepublish``), and publishes it again only if the workers' group has read
    past it or it is gone (a record still waiting in a paused or busy queue is left alone). A
    re-published record is marked, and a worker runs it only once its claim is accepted.
    """

    written_by: ClassVar[str] = "timer service (run_at, retry); processor (republish)"
    type: Literal["due"] = "due"
    attempt: Attempt = Field(description="The attempt that becomes ready (must be the job's current attempt).")
    timer: Literal["run_at", "retry", "republish"] = Field(
        description="Which timer fired: run_at (scheduled -> pending), retry (retrying -> pending), or republish "
        "(pending stays pending and its ready record is published again)."
    )
    sequence: Attempt | None = Field(
        None,
        description="Timer republish only: which re-publish of this attempt's ready record it is (0 for the first); "
        "accepted only if it is the job's ready_republishes, so a timer fired twice re-publishes once. None for "
        "run_at and retry.",
    )


class ClaimedEvent(_Event):
    """A worker took the job for one attempt and holds a lease on it."""

    written_by: ClassVar[str] = "worker"
    type: Literal["claimed"] = "claimed"
    attempt: Attempt = Field(description=_ATTEMPT)
    worker_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(description="The claiming worker.")
    lease_deadline: UtcTimestamp = Field(description="The lease ends here unless a heartbeat extends it.")


class AttemptStartedEvent(_Event):
    """The handler started running.

    After a ``claimed`` of the attempt, it names that claim. With ``lease_deadline`` it is also the
    claim (a worker that starts the handler right after claiming writes one event, not two): the
    fold accepts it only while the job is pending, as it would a ``claimed``, and its own
    ``event_id`` becomes the job's claim.
    """

    written_by: ClassVar[str] = "worker"
    type: Literal["attempt_started"] = "attempt_started"
    attempt: Attempt = Field(description=_ATTEMPT)
    worker_id: Annotated[str, Field(min_length=1, max_length=200)] = Field(
        description="Must be the claiming worker (with lease_deadline: the worker claiming now)."
    )
    claim_id: ClaimId = None
    lease_deadline: UtcTimestamp | None = Field(
        None,
        description="Set only when this start is also the claim (from pending; claim_id then is None or this "
        "event's own event_id): the lease ends here unless a heartbeat extends it. None: the start of an attempt "
        "claimed by an earlier `claimed` event.",
    )


class ProgressEvent(_Event):
    """The handler reported progress (``ctx.progress(pct, message)``)."""

    written_by: ClassVar[str] = "worker"
    type: Literal["progress"] = "progress"
    attempt: Attempt = Field(description=_ATTEMPT)
    percent: Annotated[float, Field(ge=0, le=100, allow_inf_nan=False)] = Field(description="0 to 100.")
    message: Annotated[str, Field(max_length=10_000)] = Field("", description="Free text.")
    claim_id: ClaimId = None


class HeartbeatEvent(_Event):
    """The worker is alive and extends its lease."""

    written_by: ClassVar[str] = "worker"
    type: Literal["heartbeat"] = "heartbeat"
    attempt: Attempt = Field(description=_ATTEMPT)
    lease_deadline: UtcTimestamp = Field(description="New end of the lease (only a later one counts).")
    claim_id: ClaimId = None


class AttemptSucceededEvent(_Event):
    """The handler returned None or a dict."""

    written_by: ClassVar[str] = "worker"
    type: Literal["attempt_succeeded"] = "attempt_succeeded"
    attempt: Attempt = Field(description=_ATTEMPT)
    result: JsonObject | None = Field(None, description="The dict the handler returned, if any.")
    claim_id: ClaimId = None


class AttemptFailedEvent(_Event):
    """The handler raised, returned ``Retry`` or ``Cancel``, or returned something invalid."""

    written_by: ClassVar[str] = "worker"
    type: Literal["attempt_failed"] = "attempt_failed"
    attempt: Attempt = Field(description=_ATTEMPT)
    error_type: Annotated[str, Field(min_length=1, max_length=500)] = Field(description="Exception type name.")
    message: Text = Field(description="str(exception) or the marker's reason.")
    traceback: Text = Field("", description="Formatted traceback ('' when nothing was raised).")
    retryable: bool = Field(description="False for Cancel, invalid results, and exceptions outside retry_on.")
    retry_delay_s: Annotated[float, Field(ge=0, le=MAX_DELAY_S, allow_inf_nan=False)] | None = Field(
        None, description="Delay chosen by the worker (Retry(delay=...) or a callable backoff); None: the spec's backoff."
    )
    claim_id: ClaimId = None


class AttemptTimedOutEvent(_Event):
    """The attempt ran longer than the job's timeout."""

    written_by: ClassVar[str] = "worker (or a timer that enforces timeouts)"
    type: Literal["attempt_timed_out"] = "attempt_timed_out"
    attempt: Attempt = Field(description=_ATTEMPT)
    timeout_s: Annotated[float, Field(gt=0, allow_inf_nan=False)] = Field(description="The timeout that was exceeded.")
    claim_id: ClaimId = None


class LeaseExpiredEvent(_Event):
    """The worker's lease ran out without a result (worker died or stalled)."""

    written_by: ClassVar[str] = "processor (its housekeeping timers)"
    type: Literal["lease_expired"] = "lease_expired"
    attempt: Attempt = Field(description=_ATTEMPT)
    lease_deadline: UtcTimestamp = Field(description="The deadline that passed (must be the job's current one).")


class RetryScheduledEvent(_Event):
    """A failed attempt will be retried after a backoff delay."""

    written_by: ClassVar[str] = DERIVED_WRITER
    type: Literal["retry_scheduled"] = "retry_scheduled"
    attempt: Attempt = Field(description="The next attempt number.")
    due_at: UtcTimestamp = Field(description="When the timer service makes the retry due.")
    delay_s: Seconds = Field(description="due_at - occurred_at, in seconds.")


class CompletedEvent(_Event):
    """The job finished successfully (terminal)."""

    written_by: ClassVar[str] = DERIVED_WRITER
    type: Literal["completed"] = "completed"
    attempt: Attempt = Field(description="The attempt that succeeded.")
    result: JsonObject | None = Field(None, description="The handler's result.")


class FailedEvent(_Event):
    """The job failed for good: no retry left, or not retryable. Followed by ``dead_lettered``."""

    written_by: ClassVar[str] = DERIVED_WRITER
    type: Literal["failed"] = "failed"
    attempt: Attempt = Field(description="The last attempt.")
    reason: Text = Field(description="Why it will not be retried.")
    error_type: Annotated[str, Field(min_length=1, max_length=500)] = Field(description="The last error's type.")
    message: Text = Field(description="The last error's message.")
    traceback: Text = Field("", description="The last error's traceback.")


class CancelRequestedEvent(_Event):
    """Someone asked to cancel the job."""

    written_by: ClassVar[str] = "operator / producer (API, CLI)"
    type: Literal["cancel_requested"] = "cancel_requested"
    reason: Text = Field("", description="Why.")


class CancelledEvent(_Event):
    """The job was cancelled (terminal)."""

    written_by: ClassVar[str] = DERIVED_WRITER
    type: Literal["cancelled"] = "cancelled"
    reason: Text = Field("", description="Why.")


class ExpiredEvent(_Event):
    """The job's TTL passed before it started."""

    written_by: ClassVar[str] = "timer service"
    type: Literal["expired"] = "expired"
    reason: Text = Field("", description="Free text from the timer service.")


class DeadLetteredEvent(_Event):
    """The job moved to the dead-letter queue (terminal until retried or discarded)."""

    written_by: ClassVar[str] = DERIVED_WRITER
    type: Literal["dead_lettered"] = "dead_lettered"
    reason: Text = Field(description="Why: attempts exhausted, not retryable, or expired.")
    error_type: Annotated[str, Field(max_length=500)] = Field("", description="The last error's type ('' if none).")
    message: Text = Field("", description="The last error's message.")
    traceback: Text = Field("", description="The last error's traceback.")


class DeadLetterRetriedEvent(_Event):
    """An operator sent a dead-lettered job back to run, with a fresh attempt budget.

    ``causation_id`` must be the ``event_id`` of the ``dead_lettered`` event being retried: that
    makes the action idempotent and stops a stale click from retrying a later dead-letter. A job
    that expired while waiting for dependencies goes on as the answers it holds say (waiting for
    the others, or cancelled by a failure among them); the dependents its failure answered are
    asked to wait for it again (``dependency_reopened``).
    """

    written_by: ClassVar[str] = "operator (CLI/API)"
    type: Literal["dead_letter_retried"] = "dead_letter_retried"
    reason: Text = Field("", description="Why.")


class DiscardedEvent(_Event):
    """An operator dropped a dead-lettered job for good (terminal).

    ``causation_id`` must be the ``event_id`` of the ``dead_lettered`` event being discarded.
    """

    written_by: ClassVar[str] = "operator (CLI/API)"
    type: Literal["discarded"] = "discarded"
    reason: Text = Field("", description="Why.")


class RetentionPassedEvent(_Event):
    """A job's retention has passed (``attempt`` is the job's attempt when it finished).

    ``scope="dead_letter"``: the job was dead-lettered for its dead-letter retention without being
    retried, so it is discarded. ``scope="finished"``: the job has been finished (completed,
    cancelled or discarded) for ``retain_completed``, so the processor forgets it: its state
    leaves the table and the changelog, its idempotency key is free again, and its history stays
    in the event log and ClickHouse.
    """

    written_by: ClassVar[str] = "processor (its housekeeping timers)"
    type: Literal["retention_passed"] = "retention_passed"
    attempt: Attempt = Field(description="The job's attempt when it finished (its retention began).")
    scope: Literal["dead_letter", "finished"] = Field(description="Which retention passed.")
    due_at: UtcTimestamp = Field(description="When it passed (the timer's due time); later than the job's finished_at.")


#: Writer of the events the processor derives for another job than the one whose event caused them
#: (dependencies cross partitions): they change the other job's state, unlike ``DERIVED_TYPES``.
LINKED_WRITER = "processor (for another job)"

#: What a dependency's end looked like to its dependent: its terminal status, ``missing`` (no such
#: job: never enqueued, or forgotten after its retention), or ``refused`` (it has too many dependents).
DependencyOutcomeName = Literal["completed", "dead_lettered", "cancelled", "discarded", "missing", "refused"]
DEPENDENCY_OUTCOMES: tuple[str, ...] = get_args(DependencyOutcomeName)


class DependencyRequestedEvent(_Event):
    """A waiting job asks a job it depends on to tell it its outcome (keyed by the dependency).

    Derived from the dependent's ``enqueued`` and written to the dependency's partition, whose
    lane answers at once with ``dependency_resolved`` if the dependency has ended or does not
    exist, or else records the dependent and answers when the dependency ends.
    """

    written_by: ClassVar[str] = LINKED_WRITER
    type: Literal["dependency_requested"] = "dependency_requested"
    dependent_id: EventId = Field(description="The job that waits for this one.")


class DependencyResolvedEvent(_Event):
    """A dependency of the job ended (or does not exist); keyed by the dependent job.

    Its ``causation_id`` is the ``dependency_requested`` it answers, and its id is derived from
    that and the round (0, then one more each time the dependency reopened the request with
    ``dependency_reopened``), so an answer given twice (at once, or when the dependency ended) is
    one answer, and the answer of an earlier round is told apart from the current one.
    """

    written_by: ClassVar[str] = LINKED_WRITER
    type: Literal["dependency_resolved"] = "dependency_resolved"
    dependency_id: EventId = Field(description="The dependency that ended.")
    outcome: DependencyOutcomeName = Field(
        description="Its terminal status, or missing (no such job) or refused (it has too many dependents)."
    )
    result: JsonObject | None = Field(None, description="Its result, if it completed with one.")


class DependencyReopenedEvent(_Event):
    """A dependency that answered the job with its failure runs again; keyed by the dependent job.

    The job is asked to wait for the dependency again. Derived when the dependency leaves the
    dead-letter queue (``dead_letter_retried``), or is itself reopened out of a cancel its own
    dependency caused, once for each dependent it answered with that failure (at most
    ``MAX_REVIVABLE_DEPENDENTS``). Its ``causation_id`` is that answer, and its id is derived from
    it. The dependency records the dependent again, and answers it once more when it ends (the next
    round's answer). A dependent that still holds that answer and waits with
    ``on_dependency_failure`` cancel forgets it: if the answer had cancelled it, it waits again
    (with the other answers it already had); if it is dead-lettered, it stays so, and a retry finds
    it waiting. Any other dependent (it ran anyway, was cancelled for another reason, was forgotten
    after its retention) is not touched.
    """

    written_by: ClassVar[str] = LINKED_WRITER
    type: Literal["dependency_reopened"] = "dependency_reopened"
    dependency_id: EventId = Field(description="The dependency that runs again.")


class DependencyProbeEvent(_Event):
    """A cycle check: does the job (the key) wait, through others, for the probe's first job?

    A waiting job sends it to a job it waits for, on behalf of the job whose wait started it. When
    a waiting job records the request of a dependent enqueued no later than itself (around a cycle
    enqueue times cannot all fall, so every cycle has such a wait), it sends a probe with the path
    ``[dependent, itself]`` to each dependency it still waits for (a job that waits again after a
    dead-letter retry or a reopened dependency sends ``[itself]``). A waiting job that receives one
    forwards it the same way, its id appended to the path. A probe that comes back to the first job
    of its path proves a cycle: that job is cancelled with the reason
    ``dependency cycle: A → B → A`` (``A → B``: A waits for B), and its answer ends the others. A
    job drops a probe if it does not wait, if the last job of the path no longer waits for it by
    the request named in ``via``, if it is on the path already, if the path is at the hop limit
    (``MAX_PROBE_HOPS``), or if it forwarded the same ``origin`` before by a path as short.
    """

    written_by: ClassVar[str] = LINKED_WRITER
    type: Literal["dependency_probe"] = "dependency_probe"
    path: Annotated[list[EventId], Field(min_length=1, max_length=MAX_PROBE_HOPS)] = Field(
        description="The job whose wait started the probe, then every waiting job that forwarded it, in order: each "
        "waits for the next, and the last waits for this job."
    )
    origin: EventId = Field(
        description="The answer that would end the wait of the path's first job for its second (for a path of one, "
        "for this job): the id of the dependency_resolved its request awaits. A cycle is proven only if the first job "
        "still awaits it."
    )
    via: EventId = Field(
        description="The answer that would end the wait of the path's last job for this job: a job forwards a probe "
        "only while it holds that request, so a probe about a wait that has ended is dropped."
    )


class AttemptSnoozedEvent(_Event):
    """The handler returned ``Snooze(delay)``: run the job again after the delay, without using an attempt.

    The job becomes scheduled; its next attempt number is one higher but the budget grows by one
    too, so a snooze uses none of it. Over the job's ``max_snoozes`` the attempt fails like an error.
    """

    written_by: ClassVar[str] = "worker"
    type: Literal["attempt_snoozed"] = "attempt_snoozed"
    attempt: Attempt = Field(description=_ATTEMPT)
    delay_s: Annotated[float, Field(ge=0, le=MAX_DELAY_S, allow_inf_nan=False)] = Field(
        description="Seconds until the job runs again."
    )
    claim_id: ClaimId = None
    late_for_rate: bool = Field(
        False, description="Not the handler's: the worker claimed a rate-limited job too late after its grant's start "
        "and gives it back to ask for a new start (once per run; not counted against max_snoozes)."
    )


class DuplicateRejectedEvent(_Event):
    """A second ``enqueued`` for an existing job id (same idempotency key) was refused."""

    written_by: ClassVar[str] = DERIVED_WRITER
    type: Literal["duplicate_rejected"] = "duplicate_rejected"
    idempotency_key: str | None = Field(None, description="The key of the refused enqueue.")
    duplicate_event_id: EventId = Field(description="event_id of the refused enqueued event.")


class DebouncedEvent(_Event):
    """A later enqueue of a debounced job's window replaced the job's args and put its start back.

    Derived from that ``enqueued`` (its ``causation_id``, which carries the new args) while the job
    has not started: the job stays one job, scheduled for ``run_at`` (``debounce`` after the
    enqueue, never earlier than it was). An enqueue after the job started is refused
    (``duplicate_rejected``) instead. See docs/flow-control.md.
    """

    written_by: ClassVar[str] = DERIVED_WRITER
    type: Literal["debounced"] = "debounced"
    run_at: UtcTimestamp = Field(description="When the job now starts (its scheduled time after the replacement).")


class SlotRequestedEvent(_Event):
    """A job of a concurrency-limited key asks the key's owner for a slot (keyed by the owner).

    The owner is a derived id (``eventjobs.core.slots.owner_id``: the limit's name and the key), so
    every job of the key asks the one processor lane that owns that id, wherever the job lives.
    Derived by the job's lane each time the job would become pending (a new attempt: the first, a
    retry, a run_at or snooze that is due, a dead-letter retry, its dependencies answered); its id
    is derived from the job's ``enqueued`` and the attempt, so deriving it again is a duplicate.
    The owner grants a free slot at once (``slot_granted``), or acts by the strategy.
    """

    written_by: ClassVar[str] = LINKED_WRITER
    type: Literal["slot_requested"] = "slot_requested"
    requester_id: EventId = Field(description="The job that asks for a slot.")
    attempt: Attempt = Field(description="The requester's attempt the slot is for.")
    limit: Annotated[str, Field(min_length=1, max_length=200)] = Field(description="The limit's name.")
    key: Annotated[str, Field(min_length=1, max_length=200)] = Field(description="The key whose jobs share the slots.")
    max: Annotated[int, Field(ge=1, le=1_000)] | None = Field(
        None, description="Slots of the key (the requester's option; None: no cap, only a rate)."
    )
    strategy: Literal["queue", "cancel_newest", "cancel_in_progress"] = Field(
        description="What the owner does when every slot is taken."
    )
    rate: Annotated[str, Field(pattern=r"^[0-9]+/[smh]$", max_length=20)] | None = Field(
        None, description="Starts of the key per second, minute or hour ('20/s'; None: no rate)."
    )
    burst: Annotated[int, Field(ge=1, le=10_000)] = Field(1, description="Starts let through at once beyond the rate.")


class SlotReleasedEvent(_Event):
    """A job gives its slot back, or withdraws its request (keyed by the owner).

    Derived by the job's lane when the job leaves the attempt the slot was for: it completed,
    failed, was cancelled or dead-lettered, its lease expired, it is retried or snoozed (a new
    attempt asks again). Its ``causation_id`` is the request and its id is derived from it, so a
    slot is released once whatever the job's lane derives again.
    """

    written_by: ClassVar[str] = LINKED_WRITER
    type: Literal["slot_released"] = "slot_released"
    requester_id: EventId = Field(description="The job that held (or waited for) the slot.")


class SlotGrantedEvent(_Event):
    """The key's owner gave the job a slot (keyed by the job): it becomes pending and may be claimed,
    or, held back by the limit's rate, scheduled until ``not_before``.

    Its ``causation_id`` is the request it grants and its id is derived from it.
    """

    written_by: ClassVar[str] = LINKED_WRITER
    type: Literal["slot_granted"] = "slot_granted"
    owner_id: EventId = Field(description="The limit's owner (slot table) that granted it.")
    not_before: UtcTimestamp | None = Field(
        None, description="A rate limit's start: the job waits (scheduled) until then (None: it may start at once)."
    )


class SlotRefusedEvent(_Event):
    """The key's owner refused the job's request (keyed by the job), which cancels it.

    Strategy ``cancel_newest``: every slot was taken when the job asked. Strategy
    ``cancel_in_progress``: a newer job asked while this one still waited. Its ``causation_id``
    is the request, its id derived from it.
    """

    written_by: ClassVar[str] = LINKED_WRITER
    type: Literal["slot_refused"] = "slot_refused"
    owner_id: EventId = Field(description="The limit's owner that refused it.")
    reason: Text = Field(description="Why, for the job's history.")


class SlotRevokedEvent(_Event):
    """Strategy ``cancel_in_progress``: a newer job of the key asked, so this holder is cancelled (keyed by it).

    A job that has not started is cancelled at once; a claimed or running one gets a cancel
    request (its attempt's end cancels it, and releases the slot). Its ``causation_id`` is the
    holder's request, its id derived from it (one revocation per slot).
    """

    written_by: ClassVar[str] = LINKED_WRITER
    type: Literal["slot_revoked"] = "slot_revoked"
    owner_id: EventId = Field(description="The limit's owner that revoked the slot.")
    reason: Text = Field(description="Why, for the job's history.")


class LimitChangedEvent(_Event):
    """An operator set a limit's max and rate for a key at run time (keyed by the key's owner).

    From then on the owner uses these instead of the options its jobs' requests carry, until a
    ``reset`` hands the choice back to the requests. Raising ``max`` grants waiting jobs at once;
    lowering it lets the holders finish. A new rate spaces the grants made after it.
    """

    written_by: ClassVar[str] = "operator / producer (API, CLI)"
    type: Literal["limit_changed"] = "limit_changed"
    limit: Annotated[str, Field(min_length=1, max_length=200)] = Field(description="The limit's name.")
    key: Annotated[str, Field(min_length=1, max_length=200)] = Field(description="The key ('*': a limit without key).")
    max: Annotated[int, Field(ge=1, le=1_000)] | None = Field(None, description="Slots of the key (None: no cap).")
    rate: Annotated[str, Field(pattern=r"^[0-9]+/[smh]$", max_length=20)] | None = Field(
        None, description="Starts of the key per second, minute or hour (None: no rate)."
    )
    burst: Annotated[int, Field(ge=1, le=10_000)] = Field(1, description="Starts let through at once beyond the rate.")
    reset: bool = Field(False, description="Back to the options of the jobs' requests (max, rate and burst ignored).")


JobEvent = Annotated[
    Union[  # noqa: UP007 - one member a line, so that a new event is a one-line change
        EnqueuedEvent,
        ScheduledEvent,
        DueEvent,
        ClaimedEvent,
        AttemptStartedEvent,
        ProgressEvent,
        HeartbeatEvent,
        AttemptSucceededEvent,
        AttemptFailedEvent,
        AttemptTimedOutEvent,
        LeaseExpiredEvent,
        RetryScheduledEvent,
        CompletedEvent,
        FailedEvent,
        CancelRequestedEvent,
        CancelledEvent,
        ExpiredEvent,
        DeadLetteredEvent,
        DeadLetterRetriedEvent,
        DiscardedEvent,
        RetentionPassedEvent,
        DuplicateRejectedEvent,
        DependencyRequestedEvent,
        DependencyResolvedEvent,
        DependencyReopenedEvent,
        DependencyProbeEvent,
        AttemptSnoozedEvent,
        DebouncedEvent,
        SlotRequestedEvent,
        SlotReleasedEvent,
        SlotGrantedEvent,
        SlotRefusedEvent,
        SlotRevokedEvent,
        LimitChangedEvent,
    ],
    Field(discriminator="type"),
]

#: Validates (and, in the codec, decodes) any event; dispatches on ``type`` natively.
EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(JobEvent)

#: type string -> model, in catalogue order (the union's order, so the two cannot disagree).
EVENT_TYPES: dict[str, type[_Event]] = {
    cls.model_fields["type"].default: cls for cls in get_args(get_args(JobEvent)[0])
}

#: Types only the processor writes, as consequences of another event. When they come back
#: through the log, ``apply`` recognises them as already reflected in the state.
DERIVED_TYPES: frozenset[str] = frozenset(
    type_ for type_, cls in EVENT_TYPES.items() if cls.written_by == DERIVED_WRITER
)

#: Types the processor derives for another job than the triggering event's: written to that job's
#: partition (``job_partition``), and applied there like any event of that job.
LINKED_TYPES: frozenset[str] = frozenset(
    type_ for type_, cls in EVENT_TYPES.items() if cls.written_by == LINKED_WRITER
)

#: Linked types addressed to a concurrency limit's owner (its slot table), not to a job.
SLOT_OWNER_TYPES: frozenset[str] = frozenset({"slot_requested", "slot_released", "limit_changed"})

Event = _Event  # the common base, for isinstance checks and type hints


def is_claim(event: _Event) -> bool:
    """Whether ``event`` claims an attempt: a ``claimed``, or an ``attempt_started`` that is also the
    claim (it carries ``lease_deadline``). For readers of the log that count claims."""
    return event.type == "claimed" or (event.type == "attempt_started" and event.__dict__.get("lease_deadline") is not None)
