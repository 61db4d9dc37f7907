"""Which event ends an attempt: one pure rule, for the worker and for ``eventjobs.testing``.

Why this module exists: an attempt can end in many ways, some through the handler and some
through whatever runs it, and each must become exactly one event that the log can hold. The
worker and the testing kit tell ``attempt_end`` what happened; it returns the event:

* ``Returned(value)``       the handler returned  -> ``outcome_event`` (succeeded, snoozed, or failed:
  a ``Retry`` / ``Cancel`` marker, a result over its budget ``ResultTooLarge``, not None or a dict)
* ``Raised(error)``         the handler raised    -> ``outcome_event`` (failed, retryable per ``retry_on``)
* ``TimedOut()``            the job's timeout passed          -> ``attempt_timed_out``
* ``CancelledWhileRunning()`` a cancel was seen while it ran  -> ``attempt_failed`` ``Cancelled``
* ``ShutDown(...)``         the worker stopped before the end -> ``attempt_failed`` ``WorkerShutdown`` (retryable)
* ``NoHandler(...)``        no handler registered for the name -> ``attempt_failed`` ``UnknownJob``
* ``NotRecordable(error)``  the runner failed to get an outcome -> ``attempt_failed`` ``InvalidHandlerResult``

Whatever it is, the event can be written: an outcome that cannot be built (a user exception
whose ``str`` raises, say) becomes ``InvalidHandlerResult`` with the reason and its traceback, and
an event that does not encode within ``max_event_bytes`` is replaced by ``InvalidHandlerResult``
saying why. That check encodes the event once more than the writer does: about 2 us for a small
event on the development machine.

Pure: the caller passes "now"; whether a retryable failure is retried is ``fold.apply``'s.
"""

from __future__ import annotations

import traceback as traceback_module
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from eventjobs.core.codec import encode
from eventjobs.core.commands import attempt_timed_out_event
from eventjobs.core.events import AttemptFailedEvent, AttemptSnoozedEvent, AttemptSucceededEvent, AttemptTimedOutEvent
from eventjobs.core.limits import DEFAULT_MAX_EVENT_BYTES
from eventjobs.core.outcome import WorkerFailure, outcome_event, worker_failure_event
from eventjobs.core.records import ReadyRecord

__all__ = [
    "RunningAttempt",
    "AttemptEndEvent",
    "CancelledWhileRunning",
    "Happened",
    "NoHandler",
    "NotRecordable",
    "Raised",
    "Returned",
    "ShutDown",
    "TimedOut",
    "attempt_end",
]

AttemptEndEvent = AttemptSucceededEvent | AttemptFailedEvent | AttemptSnoozedEvent | AttemptTimedOutEvent


@dataclass(frozen=True)
class RunningAttempt:
    """The attempt to end, as the one running it knows it (its ready record and its claim)."""

    job_id: str
    attempt: int
    actor: str
    retry_on: tuple[str, ...] = ("Exception",)
    timeout_s: float = 30.0
    claim_id: str | None = None  # the runner's `claimed` event id: the fold accepts only that claim's events
    backoff: Callable[[int], float] | None = None  # the job's callable backoff (the worker runs user code)
    max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES

    @classmethod
    def of(
        cls, ready: ReadyRecord, *, actor: str, claim_id: str | None = None,
        backoff: Callable[[int], float] | None = None, max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> RunningAttempt:
        """The attempt a ready record offers, run by ``actor`` under the claim ``claim_id``."""
        return cls(job_id=ready.job_id, attempt=ready.attempt, actor=actor, retry_on=ready.options.retry_on,
                   timeout_s=ready.options.timeout_s, claim_id=claim_id, backoff=backoff,
                   max_event_bytes=max_event_bytes)


@dataclass(frozen=True)
class Returned:
    """The handler returned ``value`` (a result, None, or a ``Retry`` / ``Cancel`` / ``Snooze`` marker)."""

    value: Any


@dataclass(frozen=True)
class Raised:
    """The handler raised ``error`` (with its traceback)."""

    error: BaseException


@dataclass(frozen=True)
class TimedOut:
    """The job's ``timeout`` passed while the handler ran."""


@dataclass(frozen=True)
class CancelledWhileRunning:
    """A cancel of the job was seen while its handler ran; the runner stopped it."""


@dataclass(frozen=True)
class ShutDown:
    """The worker ``worker_id`` stopped before the handler finished (after ``grace_s``)."""

    worker_id: str
    grace_s: float
    traceback: str = ""  # where the worker stopped it


@dataclass(frozen=True)
class NoHandler:
    """No handler is registered for ``name`` in the app ``app`` (``registered`` are the names that are)."""

    name: str
    app: str
    registered: tuple[str, ...] = ()


@dataclass(frozen=True)
class NotRecordable:
    """Running the attempt failed outside the handler (``error``), so it has no outcome of its own."""

    error: BaseException


Happened = Returned | Raised | TimedOut | CancelledWhileRunning | ShutDown | NoHandler | NotRecordable


def attempt_end(attempt: RunningAttempt, happened: Happened, *, now: datetime) -> AttemptEndEvent:
    """The event that ends ``attempt`` after ``happened``, at ``now``.

    Never raises, and the event encodes within ``attempt.max_event_bytes``, for an attempt whose
    own fields (ids, actor) make a valid event well within it, as any attempt a worker could claim.
    """
    try:
        event = _ending(attempt, happened, now)
        encode(event, max_bytes=attempt.max_event_bytes)
        return event
    except Exception as error:  # noqa: BLE001 - an attempt must end with an event, whatever went wrong
        return _failure(attempt, WorkerFailure.INVALID_RESULT,
                        f"the attempt's outcome could not be recorded: {_describe(error)}", now, _traceback(error))


def _ending(attempt: RunningAttempt, happened: Happened, now: datetime) -> AttemptEndEvent:
    match happened:
        case Returned(value) | Raised(value):
            return outcome_event(
                value, job_id=attempt.job_id, attempt=attempt.attempt, retry_on=attempt.retry_on, occurred_at=now,
                actor=attempt.actor, backoff=attempt.backoff, max_event_bytes=attempt.max_event_bytes,
                claim_id=attempt.claim_id,
            )
        case TimedOut():
            return attempt_timed_out_event(attempt.job_id, attempt.attempt, timeout_s=attempt.timeout_s, now=now,
                                           actor=attempt.actor, claim_id=attempt.claim_id)
        case CancelledWhileRunning():
            return _failure(attempt, WorkerFailure.CANCELLED, "cancel requested while running; stopped at a heartbeat",
                            now)
        case ShutDown(worker_id, grace_s, traceback):
            return _failure(attempt, WorkerFailure.WORKER_SHUTDOWN,
                            f"worker {worker_id} shut down before the job finished (grace {grace_s:g} s)", now, traceback)
        case NoHandler(name, app, registered):
            known = ", ".join(sorted(registered)) or "none"
            return _failure(attempt, WorkerFailure.UNKNOWN_JOB,
                            f"no handler registered for job {name!r} in app {app!r} (registered: {known})", now)
        case NotRecordable(error):
            return _failure(attempt, WorkerFailure.INVALID_RESULT,
                            f"the attempt's outcome could not be recorded: {_describe(error)}", now, _traceback(error))
    raise TypeError(f"not something that happened to an attempt: {happened!r}")


def _failure(attempt: RunningAttempt, kind: WorkerFailure, message: str, now: datetime, traceback: str = "") -> AttemptFailedEvent:
    return worker_failure_event(kind, message, job_id=attempt.job_id, attempt=attempt.attempt, occurred_at=now,
                                actor=attempt.actor, traceback=traceback, max_event_bytes=attempt.max_event_bytes,
                                claim_id=attempt.claim_id)


def _describe(error: BaseException) -> str:
    """``Type: message`` of an error, even one whose ``str`` raises."""
    try:
        text = str(error)
    except Exception:  # noqa: BLE001 - a user's exception type may fail to print
        text = "<the error's message could not be printed>"
    return f"{type(error).__name__}: {text}"


def _traceback(error: BaseException) -> str:
    try:
        return "".join(traceback_module.format_exception(type(error), error, error.__traceback__))
    except Exception:  # noqa: BLE001 - as above
        return ""
