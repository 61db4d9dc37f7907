"""Durations as people write them: `250ms`, `90s`, `15m`, `1.5h`, `30d`.

Topic retention, the CLI's duration options and `--since` read this one grammar, so the same
text means the same time everywhere. Each caller decides what a bare number means (seconds for
a CLI option; a unit is required where a bare number would be ambiguous).
"""

from __future__ import annotations

import re
from datetime import timedelta
from typing import Literal

Unit = Literal["ms", "s", "m", "h", "d"]
UNITS: dict[str, timedelta] = {
    "ms": timedelta(milliseconds=1),
    "s": timedelta(seconds=1),
    "m": timedelta(minutes=1),
    "h": timedelta(hours=1),
    "d": timedelta(days=1),
}
_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")


def parse_duration(text: str, *, default_unit: Unit | None = None) -> timedelta:
    """A non-negative number with a unit (ms, s, m, h, d), to the microsecond.

    A bare number counts in `default_unit`; without a default a unit is required. Raises
    `ValueError` naming the text when it is not a duration (or too long for a `timedelta`).
    """
    match = _DURATION.match(text)
    unit = (match.group(2) or default_unit) if match else None
    if match is None or unit is None:
        raise ValueError(f"{text!r} is not a duration")
    number = match.group(1)
    try:
        return UNITS[unit] * (float(number) if "." in number else int(number))
    except OverflowError:
        raise ValueError(f"{text!r} is too long a duration") from None
