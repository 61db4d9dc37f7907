"""The rule for how far the projector is behind a partition (`readside/lag.py`), and its tracker."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from eventjobs.core.clock import FrozenClock, epoch_ms
from eventjobs.readside.lag import LagTracker, lag_of

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=timezone.utc)
offsets = st.integers(min_value=0, max_value=10**12)
seconds = st.floats(min_value=0, max_value=10**7, allow_nan=False)


@given(next_offset=offsets, end_offset=offsets, age_s=seconds)
def test_caught_up_is_no_record_behind_and_only_then_is_the_lag_zero(next_offset: int, end_offset: int,
                                                                      age_s: float) -> None:
    last = T0 - timedelta(seconds=age_s)
    lag = lag_of(3, next_offset, end_offset, last, T0 - timedelta(days=1), T0)
    assert lag.records_behind == max(0, end_offset - next_offset)
    assert lag.caught_up == (end_offset <= next_offset)
    if lag.caught_up:
        assert lag.lag_s == 0
    else:
        assert lag.lag_s == (T0 - last).total_seconds()


@given(next_offset=offsets)
def test_while_the_end_is_unknown_so_is_the_lag(next_offset: int) -> None:
    lag = lag_of(0, next_offset, None, T0, T0, T0)
    assert lag.records_behind is None and lag.lag_s is None and not lag.caught_up


def test_behind_with_nothing_projected_counts_from_since_and_never_goes_negative() -> None:
    assert lag_of(0, 0, 5, None, T0 - timedelta(seconds=7), T0).lag_s == 7
    assert lag_of(0, 0, 5, T0 + timedelta(seconds=3), T0, T0).lag_s == 0  # a log time ahead of this clock


def test_the_tracker_lag_grows_with_the_clock_while_behind_and_is_zero_once_past_the_markers() -> None:
    # Given a tracker that resumed partition 0 at offset 10 and wrote a batch up to offset 14
    clock = FrozenClock(T0)
    tracker = LagTracker(clock.now)
    tracker.resumed(0, 10)
    tracker.ended({0: 16})  # 14 is the last record, 15 a transaction marker
    assert tracker.records_behind(0) == 6 and tracker.lag_s(0) == 0  # behind since it started, just now
    tracker.projected(0, 14, epoch_ms(T0))
    # When time passes with the marker still counted
    clock.advance(4)
    # Then it is one record behind, for 4 seconds
    assert tracker.records_behind(0) == 1 and tracker.lag_s(0) == 4
    # When every returned record is written, the consumer's position is past the marker: caught up
    tracker.passed(0, 16)
    assert tracker.records_behind(0) == 0 and tracker.lag_s(0) == 0
    # and an older position never moves it back
    tracker.passed(0, 12)
    tracker.projected(0, 11, epoch_ms(T0))
    assert tracker.lag(0).next_offset == 16


def test_the_tracker_reports_nan_until_kafka_answered() -> None:
    tracker = LagTracker(FrozenClock(T0).now)
    tracker.resumed(2, 0)
    assert math.isnan(tracker.records_behind(2)) and math.isnan(tracker.lag_s(2))
    assert [lag.partition for lag in tracker.lags()] == [2]
