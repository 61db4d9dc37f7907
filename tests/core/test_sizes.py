"""Size budgets: no error, args or result can make a record over the configured limit.

The budgets of ``eventjobs.core.limits`` must add up: a job whose args, result, last error,
reason and progress message are all as large as they may be still has a state, derived events
and a dead-letter record within ``max_event_bytes``, and an error of any size is truncated (with
a marker and its original length) where the worker's failure becomes an event.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventjobs.core.refused import Refused
from eventjobs.core.codec import admit, encode
from eventjobs.core.commands import (
    attempt_started_event,
    cancel_requested_event,
    claimed_event,
    dead_letter_retried_event,
    discarded_event,
    enqueue,
    progress_event,
)
from eventjobs.core.effects import dead_letter_record, ready_record
from eventjobs.core.events import AttemptFailedEvent, CancelRequestedEvent, EnqueuedEvent, JobEvent
from eventjobs.core.fold import apply
from eventjobs.core.limits import (
    DEFAULT_MAX_EVENT_BYTES,
    MAX_REASON_BYTES,
    MIN_MAX_EVENT_BYTES,
    RESERVE_BYTES,
    json_size,
    size_limits,
    truncate_text,
)
from eventjobs.core.options import JobOptions, NoBackoff
from eventjobs.core.outcome import Cancel, attempt_failed_event, outcome_event
from eventjobs.core.state import JobState, JobStatus, encode_state

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
CHARS = ["x", "\x01", "é", "€", "😀", "\"", "\n"]  # 1 to 6 bytes each as JSON


# -- the arithmetic ---------------------------------------------------------------------------


@pytest.mark.parametrize("limit", [MIN_MAX_EVENT_BYTES, DEFAULT_MAX_EVENT_BYTES, 4 * DEFAULT_MAX_EVENT_BYTES, 1_234_567])
def test_budgets_add_up_to_less_than_the_limit(limit: int) -> None:
    limits = size_limits(limit)
    parts = limits.enqueue_bytes + limits.result_bytes + limits.error_message_bytes + limits.traceback_bytes
    assert parts + RESERVE_BYTES <= limit - (limit - RESERVE_BYTES) // 8  # an eighth of the rest stays free
    assert limits.reason_bytes == MAX_REASON_BYTES < RESERVE_BYTES


def test_default_budgets() -> None:
    limits = size_limits()
    assert (limits.enqueue_bytes, limits.result_bytes, limits.error_message_bytes, limits.traceback_bytes) == (
        344_064, 344_064, 57_344, 57_344)


def test_a_limit_below_the_minimum_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 262,144"):
        size_limits(100_000)


# -- truncation -------------------------------------------------------------------------------


def test_short_text_is_returned_as_is() -> None:
    text = "boom" * 100
    assert truncate_text(text, 10_000) is text


def test_long_message_keeps_its_start_and_says_how_long_it_was() -> None:
    text = "E" * 1_234_567
    cut = truncate_text(text, 50_000)
    assert cut.endswith("… [truncated: 1,234,567 chars]")
    assert cut.startswith("E" * 49_000)
    assert 50_000 - 6 <= json_size(cut) <= 50_000


def test_long_traceback_keeps_its_start_and_its_end() -> None:
    text = "Traceback (most recent call last):\n" + "  frame\n" * 200_000 + "ValueError: the real cause"
    cut = truncate_text(text, 20_000, keep_end=True)
    assert cut.startswith("Traceback (most recent call last):\n")
    assert cut.endswith("ValueError: the real cause")
    assert f"\n… [truncated: {len(text):,} chars] …\n" in cut
    assert json_size(cut) <= 20_000


def test_lone_surrogates_are_replaced_so_the_text_can_be_written() -> None:
    cut = truncate_text("bad \udcff byte" * 10_000, 1_000)
    assert "[truncated: 100,000 chars]" in cut
    orjson.dumps(cut)
    assert truncate_text("bad \udcff", 10) == "bad ?"


@given(size=st.integers(0, 3_000_000), char=st.sampled_from(CHARS), budget=st.integers(200, 200_000),
       keep_end=st.booleans())
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_truncation_fits_its_budget_and_keeps_as_much_as_it_can(size: int, char: str, budget: int, keep_end: bool) -> None:
    text = char * size
    cut = truncate_text(text, budget, keep_end=keep_end)
    assert json_size(cut) <= budget
    if json_size(text) <= budget:
        assert cut == text
    else:
        assert f"[truncated: {size:,} chars]" in cut
        assert json_size(cut) > budget - 2 * 6  # one more character would not have fitted
        assert cut.startswith(char)


# -- a job as large as it may get -------------------------------------------------------------


def _envelope_ids(n: int) -> str:
    return f"{n:04d}" + "\x01" * 124  # 128 characters, 6 bytes each as JSON: the largest ids


class _Writer:
    """The real builders, with every schema-bounded field as large as it may be."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.n = 0
        self.now = T0
        self.job_id = "\x01" * 128
        self.worker = "\x01" * 200
        self.actor = "\x01" * 200

    def env(self) -> dict[str, Any]:
        self.n += 1
        self.now += timedelta(seconds=1)
        return {"now": self.now, "actor": self.actor, "event_id": _envelope_ids(self.n)}

    def enqueued(self) -> EnqueuedEvent:
        budget = size_limits(self.limit).enqueue_bytes
        options = JobOptions(max_attempts=1, backoff=NoBackoff(), idempotency_key="k" * 512)
        env = self.env()

        def build(args: dict[str, Any]) -> EnqueuedEvent:
            return enqueue("j" * 200, args, options, now=env["now"], actor=env["actor"], event_id=env["event_id"],
                           job_id=self.job_id, parent_job_id=_envelope_ids(0))

        room = budget - len(encode(build({"blob": ""}), max_bytes=None))
        event = build({"blob": "x" * room})
        assert len(encode(event, max_bytes=None)) == budget
        return event


def _sizes_fit(limit: int, state: JobState | None, events: tuple[JobEvent, ...] | list[JobEvent]) -> None:
    if state is not None:
        assert len(encode_state(state)) <= limit, "state"
        assert len(ready_record(state, state.updated_at, 5).encode()) <= limit, "ready record"
        if state.status is JobStatus.DEAD_LETTERED:
            assert len(dead_letter_record(state).encode()) <= limit, "dead-letter record"
    for event in events:
        encode(event, max_bytes=limit)


def _apply(limit: int, state: JobState | None, event: JobEvent) -> JobState:
    encode(event, max_bytes=limit)
    decision = apply(state, event, actor="processor:5")
    assert decision.rejected is None, decision.rejected
    assert decision.state is not None
    _sizes_fit(limit, decision.state, decision.derived)
    return decision.state


@given(
    limit=st.sampled_from([MIN_MAX_EVENT_BYTES, DEFAULT_MAX_EVENT_BYTES, 3_000_000]),
    message=st.tuples(st.integers(0, 4_000_000), st.sampled_from(CHARS)),
    traceback=st.tuples(st.integers(0, 4_000_000), st.sampled_from(CHARS)),
    reason=st.tuples(st.integers(0, 2_000_000), st.sampled_from(CHARS)),
)
@example(limit=DEFAULT_MAX_EVENT_BYTES, message=(4_000_000, "\x01"), traceback=(4_000_000, "😀"), reason=(2_000_000, "\x01"))
@example(limit=MIN_MAX_EVENT_BYTES, message=(999_999, "x"), traceback=(1_000_000, "\n"), reason=(16_000, "x"))
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
def test_every_record_of_the_largest_job_fits_the_limit(
    limit: int, message: tuple[int, str], traceback: tuple[int, str], reason: tuple[int, str]
) -> None:
    """Largest args, an error of up to 4M characters of any kind, the largest progress message,
    then a dead-letter retry, a cancel request with a huge reason and the largest result: the
    attempt events, the derived failed / dead_lettered / completed events, the state after every
    step, the ready record and the dead-letter record all fit."""
    w = _Writer(limit)
    limits = size_limits(limit)
    state = _apply(limit, None, w.enqueued())

    def run_attempt(state: JobState) -> JobState:
        state = _apply(limit, state, claimed_event(w.job_id, state.attempt, worker_id=w.worker, **w.env()))
        state = _apply(limit, state, attempt_started_event(w.job_id, state.attempt, worker_id=w.worker, **w.env()))
        return _apply(limit, state, progress_event(w.job_id, state.attempt, 50, "\x01" * 20_000, **w.env()))

    state = run_attempt(state)
    env = w.env()
    failed = attempt_failed_event(
        w.job_id, state.attempt, error_type="E" * 500, message=message[1] * message[0],
        traceback=traceback[1] * traceback[0], retryable=False, occurred_at=env["now"], actor=w.actor,
        event_id=env["event_id"], max_event_bytes=limit)
    assert json_size(failed.message) <= limits.error_message_bytes
    assert json_size(failed.traceback) <= limits.traceback_bytes
    if message[0] and json_size(message[1] * message[0]) > limits.error_message_bytes:
        assert failed.message.endswith(f"… [truncated: {message[0]:,} chars]")
    state = _apply(limit, state, failed)
    assert state.status is JobStatus.DEAD_LETTERED

    big_reason = reason[1] * reason[0]
    state = _apply(limit, state, dead_letter_retried_event(w.job_id, state.dead_letter_event_id, big_reason, **w.env()))
    state = run_attempt(state)
    state = _apply(limit, state, cancel_requested_event(w.job_id, big_reason, **w.env()))
    assert state.reason is not None and json_size(state.reason) <= MAX_REASON_BYTES
    env = w.env()
    room = limits.result_bytes - len(orjson.dumps({"blob": ""}))
    succeeded = outcome_event({"blob": "r" * room}, job_id=w.job_id, attempt=state.attempt, retry_on=(),
                              occurred_at=env["now"], actor=w.actor, event_id=env["event_id"], max_event_bytes=limit)
    assert succeeded.type == "attempt_succeeded"
    state = _apply(limit, state, succeeded)
    assert state.result is not None and state.last_error is not None and state.progress_message is not None
    assert len(encode_state(state)) <= limit


# -- results ----------------------------------------------------------------------------------


def _outcome(value: Any, limit: int = DEFAULT_MAX_EVENT_BYTES) -> Any:
    return outcome_event(value, job_id="job-1", attempt=0, retry_on=("Exception",), occurred_at=T0, actor="w",
                         max_event_bytes=limit)


def test_a_result_over_its_budget_fails_the_attempt_clearly_and_for_good() -> None:
    limits = size_limits()
    fits = {"blob": "r" * (limits.result_bytes - len(b'{"blob":""}'))}
    assert _outcome(fits).type == "attempt_succeeded"
    event = _outcome({"blob": "r" * 2_000_000})
    assert event.type == "attempt_failed"
    assert (event.error_type, event.retryable) == ("ResultTooLarge", False)
    assert "handler result is 2,000,011 bytes as JSON, over the limit of 344,064" in event.message
    too_big = {"blob": "r" * (limits.result_bytes - len(b'{"blob":""}') + 1)}
    assert _outcome(too_big).error_type == "ResultTooLarge"


def test_the_result_budget_follows_the_configured_limit() -> None:
    result = {"blob": "r" * 500_000}
    assert _outcome(result).error_type == "ResultTooLarge"
    assert _outcome(result, 4 * DEFAULT_MAX_EVENT_BYTES).type == "attempt_succeeded"


# -- errors from handlers ---------------------------------------------------------------------


def test_an_exception_with_a_2_000_000_character_message_becomes_a_truncated_attempt_failed() -> None:
    try:
        raise ValueError("E" * 2_000_000)
    except ValueError as error:
        event = _outcome(error)
    assert event.type == "attempt_failed" and event.error_type == "ValueError"
    assert event.message.endswith("… [truncated: 2,000,000 chars]")
    assert event.traceback.startswith("Traceback (most recent call last):")
    assert "[truncated: " in event.traceback
    assert len(encode(event)) < DEFAULT_MAX_EVENT_BYTES // 4


def test_markers_with_huge_reasons_are_truncated_too() -> None:
    event = _outcome(Cancel("c" * 3_000_000))
    assert event.error_type == "Cancel" and event.message.endswith("[truncated: 3,000,000 chars]")


# -- reasons and progress from the other builders ---------------------------------------------


@pytest.mark.parametrize("build", [
    lambda reason: cancel_requested_event("job-1", reason, now=T0, actor="op"),
    lambda reason: dead_letter_retried_event("job-1", "dl-1", reason, now=T0, actor="op"),
    lambda reason: discarded_event("job-1", "dl-1", reason, now=T0, actor="op"),
])
def test_operator_reasons_are_truncated(build: Any) -> None:
    event = build("r" * 1_000_000)
    assert event.reason.endswith("… [truncated: 1,000,000 chars]")
    assert json_size(event.reason) <= MAX_REASON_BYTES


def test_progress_message_is_truncated_to_the_event_schema() -> None:
    event = progress_event("job-1", 0, 50, "p" * 50_000, now=T0, actor="w")
    assert len(event.message) == 10_000 and event.message.endswith("[truncated: 50,000 chars]")


# -- admission: what other producers wrote ----------------------------------------------------


def test_admit_refuses_an_enqueued_event_over_the_args_budget() -> None:
    event = enqueue("big", {"blob": "x" * 500_000}, now=T0, actor="other-producer")
    value = encode(event)
    refused = admit(value, event.job_id.encode())
    assert isinstance(refused, Refused)
    assert refused.reason.startswith(f"enqueued event is {len(value):,} bytes, over the limit of 344,064 for args")
    small = encode(enqueue("small", {"blob": "x" * 300_000}, now=T0, actor="other-producer"))
    assert not isinstance(admit(small, None), Refused)


def test_admit_refuses_a_result_over_its_budget() -> None:
    event = outcome_event({"blob": "r" * 500_000}, job_id="job-1", attempt=0, retry_on=(), occurred_at=T0,
                          actor="w", max_event_bytes=4 * DEFAULT_MAX_EVENT_BYTES)  # a worker configured larger
    refused = admit(encode(event), b"job-1")
    assert isinstance(refused, Refused) and "result is 500,011 bytes, over the limit of 344,064" in refused.reason


def test_admit_truncates_error_texts_another_writer_did_not() -> None:
    raw = AttemptFailedEvent(event_id="e1", job_id="job-1", occurred_at=T0, actor="old-worker", attempt=0,
                             error_type="ValueError", message="m" * 900_000, traceback="", retryable=False)
    admitted = admit(encode(raw), b"job-1")
    assert isinstance(admitted, AttemptFailedEvent)
    assert admitted.message.endswith("… [truncated: 900,000 chars]")
    assert json_size(admitted.message) <= size_limits().error_message_bytes
    assert admitted.event_id == raw.event_id
    cancel = CancelRequestedEvent(event_id="e2", job_id="job-1", occurred_at=T0, actor="x", reason="r" * 500_000)
    admitted_cancel = admit(encode(cancel), b"job-1")
    assert isinstance(admitted_cancel, CancelRequestedEvent) and json_size(admitted_cancel.reason) <= MAX_REASON_BYTES


def test_admit_passes_ordinary_events_through_untouched() -> None:
    raw = AttemptFailedEvent(event_id="e1", job_id="job-1", occurred_at=T0, actor="w", attempt=0,
                             error_type="ValueError", message="m" * 20_000, traceback="t" * 20_000, retryable=True)
    admitted = admit(encode(raw), b"job-1")
    assert admitted == raw
