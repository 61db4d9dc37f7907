"""`Refused`: why a record cannot be used, the one answer every `admit_*` gives instead of a value.

A reader never raises on a bad record: it gets a `Refused`, skips the record (quarantines or
tombstones it where it can write) and reports it, counted by `kind` and logged once per kind.
"""

from __future__ import annotations

from typing import NamedTuple


class Refused(NamedTuple):
    """`kind` names the class of fault (what the counts and the once-per-kind log line group by),
    `reason` the details of this record."""

    kind: str
    reason: str
