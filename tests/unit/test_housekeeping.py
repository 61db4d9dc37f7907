"""core.housekeeping: the processor lane's own timers (expire a running attempt's lease, re-publish
a pending job's ready record, forget a finished job, discard a dead-lettered one), kept in memory
from the lane's states.

States are never written by hand: every job is driven through real events (the command
functions the producers, workers, timer service and operators use) folded with `core.fold.apply`
(the `Job` helper of test_effects). The events `Housekeeping.due` fires are applied the same way.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

import pytest
from hypothesis import event as label_example, given, settings
from hypothesis import strategies as st

from eventjobs.testing import commands
from eventjobs.core.clock import UTC, add_seconds, epoch_ms, from_epoch_ms, utc_ms
from eventjobs.core.events import DueEvent, JobEvent, LeaseExpiredEvent, RetentionPassedEvent
from eventjobs.core.fold import apply
from eventjobs.core.housekeeping import (
    FIRE_BATCH,
    PUBLISH_CLOCK_MARGIN_S,
    READY_REPUBLISH_CAP_S,
    Housekeeping,
    HousekeepingTimer,
    ReadyPartition,
    ReadyRepublish,
    Retention,
    earliest_publish,
    housekeeping_timer,
    ready_record_waits,
    records_since_wait,
)
from eventjobs.core.options import JobOptions
from eventjobs.core.records import timer_key
from eventjobs.core.state import JobState, JobStatus
from tests.unit.test_effects import T0, Job, dead_letter_timer, lease_timer, republish_timer, retain

S = JobStatus
HOUR = 3600
DAY = 24 * HOUR
ACTOR = "processor:0"
MS = timedelta(milliseconds=1)


def dead_lettered(job: Job, **options: Any) -> Job:
    job.enqueue(max_attempts=1, **options)
    job.run()
    job.fail()
    assert job.s.status is S.DEAD_LETTERED
    return job


def completed(job: Job) -> Job:
    job.enqueue()
    job.run()
    job.succeed()
    return job


def tracked(*jobs: Job, retention: Retention = Retention(), republish: ReadyRepublish = ReadyRepublish()
            ) -> tuple[Housekeeping, dict[str, JobState]]:
    """A lane's housekeeping tracking the current states of `jobs`, and the lane's table."""
    housekeeping = Housekeeping(retention, republish)
    table = {job.job_id: job.s for job in jobs}
    housekeeping.track_all(table)
    return housekeeping, table


# -- which timer a state calls for ----------------------------------------------------------------


def test_a_pending_job_calls_for_a_republish_one_hour_after_it_became_pending() -> None:
    job = Job()
    job.enqueue()
    assert housekeeping_timer(job.s) == HousekeepingTimer("job-1", "republish", add_seconds(T0, HOUR), 0, 0)
    assert housekeeping_timer(job.s).key == timer_key("job-1", "republish", 0, 0)  # type: ignore[union-attr]


def test_each_republish_moves_the_next_one_a_longer_delay_after_it() -> None:
    job = Job()
    job.enqueue()
    for sequence, hours in enumerate((1, 2, 4, 8, 16, 24, 24)):
        assert job.s.ready_republishes == sequence
        assert housekeeping_timer(job.s) == republish_timer(job.now, sequence=sequence)
        assert housekeeping_timer(job.s).due_at == add_seconds(job.now, hours * HOUR)  # type: ignore[union-attr]
        job.tick(hours * HOUR - 1)
        job.due()  # the republish fires (one second later than due: the clock ticks it)
        assert job.decision.accepted  # type: ignore[union-attr]
    assert job.s.ready_republishes == 7


def test_the_processors_republish_delays_are_used() -> None:
    job = Job()
    job.enqueue()
    fast = ReadyRepublish(first_s=0.25, cap_s=1.0)
    assert housekeeping_timer(job.s, republish=fast) == HousekeepingTimer("job-1", "republish", add_seconds(T0, 0.25), 0, 0)


def test_a_pending_retry_republishes_its_own_attempt_counting_from_zero() -> None:
    job = Job()
    job.enqueue()
    job.due()  # re-published once during attempt 0
    job.run()
    job.fail()
    job.tick(10)
    job.due()  # attempt 1 is ready
    assert (job.s.status, job.s.attempt, job.s.ready_republishes) == (S.PENDING, 1, 0)
    assert housekeeping_timer(job.s) == republish_timer(job.now, attempt=1, sequence=0)


@pytest.mark.parametrize("finish", ["succeed", "cancel_pending", "cancel_running", "discard"])
def test_a_finished_job_calls_for_retain_at_finished_at_plus_the_retention(finish: str) -> None:
    job = Job()
    if finish == "discard":
        dead_lettered(job)
        job.discard()
    else:
        job.enqueue()
        if finish == "cancel_pending":
            job.cancel()
        else:
            job.run()
            if finish == "cancel_running":
                job.cancel()
                job.fail()
            else:
                job.succeed()
    assert job.s.status in (S.COMPLETED, S.CANCELLED, S.DISCARDED) and job.s.finished_at == job.now
    assert housekeeping_timer(job.s) == HousekeepingTimer("job-1", "retain", add_seconds(job.now, DAY), 0)
    assert housekeeping_timer(job.s, Retention(finished_s=HOUR)) == retain(job.now, after_s=HOUR)
    assert housekeeping_timer(job.s).key == b"job-1:retain"  # type: ignore[union-attr]


def test_a_dead_lettered_job_calls_for_dead_letter_at_the_processors_retention() -> None:
    job = dead_lettered(Job())
    assert housekeeping_timer(job.s) == HousekeepingTimer("job-1", "dead_letter", add_seconds(job.now, 7 * DAY), 0)
    assert housekeeping_timer(job.s, Retention(dead_letter_s=HOUR)) == dead_letter_timer(job.now, after_s=HOUR)
    assert housekeeping_timer(job.s).key == b"job-1:dead_letter"  # type: ignore[union-attr]


def test_a_jobs_dead_letter_retention_overrides_the_processors() -> None:
    job = dead_lettered(Job(), dead_letter_retention=90)
    assert housekeeping_timer(job.s, Retention(finished_s=HOUR, dead_letter_s=DAY)) == dead_letter_timer(job.now, after_s=90)
    job.discard()  # the option is about the dead-letter queue only
    assert housekeeping_timer(job.s, Retention(finished_s=HOUR, dead_letter_s=DAY)) == retain(job.now, after_s=HOUR)


def test_a_new_dependent_of_a_pending_job_does_not_put_its_republish_off() -> None:
    """A change that publishes nothing (a new dependent, 10 minutes after the enqueue) moves the
    state's ``updated_at``, but the lane's entry keeps the due time of the publish: one hour after
    the enqueue the ready record goes out again, not one hour after the change."""
    job = Job("job-0")
    job.enqueue()
    housekeeping, table = tracked(job)
    before = job.s
    child = Job("job-1")
    child.now = add_seconds(T0, 600)
    enqueued = commands.enqueue("send_email", {}, JobOptions(), now=child.now, actor="producer:t:1", job_id="job-1",
                                event_id=child.eid(), depends_on=["job-0"])
    (requested,) = child.step(enqueued).events
    job.now = child.now
    effects = job.step(requested)
    assert job.decision.accepted and job.s.status is S.PENDING and effects.ready == []  # type: ignore[union-attr]
    assert housekeeping_timer(job.s) == republish_timer(child.now, job_id="job-0")  # the state alone says later
    housekeeping.track_all({"job-0": job.s}, before=table)  # as the lane does, before updating its table
    table["job-0"] = job.s
    assert housekeeping.due(table, add_seconds(T0, HOUR) - MS, actor=ACTOR) == []
    (fired,) = housekeeping.due(table, add_seconds(T0, HOUR), actor=ACTOR)
    assert isinstance(fired, DueEvent) and (fired.timer, fired.attempt, fired.sequence) == ("republish", 0, 0)
    assert apply(job.s, fired, actor=ACTOR).accepted
    # the re-published state starts a new wait, from the re-publish
    republished = apply(job.s, fired, actor=ACTOR).state
    table["job-0"] = republished  # type: ignore[assignment]
    housekeeping.track("job-0", republished, job.s)
    assert housekeeping.next_due_ms() == epoch_ms(add_seconds(fired.occurred_at, 2 * HOUR))
    # a lane that only knows the state (rebuilt after a restart) counts from the change
    restored, _ = tracked(job)
    assert restored.next_due_ms() == epoch_ms(add_seconds(child.now, HOUR)) and before.updated_at == T0


def test_the_timer_names_the_attempt_that_finished() -> None:
    job = dead_lettered(Job())
    job.dlq_retry()
    job.run()
    job.fail()  # dead-lettered again, on attempt 1
    assert housekeeping_timer(job.s) == dead_letter_timer(job.now, attempt=1)


def _waiting(job: Job) -> None:
    job.step(commands.enqueue("send_email", {}, JobOptions(), now=job.now, actor="producer:t:1", job_id=job.job_id,
                              event_id=job.eid(), depends_on=["job-0"]))


@pytest.mark.parametrize(("status", "drive"), [
    (S.SCHEDULED, lambda job: job.enqueue(delay=60)),
    (S.WAITING, _waiting),
    (S.RETRYING, lambda job: (job.enqueue(), job.run(), job.fail())),
])
def test_a_job_waiting_for_a_timer_record_or_another_job_calls_for_no_timer(status: JobStatus, drive: Any) -> None:
    job = Job()
    drive(job)
    assert job.s.status is status
    assert housekeeping_timer(job.s) is None
    assert housekeeping_timer(job.s, Retention(finished_s=0.001, dead_letter_s=0.001), ReadyRepublish(0.001, 0.001)) is None


def test_an_infinite_or_calendar_overflowing_retention_calls_for_no_timer() -> None:
    job = completed(Job())
    assert housekeeping_timer(job.s, Retention(finished_s=float("inf"))) is None
    assert housekeeping_timer(job.s, Retention(finished_s=1e12)) is None  # after the year 9999
    job = dead_lettered(Job())
    assert housekeeping_timer(job.s, Retention(dead_letter_s=float("inf"))) is None
    job = dead_lettered(Job(), dead_letter_retention=1e12)
    assert housekeeping_timer(job.s) is None
    # nothing is tracked for them, and nothing fires
    housekeeping, table = tracked(job)
    assert len(housekeeping) == 0 and housekeeping.next_due_ms() is None
    assert housekeeping.due(table, datetime(9999, 12, 31, tzinfo=UTC), actor=ACTOR) == []


def test_a_retention_shorter_than_a_millisecond_is_due_a_millisecond_after_the_finish() -> None:
    """`apply` refuses a retention due at (not after) finished_at: housekeeping keeps at least 1 ms."""
    job = completed(Job())
    assert housekeeping_timer(job.s, Retention(finished_s=1e-6)) == retain(job.now, after_s=0.001)


# -- Housekeeping.due: firing -------------------------------------------------------------------


def test_a_republish_fires_nothing_before_its_due_time_and_the_due_event_at_it() -> None:
    # Given a pending job tracked by its lane
    job = Job()
    job.enqueue()
    housekeeping, table = tracked(job)
    timer = housekeeping_timer(job.s)
    assert timer is not None and housekeeping.next_due_ms() == epoch_ms(timer.due_at)
    # When the lane looks 1 ms before the due time, nothing fires and the timer stays
    assert housekeeping.due(table, timer.due_at - MS, actor=ACTOR) == []
    assert len(housekeeping) == 1
    # Then at the due time it fires the republish `due` event of the job's sequence
    (event,) = housekeeping.due(table, timer.due_at, actor=ACTOR)
    assert isinstance(event, DueEvent)
    assert (event.job_id, event.timer, event.attempt, event.sequence) == ("job-1", "republish", 0, 0)
    assert (event.occurred_at, event.actor) == (timer.due_at, ACTOR)
    assert len(housekeeping) == 0 and housekeeping.next_due_ms() is None  # popped until told a new state


def test_a_fired_events_id_derives_from_its_timer_key_as_the_timer_services_do() -> None:
    pending = Job("job-p")
    pending.enqueue()
    done = completed(Job("job-c"))
    dead = dead_lettered(Job("job-d"))
    housekeeping, table = tracked(pending, done, dead)
    now = add_seconds(T0, 30 * DAY)
    events = {e.job_id: e for e in housekeeping.due(table, now, actor=ACTOR)}
    assert set(events) == {"job-p", "job-c", "job-d"}
    expected_keys = {"job-p": b"job-p:republish:0:0", "job-c": b"job-c:retain", "job-d": b"job-d:dead_letter"}
    for job_id, key in expected_keys.items():
        timer = housekeeping_timer(table[job_id])
        assert timer is not None and timer.key == key
        by_key = commands.timer_fired_event(key, epoch_ms(timer.due_at), timer.attempt, now=now, actor=ACTOR)
        assert events[job_id].event_id == by_key.event_id
        assert events[job_id] == by_key
    # the ids depend only on the timer: another pass, later, by another actor, gives the same ids
    again, _ = tracked(pending, done, dead)
    later = {e.job_id: e.event_id for e in again.due(table, add_seconds(now, HOUR), actor="processor:9")}
    assert later == {job_id: e.event_id for job_id, e in events.items()}


def test_applying_a_fired_republish_counts_it_and_calls_for_the_next_one() -> None:
    job = Job()
    job.enqueue()
    housekeeping, table = tracked(job)
    due_at = housekeeping_timer(job.s).due_at  # type: ignore[union-attr]
    (event,) = housekeeping.due(table, due_at, actor=ACTOR)
    job.now = due_at
    effects = job.step(event)
    assert job.decision.accepted and job.s.ready_republishes == 1  # type: ignore[union-attr]
    assert len(effects.ready) == 1  # the ready record goes out again
    housekeeping.track_all(effects.states)  # the lane is told the new state
    assert housekeeping.next_due_ms() == epoch_ms(add_seconds(due_at, 2 * HOUR))
    # the same event again (a restart fired it twice) is a duplicate that changes nothing
    republished = job.s
    job.step(event)
    assert job.decision.duplicate and job.s is republished  # type: ignore[union-attr]


def test_applying_a_fired_retain_forgets_the_job_and_firing_it_again_is_not_accepted() -> None:
    job = completed(Job())
    housekeeping, table = tracked(job)
    due_at = add_seconds(job.s.finished_at, DAY)  # type: ignore[arg-type]
    assert housekeeping.due(table, due_at - MS, actor=ACTOR) == []
    (event,) = housekeeping.due(table, due_at, actor=ACTOR)
    assert isinstance(event, RetentionPassedEvent)
    assert (event.scope, event.due_at, event.attempt) == ("finished", due_at, 0)
    effects = job.step(event)
    assert job.decision.accepted and job.state is None and effects.states == {"job-1": None}  # type: ignore[union-attr]
    housekeeping.track_all(effects.states)
    del table["job-1"]
    assert len(housekeeping) == 0
    # fired again: the job is unknown by now, so it is rejected and nothing comes back to life
    assert apply(None, event).rejected is not None and apply(None, event).state is None


def test_applying_a_fired_dead_letter_discards_the_job_then_calls_for_its_retain() -> None:
    job = dead_lettered(Job())
    housekeeping, table = tracked(job, retention=Retention(finished_s=HOUR, dead_letter_s=DAY))
    due_at = add_seconds(job.now, DAY)
    assert housekeeping.due(table, due_at - MS, actor=ACTOR) == []
    now = add_seconds(due_at, 5)  # the lane looks a little after the due time
    (event,) = housekeeping.due(table, now, actor=ACTOR)
    assert isinstance(event, RetentionPassedEvent)
    assert (event.scope, event.due_at, event.attempt, event.occurred_at) == ("dead_letter", due_at, 0, now)
    job.now = now
    effects = job.step(event)
    assert job.decision.accepted and job.s.status is S.DISCARDED  # type: ignore[union-attr]
    assert effects.dead_letters == {"job-1": None}
    housekeeping.track_all(effects.states)
    assert housekeeping.next_due_ms() == epoch_ms(add_seconds(now, HOUR))  # discarded when it fired
    discarded = job.s
    job.step(event)
    assert job.decision.duplicate and job.s is discarded  # type: ignore[union-attr]


def test_an_entry_whose_job_was_claimed_meanwhile_fires_nothing() -> None:
    job = Job()
    job.enqueue()
    housekeeping, table = tracked(job)
    due_at = housekeeping_timer(job.s).due_at  # type: ignore[union-attr]
    job.claim(lease_s=2 * HOUR)
    table["job-1"] = job.s  # the table moved on; the entry is only a reminder
    assert housekeeping.due(table, due_at, actor=ACTOR) == []
    # the claimed job calls for its lease, later: that is tracked instead
    assert len(housekeeping) == 1 and housekeeping.next_due_ms() == epoch_ms(job.s.lease_deadline)  # type: ignore[arg-type]


def test_an_entry_whose_job_was_forgotten_fires_nothing() -> None:
    job = completed(Job())
    housekeeping, table = tracked(job)
    table.clear()
    assert housekeeping.due(table, add_seconds(T0, 30 * DAY), actor=ACTOR) == []
    assert len(housekeeping) == 0


def test_an_entry_whose_job_now_calls_for_a_later_time_is_tracked_again_not_fired() -> None:
    # Given a dead-lettered job tracked for its dead-letter retention, then (without the entry
    # being updated) retried from the dead-letter queue and completed: it now calls for a retain
    job = dead_lettered(Job())
    housekeeping, table = tracked(job, retention=Retention(finished_s=HOUR, dead_letter_s=60))
    first = housekeeping_timer(job.s, Retention(finished_s=HOUR, dead_letter_s=60))
    assert first is not None and first.kind == "dead_letter"
    job.dlq_retry()
    job.run()
    job.succeed()
    table["job-1"] = job.s
    # When the old entry comes due, nothing fires: the retention the state calls for is tracked
    assert housekeeping.due(table, first.due_at, actor=ACTOR) == []
    assert len(housekeeping) == 1 and housekeeping.next_due_ms() == epoch_ms(retain(job.now, attempt=1, after_s=HOUR).due_at)
    (event,) = housekeeping.due(table, add_seconds(job.now, HOUR), actor=ACTOR)
    assert isinstance(event, RetentionPassedEvent) and (event.scope, event.attempt) == ("finished", 1)


def test_an_entry_whose_job_finished_meanwhile_fires_the_retention_it_now_calls_for() -> None:
    job = Job()
    job.enqueue()
    housekeeping, table = tracked(job, retention=Retention(finished_s=1))
    republish_at = housekeeping_timer(job.s).due_at  # type: ignore[union-attr]
    job.cancel()  # not told to the lane; forgotten 1 s after, long before the republish
    table["job-1"] = job.s
    (event,) = housekeeping.due(table, republish_at, actor=ACTOR)
    assert isinstance(event, RetentionPassedEvent)
    assert (event.scope, event.due_at) == ("finished", add_seconds(job.now, 1))
    job.step(event)
    assert job.decision.accepted and job.state is None  # type: ignore[union-attr]


def test_tracking_a_new_state_replaces_the_entry_and_none_removes_it() -> None:
    job = Job()
    job.enqueue()
    housekeeping, _ = tracked(job)
    job.run()
    job.succeed()
    housekeeping.track("job-1", job.s)  # one entry per job: the retain replaces the republish
    assert len(housekeeping) == 1 and housekeeping.next_due_ms() == epoch_ms(add_seconds(job.now, DAY))
    housekeeping.track("job-1", None)
    assert len(housekeeping) == 0 and housekeeping.next_due_ms() is None
    assert housekeeping.due({"job-1": job.s}, add_seconds(T0, 30 * DAY), actor=ACTOR) == []
    housekeeping.track("job-1", None)  # removing what is not there is fine
    assert len(housekeeping) == 0


def test_tracking_a_state_that_calls_for_no_timer_removes_the_entry() -> None:
    job = Job()
    job.enqueue()
    job.run()
    housekeeping, table = tracked(job)
    job.fail()  # retrying: its retry is a timer record, the lane keeps nothing
    housekeeping.track_all({"job-1": job.s}, before=table)
    assert len(housekeeping) == 0
    assert housekeeping.due(table, add_seconds(T0, 30 * DAY), actor=ACTOR) == []


def test_the_earliest_due_fires_first_and_a_limit_bounds_one_pass() -> None:
    jobs = []
    for i in range(5):
        job = Job(f"job-{i}")
        job.now = add_seconds(T0, 10 - i)  # job-4 enqueued first: due first
        job.enqueue()
        jobs.append(job)
    housekeeping, table = tracked(*jobs)
    now = add_seconds(T0, 2 * HOUR)
    passes = []
    while events := housekeeping.due(table, now, actor=ACTOR, limit=2):
        passes.append([e.job_id for e in events])
    assert passes == [["job-4", "job-3"], ["job-2", "job-1"], ["job-0"]]
    assert len(housekeeping) == 0
    assert FIRE_BATCH >= 1000  # the default bound of a pass


def test_what_is_not_due_stays_behind_what_is() -> None:
    early, late = Job("job-early"), Job("job-late")
    early.enqueue()
    completed(late)
    housekeeping, table = tracked(early, late)
    (event,) = housekeeping.due(table, add_seconds(T0, HOUR), actor=ACTOR)
    assert event.job_id == "job-early"
    assert len(housekeeping) == 1 and housekeeping.next_due_ms() == epoch_ms(add_seconds(late.now, DAY))


# -- the lease: a claimed or running attempt's timer ---------------------------------------------


@pytest.mark.parametrize(("status", "drive"), [
    (S.CLAIMED, lambda job: (job.enqueue(), job.claim(lease_s=45))),
    (S.RUNNING, lambda job: (job.enqueue(), job.claim(lease_s=45), job.start())),
])
def test_an_attempt_under_way_calls_for_its_lease_at_the_deadline(status: JobStatus, drive: Any) -> None:
    job = Job()
    drive(job)
    assert job.s.status is status
    assert housekeeping_timer(job.s) == lease_timer(job.s.lease_deadline) == HousekeepingTimer(
        "job-1", "lease", add_seconds(T0, 1 + 45), 0)
    assert housekeeping_timer(job.s).key == timer_key("job-1", "lease") == b"job-1:lease"  # type: ignore[union-attr]
    # the processor's retention and re-publish settings have nothing to do with it
    assert housekeeping_timer(job.s, Retention(0.001, 0.001), ReadyRepublish(0.001, 0.001)) == lease_timer(
        job.s.lease_deadline)


def test_the_claim_arms_the_lease_and_a_heartbeat_moves_it_while_progress_leaves_it() -> None:
    # Given a pending job tracked by its lane
    job = Job()
    job.enqueue()
    housekeeping, table = tracked(job)
    # When a worker claims it, the re-publish gives way to the lease
    before = job.s
    job.claim(lease_s=30)
    housekeeping.track_all({"job-1": job.s}, before={"job-1": before})
    first = job.s.lease_deadline
    assert first is not None and len(housekeeping) == 1 and housekeeping.next_due_ms() == epoch_ms(first)
    # progress changes the state, not the deadline: the entry stays as it was
    job.start()
    job.progress()
    housekeeping.track("job-1", job.s)
    assert len(housekeeping) == 1 and housekeeping.next_due_ms() == epoch_ms(first)
    # a heartbeat moves the deadline, and the lease with it
    job.heartbeat(lease_s=120)
    housekeeping.track("job-1", job.s)
    table["job-1"] = job.s
    assert job.s.lease_deadline == add_seconds(job.now, 120)
    assert len(housekeeping) == 1 and housekeeping.next_due_ms() == epoch_ms(job.s.lease_deadline)  # type: ignore[arg-type]
    assert housekeeping.due(table, first, actor=ACTOR) == []  # the old deadline is nothing any more


def test_an_entry_at_an_old_deadline_fires_nothing_and_tracks_the_new_one() -> None:
    """An entry is only a reminder: popped at a deadline a heartbeat has moved since (told to a
    lane's table, not to its housekeeping), it fires nothing and is armed at the new one."""
    job = Job()
    job.enqueue()
    job.run(lease_s=30)
    housekeeping, table = tracked(job)
    first = job.s.lease_deadline
    job.heartbeat(lease_s=300)
    table["job-1"] = job.s
    assert housekeeping.due(table, first, actor=ACTOR) == []  # type: ignore[arg-type]
    assert housekeeping.next_due_ms() == epoch_ms(job.s.lease_deadline)  # type: ignore[arg-type]


def test_a_lease_that_runs_out_fires_lease_expired_with_an_id_of_the_timer() -> None:
    # Given a running attempt whose worker sends no more heartbeats
    job = Job()
    job.enqueue()
    job.run(lease_s=30)
    housekeeping, table = tracked(job)
    deadline = job.s.lease_deadline
    assert deadline is not None
    # Then nothing fires before the deadline, and lease_expired at it
    assert housekeeping.due(table, deadline - MS, actor=ACTOR) == []
    now = deadline + 3 * MS
    (event,) = housekeeping.due(table, now, actor=ACTOR)
    assert isinstance(event, LeaseExpiredEvent)
    assert (event.attempt, event.lease_deadline, event.occurred_at, event.actor) == (0, deadline, now, ACTOR)
    assert event == commands.timer_fired_event(b"job-1:lease", epoch_ms(deadline), 0, now=now, actor=ACTOR)
    # and the fold ends the attempt with it (the job is retried)
    job.now = now
    effects = job.step(event)
    assert job.decision.accepted and job.s.status is S.RETRYING and job.s.lease_deadline is None  # type: ignore[union-attr]
    housekeeping.track_all(effects.states)
    assert len(housekeeping) == 0  # retrying: its retry is a timer record
    # the same timer fired again (after a restart, by another lane): a duplicate
    job.step(Housekeeping.fire(lease_timer(deadline), add_seconds(now, 1), actor="processor:1"))
    assert job.decision.duplicate  # type: ignore[union-attr]


@pytest.mark.parametrize("end", ["succeed", "fail", "fail_fatal", "timed_out", "cancel"])
def test_the_attempts_end_drops_the_lease(end: str) -> None:
    job = Job()
    job.enqueue(max_attempts=2)
    job.run(lease_s=30)
    housekeeping, table = tracked(job)
    deadline = job.s.lease_deadline
    before = job.s
    effects = {"succeed": job.succeed, "fail": job.fail, "fail_fatal": lambda: job.fail(retryable=False),
               "timed_out": job.timed_out, "cancel": lambda: (job.cancel(), job.fail())[1]}[end]()
    if end == "cancel":
        assert job.s.status is S.CANCELLED
    housekeeping.track_all(effects.states, before={"job-1": before})
    table.update(effects.states)  # type: ignore[arg-type]
    assert job.s.lease_deadline is None
    # whatever it calls for now (retention, or nothing while a retry waits), no lease expires
    assert housekeeping.due(table, add_seconds(deadline, 1), actor=ACTOR) == []  # type: ignore[arg-type]
    kind = housekeeping_timer(job.s).kind if housekeeping_timer(job.s) else None  # type: ignore[union-attr]
    assert kind in (None, "retain", "dead_letter") and len(housekeeping) == (kind is not None)


def test_the_leases_are_rebuilt_from_the_table_and_an_overdue_one_fires_at_once() -> None:
    """A lane that takes a partition (after a restart, or from another processor) tracks the
    restored table: every attempt under way has its lease again, at its deadline; one that ran
    out while nobody watched fires at the first look."""
    overdue, running, pending = Job("job-a"), Job("job-b"), Job("job-c")
    for job in (overdue, running):
        job.enqueue()
    overdue.run(lease_s=10)
    running.run(lease_s=600)
    pending.enqueue()
    housekeeping, table = tracked(overdue, running, pending)  # a new lane, from the restored table
    assert len(housekeeping) == 3
    now = add_seconds(T0, 60)  # the lane takes over a minute later: job-a's lease ran out meanwhile
    (event,) = housekeeping.due(table, now, actor=ACTOR)
    assert (event.type, event.job_id, event.lease_deadline) == ("lease_expired", "job-a", overdue.s.lease_deadline)  # type: ignore[union-attr]
    assert housekeeping.next_due_ms() == epoch_ms(running.s.lease_deadline)  # type: ignore[arg-type]
    # a restored lane that fires it again (the first one's event already written): the same event
    again, _ = tracked(overdue)
    assert again.due({"job-a": overdue.s}, add_seconds(now, 5), actor=ACTOR)[0].event_id == event.event_id


# -- a due re-publish whose ready record still waits is not published again ------------------------


def test_a_ready_record_waits_while_its_worker_group_has_not_read_it() -> None:
    # the group committed before it (a paused queue, a backlog), or never committed (reads from the start)
    assert ready_record_waits(40, ReadyPartition(log_start=0, end=50, committed=35))
    assert ready_record_waits(40, ReadyPartition(log_start=0, end=50, committed=40))
    assert ready_record_waits(40, ReadyPartition(log_start=0, end=50, committed=None))
    # a committed offset the retention left behind: the group goes on from the log start
    assert ready_record_waits(40, ReadyPartition(log_start=30, end=50, committed=20))
    # lost: committed past (claimed, or skipped), deleted by the retention, or beyond a topic made anew
    assert not ready_record_waits(40, ReadyPartition(log_start=0, end=50, committed=41))
    assert not ready_record_waits(40, ReadyPartition(log_start=45, end=50, committed=35))
    assert not ready_record_waits(40, ReadyPartition(log_start=45, end=50, committed=None))
    assert not ready_record_waits(40, ReadyPartition(log_start=0, end=30, committed=0))


def look(housekeeping: Housekeeping, table: dict[str, JobState], now: datetime,
         where: dict[int, ReadyPartition]) -> list[JobEvent]:
    """One housekeeping pass as the processor makes it: the due timers; a re-publish whose ready
    record (its place known) still waits in the partition `where` describes is armed again, the
    rest fire."""
    events = []
    for timer in housekeeping.due_timers(table, now):
        place = housekeeping.ready_place(timer.job_id) if timer.kind == "republish" else None
        if place is not None and ready_record_waits(place[1], where[place[0]]):
            housekeeping.defer(timer, table, now)
        else:
            events.append(housekeeping.fire(timer, now, actor=ACTOR))
    return events


def test_a_paused_queues_ready_record_is_looked_at_again_not_published_again() -> None:
    # Given a pending job whose ready record went to partition 2 at offset 40, in a queue whose
    # workers paused at offset 35 of that partition
    job = Job()
    job.enqueue()
    housekeeping, table = tracked(job)
    housekeeping.published("job-1", 2, 40)
    paused = {2: ReadyPartition(log_start=0, end=41, committed=35)}
    first = housekeeping_timer(job.s)
    assert first is not None and housekeeping.ready_place("job-1") == (2, 40)
    # When its re-publish comes due, and again and again for a day: nothing is published again,
    # it is looked at again one delay later each time
    now = first.due_at
    for _ in range(24):
        assert look(housekeeping, table, now, paused) == []
        assert len(housekeeping) == 1 and housekeeping.next_due_ms() == epoch_ms(add_seconds(now, HOUR))
        now = add_seconds(now, HOUR)
    assert table["job-1"].ready_republishes == 0
    # Then once the group committed past it without a claim that stands (the record is lost), it
    # is published again: the same event as without the wait (its id depends on the timer only)
    lost = {2: ReadyPartition(log_start=0, end=45, committed=41)}
    (event,) = look(housekeeping, table, now, lost)
    assert isinstance(event, DueEvent) and (event.timer, event.attempt, event.sequence) == ("republish", 0, 0)
    assert event.event_id == housekeeping.fire(first, first.due_at, actor=ACTOR).event_id
    assert apply(job.s, event, actor=ACTOR).accepted


def test_a_ready_record_deleted_by_the_retention_of_a_paused_queue_is_published_again() -> None:
    job = Job()
    job.enqueue()
    housekeeping, table = tracked(job)
    housekeeping.published("job-1", 0, 7)
    due_at = housekeeping_timer(job.s).due_at  # type: ignore[union-attr]
    assert look(housekeeping, table, due_at, {0: ReadyPartition(0, 9, committed=3)}) == []
    later = add_seconds(due_at, 8 * DAY)  # the group still at 3, the retention deleted up to 8
    (event,) = look(housekeeping, table, later, {0: ReadyPartition(8, 9, committed=3)})
    assert isinstance(event, DueEvent) and event.timer == "republish"


def test_where_a_ready_record_went_is_kept_while_its_job_is_pending_only() -> None:
    job = Job()
    job.enqueue()
    housekeeping, table = tracked(job)
    assert housekeeping.ready_place("job-1") is None  # published before this lane (a restart): not known
    assert not housekeeping.ready_in_flight("job-1")
    housekeeping.publishing("job-1")  # being sent: waiting, its place not known yet
    assert housekeeping.ready_in_flight("job-1") and housekeeping.ready_place("job-1") is None
    housekeeping.published("job-1", 3, 12)
    assert not housekeeping.ready_in_flight("job-1")
    housekeeping.published("job-1", 3, 19)  # published again: the later record counts
    assert housekeeping.ready_place("job-1") == (3, 19) and housekeeping.places_known == 1
    job.claim()
    housekeeping.track_all({"job-1": job.s}, before=table)
    assert housekeeping.ready_place("job-1") is None and housekeeping.places_known == 0
    big = Housekeeping()
    big.published("job-2", 2**24 - 1, 2**62)  # the largest partition and a far offset survive the packing
    assert big.ready_place("job-2") == (2**24 - 1, 2**62)


def test_a_deferred_republish_is_not_armed_again_for_a_job_that_moved_on() -> None:
    job = Job()
    job.enqueue()
    housekeeping, table = tracked(job)
    housekeeping.published("job-1", 0, 5)
    (timer,) = housekeeping.due_timers(table, housekeeping_timer(job.s).due_at)  # type: ignore[union-attr]
    job.claim()  # claimed while the broker was asked
    table["job-1"] = job.s
    housekeeping.defer(timer, table, timer.due_at)
    assert len(housekeeping) == 0
    # nor over an entry tracked meanwhile (a new state of the job, told while the broker was asked)
    other = Job("job-2")
    other.enqueue()
    table["job-2"] = other.s
    housekeeping.track("job-2", other.s)
    (timer,) = housekeeping.due_timers(table, housekeeping_timer(other.s).due_at)  # type: ignore[union-attr]
    housekeeping.track("job-2", other.s)
    housekeeping.defer(timer, table, add_seconds(timer.due_at, 5 * HOUR))
    assert housekeeping.next_due_ms() == epoch_ms(timer.due_at)


def test_a_record_whose_offset_is_not_known_waits_if_nothing_published_since_it_was_read() -> None:
    waiting = {0: ReadyPartition(0, 20, committed=8), 1: ReadyPartition(0, 9, committed=9), 2: ReadyPartition(0, 0, None)}
    now, earliest, week = 10_000_000, 9_000_000, 7 * DAY * 1000
    # on every partition the group reads next at or before the first record since the probe time
    assert records_since_wait(earliest, {0: 8, 1: None, 2: None}, waiting, now_ms=now, retention_ms=week)
    assert records_since_wait(earliest, {0: 12, 1: None, 2: None}, waiting, now_ms=now, retention_ms=None)
    # a record since the probe time already read, on any partition (partitions may have been added)
    assert not records_since_wait(earliest, {0: 7, 1: None, 2: None}, waiting, now_ms=now, retention_ms=week)
    assert not records_since_wait(earliest, {0: 8, 1: 5, 2: None}, waiting, now_ms=now, retention_ms=week)
    # no record at all since the probe time: the record is not where it should be
    assert not records_since_wait(earliest, {0: None, 1: None, 2: None}, waiting, now_ms=now, retention_ms=week)
    # a partition not looked at
    assert not records_since_wait(earliest, {0: 8, 1: None}, waiting, now_ms=now, retention_ms=week)
    # the record may be older than the retention (less the margin): it may be deleted, so not known
    old = now - week + int(PUBLISH_CLOCK_MARGIN_S * 1000)
    assert not records_since_wait(old, {0: 8, 1: None, 2: None}, waiting, now_ms=now, retention_ms=week)
    assert records_since_wait(old + 1, {0: 8, 1: None, 2: None}, waiting, now_ms=now, retention_ms=week)


def test_the_earliest_publish_of_an_attempt_is_bounded_by_the_enqueue_the_run_at_and_the_last_start() -> None:
    margin = -PUBLISH_CLOCK_MARGIN_S
    job = Job()
    job.enqueue()
    assert earliest_publish(job.s) == add_seconds(T0, margin)
    scheduled = Job("job-2")
    scheduled.enqueue(delay=600)
    scheduled.tick(600)
    scheduled.due()
    assert scheduled.s.status is S.PENDING and earliest_publish(scheduled.s) == add_seconds(T0, 600 + margin)
    job.run()
    started = job.s.started_at
    assert started is not None
    job.fail()
    job.tick(30)
    job.due()  # attempt 1 is published after attempt 0 started
    assert job.s.status is S.PENDING and earliest_publish(job.s) == add_seconds(started, margin)


def test_republish_delays_from_the_first_one_alone_are_capped_at_a_day_or_at_the_first() -> None:
    assert ReadyRepublish.after(1.0) == ReadyRepublish(1.0, READY_REPUBLISH_CAP_S)
    assert ReadyRepublish.after(2 * DAY) == ReadyRepublish(2 * DAY, 2 * DAY)
    assert [ReadyRepublish.after(1.0).delay_s(n) for n in range(4)] == [1.0, 2.0, 4.0, 8.0]


# -- property: one timer per job whose state calls for one ----------------------------------------

ACTIONS = ["claim", "start", "heartbeat", "progress", "succeed", "fail", "fail_fatal", "cancel", "expire", "due",
           "dlq_retry", "discard", "housekeeping"]


def drive(job: Job, action: str, housekeeping: Housekeeping, table: dict[str, JobState]) -> None:
    """One step of `job`: its new state is tracked and put in the table, as the lane does."""
    if job.state is None:
        effects = job.enqueue(max_attempts=2, ttl=600)
    else:
        write = {
            "claim": job.claim, "start": job.start, "heartbeat": job.heartbeat, "progress": job.progress,
            "succeed": job.succeed, "fail": job.fail,
            "fail_fatal": lambda: job.fail(retryable=False), "cancel": job.cancel, "expire": job.expire,
            "due": job.due, "dlq_retry": job.dlq_retry, "discard": job.discard,
        }
        if action == "housekeeping":  # its housekeeping timer fires now, whenever it is due
            timer = housekeeping_timer(job.s)
            if timer is None:
                return
            job.now = max(job.now, timer.due_at)
            effects = job.step(commands.timer_fired_event(timer.key, epoch_ms(timer.due_at), timer.attempt,
                                                          now=job.now, actor=ACTOR))
        else:
            try:
                effects = write[action]()
            except commands.CommandRefused:
                return
    housekeeping.track_all(effects.states)
    for job_id, state in effects.states.items():
        if state is None:
            table.pop(job_id, None)
        else:
            table[job_id] = state


@settings(max_examples=150, deadline=None)
@given(data=st.data(), count=st.integers(1, 6))
def test_every_job_whose_state_calls_for_a_timer_fires_exactly_once(data: Any, count: int) -> None:
    housekeeping = Housekeeping()
    table: dict[str, JobState] = {}
    jobs = [Job(f"job-{i}") for i in range(count)]
    for job in jobs:
        job.now = add_seconds(T0, data.draw(st.integers(0, 3 * DAY), label="start"))
    for _ in range(data.draw(st.integers(count, 12 * count), label="steps")):
        job = data.draw(st.sampled_from(jobs), label="job")
        job.tick(data.draw(st.integers(0, 2 * HOUR), label="seconds"))
        drive(job, data.draw(st.sampled_from(ACTIONS), label="action"), housekeeping, table)

    assert table == {job.job_id: job.s for job in jobs if job.state is not None}
    timers = {job_id: t for job_id, state in table.items() if (t := housekeeping_timer(state)) is not None}
    assert len(housekeeping) == len(timers)
    label_example(f"{len(timers)} of {count} jobs with a timer: {sorted({t.kind for t in timers.values()})}")
    if not timers:
        assert housekeeping.next_due_ms() is None
        return
    assert housekeeping.next_due_ms() == min(epoch_ms(t.due_at) for t in timers.values())
    # nothing is due before the earliest timer
    earliest = min(t.due_at for t in timers.values())
    assert housekeeping.due(table, earliest - MS, actor=ACTOR) == []
    # past every due time: exactly one event per job that has a timer, the one its timer fires
    now = max(t.due_at for t in timers.values()) + MS
    fired = housekeeping.due(table, now, actor=ACTOR)
    assert sorted(e.job_id for e in fired) == sorted(timers)
    for event in fired:
        timer = timers[event.job_id]
        assert event == commands.timer_fired_event(timer.key, epoch_ms(timer.due_at), timer.attempt, now=now, actor=ACTOR)
        assert apply(table[event.job_id], event, actor=ACTOR).accepted
    assert len(housekeeping) == 0 and housekeeping.due(table, now, actor=ACTOR) == []


# -- clock.epoch_ms ---------------------------------------------------------------------------

MS_DATETIMES = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2105, 12, 31), timezones=st.just(timezone.utc)
).map(utc_ms)


@given(MS_DATETIMES)
def test_epoch_ms_round_trips_with_from_epoch_ms(value: datetime) -> None:
    ms = epoch_ms(value)
    assert isinstance(ms, int)
    assert from_epoch_ms(ms) == value
    assert from_epoch_ms(ms + 1) - value == MS


@given(st.integers(0, 2**32 * 1000 - 1))
def test_from_epoch_ms_round_trips_with_epoch_ms(ms: int) -> None:
    assert epoch_ms(from_epoch_ms(ms)) == ms


@given(st.datetimes(min_value=datetime(1, 1, 2), max_value=datetime(9999, 12, 30),
                    timezones=st.sampled_from([timezone.utc, timezone(timedelta(hours=5, minutes=30)),
                                               timezone(timedelta(hours=-8))])))
def test_epoch_ms_counts_whole_milliseconds_down_in_any_zone(value: datetime) -> None:
    ms = epoch_ms(value)
    assert ms == epoch_ms(utc_ms(value))  # sub-millisecond digits are dropped, the zone does not matter
    start = datetime(1970, 1, 1, tzinfo=timezone.utc) + ms * MS
    assert start <= value < start + MS


def test_epoch_ms_of_known_instants() -> None:
    assert epoch_ms(datetime(1970, 1, 1, tzinfo=UTC)) == 0
    assert epoch_ms(T0) == 1_735_732_800_000
    assert epoch_ms(datetime(2025, 1, 1, 12, 0, 0, 999_999, tzinfo=UTC)) == 1_735_732_800_999
    assert epoch_ms(datetime(1969, 12, 31, 23, 59, 59, 999_500, tzinfo=UTC)) == -1  # down, not toward zero
    with pytest.raises(TypeError):
        epoch_ms(datetime(2025, 1, 1))  # naive: no instant
