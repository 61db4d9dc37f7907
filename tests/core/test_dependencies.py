"""Dependencies and snoozes in the pure core: the fold's rules, the effects, the builders."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

import pytest

from eventjobs.core.clock import add_seconds
from eventjobs.core.effects import Effects, collect, ready_record
from eventjobs.core.events import LINKED_TYPES
from eventjobs.core.fold import Decision, apply
from eventjobs.core.ids import derived_event_id
from eventjobs.core.limits import (
    MAX_DEPENDENCIES,
    MAX_DEPENDENCY_RESULTS_BYTES,
    MAX_DEPENDENTS,
    MAX_PROBE_HOPS,
    MAX_PROBE_ORIGINS_KEPT,
    MAX_REVIVABLE_DEPENDENTS,
)
from eventjobs.core.options import InvalidJobOptions, JobOptions, check_depends_on
from eventjobs.core.outcome import Snooze, outcome_event
from eventjobs.core.records import parse_timer_key
from eventjobs.core.state import JobState, JobStatus
from tests.core.builders import T0, JobLog, Run, reach

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
    # nothing left waiting; but dead-lettered, it may run again: it remembers whom its failure answered
    assert decision.state.workflow is not None and decision.state.workflow.dependents == {}
    assert decision.state.workflow.revivable == {"job-2": request.event_id}


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
    assert decision.state.workflow is not None and decision.state.workflow.cancelled_by == "dep-b"
    # the other answer, when it comes, is recorded (dep-a forgets the job once it answered, so the job
    # needs it if dep-b runs again and reopens it) and changes nothing else
    late = apply(decision.state, log.resolved(state, "dep-a"))
    assert late.accepted and late.derived == ()
    assert late.state is not None and late.state.status is S.CANCELLED and late.state.reason == decision.state.reason
    assert late.state.workflow is not None and set(late.state.workflow.dependencies) == {"dep-a", "dep-b"}


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


# -- several jobs side by side -------------------------------------------------------------------


class Jobs:
    """Several jobs folded side by side, as their lanes would: the events derived for another job
    (requests, answers, reopens, probes) are delivered to it in the order they were written."""

    def __init__(self) -> None:
        self.states: dict[str, JobState] = {}
        self.logs: dict[str, JobLog] = {}
        self.in_flight: list[Any] = []
        self.delivered: list[Any] = []

    def __getitem__(self, job_id: str) -> JobState:
        return self.states[job_id]

    def log(self, job_id: str) -> JobLog:
        """The job's writers; a job met later is enqueued a second later than the one before."""
        if job_id not in self.logs:
            self.logs[job_id] = JobLog(job_id, add_seconds(T0, len(self.logs)))
        return self.logs[job_id]

    def apply(self, event: Any) -> Decision:
        decision = apply(self.states.get(event.job_id), event)
        if decision.state is not None:
            self.states[event.job_id] = decision.state
        elif decision.rejected is None:
            self.states.pop(event.job_id, None)
        self.in_flight += [d for d in decision.derived if d.type in LINKED_TYPES]
        return decision

    def settle(self) -> None:
        while self.in_flight:
            event = self.in_flight.pop(0)
            self.delivered.append(event)
            self.apply(event)

    def enqueue(self, job_id: str, depends_on: list[str] | None = None, options: JobOptions | None = None,
                **enqueue: Any) -> None:
        self.apply(self.log(job_id).enqueued(options, depends_on=depends_on, **enqueue))

    def run(self, job_id: str, *, result: dict[str, Any] | None = None, fail: bool = False) -> JobState:
        """Claim, start and end the job's current attempt (a failure is not retryable: dead-lettered)."""
        log, attempt = self.log(job_id), self.states[job_id].attempt
        log.tick()
        for event in (log.claimed(attempt), log.started(attempt)):
            assert self.apply(event).accepted, f"{job_id} could not run: {self.states[job_id].status}"
        ended = log.failed(attempt, retryable=False) if fail else log.succeeded(attempt, result)
        self.apply(ended)
        self.settle()
        return self.states[job_id]

    def retry(self, job_id: str) -> Decision:
        log = self.log(job_id)
        log.tick()
        decision = self.apply(log.dlq_retry(self.states[job_id].dead_letter_event_id))
        self.settle()
        return decision

    def types(self, job_id: str) -> list[str]:
        return [e.type for e in self.delivered if e.job_id == job_id]


# -- a dead-letter retry of a job that expired while waiting ---------------------------------------


def expired_while_waiting(jobs: Jobs) -> JobState:
    """job-1 waits for dep-a and dep-b (ttl 60 s); dep-b completes, then job-1 expires."""
    jobs.enqueue("dep-a")
    jobs.enqueue("dep-b")
    jobs.enqueue("job-1", ["dep-a", "dep-b"], JobOptions(ttl=60, max_attempts=3))
    jobs.settle()
    jobs.run("dep-b", result={"b": 2})
    jobs.log("job-1").tick(61)
    assert jobs.apply(jobs.log("job-1").expired()).accepted
    assert jobs["job-1"].status is S.DEAD_LETTERED and jobs["job-1"].workflow.unresolved == ("dep-a",)  # type: ignore[union-attr]
    return jobs["job-1"]


def test_an_answer_that_reaches_a_job_that_expired_while_waiting_is_recorded() -> None:
    jobs = Jobs()
    expired_while_waiting(jobs)
    # When dep-a completes while job-1 is in the dead-letter queue
    jobs.run("dep-a", result={"a": 1})
    # Then its answer is recorded, and job-1 stays dead-lettered
    state = jobs["job-1"]
    assert state.status is S.DEAD_LETTERED and state.workflow is not None
    assert {k: (o.status, o.result) for k, o in state.workflow.dependencies.items()} == {
        "dep-b": ("completed", {"b": 2}), "dep-a": ("completed", {"a": 1}),
    }


def test_a_dead_letter_retry_of_a_job_still_waiting_makes_it_wait_until_its_last_answer() -> None:
    jobs = Jobs()
    dead = expired_while_waiting(jobs)
    # When it is retried from the dead-letter queue while dep-a has not answered
    decision = jobs.retry("job-1")
    waiting = decision.state
    assert waiting is not None and waiting.status is S.WAITING
    # with a fresh attempt budget, as any retry, and no ttl any more
    assert (waiting.attempt, waiting.max_attempts, waiting.expires_at) == (1, 4, None)
    assert [d.type for d in decision.derived] == ["dependency_probe"]  # a cycle check along its remaining wait
    effects = Effects()
    collect(effects, dead, decision, jobs.log("job-1").dlq_retry(dead.dead_letter_event_id))
    assert effects.dead_letters == {"job-1": None} and effects.ready == []  # out of the queue, not ready
    # Then it becomes pending only with dep-a's answer, and runs with every result
    jobs.run("dep-a", result={"a": 1})
    assert jobs["job-1"].status is S.PENDING
    ready = ready_record(jobs["job-1"], jobs["job-1"].updated_at)  # what the worker gets
    assert {k: (v.status, v.result) for k, v in (ready.dependencies or {}).items()} == {
        "dep-b": ("completed", {"b": 2}), "dep-a": ("completed", {"a": 1}),
    }
    assert ready.attempt == 1


def test_a_dead_letter_retry_once_every_answer_is_in_decides_as_the_last_answer_would() -> None:
    # all completed while it was dead-lettered: pending at once
    jobs = Jobs()
    expired_while_waiting(jobs)
    jobs.run("dep-a", result={"a": 1})
    assert jobs.retry("job-1").state.status is S.PENDING  # type: ignore[union-attr]
    # one failed while it was dead-lettered: the retry cancels it, naming that dependency
    jobs = Jobs()
    expired_while_waiting(jobs)
    jobs.run("dep-a", fail=True)
    decision = jobs.retry("job-1")
    assert decision.state is not None and decision.state.status is S.CANCELLED
    assert decision.state.reason == "dependency dep-a ended dead_lettered"
    assert [d.type for d in decision.derived] == ["cancelled"]


# -- a retried dependency reopens the dependents its failure cancelled ------------------------------


def test_a_retried_dependency_reopens_the_dependents_its_failure_cancelled() -> None:
    # Given job-1 waiting for dep-a and dep-b; dep-b completes, dep-a is dead-lettered
    jobs = Jobs()
    jobs.enqueue("dep-a")
    jobs.enqueue("dep-b")
    jobs.enqueue("job-1", ["dep-a", "dep-b"])
    jobs.settle()
    jobs.run("dep-b", result={"b": 2})
    jobs.run("dep-a", fail=True)
    cancelled = jobs["job-1"]
    assert cancelled.status is S.CANCELLED and cancelled.workflow is not None and cancelled.workflow.cancelled_by == "dep-a"
    dep = jobs["dep-a"]
    assert dep.workflow is not None and list(dep.workflow.revivable) == ["job-1"]
    failure = next(e for e in jobs.delivered if e.type == "dependency_resolved" and e.job_id == "job-1"
                   and e.dependency_id == "dep-a")
    # When dep-a is retried from the dead-letter queue
    decision = jobs.retry("dep-a")
    (reopen,) = [d for d in decision.derived if d.type == "dependency_reopened"]
    assert (reopen.job_id, reopen.dependency_id, reopen.causation_id) == ("job-1", "dep-a", failure.event_id)
    assert reopen.event_id == derived_event_id(failure.event_id, "dependency_reopened", 0)
    assert decision.state is not None and decision.state.workflow is not None
    assert decision.state.workflow.dependents == {"job-1": failure.causation_id}  # it owes job-1 an answer again
    assert decision.state.workflow.dependent_rounds == {"job-1": 1} and decision.state.workflow.revivable == {}
    # Then job-1 waits for it again, with dep-b's answer kept
    waiting = jobs["job-1"]
    assert waiting.status is S.WAITING and waiting.reason is None and waiting.finished_at is None
    assert waiting.workflow is not None and waiting.workflow.unresolved == ("dep-a",)
    assert waiting.workflow.cancelled_by is None and waiting.workflow.rounds == {"dep-a": 1}
    # and runs once dep-a completes, seeing both results
    jobs.run("dep-a", result={"a": 1})
    ready = jobs["job-1"]
    assert ready.status is S.PENDING and ready.workflow is not None
    assert {k: o.result for k, o in ready.workflow.dependencies.items()} == {"dep-b": {"b": 2}, "dep-a": {"a": 1}}
    second = [e for e in jobs.delivered if e.type == "dependency_resolved" and e.job_id == "job-1" and e.dependency_id == "dep-a"]
    assert second[-1].event_id == derived_event_id(failure.causation_id, "dependency_resolved", 1)  # round 1


def test_a_late_copy_of_the_reopened_failure_changes_nothing() -> None:
    jobs = Jobs()
    jobs.enqueue("dep-a")
    jobs.enqueue("job-1", ["dep-a"])
    jobs.settle()
    jobs.run("dep-a", fail=True)
    failure = next(e for e in jobs.delivered if e.type == "dependency_resolved")
    jobs.retry("dep-a")
    waiting = jobs["job-1"]
    assert waiting.status is S.WAITING
    # the failure delivered again (an aborted transaction's copy, say): of round 0, not the awaited round 1
    copy = apply(waiting, failure)
    assert copy.state is waiting and not copy.accepted and copy.derived == ()
    # and the reopen delivered again: the job holds no answer of dep-a to reopen any more
    reopen = next(e for e in jobs.delivered if e.type == "dependency_reopened")
    again = apply(waiting, reopen)
    assert again.state is waiting and not again.accepted and again.derived == ()


def test_a_reopen_leaves_alone_a_dependent_that_ran_anyway_was_cancelled_otherwise_or_is_gone() -> None:
    jobs = Jobs()
    jobs.enqueue("dep-a")
    jobs.enqueue("runs-anyway", ["dep-a"], JobOptions(on_dependency_failure="run"))
    jobs.enqueue("cancelled", ["dep-a"])
    jobs.enqueue("forgotten", ["dep-a"])
    jobs.settle()
    operator = jobs.log("cancelled")
    jobs.apply(operator.cancel("not needed"))
    jobs.run("dep-a", fail=True)
    assert jobs["runs-anyway"].status is S.PENDING and jobs["cancelled"].workflow.cancelled_by is None  # type: ignore[union-attr]
    del jobs.states["forgotten"]  # its retention passed
    before = {k: v for k, v in jobs.states.items() if k != "dep-a"}
    decision = jobs.retry("dep-a")
    reopens = [d for d in decision.derived if d.type == "dependency_reopened"]
    assert sorted(r.job_id for r in reopens) == ["cancelled", "forgotten", "runs-anyway"]  # it answered them all
    assert {k: v for k, v in jobs.states.items() if k != "dep-a"} == before  # none is touched
    assert "forgotten" not in jobs.states


def test_a_revived_dependent_revives_its_own_dependents() -> None:
    # dep-a <- job-1 <- job-2: dep-a's failure cancels job-1, whose cancel cancels job-2
    jobs = Jobs()
    jobs.enqueue("dep-a")
    jobs.enqueue("job-1", ["dep-a"])
    jobs.enqueue("job-2", ["job-1"])
    jobs.settle()
    jobs.run("dep-a", fail=True)
    assert jobs["job-2"].status is S.CANCELLED and jobs["job-2"].reason == "dependency job-1 ended cancelled"
    # a retry of dep-a revives both, and the chain runs
    jobs.retry("dep-a")
    assert jobs["job-1"].status is S.WAITING and jobs["job-2"].status is S.WAITING
    jobs.run("dep-a", result={"a": 1})
    jobs.run("job-1", result={"one": 1})
    assert jobs["job-2"].status is S.PENDING
    assert jobs["job-2"].workflow.dependencies["job-1"].result == {"one": 1}  # type: ignore[union-attr]


def test_a_dependency_retried_into_another_failure_keeps_its_dependents_cancelled() -> None:
    # job-1 waits for dep-a, which itself expired while waiting for dep-0; dep-a's expiry cancels job-1.
    # dep-0 then fails: a retry of dep-a finds that failure and cancels dep-a, which still names job-1
    jobs = Jobs()
    jobs.enqueue("dep-0")
    jobs.enqueue("dep-a", ["dep-0"], JobOptions(ttl=60))
    jobs.enqueue("job-1", ["dep-a"])
    jobs.settle()
    jobs.log("dep-a").tick(61)
    jobs.apply(jobs.log("dep-a").expired())
    jobs.settle()
    assert jobs["job-1"].status is S.CANCELLED
    jobs.run("dep-0", fail=True)
    decision = jobs.retry("dep-a")
    assert decision.state is not None and decision.state.status is S.CANCELLED
    assert [d.type for d in decision.derived] == ["cancelled"]  # no reopen: it does not run
    assert decision.state.workflow is not None and list(decision.state.workflow.revivable) == ["job-1"]
    # a retry of dep-0 revives dep-a, which revives job-1
    jobs.retry("dep-0")
    assert (jobs["dep-a"].status, jobs["job-1"].status) == (S.WAITING, S.WAITING)
    jobs.run("dep-0")
    jobs.run("dep-a")
    assert jobs["job-1"].status is S.PENDING


def test_a_dead_lettered_job_remembers_at_most_max_revivable_dependents() -> None:
    state, log, run = reach(S.DEAD_LETTERED)
    for n in range(MAX_REVIVABLE_DEPENDENTS):
        state = run.all(log.requested(f"d{n}"))
    assert state.workflow is not None and len(state.workflow.revivable) == MAX_REVIVABLE_DEPENDENTS
    decision = apply(state, log.requested("one-too-many"))
    assert decision.state is state  # answered, not remembered: a retry will not reopen it
    assert [(a.job_id, a.outcome) for a in decision.derived] == [("one-too-many", "dead_lettered")]


def test_a_discarded_dependency_forgets_whom_it_answered() -> None:
    state, log, run = reach(S.DEAD_LETTERED)
    state = run.all(log.requested("job-2"))
    assert state.workflow is not None and state.workflow.revivable
    discarded = run.all(log.discard(state.dead_letter_event_id))
    assert discarded.workflow is None  # nothing can run it again


# -- dependency cycles -----------------------------------------------------------------------------


def test_a_two_job_cycle_ends_both_naming_it() -> None:
    # Given A -> B and B -> A, enqueued by a producer that checks nothing
    jobs = Jobs()
    jobs.enqueue("A", ["B"])
    jobs.enqueue("B", ["A"])
    # When the requests and the probes they start have been delivered
    jobs.settle()
    # Then both are cancelled, the first with the cycle, the other by its answer (or the cycle too)
    a, b = jobs["A"], jobs["B"]
    assert a.status is S.CANCELLED and b.status is S.CANCELLED
    assert a.reason == "dependency cycle: A → B → A"
    assert b.reason in ("dependency cycle: B → A → B", "dependency A ended cancelled")
    assert a.attempts_started == b.attempts_started == 0
    assert not a.workflow.dependents and not b.workflow.dependents  # type: ignore[union-attr]


def test_a_cycle_of_jobs_enqueued_in_the_same_millisecond_is_found() -> None:
    # no enqueue time is earlier than another's: every request starts a probe
    jobs = Jobs()
    jobs.logs.update({job_id: JobLog(job_id, T0) for job_id in ("A", "B", "C")})
    jobs.enqueue("A", ["B"])
    jobs.enqueue("B", ["C"])
    jobs.enqueue("C", ["A"])
    jobs.settle()
    assert all(jobs[job_id].status is S.CANCELLED for job_id in "ABC")
    assert any((jobs[job_id].reason or "").startswith("dependency cycle: ") for job_id in "ABC")


def test_a_three_job_cycle_ends_every_job_and_those_waiting_on_it() -> None:
    jobs = Jobs()
    jobs.enqueue("A", ["B"])
    jobs.enqueue("B", ["C"])
    jobs.enqueue("C", ["A"])
    jobs.enqueue("X", ["A"])  # waits for the cycle from outside
    jobs.settle()
    reasons = {job_id: jobs[job_id].reason for job_id in "ABCX"}
    assert all(jobs[job_id].status is S.CANCELLED for job_id in "ABCX")
    cycles = [r for r in reasons.values() if r is not None and r.startswith("dependency cycle: ")]
    assert cycles and all(r in ("dependency cycle: A → B → C → A", "dependency cycle: B → C → A → B",
                                "dependency cycle: C → A → B → C") for r in cycles)
    assert reasons["X"] == "dependency A ended cancelled"


def test_a_cycle_of_jobs_enqueued_in_any_order_is_found() -> None:
    # the requests of a ring of five reach jobs that exist (each enqueued before the answers flow)
    for order in ([0, 1, 2, 3, 4], [4, 2, 0, 3, 1]):
        jobs = Jobs()
        ring = [f"j{n}" for n in range(5)]
        for n in order:
            jobs.enqueue(ring[n], [ring[(n + 1) % 5]])
        jobs.settle()
        assert all(jobs[j].status is S.CANCELLED for j in ring)
        assert any((jobs[j].reason or "").startswith("dependency cycle: ") for j in ring)


@pytest.mark.parametrize(("size", "found"), [(MAX_PROBE_HOPS, True), (MAX_PROBE_HOPS + 1, False)])
def test_a_cycle_is_found_up_to_max_probe_hops_jobs(size: int, found: bool) -> None:
    jobs = Jobs()
    ring = [f"r{n}" for n in range(size)]
    for n, job_id in enumerate(ring):
        jobs.enqueue(job_id, [ring[(n + 1) % size]])
    jobs.settle()
    # a longer one waits until its jobs expire or are cancelled (docs/workflows.md)
    assert {jobs[j].status for j in ring} == ({S.CANCELLED} if found else {S.WAITING})


def test_probes_cost_nothing_where_no_job_waits() -> None:
    # a request to a job that does not wait starts no probe
    for status in (S.PENDING, S.SCHEDULED, S.RUNNING, S.COMPLETED):
        state, log, _ = reach(status)
        assert all(d.type != "dependency_probe" for d in apply(state, log.requested("job-2")).derived)
    # a fan-in of plain jobs: requests and answers only
    jobs = Jobs()
    for n in range(3):
        jobs.enqueue(f"child-{n}")
    jobs.enqueue("combine", [f"child-{n}" for n in range(3)])
    jobs.settle()
    for n in range(3):
        jobs.run(f"child-{n}", result={"n": n})
    assert jobs["combine"].status is S.PENDING
    assert {e.type for e in jobs.delivered} == {"dependency_requested", "dependency_resolved"}


def chain(order: list[int]) -> Jobs:
    """j0 <- j1 <- ... <- j5, enqueued in ``order`` (a job named later has a later enqueue time), all
    before any request is delivered."""
    jobs = Jobs()
    for n in order:
        jobs.enqueue(f"j{n}", [f"j{n - 1}"] if n else None)
    jobs.settle()
    return jobs


def test_a_chain_enqueued_dependencies_first_sends_no_probe() -> None:
    # as App.enqueue makes them: every dependency exists before its dependent, so a dependent is
    # enqueued after the jobs it waits for, and no request to a waiting job starts a probe
    jobs = chain([0, 1, 2, 3, 4, 5])
    assert all(jobs[f"j{n}"].status is S.WAITING for n in range(1, 6))
    assert [e for e in jobs.delivered if e.type == "dependency_probe"] == []
    for n in range(6):
        jobs.run(f"j{n}")
    assert jobs["j5"].status is S.COMPLETED


def test_a_chain_enqueued_dependents_first_sends_probes_down_the_waiting_jobs_only() -> None:
    # a producer that writes dependents before their dependencies: each request to a waiting job
    # starts a probe, which goes down to j0 (which does not wait, and drops it)
    jobs = chain([5, 4, 3, 2, 1, 0])
    probes = [e for e in jobs.delivered if e.type == "dependency_probe"]
    assert len(probes) == sum(range(1, 5))  # j2's request to j1 sends 1, ... j5's to j4 sends 4
    assert all(jobs[f"j{n}"].status is S.WAITING for n in range(1, 6))
    for n in range(6):
        jobs.run(f"j{n}")
    assert jobs["j5"].status is S.COMPLETED


def test_a_probe_is_forwarded_once_per_wait_unless_by_a_shorter_path() -> None:
    jobs = Jobs()
    jobs.enqueue("Z")
    jobs.enqueue("W", ["Z"])
    jobs.enqueue("P", ["W"])
    jobs.settle()
    w, log = jobs["W"], jobs.log("W")
    request = next(e for e in jobs.delivered if e.type == "dependency_requested" and e.job_id == "W")
    via = derived_event_id(request.event_id, "dependency_resolved", 0)
    long = log.probe(["I", "Q", "R", "P"], "origin-1", via)
    forwarded = apply(w, long)
    assert forwarded.accepted and [(d.job_id, d.path) for d in forwarded.derived] == [("Z", ["I", "Q", "R", "P", "W"])]
    assert forwarded.state.workflow.probes == {"origin-1": 4}  # type: ignore[union-attr]
    # the same wait's probe by another path, no shorter: dropped; by a shorter one: forwarded again
    same = apply(forwarded.state, log.probe(["I", "S", "T", "P"], "origin-1", via))
    assert same.rejected and same.state is forwarded.state and same.derived == ()
    shorter = apply(forwarded.state, log.probe(["I", "P"], "origin-1", via))
    assert shorter.accepted and [d.path for d in shorter.derived] == [["I", "P", "W"]]


def test_a_probe_is_dropped_off_the_wait_it_names_on_its_path_or_at_the_hop_limit() -> None:
    jobs = Jobs()
    jobs.enqueue("Z")
    jobs.enqueue("W", ["Z"])
    jobs.enqueue("P", ["W"])
    jobs.settle()
    w, log = jobs["W"], jobs.log("W")
    request = next(e for e in jobs.delivered if e.type == "dependency_requested" and e.job_id == "W")
    via = derived_event_id(request.event_id, "dependency_resolved", 0)
    cases = {
        "a wait W does not hold": log.probe(["I", "P"], "o", "another-request"),
        "a job W does not hold as waiting": log.probe(["I", "Q"], "o", via),
        "W on the path already": log.probe(["I", "W", "P"], "o", via),
        "the hop limit": log.probe([f"h{n}" for n in range(MAX_PROBE_HOPS - 1)] + ["P"], "o", via),
    }
    for case, probe in cases.items():
        decision = apply(w, probe)
        assert decision.rejected and decision.state is w and decision.derived == (), case
    # a job that does not wait drops every probe
    z = jobs["Z"]
    decision = apply(z, jobs.log("Z").probe(["P", "W"], "o", "v"))
    assert decision.rejected and decision.state is z and decision.derived == ()


def test_a_waiting_job_remembers_at_most_max_probe_origins() -> None:
    jobs = Jobs()
    jobs.enqueue("Z")
    jobs.enqueue("W", ["Z"])
    jobs.enqueue("P", ["W"])
    jobs.settle()
    state, log = jobs["W"], jobs.log("W")
    request = next(e for e in jobs.delivered if e.type == "dependency_requested" and e.job_id == "W")
    via = derived_event_id(request.event_id, "dependency_resolved", 0)
    for n in range(MAX_PROBE_ORIGINS_KEPT + 1):
        state = apply(state, log.probe([f"I{n}", "P"], f"origin-{n}", via)).state  # type: ignore[assignment]
    assert state.workflow is not None and len(state.workflow.probes) == MAX_PROBE_ORIGINS_KEPT
    assert "origin-0" not in state.workflow.probes  # the oldest went: met again, it is forwarded again


def test_a_probe_about_a_wait_that_ended_does_not_cancel_a_job_retried_since() -> None:
    # W waits for X and V; X waits for W but runs anyway if W fails. Each records the other's request
    # and sends a probe back, both late. W expires, answering X, which then runs; W is retried from
    # the dead-letter queue and waits again for X and V
    jobs = Jobs()
    jobs.enqueue("V")
    jobs.enqueue("W", ["X", "V"], JobOptions(ttl=60))
    jobs.enqueue("X", ["W"], JobOptions(on_dependency_failure="run"))
    late = []
    while jobs.in_flight:  # deliver the requests, holding back the probes
        event = jobs.in_flight.pop(0)
        if event.type == "dependency_probe":
            late.append(event)
            continue
        jobs.apply(event)
    (probe,) = [e for e in late if e.job_id == "W" and e.path == ["W", "X"]]
    jobs.log("W").tick(61)
    jobs.apply(jobs.log("W").expired())
    jobs.settle()
    assert jobs["X"].status is S.PENDING  # it runs anyway
    jobs.retry("W")
    assert jobs["W"].status is S.WAITING and jobs["W"].workflow.unresolved == ("X", "V")  # type: ignore[union-attr]
    # When the late probe arrives: X no longer waits for W by the request it names
    decision = jobs.apply(probe)
    # Then it is dropped: W is no part of a cycle any more, and runs once X and V complete
    assert decision.rejected and decision.state.status is S.WAITING  # type: ignore[union-attr]
    jobs.run("X")
    jobs.run("V")
    assert jobs["W"].status is S.PENDING
