"""The in-memory index of pending timers: what is due next, with O(log n) insert and lazy delete.

The compacted timer topic is the durable truth; this index is rebuilt from it on start. One
million pending timers must fit in a few hundred MB, so there is no Python object per timer
beyond one bytes key, one int and one heap tuple: the due time (ms) and the attempt are packed
into a single int, and a replaced or cancelled timer is dropped lazily when it reaches the top
of the heap (its packed value no longer matches the live one).
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from datetime import UTC
from typing import NamedTuple

from pydantic import ValidationError

from eventjobs.core.clock import epoch_ms
from eventjobs.core.records import TimerRecord

_ATTEMPT_BITS = 20
_ATTEMPT_MASK = (1 << _ATTEMPT_BITS) - 1
MAX_ATTEMPT = _ATTEMPT_MASK  # the largest attempt a timer can carry (events allow up to 1,000,000)


def pack(due_ms: int, attempt: int) -> int:
    if not 0 <= attempt <= _ATTEMPT_MASK:
        raise ValueError(f"attempt {attempt} is outside 0..{_ATTEMPT_MASK}")
    return (due_ms << _ATTEMPT_BITS) | attempt


class RefusedTimer(NamedTuple):
    """Why a timer record cannot be indexed: `kind` names the class of fault (logged once per
    kind), `reason` the details of this record."""

    kind: str
    reason: str


def admit_timer(key: bytes | None, value: bytes) -> tuple[int, int] | RefusedTimer:
    """(due ms, attempt) of a timer record read from the timer topic, or why it is refused.

    The timer topic is compacted and read from its beginning on every start, so a record nobody
    can use must be refused here, never raised on: not JSON, wrong fields, an attempt the index
    cannot hold, a due time out of range, or a key other than the one the processor writes for
    that record (`TimerRecord.key`: `job_id:kind`, `job_id:retry:attempt`, or
    `job_id:republish:attempt:sequence`).
    """
    try:
        timer = TimerRecord.decode(value)
    except ValidationError as error:
        problems = error.errors()
        kind = "not JSON" if problems and problems[0]["type"] == "json_invalid" else "wrong fields"
        return RefusedTimer(kind, f"not a timer record: {brief(error)}")
    except ValueError as error:  # e.g. bytes that are not UTF-8
        return RefusedTimer("not JSON", f"not a timer record: {error}")
    if not 0 <= timer.attempt <= MAX_ATTEMPT:
        return RefusedTimer("attempt out of range", f"attempt {timer.attempt} is outside 0..{MAX_ATTEMPT}")
    try:
        expected = timer.key
    except ValueError as error:  # e.g. a republish timer without its sequence
        return RefusedTimer("wrong fields", f"not a timer record: {error}")
    if key != expected:
        return RefusedTimer("key does not match", f"key {key!r} is not the record's key {expected!r}")
    due_at = timer.due_at if timer.due_at.tzinfo is not None else timer.due_at.replace(tzinfo=UTC)
    try:
        due_ms = epoch_ms(due_at)
    except (OverflowError, ValueError) as error:
        return RefusedTimer("due time out of range", f"due_at {timer.due_at!r}: {error}")
    return due_ms, timer.attempt


def brief(error: ValidationError, limit: int = 5) -> str:
    """A validation error on one line: `field: message; ...` (pydantic's own text spans many lines)."""
    parts = []
    for problem in error.errors(include_url=False)[:limit]:
        where = ".".join(str(part) for part in problem["loc"])
        parts.append(f"{where}: {problem['msg']}" if where else problem["msg"])
    more = error.error_count() - limit
    return "; ".join(parts) + (f"; and {more} more" if more > 0 else "")


def unpack(packed: int) -> tuple[int, int]:
    return packed >> _ATTEMPT_BITS, packed & _ATTEMPT_MASK


class TimerIndex:
    """Pending timers keyed by `job_id:kind` bytes; a newer set for a key replaces the older."""

    __slots__ = ("_live", "_heap")

    def __init__(self) -> None:
        self._live: dict[bytes, int] = {}
        self._heap: list[tuple[int, bytes]] = []

    def __len__(self) -> int:
        return len(self._live)

    def set(self, key: bytes, due_ms: int, attempt: int) -> None:
        packed = pack(due_ms, attempt)
        if self._live.get(key) == packed:
            return
        self._live[key] = packed
        heapq.heappush(self._heap, (packed, key))
        self._compact_if_mostly_stale()

    def delete(self, key: bytes) -> None:
        if self._live.pop(key, None) is not None:
            self._compact_if_mostly_stale()

    def _compact_if_mostly_stale(self) -> None:
        """Keep the heap within twice the live timers (plus slack): replaced and deleted timers
        would otherwise stay in it until their due time, which for a lease or a retention is far."""
        if len(self._heap) > 2 * len(self._live) + 1024:
            self._compact()

    def get(self, key: bytes) -> tuple[int, int] | None:
        packed = self._live.get(key)
        return None if packed is None else unpack(packed)

    def next_due_ms(self) -> int | None:
        """Due time of the earliest live timer, or None when nothing is pending."""
        self._drop_stale_top()
        return (self._heap[0][0] >> _ATTEMPT_BITS) if self._heap else None

    def pop_due(self, now_ms: int, limit: int = 10_000) -> list[tuple[bytes, int, int]]:
        """Remove and return up to `limit` timers due at or before `now_ms`: (key, due_ms, attempt)."""
        due: list[tuple[bytes, int, int]] = []
        bound = (now_ms + 1) << _ATTEMPT_BITS
        heap, live = self._heap, self._live
        while heap and len(due) < limit:
            packed, key = heap[0]
            if packed >= bound:
                break
            heapq.heappop(heap)
            if live.get(key) != packed:
                continue  # replaced or deleted since it was pushed
            del live[key]
            due.append((key, packed >> _ATTEMPT_BITS, packed & _ATTEMPT_MASK))
        return due

    def items(self) -> Iterator[tuple[bytes, int, int]]:
        for key, packed in self._live.items():
            yield key, packed >> _ATTEMPT_BITS, packed & _ATTEMPT_MASK

    def _drop_stale_top(self) -> None:
        heap, live = self._heap, self._live
        while heap and live.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)

    def _compact(self) -> None:
        self._heap = [(packed, key) for key, packed in self._live.items()]
        heapq.heapify(self._heap)
