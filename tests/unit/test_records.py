"""Ready, timer and dead-letter records: exact encode/decode round trips, keys and routes."""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from eventjobs.core.refused import Refused
from eventjobs.core.options import (
    CAPABILITY_RE,
    ConstantBackoff,
    ExponentialBackoff,
    JobOptions,
    LinearBackoff,
    NoBackoff,
    Priority,
)
from eventjobs.core.records import (
    HOUSEKEEPING_KINDS,
    TIMER_KINDS,
    DeadLetterRecord,
    ReadyRecord,
    TimerRecord,
    capability_route,
    parse_timer_key,
    timer_key,
)
from eventjobs.kafka.topics import TopicNames, load_specs

ROOT = Path(__file__).resolve().parents[2]
UTC = timezone.utc
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
KAFKA_TOPIC = re.compile(r"[A-Za-z0-9._-]{1,249}")

# -- strategies -------------------------------------------------------------------------------

aware_datetimes = st.builds(
    lambda dt, minutes: dt.replace(tzinfo=timezone(timedelta(minutes=minutes))),
    st.datetimes(min_value=datetime(1971, 1, 2), max_value=datetime(2200, 1, 1)),
    st.integers(min_value=-12 * 60, max_value=14 * 60),
)
json_scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
json_objects = st.dictionaries(st.text(max_size=10), json_values, max_size=5)
capability_names = st.from_regex(CAPABILITY_RE, fullmatch=True).filter(lambda s: len(s) <= 30)
backoffs = st.one_of(
    st.builds(ExponentialBackoff, base_s=st.floats(0.001, 100), cap_s=st.floats(0, 1000)),
    st.builds(LinearBackoff, step_s=st.floats(0, 100)),
    st.builds(ConstantBackoff, delay_s=st.floats(0, 100), jitter=st.floats(0, 1), seed=st.none() | st.integers(0, 99)),
    st.just(NoBackoff()),
)
specs = st.builds(
    lambda queue, attempts, backoff, timeout, ttl, caps, retry_on: JobOptions(
        queue=queue, max_attempts=attempts, backoff=backoff, timeout=timeout, ttl=ttl, capabilities=caps,
        retry_on=retry_on,
    ).to_spec(),
    st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True),
    st.integers(1, 50),
    backoffs,
    st.floats(0.001, 3600),
    st.none() | st.floats(0.001, 86400),
    st.lists(capability_names, max_size=3),
    st.lists(st.sampled_from(["Exception", "ValueError", "mymod.Transient"]), min_size=1, max_size=3, unique=True),
)
job_ids = st.text(min_size=1, max_size=40)


# -- round trips ------------------------------------------------------------------------------


@settings(max_examples=150, deadline=None)
@given(
    job_id=job_ids,
    attempt=st.integers(0, 1_000_000),
    name=st.from_regex(r"[A-Za-z_][A-Za-z0-9_.:-]{0,30}", fullmatch=True),
    priority=st.sampled_from(list(Priority)),
    args=json_objects,
    options=specs,
    enqueued_at=aware_datetimes,
    ready_at=aware_datetimes,
    parent=st.none() | job_ids,
)
def test_ready_record_round_trip(
    job_id: str, attempt: int, name: str, priority: Priority, args: dict[str, Any], options: Any,
    enqueued_at: datetime, ready_at: datetime, parent: str | None,
) -> None:
    record = ReadyRecord(
        job_id=job_id, attempt=attempt, name=name, queue="emails",
        priority=priority, args=args, options=options, enqueued_at=enqueued_at, ready_at=ready_at, parent_job_id=parent,
    )
    decoded = ReadyRecord.decode(record.encode())
    assert decoded == record
    assert decoded.options == options
    assert decoded.args == args
    assert decoded.priority is priority
    assert decoded.ready_at == ready_at and decoded.ready_at.utcoffset() is not None
    assert decoded.encode() == record.encode()  # stable bytes: a re-encode gives the same record


@settings(max_examples=100, deadline=None)
@given(job_id=job_ids, kind=st.sampled_from(TIMER_KINDS), attempt=st.integers(0, 1_000_000), due_at=aware_datetimes)
def test_timer_record_round_trip_and_key(job_id: str, kind: Any, attempt: int, due_at: datetime) -> None:
    record = TimerRecord(job_id=job_id, kind=kind, attempt=attempt, due_at=due_at)
    decoded = TimerRecord.decode(record.encode())
    assert decoded == record
    assert decoded.due_at == due_at
    suffix = {"retry": f"retry:{attempt}", "run_at": f"run_at:{attempt}" if attempt else "run_at"}.get(kind, kind)
    assert record.key == decoded.key == timer_key(job_id, kind, attempt) == f"{job_id}:{suffix}".encode()


@settings(max_examples=100, deadline=None)
@given(
    job_id=job_ids,
    texts=st.lists(st.text(max_size=200), min_size=4, max_size=4),
    attempts=st.integers(0, 1_000_000),
    at=aware_datetimes,
)
def test_dead_letter_record_round_trip(job_id: str, texts: list[str], attempts: int, at: datetime) -> None:
    reason, error_type, message, traceback = texts
    record = DeadLetterRecord(
        job_id=job_id, name="send_email", queue="emails", reason=reason, error_type=error_type, message=message,
        traceback=traceback, attempts=attempts, dead_letter_event_id="dl-1", dead_lettered_at=at,
    )
    decoded = DeadLetterRecord.decode(record.encode())
    assert decoded == record
    assert (decoded.reason, decoded.error_type, decoded.message, decoded.traceback) == (reason, error_type, message, traceback)


def test_encoded_timer_record_is_flat_json_with_utc_time() -> None:
    record = TimerRecord(job_id="job-1", kind="retry", attempt=2, due_at=T0 + timedelta(milliseconds=250))
    assert record.encode() == b'{"job_id":"job-1","kind":"retry","attempt":2,"due_at":"2025-01-01T12:00:00.250000Z"}'


@pytest.mark.parametrize(
    ("record_type", "data", "field"),
    [
        (TimerRecord, b'{"job_id":"j","kind":"nap","attempt":0,"due_at":"2025-01-01T00:00:00Z"}', "kind"),
        (TimerRecord, b'{"job_id":"j","kind":"ttl","attempt":0}', "due_at"),
        (TimerRecord, b'{"job_id":"j","kind":"ttl","attempt":0,"due_at":"2025-01-01T00:00:00Z","x":1}', "x"),
        (DeadLetterRecord, b'{"job_id":"j"}', "name"),
        (ReadyRecord, b"not json", None),
    ],
)
def test_decode_rejects_malformed_records(record_type: Any, data: bytes, field: str | None) -> None:
    with pytest.raises(ValidationError) as info:
        record_type.decode(data)
    if field is not None:
        assert field in {str(part) for error in info.value.errors() for part in error["loc"]}


def test_records_are_frozen() -> None:
    record = TimerRecord(job_id="j", kind="ttl", attempt=0, due_at=T0)
    with pytest.raises(ValidationError):
        record.attempt = 1  # type: ignore[misc]


# -- timer keys --------------------------------------------------------------------------------


def test_timer_keys_are_job_and_kind_and_the_attempt_of_a_retry() -> None:
    assert [timer_key("job-7", kind, 3, 1) for kind in (*TIMER_KINDS, *HOUSEKEEPING_KINDS)] == [
        b"job-7:run_at:3", b"job-7:retry:3", b"job-7:ttl", b"job-7:lease", b"job-7:dead_letter", b"job-7:retain",
        b"job-7:republish:3:1",
    ]
    assert timer_key("ünï", "ttl") == "ünï:ttl".encode()
    assert timer_key("job-7", "run_at", 0) == timer_key("job-7", "run_at") == b"job-7:run_at"  # a first run
    with pytest.raises(ValueError, match="needs its attempt"):
        timer_key("job-7", "retry")
    with pytest.raises(ValueError, match="needs its attempt and sequence"):
        timer_key("job-7", "republish", 3)


def test_a_republish_key_names_its_sequence_and_timer_records_are_of_fired_kinds_only() -> None:
    assert parse_timer_key(timer_key("j", "republish", 2, 4)) == ("j", "republish", 4)
    for kind in HOUSEKEEPING_KINDS:  # a lane's own timers: no record of them is valid
        with pytest.raises(ValidationError):
            TimerRecord(job_id="j", kind=kind, attempt=2, due_at=T0)  # type: ignore[arg-type]
    with pytest.raises(ValidationError):
        TimerRecord.decode(b'{"job_id":"j","kind":"ttl","attempt":2,"due_at":"2025-01-01T12:00:00Z","sequence":4}')


ALL_KINDS = (*TIMER_KINDS, *HOUSEKEEPING_KINDS)


@given(st.tuples(job_ids, st.sampled_from(ALL_KINDS), st.integers(0, 99)),
       st.tuples(job_ids, st.sampled_from(ALL_KINDS), st.integers(0, 99)))
def test_timer_keys_of_different_timers_differ_and_parse_back(a: tuple[str, Any, int], b: tuple[str, Any, int]) -> None:
    def identity(t: tuple[str, Any, int]) -> tuple[str, Any, int | None]:
        return (t[0], t[1], t[2] if t[1] in ("retry", "republish") or (t[1] == "run_at" and t[2]) else None)

    def key(t: tuple[str, Any, int]) -> bytes:  # a republish timer: attempt t[2], sequence t[2]
        return timer_key(t[0], t[1], t[2], t[2])

    assert (key(a) == key(b)) == (identity(a) == identity(b))
    assert parse_timer_key(key(a)) == identity(a)


# -- capability routes -------------------------------------------------------------------------


@pytest.mark.parametrize("empty", [(), []])
def test_no_capabilities_route_to_the_queue_itself(empty: Any) -> None:
    assert capability_route("emails", empty) == "emails"


def test_capability_route_names_the_set_by_digest() -> None:
    route = capability_route("render", ("gpu",))
    assert re.fullmatch(r"render\.caps-[0-9a-f]{16}", route)
    assert capability_route("render", ("gpu", "cuda12")) == capability_route("render", ["cuda12", "gpu", "gpu"])
    assert capability_route("render", ("gpu",)) != capability_route("render", ("gpu", "cuda12"))
    assert capability_route("render", ("gpu",)) != capability_route("paint", ("gpu",))


@given(
    queue=st.from_regex(r"[A-Za-z0-9._-]{1,20}", fullmatch=True),
    caps=st.lists(capability_names, min_size=1, max_size=5),
    order=st.randoms(use_true_random=False),
)
def test_capability_route_ignores_order_and_duplicates(queue: str, caps: list[str], order: Any) -> None:
    shuffled = caps + caps[:2]
    order.shuffle(shuffled)
    route = capability_route(queue, caps)
    assert capability_route(queue, tuple(shuffled)) == route
    assert route.startswith(f"{queue}.caps-")
    assert ":" not in route
    assert re.fullmatch(r"[A-Za-z0-9._-]+", route)


def test_capability_route_matches_what_the_worker_subscribes_to() -> None:
    # JobOptions sorts and dedups capabilities; the worker routes subsets of its own sorted set
    options = JobOptions(queue="render", capabilities=["zone:eu", "gpu", "gpu"])
    assert options.capabilities == ("gpu", "zone:eu")
    assert capability_route(options.queue, options.capabilities) == capability_route("render", ("zone:eu", "gpu"))


@pytest.mark.parametrize(("first", "second"), [(("a.b",), ("a", "b")), (("gpu:x",), ("gpu_x",))])
def test_different_capability_sets_get_different_routes(first: tuple[str, ...], second: tuple[str, ...]) -> None:
    # both sets are valid capability lists for JobOptions
    assert JobOptions(capabilities=first).capabilities == first
    assert JobOptions(capabilities=second).capabilities == second
    assert capability_route("q", first) != capability_route("q", second)


def test_ready_topic_of_any_valid_options_is_a_legal_kafka_topic_name() -> None:
    options = JobOptions(queue="q", capabilities=["a" * 100, "b" * 100, "c" * 100])  # accepted at enqueue
    names = TopicNames("eventjobs", load_specs(ROOT / "topics"))
    topic = names.ready(capability_route(options.queue, options.capabilities), Priority.CRITICAL.value)
    assert KAFKA_TOPIC.fullmatch(topic), f"{len(topic)} characters: {topic[:60]}..."


def test_a_dead_letter_record_is_admitted_under_its_own_key_and_refused_otherwise() -> None:
    from eventjobs.core.records import admit_dead_letter

    entry = DeadLetterRecord(job_id="j1", name="n", queue="q", reason="r", error_type="E", message="m",
                             traceback="", attempts=1, dead_letter_event_id="e", dead_lettered_at=datetime(2025, 1, 1,
                                                                                                    tzinfo=timezone.utc))
    assert admit_dead_letter(b"j1", entry.encode()) == ("j1", entry)
    assert admit_dead_letter(b"j1", None) == ("j1", None)  # a tombstone: the entry is gone
    not_utf8 = admit_dead_letter(b"\xff", entry.encode())
    assert isinstance(not_utf8, Refused) and not_utf8.kind == "key not UTF-8"
    refused = admit_dead_letter(b"j1", b"not json")
    assert isinstance(refused, Refused) and refused.kind == "not a dead-letter record"
    other = admit_dead_letter(b"j2", entry.encode())
    assert other == Refused("key does not match", "the entry is about job 'j1'")


# -- re-published ready records and the verdict on a claim of one ------------------------------------


def _state_after(*steps: str) -> Any:
    """A job's state driven through real events (enqueue, then `steps`), and its first claim's id."""
    from tests.unit.test_effects import Job

    job = Job()
    job.enqueue(max_attempts=3)
    for step in steps:
        getattr(job, step)()
    return job


def test_the_verdict_on_a_claim_is_read_from_the_jobs_state() -> None:
    from eventjobs.core.effects import ready_record
    from eventjobs.core.records import claim_verdict

    job = _state_after()
    ready = ready_record(job.s, T0)
    assert claim_verdict(job.s, ready, "mine") == "undecided"  # pending: a state from before the claim
    job.claim()
    mine = job.s.claim_id
    assert mine is not None
    assert claim_verdict(job.s, ready, mine) == "accepted"
    assert claim_verdict(job.s, ready, "another") == "refused"  # another claim of the attempt stands
    job.start()
    job.succeed()
    assert claim_verdict(job.s, ready, "another") == "refused"  # the job ended
    assert claim_verdict(None, ready, mine) == "refused"  # forgotten (a tombstone)
    retried = _state_after("run", "fail")
    retried.tick(60)
    retried.due()  # attempt 1 is pending
    assert claim_verdict(retried.s, ready, "mine") == "refused"  # a later attempt
    again = ready_record(retried.s, T0)
    assert claim_verdict(retried.s, again, "mine") == "undecided"
    reborn = ready.model_copy(update={"enqueued_at": T0 - timedelta(days=2)})  # the job id of an older job
    assert claim_verdict(_state_after().s, reborn, "mine") == "refused"


def test_a_limited_job_waiting_for_its_slot_is_undecided_not_refused() -> None:
    # the processor publishes a ready record when the grant is folded, before it commits the
    # states before it: a worker may read the job still waiting for the attempt's slot
    from eventjobs.core.effects import ready_record
    from eventjobs.core.fold import apply
    from eventjobs.core.options import JobOptions, Limit
    from eventjobs.core.records import claim_verdict
    from tests.core.builders import JobLog

    log = JobLog("limited")
    waiting = apply(None, log.enqueued(JobOptions(concurrency=Limit(key="k", max=1)))).state
    assert waiting is not None and waiting.status.value == "waiting"
    pending = apply(waiting, log.granted(waiting)).state
    assert pending is not None
    ready = ready_record(pending, T0)
    assert claim_verdict(waiting, ready, "mine") == "undecided"
    assert claim_verdict(pending, ready, "mine") == "undecided"
    cancelled = apply(waiting, log.cancel()).state
    assert claim_verdict(cancelled, ready, "mine") == "refused"


def test_a_republished_record_and_a_claim_that_waits_are_told_by_their_headers() -> None:
    from eventjobs.core.records import AWAITS_VERDICT, awaits_verdict, is_republished, republished_headers

    assert republished_headers(3) == [("eventjobs.republished", b"3")]
    assert is_republished(republished_headers(0)) and is_republished([("x", b""), *republished_headers(1)])
    assert not is_republished([]) and not is_republished(None) and not is_republished([("eventjobs.attempt", b"0")])
    assert awaits_verdict(AWAITS_VERDICT) and not awaits_verdict(None) and not awaits_verdict(republished_headers(0))
