"""UTC millisecond time values and the clocks."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventjobs.core.clock import UTC, FrozenClock, SystemClock, add_seconds, format_utc_ms, from_epoch_ms, utc_ms


def test_utc_ms_converts_to_utc_and_truncates_to_milliseconds() -> None:
    local = datetime(2025, 3, 1, 14, 30, 0, 123999, tzinfo=timezone(timedelta(hours=2)))
    value = utc_ms(local)
    assert value == datetime(2025, 3, 1, 12, 30, 0, 123000, tzinfo=UTC)
    assert value.utcoffset() == timedelta(0)


def test_utc_ms_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError, match="naive datetime 2025-01-01T00:00:00 has no timezone"):
        utc_ms(datetime(2025, 1, 1))


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (datetime(2025, 1, 31, 12, 0, tzinfo=UTC), "2025-01-31T12:00:00.000Z"),
        (datetime(2025, 1, 31, 12, 0, 0, 5_999, tzinfo=UTC), "2025-01-31T12:00:00.005Z"),
        (datetime(2025, 1, 31, 14, 0, 0, 120_000, tzinfo=timezone(timedelta(hours=2))), "2025-01-31T12:00:00.120Z"),
        (datetime(1, 1, 1, tzinfo=UTC), "0001-01-01T00:00:00.000Z"),
    ],
)
def test_format_utc_ms(value: datetime, text: str) -> None:
    assert format_utc_ms(value) == text


def test_format_utc_ms_rejects_naive_datetimes() -> None:
    with pytest.raises(ValueError):
        format_utc_ms(datetime(2025, 1, 1))


def test_add_seconds_rounds_to_whole_milliseconds() -> None:
    start = datetime(2025, 1, 1, tzinfo=UTC)
    assert add_seconds(start, 1.2346) == start + timedelta(milliseconds=1235)
    assert add_seconds(start, 1.2344) == start + timedelta(milliseconds=1234)
    assert add_seconds(start, 0) == start


def test_frozen_clock_moves_only_when_told() -> None:
    clock = FrozenClock(datetime(2025, 1, 1, 0, 0, 0, 999_999, tzinfo=UTC))
    assert clock.now() == datetime(2025, 1, 1, 0, 0, 0, 999_000, tzinfo=UTC)
    assert clock.now() == clock.now()
    assert clock.advance(1.5) == datetime(2025, 1, 1, 0, 0, 2, 499_000, tzinfo=UTC)
    assert clock.advance(minutes=1) == datetime(2025, 1, 1, 0, 1, 2, 499_000, tzinfo=UTC)
    with pytest.raises(ValueError, match="only moves forward"):
        clock.advance(-1)
    clock.set(datetime(2020, 1, 1, tzinfo=UTC))
    assert clock.now() == datetime(2020, 1, 1, tzinfo=UTC)


def test_system_clock_is_aware_utc_with_millisecond_precision() -> None:
    now = SystemClock().now()
    assert now.utcoffset() == timedelta(0)
    assert now.microsecond % 1000 == 0
    assert abs(now - datetime.now(UTC)) < timedelta(seconds=5)


@given(st.integers(min_value=0, max_value=2**32 * 1000 - 1))
def test_from_epoch_ms_is_exact_to_the_millisecond(ms: int) -> None:
    assert from_epoch_ms(ms) == datetime(1970, 1, 1, tzinfo=UTC) + timedelta(milliseconds=ms)
    assert from_epoch_ms(ms).tzinfo is UTC
