"""Uniqueness windows (unique_for) and debounce: ids from the key and the window, decisions in the fold.

Enqueues are built by ``commands.enqueue``, as ``App`` builds them, so the job ids are derived
exactly as in production; the fold decides from event time alone.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from eventjobs.core.clock import add_seconds
from eventjobs.core.commands import due_event, enqueue
from eventjobs.core.effects import Effects, collect
from eventjobs.core.events import EnqueuedEvent, JobEvent
from eventjobs.core.flow import Verdict, enqueue_verdict, window_end, window_of, windowed_job_id
from eventjobs.core.fold import apply, fold, replay
from eventjobs.core.housekeeping import Retention, housekeeping_timer
from eventjobs.core.ids import derived_event_id, job_id_for_key
from eventjobs.core.options import InvalidJobOptions, JobOptions
from eventjobs.core.state import JobState, JobStatus
from tests.core.builders import T0, JobLog, Run

S = JobStatus
WINDOW_START = datetime(2025, 1, 1, 12, 0, tzinfo=T0.tzinfo)  # a multiple of 10 minutes since the epoch


def _enqueue(key: str, at: datetime, args: dict[str, Any] | None = None, **options: Any) -> EnqueuedEvent:
    return enqueue("send_report", args or {}, JobOptions(idempotency_key=key, **options), now=at, actor="producer:test")


# --------------------------------------------------------------------------------------------
# Windows and ids
# --------------------------------------------------------------------------------------------


def test_a_window_is_a_fixed_interval_of_event_time() -> None:
    window = window_of(add_seconds(WINDOW_START, 599.999), 600)
    assert (window.start, window.end) == (WINDOW_START, add_seconds(WINDOW_START, 600))
    assert window_of(add_seconds(WINDOW_START, 600), 600).start == add_seconds(WINDOW_START, 600)


def test_one_key_names_one_job_per_window_and_window_size() -> None:
    first = windowed_job_id("send_report", "user-7", 600, WINDOW_START)
    assert windowed_job_id("send_report", "user-7", 600, add_seconds(WINDOW_START, 599.999)) == first
    assert windowed_job_id("send_report", "user-7", 600, add_seconds(WINDOW_START, 600)) != first  # the next window
    assert windowed_job_id("send_report", "user-7", 300, WINDOW_START) != first  # another window size
    assert windowed_job_id("send_report", "user-8", 600, WINDOW_START) != first  # another key
    assert first != job_id_for_key("send_report", "user-7")  # not the plain idempotency key's job


def test_enqueue_names_the_window_job_and_a_debounce_starts_after_its_window() -> None:
    event = _enqueue("user-7", WINDOW_START, unique_for="10m")
    assert event.job_id == windowed_job_id("send_report", "user-7", 600, WINDOW_START)
    assert event.options.unique_for_s == 600 and event.run_at is None
    debounced = _enqueue("user-7", WINDOW_START, debounce="30s")
    assert debounced.options.debounce_s == 30 and debounced.run_at == add_seconds(WINDOW_START, 30)


@pytest.mark.parametrize("option", ["unique_for", "debounce"])
def test_a_window_without_an_idempotency_key_is_refused_at_enqueue(option: str) -> None:
    with pytest.raises(InvalidJobOptions, match=f"{option} needs an idempotency_key .*job 'send_report' has none"):
        enqueue("send_report", {}, JobOptions(**{option: 60}), now=T0, actor="producer:test")


def test_a_window_with_depends_on_is_refused_at_enqueue() -> None:
    with pytest.raises(InvalidJobOptions, match="debounce and depends_on cannot be combined"):
        enqueue("send_report", {}, JobOptions(debounce=60, idempotency_key="k"), now=T0, actor="producer:test",
                depends_on=["other-job"])


# --------------------------------------------------------------------------------------------
# unique_for: the first wins its window
# --------------------------------------------------------------------------------------------


def test_a_second_enqueue_in_the_window_is_refused_with_the_winners_id() -> None:
    first = _enqueue("user-7", WINDOW_START, {"n": 1}, unique_for="10m")
    second = _enqueue("user-7", add_seconds(WINDOW_START, 300), {"n": 2}, unique_for="10m")
    states = fold([first])
    decision = apply(states[first.job_id], second)
    assert second.job_id == first.job_id  # the caller knows the winner's id from its own enqueue
    assert decision.rejected == (
        f"job {first.job_id} won the window of idempotency key 'user-7' until 2025-01-01T12:10:00.000Z "
        f"(one job per key and window); enqueue {second.event_id} refused"
    )
    assert [d.type for d in decision.derived] == ["duplicate_rejected"]
    assert decision.derived[0].duplicate_event_id == second.event_id
    assert decision.state is states[first.job_id]  # the winner is untouched: its args stay
    assert enqueue_verdict(states[first.job_id], first.event_id, "") is Verdict.WON
    assert enqueue_verdict(states[first.job_id], second.event_id, "") is Verdict.REFUSED


def test_with_unique_states_an_enqueue_after_the_job_completed_runs_it_again_in_the_window() -> None:
    # Given a job of a 10-minute window that refuses later enqueues only while it has not ended
    run = Run()
    in_progress = ("waiting", "pending", "scheduled", "claimed", "running", "retrying", "dead_lettered")
    first = _enqueue("user-7", WINDOW_START, {"n": 1}, unique_for="10m", unique_states=in_progress)
    log = JobLog(first.job_id, WINDOW_START)
    run.apply(first)
    # When a second enqueue comes while it runs, it is refused
    log.tick(10)
    run.all(log.claimed(), log.started())
    second = _enqueue("user-7", add_seconds(WINDOW_START, 20), {"n": 2}, unique_for="10m", unique_states=in_progress)
    assert run.state is not None
    refused = apply(run.state, second)
    assert refused.rejected and [d.type for d in refused.derived] == ["duplicate_rejected"]
    assert enqueue_verdict(run.state, second.event_id, "") is Verdict.REFUSED
    # and once it completed, a third enqueue in the same window runs it again: same id, its args
    log.tick(30)
    done = run.all(log.succeeded())
    assert done.status is S.COMPLETED
    third = _enqueue("user-7", add_seconds(WINDOW_START, 60), {"n": 3}, unique_for="10m", unique_states=in_progress)
    assert third.job_id == first.job_id
    assert enqueue_verdict(done, third.event_id, "") is None  # not decided until the new run shows
    again = apply(done, third)
    assert again.rejected is None and again.state is not None and again.state.status is S.PENDING
    assert again.state.args == {"n": 3} and again.state.enqueued_event_id == third.event_id
    assert enqueue_verdict(again.state, third.event_id, "") is Verdict.WON
    # its ready record goes out, and replaying the log reaches the same state
    effects = Effects()
    collect(effects, done, again, third)
    assert [r.job_id for r in effects.ready] == [first.job_id]
    assert fold([*run.log, third])[first.job_id] == again.state


def test_unique_states_must_keep_every_status_of_a_job_not_ended() -> None:
    with pytest.raises(InvalidJobOptions, match="unique_states must include every status of a job not ended yet .* "
                                                "missing running"):
        JobOptions(idempotency_key="k", unique_for="10m", unique_states=["pending", "scheduled", "waiting", "claimed",
                                                                         "retrying", "dead_lettered"])
    with pytest.raises(InvalidJobOptions, match="unique_states needs unique_for"):
        JobOptions(unique_states=["waiting", "pending", "scheduled", "claimed", "running", "retrying", "dead_lettered"])
    with pytest.raises(InvalidJobOptions, match="unique_states must be statuses from"):
        JobOptions(idempotency_key="k", unique_for="10m", unique_states=["done"])


def test_an_enqueue_after_the_window_is_a_new_job() -> None:
    first = _enqueue("user-7", WINDOW_START, unique_for="10m")
    later = _enqueue("user-7", add_seconds(WINDOW_START, 600), unique_for="10m")
    states = fold([first, later])
    assert later.job_id != first.job_id and set(states) == {first.job_id, later.job_id}
    assert states[later.job_id].enqueued_event_id == later.event_id


def test_a_finished_windowed_job_is_kept_until_its_window_ends() -> None:
    # Given a job of a 1-hour window that completed a minute into it, with a 1-minute retention
    run = Run()
    event = _enqueue("user-7", WINDOW_START, unique_for="1h")
    log = JobLog(event.job_id, WINDOW_START)
    run.apply(event)
    log.tick(30)
    run.all(log.claimed(), log.started())
    log.tick(30)
    state = run.all(log.succeeded())
    # When its retention is armed, then it runs to the window's end, not one minute after the finish
    timer = housekeeping_timer(state, Retention(finished_s=60))
    assert timer is not None and timer.kind == "retain"
    assert timer.due_at == window_end(state) == add_seconds(WINDOW_START, 3600)


_KEYS = st.sampled_from(["a", "b", "c"])
_OFFSETS_MS = st.integers(min_value=0, max_value=3_600_000)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(_KEYS, _OFFSETS_MS), min_size=1, max_size=30))
def test_at_most_one_winner_per_key_and_window_and_replay_decides_the_same(enqueues: list[tuple[str, int]]) -> None:
    # Given enqueues of a few keys at random event times (in log order: not sorted by time)
    events = [_enqueue(key, WINDOW_START + timedelta(milliseconds=ms), {"i": i}, unique_for="10m")
              for i, (key, ms) in enumerate(enqueues)]
    # When the log is folded
    decided = [(e.event_id, d.rejected, tuple(x.event_id for x in d.derived)) for e, d in replay(events)]
    states = fold(events)
    # Then each (key, window) has exactly one job, made by its first enqueue in the log
    windows = {(key, window_of(WINDOW_START + timedelta(milliseconds=ms), 600).number) for key, ms in enqueues}
    assert len(states) == len(windows)
    for event, (_, rejected, derived) in zip(events, decided):
        winner = next(e for e in events if e.job_id == event.job_id)
        assert states[event.job_id].enqueued_event_id == winner.event_id
        assert (rejected is None) == (event is winner)
        if rejected is not None:  # refused, naming the winner, by a duplicate_rejected notice
            assert winner.job_id in rejected and derived == (derived_event_id(event.event_id, "duplicate_rejected", 0),)
    # and replaying the same log reaches the same decisions
    assert [(e.event_id, d.rejected, tuple(x.event_id for x in d.derived)) for e, d in replay(events)] == decided
    assert fold(events) == states


# --------------------------------------------------------------------------------------------
# debounce: one job, the last args, the start put back
# --------------------------------------------------------------------------------------------


def test_an_enqueue_after_the_window_is_another_debounced_job() -> None:
    first = _enqueue("user-7", WINDOW_START, {"n": 1}, debounce="30s")
    later = _enqueue("user-7", add_seconds(WINDOW_START, 30), {"n": 2}, debounce="30s")
    assert later.job_id != first.job_id and len(fold([first, later])) == 2


def test_a_later_enqueue_replaces_the_args_and_puts_the_start_back() -> None:
    first = _enqueue("user-7", WINDOW_START, {"n": 1}, debounce="30s")
    second = _enqueue("user-7", add_seconds(WINDOW_START, 10), {"n": 2}, debounce="30s")
    run = Run()
    run.apply(first)
    decision = run.apply(second)
    state = run.state
    assert state is not None and state.job_id == first.job_id == second.job_id
    assert state.args == {"n": 2} and state.status is S.SCHEDULED
    assert state.run_at == state.next_due_at == add_seconds(WINDOW_START, 40)
    assert state.enqueued_event_id == first.event_id  # still the one job the first enqueue made
    [debounced] = decision.derived
    assert (debounced.type, debounced.run_at, debounced.causation_id) == ("debounced", state.run_at, second.event_id)
    assert enqueue_verdict(state, second.event_id, debounced.event_id) is Verdict.REPLACED
    # the history shows the replacement, and its echo changes nothing
    assert apply(state, debounced).duplicate


def test_the_run_at_timer_of_the_first_start_is_stale_after_a_debounce() -> None:
    first = _enqueue("user-7", WINDOW_START, {"n": 1}, debounce="30s")
    second = _enqueue("user-7", add_seconds(WINDOW_START, 10), {"n": 2}, debounce="30s")
    state = fold([first, second])[first.job_id]
    early = due_event(first.job_id, 0, "run_at", now=add_seconds(WINDOW_START, 30), actor="timers")
    decision = apply(state, early)
    assert decision.rejected is not None and "before the job's start at 2025-01-01T12:00:40.000Z" in decision.rejected
    # the timer service tombstoned what it fired: the effects arm the later start again
    effects = Effects()
    collect(effects, state, decision, early)
    assert [(t.kind, t.due_at) for t in effects.timers.values() if t is not None] == [("run_at", state.next_due_at)]
    on_time = due_event(first.job_id, 0, "run_at", now=add_seconds(WINDOW_START, 40), actor="timers")
    assert apply(state, on_time).state.status is S.PENDING  # type: ignore[union-attr]


def test_a_debounce_rearms_the_run_at_timer_and_revokes_a_ready_record() -> None:
    first = _enqueue("user-7", WINDOW_START, {"n": 1}, debounce="30s")
    state = fold([first])[first.job_id]
    due = due_event(first.job_id, 0, "run_at", now=add_seconds(WINDOW_START, 30), actor="timers")
    pending = apply(state, due).state
    assert pending is not None and pending.status is S.PENDING
    # When an enqueue of its window (event time 29 s: a slow producer) comes while it waits for a worker
    second = _enqueue("user-7", add_seconds(WINDOW_START, 29), {"n": 2}, debounce="30s")
    decision = apply(pending, second)
    effects = Effects()
    collect(effects, pending, decision, second)
    # Then it is scheduled again, its ready record revoked and its timer armed for the new start
    assert decision.state is not None and decision.state.status is S.SCHEDULED
    assert [r.job_id for r in effects.revoked] == [first.job_id]
    assert [(t.kind, t.due_at) for t in effects.timers.values() if t is not None] == [
        ("run_at", add_seconds(WINDOW_START, 59))
    ]


def test_an_enqueue_after_the_debounced_job_started_is_refused() -> None:
    first = _enqueue("user-7", WINDOW_START, {"n": 1}, debounce="30s")
    log = JobLog(first.job_id, add_seconds(WINDOW_START, 30))
    run = Run()
    run.apply(first)
    run.apply(due_event(first.job_id, 0, "run_at", now=log.now, actor="timers"))
    state = run.all(log.claimed(), log.started())
    late = _enqueue("user-7", add_seconds(WINDOW_START, 25), {"n": 2}, debounce="30s")  # of its window, applied late
    decision = apply(state, late)
    assert decision.rejected is not None and "(it has started)" in decision.rejected
    assert decision.state is state and state.args == {"n": 1}
    assert enqueue_verdict(state, late.event_id, derived_event_id(late.event_id, "debounced", 0)) is Verdict.REFUSED


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(min_value=0, max_value=599_999), min_size=1, max_size=20))
def test_debounce_leaves_one_job_with_the_last_args_starting_after_the_latest_enqueue(offsets: list[int]) -> None:
    # Given enqueues of one key within one window, in log order (event times in any order)
    events: list[JobEvent] = [_enqueue("k", WINDOW_START + timedelta(milliseconds=ms), {"i": i}, debounce="10m")
                              for i, ms in enumerate(offsets)]
    # When folded
    states = fold(events)
    decisions = [d for _, d in replay(events)]
    # Then one job holds the last args and starts 10 minutes after the latest enqueue
    [state] = states.values()
    assert state.args == {"i": len(offsets) - 1}
    assert state.run_at == WINDOW_START + timedelta(milliseconds=max(offsets), minutes=10)
    assert all(d.rejected is None for d in decisions)
    assert [d.derived[0].type for d in decisions[1:]] == ["debounced"] * (len(offsets) - 1)
    assert fold(events) == states  # a replay decides the same


def test_a_cancelled_debounced_job_takes_no_new_args() -> None:
    first = _enqueue("user-7", WINDOW_START, {"n": 1}, debounce="30s")
    log = JobLog(first.job_id, add_seconds(WINDOW_START, 1))
    state: JobState = Run().all(first, log.cancel())
    assert state.status is S.CANCELLED
    decision = apply(state, _enqueue("user-7", add_seconds(WINDOW_START, 2), {"n": 2}, debounce="30s"))
    assert decision.rejected is not None and decision.state is state


def test_the_window_id_is_the_formula_docs_events_md_gives_other_producers() -> None:
    import uuid

    from eventjobs.core.clock import epoch_ms
    from eventjobs.core.ids import EVENTJOBS_NAMESPACE

    at = add_seconds(WINDOW_START, 42.5)
    number = epoch_ms(at) // 600_000
    expected = uuid.uuid5(EVENTJOBS_NAMESPACE, f"send_report\x1fuser-7\x1fwindow:600000:{number}")
    assert _enqueue("user-7", at, unique_for="10m").job_id == str(expected)
