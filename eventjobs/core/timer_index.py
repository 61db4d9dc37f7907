"""The in-memory index of pending timers: what is due next, and each key's timer by key.

The compacted timer topic is the durable truth; this index is rebuilt from it on start, so one
million pending timers must fit in little memory (about 55 bytes each, docs/benchmarks.md). There
is no Python object per timer: each one is a slot in packed columns (`array`s of due ms, attempt,
and the end of its key in one `bytearray` of keys, a job id's 36 characters kept as its 16 bytes).
A key finds its slot through an open-addressing table of slot numbers; due order comes from
buckets of `BUCKET_MS` (arrays of slots), of which only the earliest is sorted, on demand.

A slot never changes: a replaced, cancelled or fired timer's slot is marked dead and skipped when
met, and a new one is added. Once the dead slots outnumber the live ones (plus slack) everything
is rebuilt from the live slots, so memory stays within about twice that of the live timers.
Timers due at the same ms come out in the order they were set.
"""

from __future__ import annotations

import heapq
from array import array
from binascii import hexlify, unhexlify
from collections.abc import Iterator
from datetime import UTC

from pydantic import ValidationError

from eventjobs.core.refused import Refused
from eventjobs.core.clock import epoch_ms
from eventjobs.core.records import TIMER_KINDS, TimerRecord
from eventjobs.core.validation import worded

MAX_ATTEMPT = (1 << 20) - 1  # the largest attempt a timer can carry (events allow up to 1,000,000)
MAX_DUE_MS = (1 << 62) - 1  # due times are held as signed 64-bit ms (year 9999 is about 2**48)
BUCKET_SHIFT = 16  # timers are ordered in buckets of 2**16 ms (about 65 s); only the earliest is sorted
BUCKET_MS = 1 << BUCKET_SHIFT
COMPACT_SLACK = 1024  # dead slots allowed beyond the live count before a rebuild

_EMPTY = -1  # a table position holding no slot
_DEAD = -1  # the attempt of a slot whose timer was replaced, deleted or fired
_SLOT_BITS = 32  # the late heap packs (due ms, slot) into one int
_SLOT_MASK = (1 << _SLOT_BITS) - 1
_RAW, _JOB_ID = 0, 1  # the first byte of a packed key: the key as it is, or a job id's 16 bytes + the rest
_SUFFIXES = [b":run_at", b":lease", b":ttl", b":dead_letter", b":retain"]  # job id + one of these: one tag byte
_SUFFIX_TAG = {suffix: 2 + i for i, suffix in enumerate(_SUFFIXES)}
_TAG_BYTES = {tag: bytes((tag,)) for tag in _SUFFIX_TAG.values()}


def pack_key(key: bytes) -> bytes:
    """`key` in fewer bytes: a leading canonical job id (lowercase UUID text) becomes its 16 bytes,
    and a usual `:kind` after it one tag byte; any other key is kept as it is (one byte longer)."""
    if len(key) >= 36 and key[8] == key[13] == key[18] == key[23] == 45:  # 45: "-"
        text = key[:36].replace(b"-", b"")
        if len(text) == 32:
            try:
                raw = unhexlify(text)
            except ValueError:  # not hex
                raw = b""
            if raw and hexlify(raw) == text:  # lowercase hex only: it unpacks to `key`
                rest = key[36:]
                tag = _SUFFIX_TAG.get(rest)
                return (_TAG_BYTES[tag] + raw) if tag is not None else (b"\x01" + raw + rest)
    return b"\x00" + key


def unpack_key(packed: bytes | bytearray) -> bytes:
    """The key `pack_key` packed."""
    tag = packed[0]
    if tag == _RAW:
        return bytes(packed[1:])
    text = hexlify(packed[1:17])
    job_id = b"-".join((text[0:8], text[8:12], text[12:16], text[16:20], text[20:32]))
    return job_id + (bytes(packed[17:]) if tag == _JOB_ID else _SUFFIXES[tag - 2])


def check_timer(due_ms: int, attempt: int) -> None:
    """Raise ValueError unless the index can hold a timer due at `due_ms` with `attempt`."""
    if not 0 <= attempt <= MAX_ATTEMPT:
        raise ValueError(f"attempt {attempt} is outside 0..{MAX_ATTEMPT}")
    if not -MAX_DUE_MS <= due_ms <= MAX_DUE_MS:
        raise ValueError(f"due time {due_ms} ms is outside -{MAX_DUE_MS}..{MAX_DUE_MS}")


def admit_timer(key: bytes | None, value: bytes) -> tuple[int, int] | Refused:
    """(due ms, attempt) of a timer record read from the timer topic, or why it is refused.

    The timer topic is compacted and read from its beginning on every start, so a record nobody
    can use must be refused here, never raised on: not JSON, a kind the timer service does not
    fire (`TIMER_KINDS`; the lease, re-publish and retention timers are the processor's own,
    `core.housekeeping`, never records), other wrong fields, an attempt the index cannot hold, a
    due time out of range, or a key other than the one the processor writes for that record
    (`TimerRecord.key`: `job_id:kind`, `job_id:retry:attempt`, `job_id:run_at:attempt`).
    """
    try:
        timer = TimerRecord.decode(value)
    except ValidationError as error:
        problems = error.errors()
        if problems and problems[0]["type"] == "json_invalid":
            return Refused("not JSON", f"not a timer record: {brief(error)}")
        if any(problem["loc"] == ("kind",) and problem["type"] == "literal_error" for problem in problems):
            return Refused("kind not fired", f"the timer service fires kinds {', '.join(TIMER_KINDS)} only: "
                                             f"{brief(error)}")
        return Refused("wrong fields", f"not a timer record: {brief(error)}")
    except ValueError as error:  # e.g. bytes that are not UTF-8
        return Refused("not JSON", f"not a timer record: {error}")
    if not 0 <= timer.attempt <= MAX_ATTEMPT:
        return Refused("attempt out of range", f"attempt {timer.attempt} is outside 0..{MAX_ATTEMPT}")
    expected = timer.key
    if key != expected:
        return Refused("key does not match", f"key {key!r} is not the record's key {expected!r}")
    due_at = timer.due_at if timer.due_at.tzinfo is not None else timer.due_at.replace(tzinfo=UTC)
    try:
        due_ms = epoch_ms(due_at)
    except (OverflowError, ValueError) as error:
        return Refused("due time out of range", f"due_at {timer.due_at!r}: {error}")
    return due_ms, timer.attempt


def brief(error: ValidationError, limit: int = 5) -> str:
    """A validation error on one line, its first `limit` problems (`core.validation.worded`)."""
    return worded(error, limit=limit)


class TimerIndex:
    """Pending timers keyed by bytes (`job_id:kind`, a schedule id, ...); a newer set for a key
    replaces the older. Each key holds at most one timer: (due ms, attempt)."""

    __slots__ = ("_due", "_attempt", "_key_end", "_keys", "_table", "_used", "_live",
                 "_buckets", "_bucket_ids", "_head_bucket", "_head", "_head_at", "_late")

    def __init__(self) -> None:
        self._clear(8)

    def _clear(self, table_size: int) -> None:
        # the columns, one entry per slot
        self._due = array("q")  # due ms
        self._attempt = array("i")  # attempt, or _DEAD
        self._key_end = array("q")  # end of the slot's packed key in _keys (it starts where the previous ends)
        self._keys = bytearray()
        # key -> slot: open addressing, linear probing; a dead slot's position is a tombstone
        self._table = array("i", [_EMPTY]) * table_size
        self._used = 0  # positions of the table that are not empty
        self._live = 0
        # due order: slots by bucket (due_ms >> BUCKET_SHIFT), a heap of the buckets' numbers, the
        # earliest bucket taken out and sorted (its slots in due order, read from _head_at on), and
        # a heap of (due << 32 | slot) for timers set at or before that bucket once it was taken
        self._buckets: dict[int, array[int]] = {}
        self._bucket_ids: list[int] = []
        self._head_bucket: int | None = None
        self._head = array("i")
        self._head_at = 0
        self._late: list[int] = []

    def __len__(self) -> int:
        return self._live

    # -- by key ---------------------------------------------------------------------------------

    def _key_of(self, slot: int) -> bytes:
        return unpack_key(self._keys[self._key_end[slot - 1] if slot else 0:self._key_end[slot]])

    def _find(self, packed: bytes) -> tuple[int, int]:
        """(table position, slot) of the live timer of packed key `packed`, or (the position to
        put it at, -1) when it has none."""
        table, attempt, key_end, keys = self._table, self._attempt, self._key_end, self._keys
        mask, size = len(table) - 1, len(packed)
        position, free = hash(packed) & mask, -1
        while True:
            slot = table[position]
            if slot == _EMPTY:
                return (position if free < 0 else free), -1
            if attempt[slot] == _DEAD:
                if free < 0:
                    free = position
            else:
                start, end = key_end[slot - 1] if slot else 0, key_end[slot]
                if end - start == size and keys[start:end] == packed:
                    return position, slot
            position = (position + 1) & mask

    def get(self, key: bytes) -> tuple[int, int] | None:
        slot = self._find(pack_key(key))[1]
        return None if slot < 0 else (self._due[slot], self._attempt[slot])

    def set(self, key: bytes, due_ms: int, attempt: int) -> None:
        if not (0 <= attempt <= MAX_ATTEMPT and -MAX_DUE_MS <= due_ms <= MAX_DUE_MS):
            check_timer(due_ms, attempt)  # raises, saying which
        packed = pack_key(key)
        position, old = self._find(packed)
        due, attempts = self._due, self._attempt
        if old >= 0:
            if due[old] == due_ms and attempts[old] == attempt:
                return
            attempts[old] = _DEAD
            self._live -= 1
        elif self._table[position] == _EMPTY:
            self._used += 1
        slot = len(due)
        due.append(due_ms)
        attempts.append(attempt)
        keys = self._keys
        keys += packed
        self._key_end.append(len(keys))
        self._table[position] = slot
        self._live += 1
        self._order(slot, due_ms)
        if slot + 1 > 2 * self._live + COMPACT_SLACK:  # dead slots outnumber the live ones: see _mostly_dead
            self._rebuild()
        elif 3 * self._used > 2 * len(self._table):
            self._rehash()

    def delete(self, key: bytes) -> None:
        slot = self._find(pack_key(key))[1]
        if slot >= 0:
            self._attempt[slot] = _DEAD
            self._live -= 1
            if self._mostly_dead():
                self._rebuild()

    def items(self) -> Iterator[tuple[bytes, int, int]]:
        """The live timers, (key, due_ms, attempt), in the order their slots were made."""
        due, attempt = self._due, self._attempt
        for slot in range(len(due)):
            if attempt[slot] != _DEAD:
                yield self._key_of(slot), due[slot], attempt[slot]

    # -- by due time ----------------------------------------------------------------------------

    def _order(self, slot: int, due_ms: int) -> None:
        bucket_id = due_ms >> BUCKET_SHIFT
        if self._head_bucket is not None and bucket_id <= self._head_bucket:
            heapq.heappush(self._late, (due_ms << _SLOT_BITS) | slot)
            return
        bucket = self._buckets.get(bucket_id)
        if bucket is None:
            self._buckets[bucket_id] = bucket = array("i")
            heapq.heappush(self._bucket_ids, bucket_id)
        bucket.append(slot)

    def _take_next_bucket(self) -> bool:
        """Sort the earliest bucket's live slots into the head; False when there is no bucket."""
        if not self._bucket_ids:
            return False
        bucket_id = heapq.heappop(self._bucket_ids)
        attempt = self._attempt
        live = [slot for slot in self._buckets.pop(bucket_id) if attempt[slot] != _DEAD]
        live.sort(key=self._due.__getitem__)  # stable: equal due times keep their slots' order
        self._head, self._head_at, self._head_bucket = array("i", live), 0, bucket_id
        return True

    def _earliest(self) -> tuple[int, bool] | None:
        """(slot, whether it is in the late heap) of the earliest live timer, or None."""
        attempt, late = self._attempt, self._late
        while True:
            head, at = self._head, self._head_at
            while at < len(head) and attempt[head[at]] == _DEAD:
                at += 1
            self._head_at = at
            while late and attempt[late[0] & _SLOT_MASK] == _DEAD:
                heapq.heappop(late)
            if at < len(head):
                slot = head[at]
                if late and late[0] < ((self._due[slot] << _SLOT_BITS) | slot):
                    return late[0] & _SLOT_MASK, True
                return slot, False
            if late:
                return late[0] & _SLOT_MASK, True
            if not self._take_next_bucket():
                return None

    def next_due_ms(self) -> int | None:
        """Due time of the earliest live timer, or None when nothing is pending."""
        earliest = self._earliest()
        return None if earliest is None else self._due[earliest[0]]

    def pop_due(self, now_ms: int, limit: int = 10_000) -> list[tuple[bytes, int, int]]:
        """Remove and return up to `limit` timers due at or before `now_ms`: (key, due_ms, attempt),
        in due order (timers due at the same ms in the order they were set)."""
        fired: list[tuple[bytes, int, int]] = []
        due, attempt = self._due, self._attempt
        while len(fired) < limit:
            earliest = self._earliest()
            if earliest is None or due[earliest[0]] > now_ms:
                break
            slot, late = earliest
            if late:
                heapq.heappop(self._late)
            else:
                self._head_at += 1
            fired.append((self._key_of(slot), due[slot], attempt[slot]))
            attempt[slot] = _DEAD
            self._live -= 1
        if self._mostly_dead():
            self._rebuild()
        return fired

    # -- bounded size -----------------------------------------------------------------------------

    def _mostly_dead(self) -> bool:
        """Whether dead slots outnumber live ones by more than the slack: replaced, deleted and
        fired timers would otherwise stay in the columns (and the buckets) for ever."""
        return len(self._due) - self._live > self._live + COMPACT_SLACK

    def _table_size(self) -> int:
        size = 8
        while 2 * (self._live + 1) > size:  # at most half full: it grows again at two thirds
            size *= 2
        return size

    def _rehash(self) -> None:
        """A table without the tombstones of dead slots: twice as large while the live slots fill
        more than a third of it (so that loading n timers rehashes about 2n keys, not 4n)."""
        attempt, key_end, keys = self._attempt, self._key_end, self._keys
        size = self._table_size()
        if 3 * self._live > len(self._table):
            size = max(size, 2 * len(self._table))
        table = self._table = array("i", [_EMPTY]) * size
        mask, start = len(table) - 1, 0
        for slot in range(len(attempt)):
            end = key_end[slot]
            if attempt[slot] != _DEAD:
                position = hash(bytes(keys[start:end])) & mask
                while table[position] != _EMPTY:
                    position = (position + 1) & mask
                table[position] = slot
            start = end
        self._used = self._live

    def _rebuild(self) -> None:
        """Keep only the live slots (in their order), in a table sized for them."""
        due, attempt, key_end, keys = self._due, self._attempt, self._key_end, self._keys
        self._clear(self._table_size())
        start = 0
        for slot in range(len(due)):
            end = key_end[slot]
            if attempt[slot] != _DEAD:
                packed = bytes(keys[start:end])
                position = self._find(packed)[0]
                new = len(self._due)
                self._due.append(due[slot])
                self._attempt.append(attempt[slot])
                self._keys += packed
                self._key_end.append(len(self._keys))
                self._table[position] = new
                self._used += 1
                self._live += 1
                self._order(new, due[slot])
            start = end
