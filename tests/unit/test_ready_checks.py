"""Without a broker: the probe times of a look for records whose offset is not known, and the
worker's waits for the verdict on its claims of re-published ready records."""

from __future__ import annotations

import asyncio

from hypothesis import given
from hypothesis import strategies as st

from eventjobs.core.effects import ready_record
from eventjobs.runtime.claim_verdicts import ClaimVerdicts
from eventjobs.runtime.ready_checks import PROBES, probe_times
from tests.unit.test_effects import T0, Job


@given(st.lists(st.integers(0, 10**13), min_size=1, max_size=50), st.integers(1, 8))
def test_every_time_has_a_probe_at_or_before_it_and_there_are_at_most_count(times: list[int], count: int) -> None:
    probes = probe_times(times, count)
    assert 1 <= len(probes) <= count and probes == sorted(set(probes)) and set(probes) <= set(times)
    assert min(probes) == min(times)
    assert all(any(p <= t for p in probes) for t in times)


def test_few_times_are_each_a_probe_and_many_are_spread() -> None:
    assert probe_times([5, 3, 3, 9]) == [3, 5, 9]
    assert probe_times(range(100)) == [0, 33, 66, 99] and PROBES == 4


def pending_and_claimed() -> tuple[Job, Job]:
    """The same job pending, and (a copy driven on) claimed by another worker."""
    pending, claimed = Job(), Job()
    pending.enqueue()
    claimed.enqueue()
    claimed.claim(worker="w-other")
    return pending, claimed


async def test_a_wait_ends_with_the_first_state_that_decides() -> None:
    verdicts = ClaimVerdicts()
    pending, claimed = pending_and_claimed()
    ready = ready_record(pending.s, T0)
    refused = verdicts.expect(ready, "my-claim")
    assert b"job-1" in verdicts and len(verdicts) == 1
    verdicts.seen(b"job-1", pending.s)  # written before the claim was folded: undecided
    assert not refused.done()
    verdicts.seen(b"job-1", claimed.s)  # another claim stands
    assert refused.done() and refused.result() is False and b"job-1" not in verdicts

    accepted = verdicts.expect(ready, claimed.s.claim_id or "")
    verdicts.seen(b"job-1", claimed.s)
    assert accepted.result() is True and len(verdicts) == 0

    forgotten = verdicts.expect(ready, "my-claim")
    verdicts.seen(b"job-2", None)  # another job's tombstone
    assert not forgotten.done()
    verdicts.seen(b"job-1", None)
    assert forgotten.result() is False


async def test_a_wait_given_up_is_forgotten() -> None:
    verdicts = ClaimVerdicts()
    pending, _ = pending_and_claimed()
    ready = ready_record(pending.s, T0)
    first, second = verdicts.expect(ready, "a"), verdicts.expect(ready, "b")
    verdicts.forget(ready, first)
    assert len(verdicts) == 1
    with_timeout = asyncio.wait_for(second, 0.01)
    try:
        await with_timeout
    except TimeoutError:
        pass
    verdicts.forget(ready, second)
    assert len(verdicts) == 0 and b"job-1" not in verdicts
