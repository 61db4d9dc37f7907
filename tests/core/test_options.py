"""Job options: defaults users expect, backoff maths, jitter, and clear rejections."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventjobs.core.options import (
    CallableBackoff,
    ConstantBackoff,
    ExponentialBackoff,
    InvalidJobOptions,
    JobOptions,
    JobOptionsSpec,
    LinearBackoff,
    NoBackoff,
    Priority,
    backoff_delay_s,
    exception_type_name,
    matches_retry_on,
)

UTC = timezone.utc


class TransientError(Exception):
    pass


class FlakyNetwork(TransientError):
    pass


def test_defaults() -> None:
    options = JobOptions()
    assert options.queue == "default"
    assert options.max_attempts == 20
    assert options.backoff == ExponentialBackoff(base_s=1, cap_s=300)
    assert options.retry_on == ("Exception",)
    assert options.timeout == 30.0
    assert options.priority is Priority.NORMAL
    assert (options.ttl, options.idempotency_key, options.run_at, options.delay, options.capabilities) == (None, None, None, None, ())
    assert options.dead_letter_retention is None  # the processor's default applies


def test_default_backoff_is_capped_exponential() -> None:
    # min(1 s * 2**attempt, 300 s)
    assert [backoff_delay_s(ExponentialBackoff(), n, "j") for n in range(11)] == [1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
    assert backoff_delay_s(ExponentialBackoff(), 10_000, "j") == 300


def test_linear_constant_and_no_backoff() -> None:
    assert [LinearBackoff(step_s=5).seconds(n) for n in range(4)] == [5, 10, 15, 20]
    assert LinearBackoff(step_s=5, cap_s=12).seconds(3) == 12
    assert [ConstantBackoff(delay_s=7).seconds(n) for n in (0, 5, 50)] == [7, 7, 7]
    assert NoBackoff().seconds(3) == 0


def test_a_callable_backoff_becomes_a_named_spec_with_a_fallback() -> None:
    def every_ten_seconds(attempt: int) -> float:
        return 10.0 * (attempt + 1)

    options = JobOptions(backoff=every_ten_seconds)
    spec = options.to_spec().backoff
    assert isinstance(spec, CallableBackoff)
    assert spec.name.endswith("test_a_callable_backoff_becomes_a_named_spec_with_a_fallback.<locals>.every_ten_seconds")
    assert options.callable_backoff is every_ten_seconds
    # the processor cannot run user code: it uses the fallback (default exponential)
    assert backoff_delay_s(spec, 3, "j") == 8
    assert JobOptions().callable_backoff is None


def test_none_means_no_backoff() -> None:
    assert JobOptions(backoff=None).backoff == NoBackoff()


@settings(max_examples=200, deadline=None)
@given(
    attempt=st.integers(0, 40),
    jitter=st.floats(0, 1),
    seed=st.none() | st.integers(-(2**63), 2**63 - 1),
    job_id=st.text(max_size=20),
)
def test_jitter_stays_within_its_fraction_and_is_replay_deterministic(attempt: int, jitter: float, seed: int | None, job_id: str) -> None:
    policy = ExponentialBackoff(base_s=2, cap_s=600, jitter=jitter, seed=seed)
    plain = ExponentialBackoff(base_s=2, cap_s=600).seconds(attempt)
    delay = backoff_delay_s(policy, attempt, job_id)
    assert plain * (1 - jitter) <= delay <= plain
    assert delay == backoff_delay_s(ExponentialBackoff(base_s=2, cap_s=600, jitter=jitter, seed=seed), attempt, job_id)


def test_jitter_depends_on_seed_job_and_attempt() -> None:
    def delay(seed: int | None, job_id: str, attempt: int) -> float:
        return backoff_delay_s(ConstantBackoff(delay_s=100, jitter=1.0, seed=seed), attempt, job_id)

    base = delay(1, "job-a", 0)
    assert base == delay(1, "job-a", 0)
    assert len({base, delay(2, "job-a", 0), delay(1, "job-b", 0), delay(1, "job-a", 1), delay(None, "job-a", 0)}) == 5
    # pinned values: changing the jitter hash would change the delays of replayed logs
    assert delay(42, "job-1", 0) == pytest.approx(57.59123445263656, abs=1e-12)
    assert backoff_delay_s(ExponentialBackoff(jitter=0.5, seed=7), 3, "job-1") == pytest.approx(6.632468682424283, abs=1e-12)
    spread = {round(delay(None, f"job-{i}", 0)) for i in range(200)}
    assert len(spread) > 50  # unseeded jitter still spreads jobs apart


def test_priority_order_and_parsing() -> None:
    assert sorted(["low", "critical", "normal", "high"], key=lambda p: Priority(p).rank) == ["critical", "high", "normal", "low"]
    assert Priority.parse("high") is Priority.HIGH
    assert Priority.parse(Priority.LOW) is Priority.LOW
    assert str(Priority.CRITICAL) == "critical"
    with pytest.raises(InvalidJobOptions, match=r"^unknown priority 'urgent' \(allowed: critical, high, normal, low\)$"):
        Priority.parse("urgent")


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_attempts": 0}, "max_attempts must be >= 1, got 0"),
        ({"max_attempts": -3}, "max_attempts must be >= 1, got -3"),
        ({"max_attempts": "3"}, "max_attempts must be an integer >= 1, got '3'"),
        ({"max_attempts": True}, "max_attempts must be an integer >= 1, got True"),
        ({"priority": "urgent"}, "unknown priority 'urgent' (allowed: critical, high, normal, low)"),
        ({"priority": 1}, "unknown priority 1 (allowed: critical, high, normal, low)"),
        ({"delay": -1}, "delay must be >= 0 seconds, got -1"),
        ({"delay": timedelta(seconds=-5)}, "delay must be >= 0 seconds, got -5.0"),
        ({"timeout": 0}, "timeout must be > 0 seconds, got 0"),
        ({"timeout": float("inf")}, "timeout must be a finite number of seconds, got inf"),
        ({"timeout": "30s"}, "timeout must be a number of seconds or a timedelta, got str"),
        ({"ttl": 0}, "ttl must be > 0 seconds, got 0"),
        ({"dead_letter_retention": -1}, "dead_letter_retention must be > 0 seconds, got -1"),
        ({"dead_letter_retention": 0}, "dead_letter_retention must be > 0 seconds, got 0"),
        ({"dead_letter_retention": 0.0}, "dead_letter_retention must be > 0 seconds, got 0.0"),
        ({"dead_letter_retention": timedelta(0)}, "dead_letter_retention must be > 0 seconds, got 0.0"),
        ({"dead_letter_retention": timedelta(hours=-1)}, "dead_letter_retention must be > 0 seconds, got -3600.0"),
        ({"dead_letter_retention": float("inf")}, "dead_letter_retention must be a finite number of seconds, got inf"),
        ({"dead_letter_retention": float("nan")}, "dead_letter_retention must be a finite number of seconds, got nan"),
        ({"dead_letter_retention": "7d"}, "dead_letter_retention must be a number of seconds or a timedelta, got str"),
        ({"dead_letter_retention": True}, "dead_letter_retention must be a number of seconds or a timedelta, got bool"),
        ({"queue": "a b"}, "invalid queue name 'a b': use 1-100 characters from A-Z a-z 0-9 . _ -"),
        ({"queue": ""}, "invalid queue name '': use 1-100 characters from A-Z a-z 0-9 . _ -"),
        ({"queue": "q" * 101}, f"invalid queue name '{'q' * 101}': use 1-100 characters from A-Z a-z 0-9 . _ -"),
        ({"capabilities": ["gpu", "two words"]}, "invalid capability 'two words': use 1-100 characters from A-Z a-z 0-9 . _ : -"),
        ({"run_at": datetime(2025, 1, 1)}, "run_at must be timezone-aware, got naive 2025-01-01T00:00:00"),
        ({"run_at": "tomorrow"}, "run_at must be a timezone-aware datetime, got str"),
        ({"run_at": datetime(2025, 1, 1, tzinfo=UTC), "delay": 5}, "give run_at or delay, not both"),
        ({"retry_on": [42]}, "retry_on entries must be exception types or their names, got 42"),
        ({"backoff": 5}, "backoff must be ExponentialBackoff, LinearBackoff, ConstantBackoff, NoBackoff or a callable of the 0-based attempt returning seconds, got int"),
        ({"idempotency_key": ""}, "idempotency_key must be a non-empty string (<= 512 chars) or a callable of the args, got ''"),
        ({"colour": "blue"}, "unknown job option 'colour' (known: queue, max_attempts, backoff, retry_on, timeout, priority, ttl, dead_letter_retention, idempotency_key, run_at, delay, capabilities, max_snoozes, on_dependency_failure, unique_for, unique_states, debounce, concurrency)"),
        ({"unique_for": 0}, "unique_for must be > 0 seconds, got 0"),
        ({"unique_for": -5}, "unique_for must be > 0 seconds, got -5"),
        ({"unique_for": "-1m"}, "unique_for must be a duration like '10m', '30s' or '250ms', a timedelta or a number of seconds: '-1m' is not a duration"),
        ({"unique_for": "soon"}, "unique_for must be a duration like '10m', '30s' or '250ms', a timedelta or a number of seconds: 'soon' is not a duration"),
        ({"unique_for": "0s"}, "unique_for must be > 0 seconds, got 0.0"),
        ({"debounce": "31d"}, "debounce must be from 0.001 s (1 ms) to 2.592e+06 s (30 days, MAX_WINDOW_S), got 2.6784e+06 s"),
        ({"debounce": 0.0001}, "debounce must be from 0.001 s (1 ms) to 2.592e+06 s (30 days, MAX_WINDOW_S), got 0.0001 s"),
        ({"unique_for": "10m", "debounce": "1m"}, "give unique_for or debounce, not both: unique_for keeps the first job of a window and refuses the later ones, debounce keeps one job and gives it the last args"),
        ({"debounce": "1m", "delay": 5}, "debounce sets when the job starts (debounce after the last enqueue): give no run_at or delay"),
        ({"concurrency": {"key": "t", "max": 0}}, "concurrency: concurrency max must be an integer from 1 to 1,000, got 0"),
        ({"concurrency": {"key": "t", "max": 1001}}, "concurrency: concurrency max must be an integer from 1 to 1,000, got 1001"),
        ({"concurrency": {"key": "t"}}, "concurrency: give max (jobs of a key at once), rate (starts per second, minute or hour) or both"),
        ({"concurrency": {"rate": "20 per second"}}, "concurrency: rate must be a count per second, minute or hour such as '20/s', '100/m' or '5000/h', got '20 per second'"),
        ({"concurrency": {"rate": "0/s"}}, "concurrency: rate '0/s': the count must be from 1 to 1,000 per s (at most one start per millisecond)"),
        ({"concurrency": {"rate": "2000/s"}}, "concurrency: rate '2000/s': the count must be from 1 to 1,000 per s (at most one start per millisecond)"),
        ({"concurrency": {"rate": "20/s", "burst": 0}}, "concurrency: concurrency burst must be an integer from 1 to 10,000, got 0"),
        ({"concurrency": {"max": 2, "burst": 5}}, "concurrency: burst needs a rate"),
        ({"concurrency": {"rate": "20/s", "strategy": "cancel_newest"}}, "concurrency: strategy 'cancel_newest' needs a max (slots to take); with a rate alone jobs only wait"),
        ({"concurrency": {"key": "", "max": 2}}, "concurrency: concurrency key must be a non-empty string (<= 200 chars) or a callable of the args, got ''"),
        ({"concurrency": {"key": "t", "max": 2, "strategy": "drop"}}, "concurrency: concurrency strategy must be one of queue, cancel_newest, cancel_in_progress, got 'drop'"),
        ({"concurrency": 2}, "concurrency must be a Limit(key=..., max=...), got int"),
        ({"concurrency": {"key": "t", "max": 2}, "debounce": "1m"}, "a concurrency limit cannot be combined with debounce yet (a debounce may put a job back after its slot was granted)"),
    ],
)
def test_invalid_options_are_rejected_with_a_clear_message(options: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidJobOptions) as info:
        JobOptions(**options)
    assert str(info.value) == message
    assert isinstance(info.value, ValueError)


def test_several_problems_are_reported_together() -> None:
    with pytest.raises(InvalidJobOptions) as info:
        JobOptions(max_attempts=0, timeout=-1)
    assert str(info.value) == "max_attempts must be >= 1, got 0; timeout must be > 0 seconds, got -1"


def test_backoff_policies_validate_their_own_fields() -> None:
    with pytest.raises(ValueError):
        ExponentialBackoff(base_s=0)
    with pytest.raises(ValueError):
        ConstantBackoff(delay_s=-1)
    with pytest.raises(ValueError):
        LinearBackoff(step_s=1, jitter=1.5)


def test_durations_accept_timedeltas() -> None:
    options = JobOptions(
        timeout=timedelta(minutes=2), ttl=timedelta(hours=1), delay=timedelta(seconds=90),
        dead_letter_retention=timedelta(days=3),
    )
    assert (options.timeout, options.ttl, options.delay, options.dead_letter_retention) == (120.0, 3600.0, 90.0, 259200.0)


@pytest.mark.parametrize(("value", "seconds"), [(90, 90.0), (0.5, 0.5), (timedelta(days=30), 2_592_000.0)])
def test_dead_letter_retention_reaches_the_spec(value: Any, seconds: float) -> None:
    options = JobOptions(dead_letter_retention=value)
    assert options.dead_letter_retention == seconds
    spec = options.to_spec()
    assert spec.dead_letter_retention_s == seconds
    assert spec == JobOptionsSpec(dead_letter_retention_s=seconds)
    assert JobOptionsSpec.model_validate_json(spec.model_dump_json()) == spec
    assert JobOptions().to_spec().dead_letter_retention_s is None
    merged = JobOptions(dead_letter_retention=60).merged(dead_letter_retention=value)
    assert merged.to_spec().dead_letter_retention_s == seconds


@pytest.mark.parametrize("bad", [0, -1.0, float("inf"), float("nan")])
def test_the_spec_refuses_a_dead_letter_retention_that_is_not_positive_and_finite(bad: float) -> None:
    """Events may come from any producer: the spec in them is validated too."""
    with pytest.raises(ValueError, match="dead_letter_retention_s"):
        JobOptionsSpec(dead_letter_retention_s=bad)


def test_run_at_and_delay_resolve_to_the_first_run_time() -> None:
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert JobOptions().resolve_run_at(now) is None
    assert JobOptions(delay=1.5).resolve_run_at(now) == now + timedelta(milliseconds=1500)
    local = datetime(2025, 1, 1, 15, 0, 0, 999_999, tzinfo=timezone(timedelta(hours=3)))
    assert JobOptions(run_at=local).resolve_run_at(now) == datetime(2025, 1, 1, 12, 0, 0, 999_000, tzinfo=UTC)


def test_merged_overrides_and_revalidates() -> None:
    base = JobOptions(queue="mail", max_attempts=5, delay=10)
    merged = base.merged(priority="high", run_at=datetime(2030, 1, 1, tzinfo=UTC))
    assert (merged.queue, merged.max_attempts, merged.priority, merged.delay) == ("mail", 5, Priority.HIGH, None)
    assert base.priority is Priority.NORMAL
    with pytest.raises(InvalidJobOptions, match="max_attempts must be >= 1, got 0"):
        base.merged(max_attempts=0)


def test_idempotency_key_may_be_computed_from_the_args() -> None:
    options = JobOptions(idempotency_key=lambda args: f"order-{args['order']}")
    assert options.resolve_idempotency_key({"order": 7}) == "order-7"
    assert JobOptions(idempotency_key="fixed").resolve_idempotency_key({}) == "fixed"
    with pytest.raises(InvalidJobOptions, match="idempotency_key function returned 7"):
        JobOptions(idempotency_key=lambda args: 7).resolve_idempotency_key({})  # type: ignore[arg-type,return-value]


def test_retry_on_stores_exception_names_and_matches_subclasses() -> None:
    options = JobOptions(retry_on=[TimeoutError, TransientError, "mylib.Throttled"])
    assert options.retry_on == ("TimeoutError", f"{__name__}.TransientError", "mylib.Throttled")
    assert matches_retry_on(TimeoutError, options.retry_on)
    assert matches_retry_on(FlakyNetwork, options.retry_on)  # subclass of a listed type
    assert not matches_retry_on(ValueError, options.retry_on)
    assert matches_retry_on(ValueError, ("Exception",))
    assert not matches_retry_on(KeyboardInterrupt, ("Exception",))
    assert matches_retry_on(FlakyNetwork, ("TransientError",))  # bare class names match too
    assert not matches_retry_on(ValueError, ())


def test_exception_type_names() -> None:
    assert exception_type_name(ValueError) == "ValueError"
    assert exception_type_name(FlakyNetwork) == f"{__name__}.FlakyNetwork"


def test_capabilities_are_normalised() -> None:
    assert JobOptions(capabilities=["gpu", "cuda:12", "gpu"]).capabilities == ("cuda:12", "gpu")
    assert JobOptions(capabilities="gpu").capabilities == ("gpu",)


def test_to_spec_carries_what_the_processor_needs() -> None:
    options = JobOptions(max_attempts=4, backoff=LinearBackoff(step_s=3), timeout=12, ttl=600, retry_on=[TimeoutError], capabilities=["gpu"])
    spec = options.to_spec()
    assert spec == JobOptionsSpec(
        max_attempts=4, backoff=LinearBackoff(step_s=3), timeout_s=12.0, ttl_s=600.0, retry_on=("TimeoutError",), capabilities=("gpu",)
    )
    assert JobOptionsSpec.model_validate_json(spec.model_dump_json()) == spec
    assert JobOptionsSpec.model_validate_json(b'{"backoff": {"kind": "none"}}').backoff == NoBackoff()
