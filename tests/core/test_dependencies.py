"""Dependencies and snoozes in the pure core: the fold's rules, the effects, the builders."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from eventjobs.core.clock import add_seconds
from eventjobs.core.effects import Effects, collect
from eventjobs.core.fold import apply
from eventjobs.core.ids import derived_event_id
from eventjobs.core.limits import MAX_DEPENDENCIES, MAX_DEPENDENCY_RESULTS_BYTES, MAX_DEPENDENTS
from eventjobs.core.options import InvalidJobOptions, JobOptions, check_depends_on
from eventjobs.core.outcome import Snooze, outcome_event
from eventjobs.core.records import parse_timer_key
from eventjobs.core.state import JobState, JobStatus
from tests.core.builders import JobLog, Run, reach

S = JobStatus


def waiting(depends_on: list[str], options: JobOptions | None = None, **enqueue: Any) -> tuple[JobState, JobLog, Run]:
    log, run = JobLog(), Run()
    state = run.all(log.enqueued(options, depends_on=depends_on, **enqueue))
    return state, log, run


# -- enqueued with depends_on ------------------------------------------------------------------


def test_a_job_with_dependencies_waits_and_asks_each_dependency() -> None:
    log = JobLog()
    event = log.enqueued(depends_on=["dep-a", "dep-b", "dep-a", "job-1"])  # a repeat and itself are dropped
    decision = apply(None, event)
    assert decision.state is not None and decision.state.status is S.WAITING
    assert decision.state.workflow is not None and decision.state.workflow.depends_on == ("dep-a", "dep-b")
    requests = decision.derived
    assert [(r.type, r.job_id, r.dependent_id) for r in requests] == [
        ("dependency_requested", "dep-a", "job-1"), ("dependency_requested", "dep-b", "job-1"),
    ]
    assert [r.event_id for r in requests] == [derived_event_id(event.event_id, "dependency_requested", i) for i in (0, 1)]
    assert all(r.causation_id == event.event_id for r in requests)


def test_a_plain_job_has_no_workflow() -> None:
    state, _, _ = reach(S.PENDING)
    assert state.workflow is None


# -- the dependency's side ---------------------------------------------------------------------


def test_a_request_to_an_unknown_job_is_answered_missing() -> None:
    request = JobLog("ghost").requested("job-2")
    decision = apply(None, request)
    assert decision.state is None and decision.rejected is not None
    (answer,) = decision.derived
    assert (answer.job_id, answer.dependency_id, answer.outcome, answer.causation_id) == ("job-2", "ghost", "missing", request.event_id)


def test_a_request_to_a_finished_job_is_answered_at_once_with_its_result() -> None:
    state, log, _ = reach(S.COMPLETED)
    decision = apply(state, log.requested("job-2"))
    assert decision.state is state and decision.rejected is None
    (answer,) = decision.derived
    assert (answer.outcome, answer.result) == ("completed", {"sent": True})


def test_a_request_to_a_running_job_is_recorded_and_answered_when_it_ends() -> None:
    state, log, run = reach(S.RUNNING)
    request = log.requested("job-2")
    state = run.all(request)
    assert state.workflow is not None and state.workflow.dependents == {"job-2": request.event_id}
    assert apply(state, request).duplicate  # delivered again: nothing new
    log.tick()
    decision = run.apply(log.failed(retryable=False))
    assert decision.state is not None and decision.state.status is S.DEAD_LETTERED
    answer = decision.derived[-1]
    assert (answer.type, answer.job_id, answer.outcome) == ("dependency_resolved", "job-2", "dead_lettered")
    assert answer.event_id == derived_event_id(request.event_id, "dependency_resolved", 0)  # the same id as an answer at once
    assert decision.state.workflow is None  # nothing left to remember


def test_a_job_answers_at_most_max_dependents_and_refuses_the_rest() -> None:
    state, log, run = reach(S.PENDING)
    for n in range(MAX_DEPENDENTS):
        state = run.all(log.requested(f"d{n}"))
    decision = apply(state, log.requested("one-too-many"))
    assert decision.state is state and decision.rejected
    assert [(a.job_id, a.outcome) for a in decision.derived] == [("one-too-many", "refused")]


def test_a_finished_job_with_waiting_dependents_is_not_forgotten() -> None:
    state, log, _ = reach(S.COMPLETED)
    data = dict(state.__dict__)
    data["workflow"] = {"dependents": {"job-2": "request"}}
    held = JobState.model_validate({**data, "options": state.options, "workflow": data["workflow"]}, strict=False)
    log.tick(90_000)
    decision = apply(held, log.retention_passed(held.attempt, "finished"))
    assert decision.state is held and decision.rejected == "1 dependent job(s) still wait for its outcome"


# -- the dependent's side ----------------------------------------------------------------------


def test_the_last_completed_dependency_makes_the_job_pending_with_the_results() -> None:
    state, log, run = waiting(["dep-a", "dep-b"])
    state = run.all(log.resolved(state, "dep-b", "completed", {"b": 2}))
    assert state.status is S.WAITING and state.workflow is not None and state.workflow.unresolved == ("dep-a",)
    state = run.all(log.resolved(state, "dep-a", "completed", None))
    assert state.status is S.PENDING
    effects = Effects()
    before = run.decisions[-2].state
    collect(effects, before, run.decisions[-1], run.log[-1], partition=3)
    (ready,) = effects.ready
    assert {k: (v.status, v.result) for k, v in (ready.dependencies or {}).items()} == {
        "dep-b": ("completed", {"b": 2}), "dep-a": ("completed", None),
    }


def test_an_answer_delivered_twice_is_a_duplicate() -> None:
    state, log, run = waiting(["dep-a", "dep-b"])
    answer = log.resolved(state, "dep-a")
    state = run.all(answer)
    assert apply(state, answer).duplicate


def test_a_failed_dependency_cancels_at_once_naming_it() -> None:
    state, log, run = waiting(["dep-a", "dep-b"])
    decision = run.apply(log.resolved(state, "dep-b", "dead_lettered"))
    assert decision.state is not None and decision.state.status is S.CANCELLED
    assert decision.state.reason == "dependency dep-b ended dead_lettered"
    assert [d.type for d in decision.derived] == ["cancelled"]
    # the other answer, when it comes, changes nothing
    late = apply(decision.state, log.resolved(state, "dep-a"))
    assert late.state is decision.state and late.rejected


@pytest.mark.parametrize(("outcome", "reason"), [
    ("missing", "dependency dep-a does not exist (never enqueued, or forgotten after its retention)"),
    ("refused", "dependency dep-a has too many dependents (MAX_DEPENDENTS) to wait for it"),
    ("cancelled", "dependency dep-a ended cancelled"),
])
def test_the_cancel_reason_says_what_became_of_the_dependency(outcome: str, reason: str) -> None:
    state, log, run = waiting(["dep-a"])
    assert run.all(log.resolved(state, "dep-a", outcome)).reason == reason


def test_run_anyway_runs_with_what_completed() -> None:
    state, log, run = waiting(["dep-a", "dep-b"], JobOptions(on_dependency_failure="run"))
    state = run.all(log.resolved(state, "dep-a", "dead_lettered"), log.resolved(state, "dep-b", "completed", {"ok": 1}))
    assert state.status is S.PENDING
    assert state.workflow is not None
    assert {k: v.status for k, v in state.workflow.dependencies.items()} == {"dep-a": "dead_lettered", "dep-b": "completed"}


def test_a_job_with_a_later_run_at_is_scheduled_once_its_dependencies_completed() -> None:
    state, log, run = waiting(["dep-a"], run_in=3600)
    decision = run.apply(log.resolved(state, "dep-a"))
    assert decision.state is not None and decision.state.status is S.SCHEDULED
    assert [d.type for d in decision.derived] == ["scheduled"]


def test_results_over_the_budget_are_omitted_but_their_outcome_kept() -> None:
    state, log, run = waiting(["dep-a", "dep-b"])
    big = {"blob": "x" * (MAX_DEPENDENCY_RESULTS_BYTES - 100)}
    state = run.all(log.resolved(state, "dep-a", "completed", big), log.resolved(state, "dep-b", "completed", big))
    assert state.workflow is not None
    kept = state.workflow.dependencies
    assert kept["dep-a"].result == big and not kept["dep-a"].result_omitted
    assert kept["dep-b"].result is None and kept["dep-b"].result_omitted and kept["dep-b"].status == "completed"


def test_answers_of_other_requests_or_jobs_are_rejected() -> None:
    state, log, _ = waiting(["dep-a"])
    stranger = log.resolved(state, "dep-a", causation_id="another-request")
    assert apply(state, stranger).rejected == f"answers request another-request, not this job's request {log.resolved(state, 'dep-a').causation_id}"
    plain, plain_log, _ = reach(S.PENDING)
    assert apply(plain, plain_log.resolved(plain, "dep-a")).rejected == "job job-1 does not depend on dep-a"


def test_a_waiting_job_can_be_cancelled_and_can_expire() -> None:
    state, log, run = waiting(["dep-a"], JobOptions(ttl=60))
    assert apply(state, log.cancel()).state.status is S.CANCELLED  # type: ignore[union-attr]
    log.tick(61)
    assert apply(state, log.expired()).state.status is S.DEAD_LETTERED  # type: ignore[union-attr]


# -- snoozes -----------------------------------------------------------------------------------


def test_a_snooze_schedules_the_next_attempt_without_using_the_budget() -> None:
    state, log, run = reach(S.RUNNING, options=JobOptions(max_attempts=2))
    log.tick()
    snooze = log.snoozed(state.attempt, 30)
    decision = run.apply(snooze)
    after = decision.state
    assert after is not None and after.status is S.SCHEDULED
    assert (after.attempt, after.max_attempts, after.budget_start) == (1, 3, 1)
    assert after.next_due_at == add_seconds(snooze.occurred_at, 30)
    assert after.workflow is not None and after.workflow.snoozes == 1
    assert [d.type for d in decision.derived] == ["scheduled"]


def test_one_snooze_over_max_snoozes_fails_the_attempt_like_an_error() -> None:
    state, log, run = reach(S.RUNNING, options=JobOptions(max_attempts=3, max_snoozes=0))
    decision = run.apply(log.snoozed(state.attempt))
    assert decision.state is not None and decision.state.status is S.RETRYING
    assert decision.state.last_error is not None and decision.state.last_error.error_type == "SnoozeLimitExceeded"
    assert decision.state.last_error.message == "attempt 0 snoozed once more than max_snoozes (0) allows"


def test_a_snooze_of_a_cancelled_job_ends_the_cancel() -> None:
    state, log, run = reach(S.RUNNING)
    run.apply(log.cancel())
    assert run.all(log.snoozed(state.attempt)).status is S.CANCELLED


def test_snooze_marker_becomes_an_attempt_snoozed_event() -> None:
    now = datetime(2025, 1, 1, tzinfo=timezone.utc)
    event = outcome_event(Snooze(2.5), job_id="j", attempt=3, retry_on=("Exception",), occurred_at=now, actor="w",
                          claim_id="c")
    assert (event.type, event.attempt, event.delay_s, event.claim_id) == ("attempt_snoozed", 3, 2.5, "c")
    for bad in (-1, float("inf"), True, "1"):
        with pytest.raises(ValueError, match="Snooze delay must be"):
            Snooze(bad)  # type: ignore[arg-type]


# -- validation ----------------------------------------------------------------------------------


@pytest.mark.parametrize(("depends_on", "message"), [
    ("abc", "depends_on must be a list of job ids, got str"),
    ([""], "depends_on entries must be job ids (strings of 1-128 characters), got ''"),
    ([1], "depends_on entries must be job ids (strings of 1-128 characters), got 1"),
    (["me"], "job me cannot depend on itself"),
    ([f"j{n}" for n in range(MAX_DEPENDENCIES + 1)], f"depends_on names {MAX_DEPENDENCIES + 1} jobs, over the limit of {MAX_DEPENDENCIES}"),
])
def test_bad_depends_on_is_refused_with_a_clear_message(depends_on: Any, message: str) -> None:
    with pytest.raises(InvalidJobOptions) as error:
        check_depends_on(depends_on, "me")
    assert str(error.value).startswith(message)


def test_bad_workflow_options_are_refused() -> None:
    with pytest.raises(InvalidJobOptions, match="on_dependency_failure must be 'cancel' or 'run', got 'skip'"):
        JobOptions(on_dependency_failure="skip")
    with pytest.raises(InvalidJobOptions, match="max_snoozes must be an integer from 0 to 1,000,000, got -1"):
        JobOptions(max_snoozes=-1)


def test_a_snoozed_jobs_run_at_timer_is_keyed_by_its_attempt() -> None:
    # the first run's fired run_at timer is tombstoned just after it fired: a shared key would let
    # that tombstone delete the snooze's timer, and the job would never run again
    state, log, run = reach(S.RUNNING)
    before = state
    decision = run.apply(log.snoozed(state.attempt, 30))
    effects = Effects()
    collect(effects, before, decision, run.log[-2])
    (key,) = [k for k, t in effects.timers.items() if t is not None and t.kind == "run_at"]
    assert key == b"job-1:run_at:1" and parse_timer_key(key) == ("job-1", "run_at", 1)
    assert parse_timer_key(b"job:with:colons:run_at") == ("job:with:colons", "run_at", None)
    # cancelled while snoozed: that timer goes
    cancelled = apply(decision.state, log.cancel())
    effects = Effects()
    collect(effects, decision.state, cancelled, log.cancel())
    assert effects.timers.get(b"job-1:run_at:1", "absent") is None
