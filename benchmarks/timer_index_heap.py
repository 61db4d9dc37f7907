"""The timer index of eventjobs before it was packed (a heap of tuples and a dict of bytes keys),
kept only so that `bench_timers.py --index` can show its memory beside the packed one's.

About 260 bytes per pending timer: one bytes key, one int and one heap tuple each.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator

_ATTEMPT_BITS = 20
_ATTEMPT_MASK = (1 << _ATTEMPT_BITS) - 1


def pack(due_ms: int, attempt: int) -> int:
    if not 0 <= attempt <= _ATTEMPT_MASK:
        raise ValueError(f"attempt {attempt} is outside 0..{_ATTEMPT_MASK}")
    return (due_ms << _ATTEMPT_BITS) | attempt


def unpack(packed: int) -> tuple[int, int]:
    return packed >> _ATTEMPT_BITS, packed & _ATTEMPT_MASK


class HeapTimerIndex:
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
