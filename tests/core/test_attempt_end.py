"""`attempt_end`: whatever happened to an attempt, one event ends it, and it can be written."""

from __future__ import annotations

from datetime import datetime, timezone

import pytest

from eventjobs.core.attempt_end import (
    RunningAttempt,
    CancelledWhileRunning,
    NoHandler,
    NotRecordable,
    Raised,
    Returned,
    ShutDown,
    TimedOut,
    attempt_end,
)
from eventjobs.core.codec import decode, encode
from eventjobs.core.commands import enqueue
from eventjobs.core.effects import ready_record
from eventjobs.core.events import AttemptFailedEvent, AttemptSnoozedEvent, AttemptSucceededEvent, AttemptTimedOutEvent
from eventjobs.core.fold import apply
from eventjobs.core.limits import DEFAULT_MAX_EVENT_BYTES, size_limits
from eventjobs.core.options import JobOptions
from eventjobs.core import outcome as outcome_module
from eventjobs.core.outcome import Cancel, Retry, Snooze, outcome_event

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
ATTEMPT = RunningAttempt(job_id="job-1", attempt=2, actor="worker:w1", retry_on=("ConnectionError",), timeout_s=5.0,
                  claim_id="claim-1")


def raised(error: BaseException) -> BaseException:
    try:
        raise error
    except BaseException as caught:  # noqa: BLE001 - with its traceback, as a runner catches it
        return caught


def end(happened: object, attempt: RunningAttempt = ATTEMPT) -> object:
    event = attempt_end(attempt, happened, now=NOW)  # type: ignore[arg-type]
    assert decode(encode(event, max_bytes=attempt.max_event_bytes)) == event  # always writable
    assert (event.job_id, event.attempt, event.claim_id, event.occurred_at) == ("job-1", 2, "claim-1", NOW)
    return event


@pytest.mark.parametrize("value", [None, {"sent": 1}, Retry("busy", delay=3), Cancel("refunded"), Snooze(10), 42,
                                   {"big": "x" * size_limits().result_bytes}])
def test_a_returned_value_ends_the_attempt_as_the_outcome_rules_say(value: object) -> None:
    expected = outcome_event(value, job_id="job-1", attempt=2, retry_on=("ConnectionError",), occurred_at=NOW,
                             actor="worker:w1", claim_id="claim-1")
    assert end(Returned(value)).model_dump(exclude={"event_id"}) == expected.model_dump(exclude={"event_id"})


def test_a_raised_exception_retries_only_under_retry_on() -> None:
    retried = end(Raised(raised(ConnectionError("reset"))))
    failed = end(Raised(raised(ValueError("bad input"))))
    assert isinstance(retried, AttemptFailedEvent) and isinstance(failed, AttemptFailedEvent)
    assert (retried.error_type, retried.retryable) == ("ConnectionError", True)
    assert (failed.error_type, failed.message, failed.retryable) == ("ValueError", "bad input", False)
    assert failed.traceback.rstrip().endswith("ValueError: bad input")


def test_a_raised_retry_marker_keeps_its_delay() -> None:
    event = end(Raised(raised(Retry("later", delay=7))))
    assert isinstance(event, AttemptFailedEvent)
    assert (event.error_type, event.retryable, event.retry_delay_s) == ("Retry", True, 7.0)


def test_the_callable_backoff_of_the_job_gives_the_retry_delay() -> None:
    attempt = RunningAttempt(job_id="job-1", attempt=2, actor="worker:w1", claim_id="claim-1", backoff=lambda n: 10.0 * n)
    event = end(Raised(raised(RuntimeError("flaky"))), attempt)
    assert isinstance(event, AttemptFailedEvent) and event.retry_delay_s == 20.0


def test_a_timeout_ends_the_attempt_timed_out_with_the_jobs_timeout() -> None:
    event = end(TimedOut())
    assert isinstance(event, AttemptTimedOutEvent) and event.timeout_s == 5.0


def test_a_snooze_ends_the_attempt_snoozed() -> None:
    event = end(Returned(Snooze(30)))
    assert isinstance(event, AttemptSnoozedEvent) and event.delay_s == 30.0


@pytest.mark.parametrize(("happened", "error_type", "retryable", "message"), [
    (CancelledWhileRunning(), "Cancelled", False, "cancel requested while running; stopped at a heartbeat"),
    (ShutDown("w1", 2.5, "  File x"), "WorkerShutdown", True, "worker w1 shut down before the job finished (grace 2.5 s)"),
    (NoHandler("send", "shop", ("b", "a")), "UnknownJob", False,
     "no handler registered for job 'send' in app 'shop' (registered: a, b)"),
    (NoHandler("send", "shop"), "UnknownJob", False, "no handler registered for job 'send' in app 'shop' (registered: none)"),
    (NotRecordable(raised(OSError("pool closed"))), "InvalidHandlerResult", False,
     "the attempt's outcome could not be recorded: OSError: pool closed"),
])
def test_endings_through_the_runner_say_why_and_whether_to_retry(
    happened: object, error_type: str, retryable: bool, message: str
) -> None:
    event = end(happened)
    assert isinstance(event, AttemptFailedEvent)
    assert (event.error_type, event.retryable, event.message) == (error_type, retryable, message)


def test_a_shutdown_keeps_where_the_worker_stopped_it() -> None:
    event = end(ShutDown("w1", 30, 'File "worker.py", line 9, in _drain'))
    assert isinstance(event, AttemptFailedEvent) and event.traceback == 'File "worker.py", line 9, in _drain'


def test_an_outcome_that_cannot_be_built_still_ends_the_attempt() -> None:
    class Unprintable(Exception):
        def __str__(self) -> str:
            raise RuntimeError("no str for you")

    event = end(Raised(raised(Unprintable())))
    assert isinstance(event, AttemptFailedEvent)
    assert (event.error_type, event.retryable) == ("InvalidHandlerResult", False)
    assert event.message.startswith("the attempt's outcome could not be recorded: RuntimeError: no str for you")
    assert "no str for you" in event.traceback


def test_an_outcome_that_does_not_encode_within_the_limit_is_replaced_by_one_that_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Given a result budget that (wrongly) lets a result over the event limit through: the
    # budgets keep this from happening, and this rule keeps it from stopping a worker if it did
    monkeypatch.setattr(outcome_module, "_result_problem", lambda result, max_event_bytes: None)
    # When the attempt returns such a result
    event = end(Returned({"r": "x" * DEFAULT_MAX_EVENT_BYTES}))
    # Then the attempt fails, not retried, naming the size
    assert isinstance(event, AttemptFailedEvent) and not event.retryable
    assert event.error_type == "InvalidHandlerResult"
    assert "EventEncodeError: 'attempt_succeeded' event" in event.message and "over the limit of 1,048,576" in event.message


def test_an_error_that_cannot_be_an_event_still_ends_the_attempt() -> None:
    # a lone surrogate, as os.fsdecode gives for a file name that is not UTF-8: no event holds it
    name = b"caf\xe9.csv".decode("utf-8", "surrogateescape")
    event = end(Raised(raised(FileNotFoundError(f"no such file: {name}"))))
    assert isinstance(event, AttemptFailedEvent)
    assert (event.error_type, event.retryable) == ("InvalidHandlerResult", False)
    assert event.message.startswith("the attempt's outcome could not be recorded: ValidationError:")
    assert "no such file: caf\\udce9.csv" in event.message  # shown escaped


def test_something_else_is_not_an_ending() -> None:
    event = end("returned")
    assert isinstance(event, AttemptFailedEvent) and event.error_type == "InvalidHandlerResult"
    assert "TypeError: not something that happened to an attempt: 'returned'" in event.message


def test_the_attempt_of_a_ready_record_carries_the_jobs_options() -> None:
    options = JobOptions(retry_on=("KeyError",), timeout=12, max_attempts=4)
    state = apply(None, enqueue("send", {}, options, now=NOW, actor="producer:t", job_id="job-1")).state
    assert state is not None
    attempt = RunningAttempt.of(ready_record(state, NOW), actor="worker:w1", claim_id="claim-1")
    assert (attempt.job_id, attempt.attempt, attempt.retry_on, attempt.timeout_s) == ("job-1", 0, ("KeyError",), 12.0)
    succeeded = attempt_end(attempt, Returned({"ok": True}), now=NOW)
    assert isinstance(succeeded, AttemptSucceededEvent) and succeeded.claim_id == "claim-1"
