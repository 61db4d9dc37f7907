"""TimerIndex and pack/unpack: the in-memory index of pending timers behaves like a plain dict.

The reference model is `dict[key, (due_ms, attempt)]`: `set` replaces, `delete` removes, and
`pop_due(now, limit)` removes and returns the live timers due at or before `now`, earliest
first, at most `limit` of them. Lazy deletion and compaction must never be observable.
"""

from __future__ import annotations

import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from eventjobs.core.timer_index import TimerIndex, pack, unpack

MAX_ATTEMPT = (1 << 20) - 1

# -- pack / unpack ------------------------------------------------------------------------------


@given(st.integers(min_value=-(2**50), max_value=2**50), st.integers(min_value=0, max_value=MAX_ATTEMPT))
def test_unpack_inverts_pack(due_ms: int, attempt: int) -> None:
    assert unpack(pack(due_ms, attempt)) == (due_ms, attempt)


@given(
    st.tuples(st.integers(-(2**45), 2**45), st.integers(0, MAX_ATTEMPT)),
    st.tuples(st.integers(-(2**45), 2**45), st.integers(0, MAX_ATTEMPT)),
)
def test_pack_orders_by_due_then_attempt(a: tuple[int, int], b: tuple[int, int]) -> None:
    assert (pack(*a) < pack(*b)) == (a < b)
    assert (pack(*a) == pack(*b)) == (a == b)


@pytest.mark.parametrize("attempt", [-1, MAX_ATTEMPT + 1, 2**40])
def test_pack_rejects_attempt_out_of_range(attempt: int) -> None:
    with pytest.raises(ValueError, match=rf"attempt {attempt} is outside 0\.\.{MAX_ATTEMPT}"):
        pack(1_000, attempt)


def test_pack_accepts_the_largest_attempt_an_event_may_carry() -> None:
    # events allow attempt numbers up to 1_000_000; the index must hold every one of them
    assert unpack(pack(1_700_000_000_000, 1_000_000)) == (1_700_000_000_000, 1_000_000)


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
    assert len(index._heap) <= 2 * len(index) + 1024 + 1  # compaction really ran
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

KEYS = [f"job-{i}:{kind}".encode() for i in range(4) for kind in ("run_at", "retry", "lease", "ttl")]
keys = st.sampled_from(KEYS)
dues = st.integers(min_value=0, max_value=200)
attempts = st.integers(min_value=0, max_value=3)


class TimerIndexMatchesDict(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.index = TimerIndex()
        self.model: dict[bytes, tuple[int, int]] = {}

    @rule(key=keys, due=dues, attempt=attempts)
    def set(self, key: bytes, due: int, attempt: int) -> None:
        self.index.set(key, due, attempt)
        self.model[key] = (due, attempt)

    @rule(key=keys)
    def delete(self, key: bytes) -> None:
        self.model.pop(key, None)
        self.index.delete(key)

    @rule(now=st.integers(min_value=-5, max_value=220), limit=st.integers(min_value=0, max_value=20))
    def pop_due(self, now: int, limit: int) -> None:
        popped = self.index.pop_due(now, limit=limit)
        due_in_model = sorted(((d, a, k) for k, (d, a) in self.model.items() if d <= now))
        expected_count = min(limit, len(due_in_model))
        assert len(popped) == expected_count
        assert [d for _, d, _ in popped] == sorted(d for _, d, _ in popped), "not in due order"
        # the earliest ones: the due times returned are the `limit` smallest due times
        assert [d for _, d, _ in popped] == [d for d, _, _ in due_in_model[:expected_count]]
        seen = set()
        for key, due, attempt in popped:
            assert key not in seen, f"{key!r} fired twice in one pop"
            seen.add(key)
            # a replaced or deleted value never fires: only the live one does
            assert self.model.get(key) == (due, attempt), f"{key!r} fired with a value that is not live"
            del self.model[key]

    @rule(key=keys)
    def get(self, key: bytes) -> None:
        assert self.index.get(key) == self.model.get(key)

    @invariant()
    def same_size_and_items(self) -> None:
        assert len(self.index) == len(self.model)
        assert sorted(self.index.items()) == sorted((k, d, a) for k, (d, a) in self.model.items())

    @invariant()
    def next_due_is_earliest_live(self) -> None:
        expected = min((d for d, _ in self.model.values()), default=None)
        assert self.index.next_due_ms() == expected

    @precondition(lambda self: len(self.model) > 0)
    @rule()
    def drain_everything(self) -> None:
        popped = self.index.pop_due(10**6, limit=10**6)
        assert sorted(popped) == sorted((k, d, a) for k, (d, a) in self.model.items())
        self.model.clear()


TimerIndexMatchesDict.TestCase.settings = settings(max_examples=150, stateful_step_count=40, deadline=None)
test_timer_index_matches_reference_model = TimerIndexMatchesDict.TestCase


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
    assert len(index._heap) <= 2 * len(model) + 1024 + 1
    assert index.next_due_ms() == min((d for d, _ in model.values()), default=None)
    fired = index.pop_due(1_000)
    assert sorted(fired) == sorted((k, d, a) for k, (d, a) in model.items())
    assert [d for _, d, _ in fired] == sorted(d for _, d, _ in fired)
    assert index.pop_due(10**9) == []
    assert len(index) == 0
