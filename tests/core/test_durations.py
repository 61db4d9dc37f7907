"""The one duration grammar: a number with ms, s, m, h or d, the same wherever a duration is read."""

from __future__ import annotations

from datetime import timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from eventjobs.core.durations import UNITS, parse_duration


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("250ms", timedelta(milliseconds=250)),
        ("90s", timedelta(seconds=90)),
        ("15m", timedelta(minutes=15)),
        ("1.5h", timedelta(minutes=90)),
        ("30d", timedelta(days=30)),
        ("0s", timedelta(0)),
        (" 10 s ", timedelta(seconds=10)),
    ],
)
def test_a_number_with_a_unit(text: str, expected: timedelta) -> None:
    assert parse_duration(text) == expected


def test_a_bare_number_counts_in_the_default_unit_and_needs_one() -> None:
    assert parse_duration("90", default_unit="s") == timedelta(seconds=90)
    assert parse_duration("2.5", default_unit="ms") == timedelta(microseconds=2500)
    assert parse_duration("90ms", default_unit="s") == timedelta(milliseconds=90)  # a written unit wins
    with pytest.raises(ValueError, match="'90' is not a duration"):
        parse_duration("90")


@pytest.mark.parametrize("text", ["", "soon", "-5s", "10S", "1e3s", "7 weeks", ".5s", "1.s", "5 s s", "1h30m"])
def test_anything_else_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match=f"^{text!r} is not a duration$"):
        parse_duration(text, default_unit="s")


def test_too_long_for_a_timedelta_is_refused() -> None:
    with pytest.raises(ValueError, match="'1000000000d' is too long a duration"):
        parse_duration("1000000000d")


@given(st.integers(min_value=0, max_value=10**7), st.sampled_from(sorted(UNITS)), st.sampled_from(["", " "]))
def test_whole_numbers_of_every_unit(number: int, unit: str, space: str) -> None:
    assert parse_duration(f"{number}{space}{unit}") == number * UNITS[unit]


@given(st.integers(min_value=0, max_value=10**14))
def test_seconds_with_six_decimals_round_trip_to_the_microsecond(microseconds: int) -> None:
    duration = timedelta(microseconds=microseconds)
    text = f"{microseconds // 10**6}.{microseconds % 10**6:06d}s"
    assert parse_duration(text) == duration


@given(st.integers(min_value=0, max_value=10**6))
def test_units_agree_with_each_other(number: int) -> None:
    assert parse_duration(f"{number}s") == parse_duration(f"{number * 1000}ms")
    assert parse_duration(f"{number}d") == parse_duration(f"{number * 24}h") == parse_duration(f"{number * 1440}m")
