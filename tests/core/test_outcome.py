"""The handler outcome protocol mapped to attempt events."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from eventjobs.core.codec import decode, encode
from eventjobs.core.events import AttemptFailedEvent, AttemptSucceededEvent
from eventjobs.core.outcome import Cancel, Retry, WorkerFailure, outcome_event, worker_failure_event

NOW = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)


class PaymentDeclined(Exception):
    pass


def outcome(value: Any, *, retry_on: tuple[str, ...] = ("Exception",), **kwargs: Any) -> Any:
    return outcome_event(
        value, job_id="job-1", attempt=2, retry_on=retry_on, occurred_at=NOW, actor="worker:w1",
        causation_id="cause-1", event_id="out-1", **kwargs,
    )


def raised(exc: BaseException) -> BaseException:
    try:
        raise exc
    except BaseException as caught:  # noqa: BLE001 - capture with its traceback, like a worker does
        return caught


@pytest.mark.parametrize("value", [None, {}, {"sent": 3, "ids": [1, 2], "meta": {"ok": True}}])
def test_none_or_a_dict_succeeds_with_the_dict_as_result(value: Any) -> None:
    event = outcome(value)
    assert event == AttemptSucceededEvent(
        event_id="out-1", job_id="job-1", occurred_at=NOW, causation_id="cause-1", actor="worker:w1", attempt=2, result=value
    )


def test_an_exception_fails_retryably_with_its_traceback() -> None:
    event = outcome(raised(ConnectionError("reset by peer")))
    assert isinstance(event, AttemptFailedEvent)
    assert (event.error_type, event.message, event.retryable, event.retry_delay_s) == ("ConnectionError", "reset by peer", True, None)
    assert event.traceback.startswith("Traceback (most recent call last):")
    assert 'in raised\n    raise exc' in event.traceback
    assert event.traceback.rstrip().endswith("ConnectionError: reset by peer")


def test_an_exception_outside_retry_on_fails_at_once() -> None:
    event = outcome(raised(PaymentDeclined("card expired")), retry_on=("TimeoutError", "ConnectionError"))
    assert (event.error_type, event.retryable) == (f"{__name__}.PaymentDeclined", False)
    assert outcome(raised(TimeoutError()), retry_on=("TimeoutError",)).retryable is True


def test_base_exceptions_that_are_not_exceptions_never_retry() -> None:
    event = outcome(raised(KeyboardInterrupt()), retry_on=("BaseException",))
    assert (event.error_type, event.retryable) == ("KeyboardInterrupt", False)


def test_a_returned_retry_marker_retries_with_its_delay() -> None:
    event = outcome(Retry("rate limited", delay=12.5), retry_on=())
    assert (event.error_type, event.message, event.retryable, event.retry_delay_s, event.traceback) == (
        "Retry", "rate limited", True, 12.5, "",
    )


def test_a_raised_retry_marker_keeps_its_traceback() -> None:
    event = outcome(raised(Retry()))
    assert (event.error_type, event.message, event.retryable, event.retry_delay_s) == ("Retry", "handler asked to retry", True, None)
    assert "raise exc" in event.traceback


def test_a_cancel_marker_fails_at_once() -> None:
    event = outcome(Cancel("customer deleted"))
    assert (event.error_type, event.message, event.retryable, event.traceback) == ("Cancel", "customer deleted", False, "")
    raised_event = outcome(raised(Cancel("gone")))
    assert (raised_event.retryable, "raise exc" in raised_event.traceback) == (False, True)


@pytest.mark.parametrize(("value", "kind"), [(42, "int"), ("done", "str"), ([1], "list"), ((1,), "tuple")])
def test_anything_else_returned_fails_at_once_with_a_clear_message(value: Any, kind: str) -> None:
    event = outcome(value)
    assert (event.error_type, event.message, event.retryable) == (
        "InvalidHandlerResult", f"handler returned {kind}; return None or a dict", False,
    )


def test_a_result_that_is_not_json_fails_at_once() -> None:
    event = outcome({"when": datetime(2025, 1, 1)})
    assert (event.error_type, event.retryable) == ("InvalidHandlerResult", False)
    assert event.message == "handler result is not a JSON object: when: datetime is not a JSON value (use str, int, float, bool, None, list, dict)"
    assert outcome({"x": float("nan")}).message == "handler result is not a JSON object: x: nan is not a finite number"


def test_a_callable_backoff_is_evaluated_by_the_worker() -> None:
    event = outcome(raised(ConnectionError()), backoff=lambda attempt: attempt * 10.0)
    assert event.retry_delay_s == 20.0
    # an explicit Retry delay wins over the callable
    assert outcome(Retry(delay=1), backoff=lambda attempt: 99.0).retry_delay_s == 1.0
    # a non-retryable failure needs no delay
    assert outcome(Cancel("no"), backoff=lambda attempt: 99.0).retry_delay_s is None


def test_a_broken_callable_backoff_leaves_the_delay_to_the_processor() -> None:
    def broken(attempt: int) -> float:
        raise RuntimeError("oops")

    assert outcome(raised(ConnectionError()), backoff=broken).retry_delay_s is None
    assert outcome(raised(ConnectionError()), backoff=lambda attempt: -5).retry_delay_s is None


def test_markers_validate_and_compare() -> None:
    assert Retry("a", 1) == Retry("a", 1.0) and Retry("a") != Retry("b")
    assert Cancel("x") == Cancel("x") and hash(Cancel("x")) == hash(Cancel("x"))
    assert repr(Retry("r", 2)) == "Retry(reason='r', delay=2.0)"
    for bad in (-1, float("inf"), "5", True):
        with pytest.raises(ValueError, match="Retry delay must be a number of seconds >= 0"):
            Retry(delay=bad)  # type: ignore[arg-type]


def test_outcome_events_survive_the_codec_and_get_fresh_ids() -> None:
    event = outcome_event(
        raised(ValueError("bad")), job_id="job-1", attempt=0, retry_on=("Exception",), occurred_at=NOW, actor="worker:w1"
    )
    assert len(event.event_id) == 36 and event.causation_id is None
    assert decode(encode(event)) == event


@pytest.mark.parametrize(("kind", "retryable"), [
    (WorkerFailure.UNKNOWN_JOB, False),  # no handler here now means none on the next attempt either
    (WorkerFailure.CANCELLED, False),
    (WorkerFailure.INVALID_RESULT, False),
    (WorkerFailure.WORKER_SHUTDOWN, True),  # not the job's fault: run it again
])
def test_attempts_the_worker_ends_fail_with_their_kind_and_retry_only_after_a_shutdown(
        kind: WorkerFailure, retryable: bool) -> None:
    event = worker_failure_event(kind, "what happened", job_id="job-1", attempt=3, occurred_at=NOW,
                                 actor="worker:w1", traceback="tb", event_id="out-1")
    assert isinstance(event, AttemptFailedEvent)
    assert (event.error_type, event.message, event.traceback, event.retryable) == (kind.value, "what happened", "tb",
                                                                                   retryable)
    assert (event.job_id, event.attempt, event.occurred_at, event.actor) == ("job-1", 3, NOW, "worker:w1")
    assert decode(encode(event)) == event
