"""TimerIndex: the packed in-memory index of pending timers behaves like a plain dict.

The reference model is `dict[key, (due_ms, attempt, order set)]`: `set` replaces (setting the
same value again changes nothing), `delete` removes, and `pop_due(now, limit)` removes and returns
the live timers due at or before `now`, earliest first (equal due times in the order they were
set), at most `limit` of them: what a sorted scan of the dict gives. Dead slots, buckets, the late
heap and rebuilds must never be observable.
"""

from __future__ import annotations

import random
import uuid

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventjobs.core.timer_index import BUCKET_MS, COMPACT_SLACK, MAX_DUE_MS, TimerIndex, check_timer, pack_key, unpack_key

MAX_ATTEMPT = (1 << 20) - 1

# -- packed keys --------------------------------------------------------------------------------

JOB_ID = "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b"


@pytest.mark.parametrize("key, size", [
    (f"{JOB_ID}:lease".encode(), 17),  # a job id and a usual kind: 16 bytes and a tag
    (f"{JOB_ID}:run_at".encode(), 17),
    (f"{JOB_ID}:retry:3".encode(), 17 + len(":retry:3")),
    (f"{JOB_ID}:republish:2:7".encode(), 17 + len(":republish:2:7")),
    (JOB_ID.encode(), 17),  # the processor's housekeeping keys: a bare job id
    (JOB_ID.upper().encode() + b":ttl", 1 + 40),  # not the canonical (lowercase) form: kept as it is
    (b"nightly-report", 15),  # a schedule id
    (b"", 1),
])
def test_pack_key_shrinks_job_ids_and_keeps_every_key(key: bytes, size: int) -> None:
    assert len(pack_key(key)) == size
    assert unpack_key(pack_key(key)) == key


@given(st.one_of(
    st.binary(max_size=60),
    st.builds(lambda u, rest: str(u).encode() + rest, st.uuids(), st.binary(max_size=12)),
    st.builds(lambda text, rest: text.encode() + rest,
              st.text(alphabet="0123456789abcdefABCDEF- g", min_size=36, max_size=36), st.binary(max_size=4)),
))
def test_unpack_key_inverts_pack_key_and_packing_is_one_to_one(key: bytes) -> None:
    assert unpack_key(pack_key(key)) == key
    assert unpack_key(bytearray(pack_key(key))) == key


@pytest.mark.parametrize("due_ms, attempt, message", [
    (0, -1, rf"attempt -1 is outside 0\.\.{MAX_ATTEMPT}"),
    (0, MAX_ATTEMPT + 1, rf"attempt {MAX_ATTEMPT + 1} is outside 0\.\.{MAX_ATTEMPT}"),
    (0, 2**40, r"attempt 1099511627776 is outside"),
    (MAX_DUE_MS + 1, 0, rf"due time {MAX_DUE_MS + 1} ms is outside"),
    (-MAX_DUE_MS - 1, 0, r"due time -\d+ ms is outside"),
])
def test_check_timer_names_what_the_index_cannot_hold(due_ms: int, attempt: int, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_timer(due_ms, attempt)
    with pytest.raises(ValueError, match=message):
        TimerIndex().set(b"j:lease", due_ms, attempt)


def test_the_index_holds_every_attempt_an_event_may_carry_and_year_9999() -> None:
    index = TimerIndex()
    index.set(b"j:retry", 253_402_300_799_999, 1_000_000)  # events allow attempts up to 1,000,000
    assert index.get(b"j:retry") == (253_402_300_799_999, 1_000_000)


# -- examples -----------------------------------------------------------------------------------


def test_empty_index() -> None:
    index = TimerIndex()
    assert len(index) == 0
    assert index.next_due_ms() is None
    assert index.pop_due(10**15) == []
    assert list(index.items()) == []
    assert index.get(b"j:lease") is None
    index.delete(b"j:lease")  # deleting what is not there is a no-op
    assert len(index) == 0


def test_pop_due_returns_due_timers_in_due_order_and_removes_them() -> None:
    index = TimerIndex()
    index.set(b"c:ttl", 300, 0)
    index.set(b"a:run_at", 100, 0)
    index.set(b"b:retry", 200, 2)
    index.set(b"d:lease", 400, 1)
    assert index.next_due_ms() == 100
    assert index.pop_due(299) == [(b"a:run_at", 100, 0), (b"b:retry", 200, 2)]
    assert len(index) == 2
    assert index.get(b"a:run_at") is None
    assert index.next_due_ms() == 300
    assert index.pop_due(300) == [(b"c:ttl", 300, 0)]  # due exactly now fires
    assert index.pop_due(399) == []
    assert sorted(index.items()) == [(b"d:lease", 400, 1)]


def test_replaced_timer_fires_once_with_the_new_value_only() -> None:
    index = TimerIndex()
    index.set(b"j:lease", 100, 0)
    index.set(b"j:lease", 500, 0)  # heartbeat: later deadline
    assert len(index) == 1
    assert index.get(b"j:lease") == (500, 0)
    assert index.next_due_ms() == 500
    assert index.pop_due(499) == []
    assert index.pop_due(10_000) == [(b"j:lease", 500, 0)]
    assert index.pop_due(10_000) == []


def test_replacement_with_an_earlier_due_fires_at_the_earlier_time_once() -> None:
    index = TimerIndex()
    index.set(b"j:retry", 900, 1)
    index.set(b"j:retry", 100, 2)
    assert index.pop_due(100) == [(b"j:retry", 100, 2)]
    assert index.pop_due(10_000) == []  # the old entry (900, 1) is stale: never fires
    assert len(index) == 0


def test_deleted_timer_never_fires_and_next_due_skips_it() -> None:
    index = TimerIndex()
    index.set(b"a:ttl", 100, 0)
    index.set(b"b:ttl", 200, 0)
    index.delete(b"a:ttl")
    assert index.next_due_ms() == 200
    assert index.pop_due(1_000) == [(b"b:ttl", 200, 0)]
    assert index.next_due_ms() is None


def test_delete_then_set_same_value_fires_exactly_once() -> None:
    index = TimerIndex()
    for _ in range(3):
        index.set(b"j:lease", 100, 0)
        index.delete(b"j:lease")
    index.set(b"j:lease", 100, 0)
    assert index.pop_due(100) == [(b"j:lease", 100, 0)]
    assert index.pop_due(100) == []
    index.set(b"j:lease", 100, 0)  # set again after firing: fires again, once
    assert index.pop_due(100) == [(b"j:lease", 100, 0)]
    assert index.pop_due(100) == []


def test_same_due_different_attempt_is_a_replacement() -> None:
    index = TimerIndex()
    index.set(b"j:lease", 100, 0)
    index.set(b"j:lease", 100, 1)
    assert index.pop_due(100) == [(b"j:lease", 100, 1)]
    assert index.pop_due(100) == []


def test_pop_due_respects_limit_and_keeps_the_rest() -> None:
    index = TimerIndex()
    for i in range(10):
        index.set(f"j{i}:ttl".encode(), 1_000 + i, 0)
    first = index.pop_due(5_000, limit=3)
    assert [due for _, due, _ in first] == [1_000, 1_001, 1_002]
    assert len(index) == 7
    assert index.pop_due(5_000, limit=0) == []
    rest = index.pop_due(5_000)
    assert [due for _, due, _ in rest] == list(range(1_003, 1_010))
    assert len(index) == 0


def test_negative_and_zero_due_times() -> None:
    index = TimerIndex()
    index.set(b"a:ttl", -5, 3)
    index.set(b"b:ttl", 0, 0)
    assert index.next_due_ms() == -5
    assert index.pop_due(-6) == []
    assert index.pop_due(-5) == [(b"a:ttl", -5, 3)]
    assert index.pop_due(0) == [(b"b:ttl", 0, 0)]


def test_compaction_keeps_exactly_the_live_timers() -> None:
    index = TimerIndex()
    index.set(b"keep:ttl", 50_000, 7)
    index.set(b"gone:ttl", 10, 0)
    index.delete(b"gone:ttl")
    for i in range(5_000):  # many replacements of one key: the heap must be compacted
        index.set(b"hot:lease", 10_000 + i, i % 3)
    assert len(index._due) <= 2 * len(index) + COMPACT_SLACK + 1  # the rebuild really ran
    assert len(index) == 2
    assert index.get(b"hot:lease") == (14_999, 4_999 % 3)
    assert index.next_due_ms() == 14_999
    assert index.pop_due(10**9) == [(b"hot:lease", 14_999, 4_999 % 3), (b"keep:ttl", 50_000, 7)]
    assert index.pop_due(10**9) == []


def test_set_rejects_attempt_out_of_range_without_changing_the_index() -> None:
    index = TimerIndex()
    index.set(b"j:lease", 100, 0)
    with pytest.raises(ValueError):
        index.set(b"j:lease", 200, MAX_ATTEMPT + 1)
    assert index.get(b"j:lease") == (100, 0)
    assert index.pop_due(1_000) == [(b"j:lease", 100, 0)]


# -- the reference model ------------------------------------------------------------------------

# job-id keys (packed to 16 bytes and a tag) and other keys (kept as they are), several kinds each
KEYS = ([f"job-{i}:{kind}".encode() for i in range(3) for kind in ("run_at", "retry", "lease", "ttl")]
        + [f"{uuid.UUID(int=i * 7919)}:{kind}".encode() for i in range(3) for kind in ("lease", "retry:2", "")])
keys = st.sampled_from(KEYS)
# due times close together (many equal ones) and spread over several buckets, negative ones included
dues = st.one_of(st.integers(min_value=0, max_value=200), st.integers(min_value=-2 * BUCKET_MS, max_value=5 * BUCKET_MS))
attempts = st.integers(min_value=0, max_value=3)


class TimerIndexMatchesDict(RuleBasedStateMachine):
    """The index against a dict scanned in sorted order: every answer must be the same."""

    def __init__(self) -> None:
        super().__init__()
        self.index = TimerIndex()
        self.model: dict[bytes, tuple[int, int, int]] = {}  # key -> (due, attempt, when it was set)
        self.sets = 0

    def due_in_model(self, now: int) -> list[tuple[bytes, int, int]]:
        ordered = sorted((due, order, key, attempt) for key, (due, attempt, order) in self.model.items() if due <= now)
        return [(key, due, attempt) for due, _, key, attempt in ordered]

    @rule(key=keys, due=dues, attempt=attempts)
    def set(self, key: bytes, due: int, attempt: int) -> None:
        self.index.set(key, due, attempt)
        if self.model.get(key, (None, None))[:2] != (due, attempt):  # the same value again changes nothing
            self.sets += 1
            self.model[key] = (due, attempt, self.sets)

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        self.model.pop(key, None)
        self.index.delete(key)

    @rule(now=st.one_of(dues, st.integers(min_value=-5, max_value=220)), limit=st.integers(min_value=0, max_value=20))
    def pop_due(self, now: int, limit: int) -> None:
        expected = self.due_in_model(now)[:limit]
        assert self.index.pop_due(now, limit=limit) == expected
        for key, _, _ in expected:
            del self.model[key]

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        held = self.model.get(key)
        assert self.index.get(key) == (None if held is None else held[:2])

    @invariant()
    def same_size_and_items(self) -> None:
        assert len(self.index) == len(self.model)
        assert sorted(self.index.items()) == sorted((k, d, a) for k, (d, a, _) in self.model.items())

    @invariant()
    def next_due_is_earliest_live(self) -> None:
        expected = min((d for d, _, _ in self.model.values()), default=None)
        assert self.index.next_due_ms() == expected

    @invariant()
    def size_stays_bounded(self) -> None:
        assert len(self.index._due) <= 2 * len(self.model) + COMPACT_SLACK + 1

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def drain_everything(self) -> None:
        assert self.index.pop_due(MAX_DUE_MS, limit=10**6) == self.due_in_model(MAX_DUE_MS)
        self.model.clear()


TimerIndexMatchesDict.TestCase.settings = settings(max_examples=200, stateful_step_count=50, deadline=None)
test_timer_index_matches_reference_model = TimerIndexMatchesDict.TestCase


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=2**32))
def test_thousands_of_timers_over_many_buckets_come_out_like_a_sorted_scan(seed: int) -> None:
    """Enough keys to grow the table several times and rebuild it, due times over many buckets,
    pops in between: the index still answers as a sorted scan of a dict does."""
    rng = random.Random(seed)
    index, model, sets, now = TimerIndex(), {}, 0, 0
    pool = [str(uuid.UUID(int=rng.getrandbits(128))).encode() + b":lease" for _ in range(1_500)] + [
        f"schedule-{i}".encode() for i in range(500)]
    for step in range(6_000):
        key, roll = rng.choice(pool), rng.random()
        if roll < 0.1:
            index.delete(key)
            model.pop(key, None)
        elif roll < 0.15:
            now += rng.randint(0, 3 * BUCKET_MS)
            limit = rng.randint(0, 300)
            ordered = sorted((d, o, k, a) for k, (d, a, o) in model.items() if d <= now)[:limit]
            assert index.pop_due(now, limit=limit) == [(k, d, a) for d, _, k, a in ordered]
            for _, _, k, _ in ordered:
                del model[k]
        else:
            due, attempt = now + rng.randint(-1_000, 20 * BUCKET_MS), rng.randint(0, 2)
            index.set(key, due, attempt)
            if model.get(key, (None, None))[:2] != (due, attempt):
                sets += 1
                model[key] = (due, attempt, sets)
    assert len(index) == len(model)
    assert index.next_due_ms() == min((d for d, _, _ in model.values()), default=None)
    ordered = sorted((d, o, k, a) for k, (d, a, o) in model.items())
    assert index.pop_due(MAX_DUE_MS, limit=10**6) == [(k, d, a) for d, _, k, a in ordered]
    assert len(index) == 0


@settings(max_examples=40, deadline=None)
@given(st.integers(min_value=0, max_value=2**32), st.integers(min_value=1_100, max_value=3_000))
def test_many_replacements_compaction_is_invisible(seed: int, count: int) -> None:
    """Enough replacements of few keys to trigger compaction; only the last value of each key fires."""
    rng = random.Random(seed)
    index = TimerIndex()
    model: dict[bytes, tuple[int, int]] = {}
    for _ in range(count):
        key = rng.choice(KEYS[:3])
        if rng.random() < 0.05:
            index.delete(key)
            model.pop(key, None)
            continue
        due, attempt = rng.randint(0, 1_000), rng.randint(0, 2)
        index.set(key, due, attempt)
        model[key] = (due, attempt)
    assert len(index._due) <= 2 * len(model) + COMPACT_SLACK + 1
    assert index.next_due_ms() == min((d for d, _ in model.values()), default=None)
    fired = index.pop_due(1_000)
    assert sorted(fired) == sorted((k, d, a) for k, (d, a) in model.items())
    assert [d for _, d, _ in fired] == sorted(d for _, d, _ in fired)
    assert index.pop_due(10**9) == []
    assert len(index) == 0
