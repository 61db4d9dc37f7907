"""The handler outcome protocol, and its translation into an attempt event.

Why this module exists: what a handler did (returned a value, returned or raised a marker,
raised an exception) must become exactly one ``attempt_succeeded`` or ``attempt_failed``
event, by the same rules in every worker, and this is easy to get subtly wrong inside a worker
loop full of I/O. Here it is one pure function, tested on its own:

* returns ``None`` or a dict                  -> ``attempt_succeeded`` (the dict is the result)
* returns a dict over the result budget       -> ``attempt_failed`` ``ResultTooLarge``, not retryable
  (``eventjobs.core.limits``: the size and the limit are in the message)
* returns anything else                       -> ``attempt_failed``, not retryable
  ("handler returned int; return None or a dict")
* returns or raises ``Retry(reason, delay)``  -> ``attempt_failed``, retryable (``delay`` overrides the backoff)
* returns or raises ``Cancel(reason)``        -> ``attempt_failed``, not retryable (fails at once)
* returns ``Snooze(delay)``                   -> ``attempt_snoozed``: runs again after ``delay``, no attempt used
* raises an exception named in ``retry_on``   -> ``attempt_failed``, retryable
* raises any other exception                  -> ``attempt_failed``, not retryable

and what happens to an attempt through the worker rather than the handler
(``worker_failure_event``): no handler registered for the name, a cancel seen while running, a
result that cannot be written (all not retryable), the worker shutting down (retryable: not the
job's fault).

An error's message and traceback are truncated to their budgets (marked, with the original
length), so no error is too large to be recorded.

Whether a retryable failure is really retried (attempts left? cancel requested?) is decided by
``fold.apply``, not here.
"""

from __future__ import annotations

import enum
import math
import traceback as traceback_module
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import orjson

from eventjobs.core.events import AttemptFailedEvent, AttemptSnoozedEvent, AttemptSucceededEvent, check_json_object
from eventjobs.core.ids import new_event_id
from eventjobs.core.limits import DEFAULT_MAX_EVENT_BYTES, MAX_ERROR_TYPE_CHARS, size_limits, truncate_text
from eventjobs.core.options import MAX_DELAY_S, exception_type_name, matches_retry_on

__all__ = [
    "Cancel",
    "Retry",
    "Snooze",
    "attempt_snoozed_event",
    "WorkerFailure",
    "attempt_failed_event",
    "attempt_succeeded_event",
    "outcome_event",
    "worker_failure_event",
]


def _delay_s(marker: str, delay: Any) -> float:
    """A marker's delay as float seconds, or ValueError naming the marker."""
    if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not math.isfinite(delay) or delay < 0:
        raise ValueError(f"{marker} delay must be a number of seconds >= 0, got {delay!r}")
    return float(delay)


class Retry(Exception):
    """Return (or raise) this from a handler to fail the attempt and retry it.

    ``delay`` (seconds) replaces the job's backoff for this retry. A retry still counts against
    ``max_attempts``.
    """

    def __init__(self, reason: str = "", delay: float | None = None) -> None:
        if delay is not None:
            delay = min(_delay_s("Retry", delay), MAX_DELAY_S)
        super().__init__(reason)
        self.reason = reason
        self.delay = delay

    def __repr__(self) -> str:
        return f"Retry(reason={self.reason!r}, delay={self.delay!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Retry) and (self.reason, self.delay) == (other.reason, other.delay)

    def __hash__(self) -> int:
        return hash((Retry, self.reason, self.delay))


class Cancel(Exception):
    """Return (or raise) this from a handler to fail the job at once, without retrying."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason

    def __repr__(self) -> str:
        return f"Cancel(reason={self.reason!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Cancel) and self.reason == other.reason

    def __hash__(self) -> int:
        return hash((Cancel, self.reason))


class Snooze:
    """Return this from a handler to run the job again after ``delay`` seconds without using an
    attempt (Oban's snooze, River's JobSnooze). A job may snooze ``max_snoozes`` times (option,
    default ``DEFAULT_MAX_SNOOZES``); one more fails the attempt like an error."""

    def __init__(self, delay: float) -> None:
        self.delay = _delay_s("Snooze", delay)
        if self.delay > MAX_DELAY_S:
            raise ValueError(f"Snooze delay must be at most {MAX_DELAY_S:g} s (a year), got {delay!r}")

    def __repr__(self) -> str:
        return f"Snooze(delay={self.delay!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Snooze) and self.delay == other.delay

    def __hash__(self) -> int:
        return hash((Snooze, self.delay))


def attempt_snoozed_event(
    job_id: str, attempt: int, delay_s: float, *, occurred_at: datetime, actor: str, causation_id: str | None = None,
    event_id: str | None = None, claim_id: str | None = None, late_for_rate: bool = False,
) -> AttemptSnoozedEvent:
    """The ``attempt_snoozed`` event: ``attempt`` asked to run again after ``delay_s`` (under the claim
    ``claim_id``); ``late_for_rate``: not the handler's, its worker came too late for its rate's start."""
    return AttemptSnoozedEvent(
        event_id=event_id or new_event_id(), job_id=job_id, occurred_at=occurred_at, causation_id=causation_id,
        actor=actor, attempt=attempt, delay_s=delay_s, claim_id=claim_id, late_for_rate=late_for_rate,
    )


def _format_traceback(exc: BaseException) -> str:
    return "".join(traceback_module.format_exception(type(exc), exc, exc.__traceback__))


def attempt_succeeded_event(
    job_id: str,
    attempt: int,
    result: dict[str, Any] | None,
    *,
    occurred_at: datetime,
    actor: str,
    causation_id: str | None = None,
    event_id: str | None = None,
    claim_id: str | None = None,
) -> AttemptSucceededEvent:
    """The ``attempt_succeeded`` event: ``attempt`` returned ``result`` (under the claim ``claim_id``)."""
    return AttemptSucceededEvent(
        event_id=event_id or new_event_id(), job_id=job_id, occurred_at=occurred_at, causation_id=causation_id,
        actor=actor, attempt=attempt, result=result, claim_id=claim_id,
    )


def attempt_failed_event(
    job_id: str,
    attempt: int,
    *,
    error_type: str,
    message: str,
    traceback: str,
    retryable: bool,
    retry_delay_s: float | None = None,
    occurred_at: datetime,
    actor: str,
    causation_id: str | None = None,
    event_id: str | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    claim_id: str | None = None,
) -> AttemptFailedEvent:
    """The ``attempt_failed`` event: ``attempt`` failed with this error (under the claim ``claim_id``).

    The message and the traceback are truncated to their budgets for ``max_event_bytes``
    (``eventjobs.core.limits``: the start is kept, and of a traceback also the end, with the
    original length), so the event, the ``failed`` / ``dead_lettered`` events derived from it,
    the job's state and its dead-letter record all fit the limit, however large the error was.
    """
    limits = size_limits(max_event_bytes)
    return AttemptFailedEvent(
        event_id=event_id or new_event_id(), job_id=job_id, occurred_at=occurred_at, causation_id=causation_id,
        actor=actor, attempt=attempt, error_type=error_type[:MAX_ERROR_TYPE_CHARS] or "Error",
        message=truncate_text(message, limits.error_message_bytes),
        traceback=truncate_text(traceback, limits.traceback_bytes, keep_end=True),
        retryable=retryable, retry_delay_s=retry_delay_s, claim_id=claim_id,
    )


def outcome_event(
    outcome: Any,
    *,
    job_id: str,
    attempt: int,
    retry_on: Sequence[str],
    occurred_at: datetime,
    actor: str,
    causation_id: str | None = None,
    event_id: str | None = None,
    backoff: Callable[[int], float] | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    claim_id: str | None = None,
) -> AttemptSucceededEvent | AttemptFailedEvent | AttemptSnoozedEvent:
    """Map a handler's return value, or the exception it raised, to the attempt's event.

    ``outcome`` is what the handler returned, or the exception it raised. ``retry_on`` are the
    job's exception type names. ``backoff`` is the job's callable backoff, if it has one: the
    worker is the only place user code can run, so its value for this attempt is put in
    ``retry_delay_s``. ``event_id`` defaults to a new UUIDv7. ``max_event_bytes`` is the
    configured limit: a result over its budget fails the attempt (``ResultTooLarge``, not
    retryable), an error message or traceback over its budget is truncated.
    """
    envelope: dict[str, Any] = {
        "event_id": event_id or new_event_id(),
        "occurred_at": occurred_at,
        "causation_id": causation_id,
        "actor": actor,
        "claim_id": claim_id,
    }

    def failed(error_type: str, message: str, tb: str, retryable: bool, delay: float | None = None) -> AttemptFailedEvent:
        if retryable and delay is None and backoff is not None:
            delay = _callable_delay(backoff, attempt)
        return attempt_failed_event(
            job_id, attempt, error_type=error_type, message=message, traceback=tb, retryable=retryable,
            retry_delay_s=delay, max_event_bytes=max_event_bytes, **envelope,
        )

    if outcome is None or type(outcome) is dict:
        if outcome is not None:
            problem = _result_problem(outcome, max_event_bytes)
            if problem:
                return failed(*problem, "", False)
        return attempt_succeeded_event(job_id, attempt, outcome, **envelope)
    if type(outcome) is Snooze:
        return attempt_snoozed_event(job_id, attempt, outcome.delay, **envelope)
    if isinstance(outcome, Retry):
        tb = _format_traceback(outcome) if outcome.__traceback__ is not None else ""
        return failed("Retry", outcome.reason or "handler asked to retry", tb, True, outcome.delay)
    if isinstance(outcome, Cancel):
        tb = _format_traceback(outcome) if outcome.__traceback__ is not None else ""
        return failed("Cancel", outcome.reason or "handler cancelled the job", tb, False)
    if isinstance(outcome, BaseException):
        exc_type = type(outcome)
        retryable = matches_retry_on(exc_type, retry_on) and isinstance(outcome, Exception)
        return failed(exception_type_name(exc_type), str(outcome), _format_traceback(outcome), retryable)
    return failed(
        "InvalidHandlerResult", f"handler returned {type(outcome).__name__}; return None or a dict", "", False
    )


def _result_problem(result: dict[str, Any], max_event_bytes: int) -> tuple[str, str] | None:
    """(error type, message) saying why a returned dict cannot be stored as a result (None if it can)."""
    try:
        check_json_object(result)
        size = len(orjson.dumps(result))
    except (ValueError, TypeError) as exc:
        return "InvalidHandlerResult", f"handler result is not a JSON object: {exc}"
    limit = size_limits(max_event_bytes).result_bytes
    if size > limit:
        return "ResultTooLarge", (
            f"handler result is {size:,} bytes as JSON, over the limit of {limit:,} for a result "
            f"(3/8 of what max_event_bytes {max_event_bytes:,} leaves after its reserve); store large data "
            f"elsewhere and return a reference"
        )
    return None


def _callable_delay(backoff: Callable[[int], float], attempt: int) -> float | None:
    """The user's backoff for ``attempt``, or None (the processor then uses the spec's fallback)."""
    try:
        seconds = float(backoff(attempt))
    except Exception:  # noqa: BLE001 - the user's backoff failed: the processor uses the spec's fallback
        return None
    if not math.isfinite(seconds) or seconds < 0:
        return None
    return min(seconds, MAX_DELAY_S)


class WorkerFailure(str, enum.Enum):
    """Ways an attempt ends through the worker, not the handler. The value is the error type."""

    UNKNOWN_JOB = "UnknownJob"  # no handler for the name here: another attempt would find none either
    CANCELLED = "Cancelled"  # a cancel was requested while it ran; stopped at a heartbeat
    INVALID_RESULT = "InvalidHandlerResult"  # the attempt's outcome cannot be written
    WORKER_SHUTDOWN = "WorkerShutdown"  # the worker stopped before the handler finished

    @property
    def retryable(self) -> bool:
        return self is WorkerFailure.WORKER_SHUTDOWN


def worker_failure_event(
    kind: WorkerFailure,
    message: str,
    *,
    job_id: str,
    attempt: int,
    occurred_at: datetime,
    actor: str,
    traceback: str = "",
    event_id: str | None = None,
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    claim_id: str | None = None,
) -> AttemptFailedEvent:
    """The ``attempt_failed`` event for an attempt the worker ended (retryable per ``kind``)."""
    return attempt_failed_event(
        job_id, attempt, error_type=kind.value, message=message, traceback=traceback, retryable=kind.retryable,
        occurred_at=occurred_at, actor=actor, event_id=event_id, max_event_bytes=max_event_bytes, claim_id=claim_id,
    )
