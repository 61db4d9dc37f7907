"""Time values for the core: UTC, millisecond precision, and the clocks the shell reads.

Why this module exists: the core never reads the clock. Time arrives inside events
(``occurred_at``) and every derived time (a retry's due time, a lease deadline) is computed
from it, so replaying a log gives the same answer in any process at any time. The shell asks a
``Clock`` for "now" when it writes an event; tests use a ``FrozenClock`` they move by hand.

All timestamps are timezone-aware UTC truncated to whole milliseconds: that is what the wire
format can carry (``2024-01-31T12:00:00.123Z``), so a value survives encode/decode unchanged.
"""

from __future__ import annotations

import time
from datetime import UTC as UTC  # re-exported: the core's name for UTC
from datetime import datetime, timedelta
from typing import Protocol

import orjson

_ZERO = timedelta(0)


def utc_ms(value: datetime) -> datetime:
    """Return ``value`` converted to UTC and truncated to whole milliseconds.

    Raises ``ValueError`` for a naive datetime: a time without a zone is ambiguous and is
    never guessed.
    """
    offset = value.utcoffset()
    if offset is None:
        raise ValueError(f"naive datetime {value.isoformat()} has no timezone; use an aware UTC datetime")
    micro = value.microsecond
    if micro % 1000:
        value = value.replace(microsecond=micro - micro % 1000)
    if value.tzinfo is not UTC:  # one shared tzinfo: cheaper to keep (and to garbage-collect)
        value = value.astimezone(UTC)
    return value


def format_utc_ms(value: datetime) -> str:
    """Format an aware datetime as ISO-8601 UTC with milliseconds and a ``Z``: ``2024-01-31T12:00:00.123Z``.

    Sub-millisecond digits are dropped (truncated). Implemented with orjson's native datetime
    writer because ``datetime.isoformat(timespec=...)`` costs several times more.
    """
    text = orjson.dumps(value, option=orjson.OPT_UTC_Z).decode()
    if not text.endswith('Z"'):  # a non-UTC offset: normalise first
        text = orjson.dumps(utc_ms(value), option=orjson.OPT_UTC_Z).decode()
    if len(text) == 22:  # "YYYY-MM-DDTHH:MM:SSZ" (orjson omits a zero fraction)
        return text[1:20] + ".000Z"
    return text[1:24] + "Z"


def add_seconds(value: datetime, seconds: float) -> datetime:
    """``value`` plus ``seconds``, rounded to whole milliseconds (so the result stays wire-exact)."""
    return value + timedelta(milliseconds=round(seconds * 1000))


def from_epoch_ms(ms: int) -> datetime:
    """The aware UTC datetime ``ms`` milliseconds after the Unix epoch.

    Exact although it goes through a float: until 2106 (2**32 s) ``ms / 1000`` is within 0.5 us
    of the true value, and ``fromtimestamp`` rounds to the nearest microsecond.
    """
    return datetime.fromtimestamp(ms / 1000, UTC)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MS = timedelta(milliseconds=1)


def epoch_ms(value: datetime) -> int:
    """Whole milliseconds from the Unix epoch to the aware ``value`` (rounded down; exact, no float)."""
    return (value - _EPOCH) // _MS


class Clock(Protocol):
    """Where the shell gets "now". The core never calls one."""

    def now(self) -> datetime:
        """The current time, aware UTC, whole milliseconds."""
        ...


class SystemClock:
    """The real wall clock (the only clock read in the package, used by the shell)."""

    def now(self) -> datetime:
        # A quarter of the cost of utc_ms(datetime.now(UTC)); the worker reads it for every event.
        return from_epoch_ms(time.time_ns() // 1_000_000)


class FrozenClock:
    """A clock that only moves when told to: deterministic time for tests."""

    def __init__(self, at: datetime | None = None) -> None:
        self._now = utc_ms(at) if at is not None else datetime(2024, 1, 1, tzinfo=UTC)

    def now(self) -> datetime:
        return self._now

    def advance(self, seconds: float = 0.0, **delta: float) -> datetime:
        """Move forward by ``seconds`` (and/or ``timedelta`` keyword arguments); return the new now."""
        step = timedelta(seconds=seconds, **delta)
        if step < _ZERO:
            raise ValueError(f"a FrozenClock only moves forward, got {step}")
        self._now = utc_ms(self._now + step)
        return self._now

    def set(self, at: datetime) -> None:
        """Jump to ``at`` (any direction: tests may need to model skew)."""
        self._now = utc_ms(at)
