"""Properties of apply/fold over random valid lifecycles (hypothesis drives the simulator).

* folding is deterministic (and the same after a trip through the codec, as in another process);
* delivering any event again, at any later point, changes nothing;
* interleaving the events of different jobs in any order gives the same per-job states;
* folding the whole log (derived events included, even late) equals folding the originals only,
  which is what a live processor does;
* random valid lifecycles end in exactly one terminal state with attempts <= max_attempts;
* stale events (an old attempt's outcome, an old lease timer) never change the state;
* nothing a worker whose claim was refused writes about the attempt changes the state;
* a claim and its start written as one event (an ``attempt_started`` carrying the lease) fold to
  the same states as ``claimed`` + ``attempt_started``, and lifecycles mixing both are valid;
* with the retention events the timer service writes once a lifecycle ends (a dead-lettered job
  discarded, a finished job forgotten), folding is still deterministic and duplicates still
  change nothing;
* workflows (random DAGs and random graphs with cycles, written by a producer that checks
  nothing; requests, answers, reopens and cycle probes arriving late and reordered between jobs;
  jobs expiring while they wait; dead-letter retries): folding is deterministic, duplicates change
  nothing, echoes anywhere change nothing, every job ends, none runs before all its answers are in
  (all completed, unless it runs anyway), a job cancelled for a cycle names a cycle of the graph,
  and no job stays cancelled by a dependency that was retried and completed.
"""

from __future__ import annotations

import random
from datetime import timedelta
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventjobs.core.clock import add_seconds
from eventjobs.core.codec import decode, encode
from eventjobs.core.housekeeping import DEFAULT_DEAD_LETTER_RETENTION_S, DEFAULT_RETAIN_COMPLETED_S
from eventjobs.core.events import (
    DERIVED_TYPES,
    LINKED_TYPES,
    AttemptFailedEvent,
    AttemptStartedEvent,
    AttemptSucceededEvent,
    AttemptTimedOutEvent,
    ClaimedEvent,
    HeartbeatEvent,
    JobEvent,
    LeaseExpiredEvent,
    ProgressEvent,
    RetentionPassedEvent,
)
from eventjobs.core.fold import apply, fold, replay
from eventjobs.core.ids import derived_event_id
from eventjobs.testing.simulation import EPOCH, SimulationProfile, job_lifecycle, workflow_log
from eventjobs.core.state import TERMINAL_STATUSES, JobState, JobStatus, decode_state, encode_state

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

profiles = st.builds(
    SimulationProfile,
    succeed=st.floats(0.1, 0.95),
    retryable=st.floats(0.0, 1.0),
    timeout=st.floats(0.0, 0.5),
    lease_loss=st.floats(0.0, 0.3),
    claim_start=st.sampled_from([0.0, 0.5, 1.0]),  # claimed + attempt_started, a mix, or one claiming start
    cancel=st.floats(0.0, 0.2),
    heartbeats=st.floats(0.0, 2.0),
    progress=st.floats(0.0, 2.0),
    scheduled=st.floats(0.0, 1.0),
    ttl=st.floats(0.0, 1.0),
    expire=st.floats(0.0, 0.5),
    dlq_retry=st.floats(0.0, 1.0),
    discard=st.floats(0.0, 0.5),
)


@st.composite
def lifecycles(draw: Any, offset_s: int = 0) -> list[JobEvent]:
    """All events of one job, enqueued to terminal, derived events right after their cause.

    The simulator gets a ``random.Random`` seeded from a drawn integer: hypothesis' own
    ``randoms()`` leans towards 0, which would make the first possible cancel happen almost
    always and keep lifecycles short.
    """
    rng = random.Random(draw(st.integers(0, 2**64 - 1), label="simulator seed"))
    profile = draw(profiles)
    start = EPOCH + timedelta(seconds=offset_s)
    return list(job_lifecycle(rng, profile=profile, start=start, max_steps=5000))


@st.composite
def multi_job_logs(draw: Any) -> tuple[list[list[JobEvent]], list[JobEvent]]:
    """(per-job logs, one log interleaving them in a random order that keeps each job's order)."""
    jobs = draw(st.lists(lifecycles(), min_size=1, max_size=4, unique_by=lambda events: events[0].job_id))
    order = draw(st.permutations([index for index, events in enumerate(jobs) for _ in events]))
    cursors = [0] * len(jobs)
    merged = []
    for index in order:
        merged.append(jobs[index][cursors[index]])
        cursors[index] += 1
    return jobs, merged


def retention_passed(state: JobState, scope: str, keep_s: float) -> RetentionPassedEvent:
    """What the timer service writes when the retention timer armed for ``state`` fires (its id
    derived from the timer, as the timer service derives it)."""
    assert state.finished_at is not None
    due = add_seconds(state.finished_at, keep_s)
    kind = "dead_letter" if scope == "dead_letter" else "retain"
    cause = f"{state.job_id}:{kind}:{state.attempt}:{round(due.timestamp() * 1000)}"
    return RetentionPassedEvent(
        event_id=derived_event_id(cause, "retention_passed", 0), job_id=state.job_id, occurred_at=due,
        actor="timer:0", attempt=state.attempt, scope=scope, due_at=due,  # type: ignore[arg-type]
    )


@st.composite
def retained_lifecycles(draw: Any) -> tuple[list[JobEvent], bool]:
    """(a lifecycle followed by its retention events, whether the job ends forgotten).

    A dead-lettered job is discarded when its dead-letter retention passes; then, maybe, the
    finished job is forgotten when its retention passes.
    """
    log = draw(lifecycles())
    state = fold(log)[log[0].job_id]
    if state.status is JobStatus.DEAD_LETTERED:
        keep_s = state.options.dead_letter_retention_s or DEFAULT_DEAD_LETTER_RETENTION_S
        log.append(retention_passed(state, "dead_letter", keep_s))
        state = fold(log)[state.job_id]
        assert state.status is JobStatus.DISCARDED
    forgotten = draw(st.booleans(), label="forgotten")
    if forgotten:
        log.append(retention_passed(state, "finished", DEFAULT_RETAIN_COMPLETED_S))
    return log, forgotten


def originals(events: list[JobEvent]) -> list[JobEvent]:
    return [e for e in events if e.type not in DERIVED_TYPES]


@SETTINGS
@given(log=lifecycles())
def test_fold_is_deterministic(log: list[JobEvent]) -> None:
    first, second = fold(log), fold(log)
    assert first == second
    assert {k: encode_state(v) for k, v in first.items()} == {k: encode_state(v) for k, v in second.items()}
    # the same bytes decoded elsewhere fold to the same state
    assert fold([decode(encode(e)) for e in log]) == first


@SETTINGS
@given(log=lifecycles(), data=st.data())
def test_duplicate_delivery_of_any_event_changes_nothing(log: list[JobEvent], data: Any) -> None:
    expected = fold(log)
    # Given a copy of any event delivered again at any later point
    i = data.draw(st.integers(0, len(log) - 1), label="duplicated event")
    j = data.draw(st.integers(i + 1, len(log)), label="delivered again before position")
    noisy = [*log[:j], log[i], *log[j:]]
    # Then folding gives the same state, and the copy itself was not applied
    states: dict[str, JobState] = {}
    for position, event in enumerate(noisy):
        decision = apply(states.get(event.job_id), event)
        if position == j:
            assert not decision.accepted, f"re-delivered {event.type} was applied: {decision}"
            assert decision.derived == () or decision.rejected is not None
            assert decision.state is states.get(event.job_id)
        if decision.state is not None:
            states[event.job_id] = decision.state
    assert states == expected


@SETTINGS
@given(log=lifecycles(), data=st.data())
def test_many_duplicates_change_nothing(log: list[JobEvent], data: Any) -> None:
    copies = data.draw(st.lists(st.integers(0, len(log) - 1), max_size=10), label="copies")
    noisy = list(log)
    for i in copies:
        source = next(k for k, e in enumerate(noisy) if e is log[i])  # where the original is now
        noisy.insert(data.draw(st.integers(source + 1, len(noisy)), label="position"), log[i])
    assert fold(noisy) == fold(log)


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs=multi_job_logs())
def test_interleaving_jobs_in_any_order_gives_the_same_per_job_states(logs: tuple[list[list[JobEvent]], list[JobEvent]]) -> None:
    jobs, merged = logs
    separately: dict[str, JobState] = {}
    for events in jobs:
        separately.update(fold(events))
    assert fold(merged) == separately


@SETTINGS
@given(log=lifecycles(), data=st.data())
def test_folding_the_whole_log_equals_the_live_processor(log: list[JobEvent], data: Any) -> None:
    # The live processor applies originals and derives the rest itself; derived events come
    # back later in the log (possibly much later). Both must give the same state.
    live = fold(originals(log))
    assert fold(log) == live
    # move every derived event to a random later position
    shuffled = list(originals(log))
    for index, event in enumerate(log):
        if event.type in DERIVED_TYPES:
            cause = next(k for k, e in enumerate(shuffled) if e.event_id == event.causation_id)
            shuffled.insert(data.draw(st.integers(cause + 1, len(shuffled)), label=f"echo {index}"), event)
    assert fold(shuffled) == live


@SETTINGS
@given(log=lifecycles())
def test_random_lifecycles_end_in_exactly_one_terminal_state_within_the_attempt_budget(log: list[JobEvent]) -> None:
    state: JobState | None = None
    terminal_events_since_retry = 0
    finished_once = False
    for event in log:
        before = state
        decision = apply(state, event)
        # every event the simulator writes is accepted, or is the echo of a derived one
        assert decision.rejected is None
        assert decision.duplicate == (event.type in DERIVED_TYPES)
        state = decision.state
        assert state is not None
        if decision.accepted:
            assert state.version == (before.version + 1 if before else 1)
        # invariants after every event
        assert 0 <= state.attempt < state.max_attempts
        assert state.attempt - state.budget_start < state.options.max_attempts
        assert state.attempts_started <= state.attempt + 1
        if finished_once:  # completed, cancelled and discarded are final: nothing is accepted after
            assert not decision.accepted, f"{event.type} accepted after the job finished"
        for derived in decision.derived:
            if derived.type in ("completed", "cancelled", "dead_lettered"):
                terminal_events_since_retry += 1
        if event.type == "dead_letter_retried":
            assert terminal_events_since_retry == 1
            terminal_events_since_retry = 0
        if state.status in (JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.DISCARDED):
            finished_once = True
    assert state is not None
    assert state.status in TERMINAL_STATUSES
    assert terminal_events_since_retry == 1
    if state.status is JobStatus.COMPLETED:
        assert state.result == next(e for e in reversed(log) if e.type == "attempt_succeeded").result
    if state.status is JobStatus.DEAD_LETTERED:
        assert state.dead_letter_event_id == next(e for e in reversed(log) if e.type == "dead_lettered").event_id


@SETTINGS
@given(log=lifecycles(), data=st.data())
def test_stale_results_and_old_lease_timers_never_change_the_state(log: list[JobEvent], data: Any) -> None:
    states = [apply(None, log[0]).state]
    for event in log[1:]:
        states.append(apply(states[-1], event).state)
    # Given any point in the life of the job after its first attempt
    final = states[-1]
    assert final is not None
    if final.attempt == 0:
        return
    k = data.draw(st.integers(0, len(states) - 1), label="point")
    state = states[k]
    assert state is not None
    if state.attempt == 0:
        return
    old = data.draw(st.integers(0, state.attempt - 1), label="old attempt")
    rng = random.Random(data.draw(st.integers(0, 2**32)))
    common = {"event_id": f"late-{rng.getrandbits(32)}", "job_id": state.job_id, "occurred_at": state.updated_at, "actor": "worker:zombie"}
    late = data.draw(
        st.sampled_from(
            [
                AttemptSucceededEvent(**common, attempt=old, result={"zombie": True}),
                AttemptFailedEvent(**common, attempt=old, error_type="E", message="m", retryable=True),
                LeaseExpiredEvent(**common, attempt=old, lease_deadline=state.updated_at),
            ]
        )
    )
    # When a late event of an old attempt arrives, it is rejected as stale and changes nothing
    decision = apply(state, late)
    assert decision.rejected is not None and decision.rejected.startswith(f"stale attempt {old}:")
    assert decision.state is state and decision.derived == ()


@SETTINGS
@given(log=lifecycles(), data=st.data())
def test_the_events_of_a_refused_claim_never_change_the_state(log: list[JobEvent], data: Any) -> None:
    states = [apply(None, log[0]).state]
    for event in log[1:]:
        states.append(apply(states[-1], event).state)
    # Given any point at which an attempt is claimed or running under an accepted claim
    active = [s for s in states if s is not None and s.status in (JobStatus.CLAIMED, JobStatus.RUNNING)]
    if not active:
        return
    state = data.draw(st.sampled_from(active), label="state")
    assert state.claim_id is not None
    # When a worker whose claim of that attempt was refused reports anything about it
    refused = f"refused-{data.draw(st.integers(0, 2**32))}"
    common = {"event_id": f"{refused}-e", "job_id": state.job_id, "occurred_at": state.updated_at,
              "actor": "worker:refused", "attempt": state.attempt, "claim_id": refused}
    event = data.draw(st.sampled_from([
        AttemptStartedEvent(**common, worker_id=state.worker_id or "w"),
        # a second claim of the attempt that would also be its start (a worker that took a copy of the ready record)
        AttemptStartedEvent(**{**common, "claim_id": None}, worker_id="other",
                            lease_deadline=add_seconds(state.updated_at, 60)),
        AttemptStartedEvent(**{**common, "claim_id": common["event_id"]}, worker_id=state.worker_id or "w",
                            lease_deadline=add_seconds(state.updated_at, 60)),
        ProgressEvent(**common, percent=99.0),
        HeartbeatEvent(**common, lease_deadline=add_seconds(state.updated_at, 3600)),
        AttemptSucceededEvent(**common, result={"refused": True}),
        AttemptFailedEvent(**common, error_type="E", message="m", retryable=False),
        AttemptTimedOutEvent(**common, timeout_s=1.0),
    ]), label="event")
    # Then it is rejected, and changes nothing
    decision = apply(state, event)
    assert decision.rejected is not None
    assert decision.state is state and decision.derived == ()


def merge_claims_and_starts(log: list[JobEvent]) -> list[JobEvent]:
    """``log`` with each ``claimed`` followed by its ``attempt_started`` written as one start that is
    also the claim (the claim's id, so the attempt's later events name it; the start's time)."""
    merged: list[JobEvent] = []
    k = 0
    while k < len(log):
        claim = log[k]
        start = log[k + 1] if k + 1 < len(log) else None
        if isinstance(claim, ClaimedEvent) and isinstance(start, AttemptStartedEvent) and start.claim_id == claim.event_id:
            merged.append(AttemptStartedEvent(
                event_id=claim.event_id, job_id=claim.job_id, occurred_at=start.occurred_at, actor=start.actor,
                attempt=claim.attempt, worker_id=claim.worker_id, claim_id=claim.event_id,
                lease_deadline=claim.lease_deadline,
            ))
            k += 2
        else:
            merged.append(claim)
            k += 1
    return merged


@SETTINGS
@given(log=lifecycles())
def test_a_claim_and_its_start_written_as_one_event_fold_to_the_same_states(log: list[JobEvent]) -> None:
    # Given a lifecycle, and the same lifecycle with every claim and its start written as one event
    merged = merge_claims_and_starts(log)
    pairs = len(log) - len(merged)
    # When both are folded
    states, merged_states = fold(log), fold(merged)
    # Then every original event of the merged log is accepted (derived ones are echoes) ...
    for event, decision in replay(merged, {}):
        assert decision.rejected is None, (event.type, decision.rejected)
        assert decision.duplicate == (event.type in DERIVED_TYPES)
    # ... and the job ends in the same state: the same attempts, claim, lease, times and outcome
    # (only the version, one lower per merged pair, and the recent ids differ)
    state, merged_state = states[log[0].job_id], merged_states[log[0].job_id]
    ignored = {"version", "recent_event_ids"}
    assert merged_state.model_dump(exclude=ignored) == state.model_dump(exclude=ignored)
    assert merged_state.version == state.version - pairs


@SETTINGS
@given(log=lifecycles())
def test_every_state_survives_the_changelog_codec(log: list[JobEvent]) -> None:
    state = None
    for event in log:
        state = apply(state, event).state
        assert state is not None
        assert decode_state(encode_state(state)) == state


@SETTINGS
@given(log=lifecycles(), data=st.data())
def test_an_event_of_a_derived_type_never_changes_a_state(log: list[JobEvent], data: Any) -> None:
    # The processor reads the event log read_uncommitted, so it may see derived events of a
    # transaction that is later aborted (a crashed or fenced predecessor). That is safe only
    # because such an event, genuine or forged, is a duplicate or a rejection, never a change.
    from eventjobs.core.events import EVENT_TYPES
    from tests.core.strategies import events_of

    cut = data.draw(st.integers(1, len(log)), label="events folded before")
    states = fold(log[:cut])
    job_id = log[0].job_id
    kind = data.draw(st.sampled_from(sorted(DERIVED_TYPES)), label="derived type")
    forged = data.draw(events_of(EVENT_TYPES[kind]), label="event").model_copy(update={"job_id": job_id})
    genuine = [e for e in log[:cut] if e.type in DERIVED_TYPES]
    for event in [forged, *genuine]:
        decision = apply(states[job_id], event)
        assert decision.state is states[job_id] and decision.derived == () and not decision.accepted


@SETTINGS
@given(retained=retained_lifecycles())
def test_fold_with_retention_events_is_deterministic(retained: tuple[list[JobEvent], bool]) -> None:
    log, forgotten = retained
    first, second = fold(log), fold(log)
    assert first == second
    assert fold([decode(encode(e)) for e in log]) == first
    if forgotten:
        assert first == {}
    else:
        (state,) = first.values()
        assert state.status in (JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.DISCARDED)


@SETTINGS
@given(retained=retained_lifecycles(), data=st.data())
def test_duplicate_delivery_with_retention_events_changes_nothing(retained: tuple[list[JobEvent], bool], data: Any) -> None:
    """Any event delivered again at any later point changes nothing, with one exception by design:
    an ``enqueued`` delivered after the job was forgotten creates it afresh (its idempotency
    window has ended; ``test_fold.py`` covers that), so that copy is placed before the forget."""
    log, forgotten = retained
    expected = fold(log)
    i = data.draw(st.integers(0, len(log) - 1), label="duplicated event")
    last = len(log) - 1 if forgotten and log[i].type == "enqueued" else len(log)
    j = data.draw(st.integers(i + 1, max(i + 1, last)), label="delivered again before position")
    noisy = [*log[:j], log[i], *log[j:]]
    states: dict[str, JobState] = {}
    for position, event in enumerate(noisy):
        decision = apply(states.get(event.job_id), event)
        if position == j:
            assert not decision.accepted, f"re-delivered {event.type} was applied: {decision}"
            assert decision.derived == () or decision.rejected is not None
            assert decision.state is states.get(event.job_id)
        if decision.state is not None:
            states[event.job_id] = decision.state
        elif decision.rejected is None:
            del states[event.job_id]  # forgotten
    assert states == expected


# --------------------------------------------------------------------------------------------
# Workflows: dependencies across jobs (requests and answers derived for another job) and snoozes
# --------------------------------------------------------------------------------------------


@st.composite
def workflow_logs(draw: Any) -> list[JobEvent]:
    """The log of a small graph of jobs (a DAG, or with cycles), the events between jobs arriving late
    and reordered, waiting jobs expiring, dead-lettered ones retried."""
    rng = random.Random(draw(st.integers(0, 2**64 - 1), label="simulator seed"))
    cycles = draw(st.sampled_from([0.0, 0.3, 0.8]), label="chance of a dependency on a later job")
    claim_start = draw(st.sampled_from([0.0, 0.5, 1.0]), label="chance a claim is also the start")
    return workflow_log(rng, jobs=draw(st.integers(1, 7), label="jobs"), cycles=cycles,
                        expire=draw(st.sampled_from([0.0, 0.1, 0.4]), label="chance to expire while waiting"),
                        profile=SimulationProfile(cancel=0.01, lease_loss=0.02, ttl=0.3, claim_start=claim_start))


def copy_positions_end(log: list[JobEvent], i: int) -> int:
    """The last position (exclusive bound + 1) a copy of ``log[i]`` may be delivered again at.

    Anywhere later, but for one case: a request that reached its job before that job was enqueued
    (a producer that skips ``App.enqueue``'s dependency check named a job it enqueues later) was answered
    ``missing`` there, and the lane keeps no state for a job it does not hold; a copy arriving
    after the enqueue would be recorded as a new dependent (and answered once more with the same
    id, which the dependent takes as a duplicate). So such a copy stays before that enqueue.
    """
    event = log[i]
    if event.type == "dependency_requested":
        for k in range(i + 1, len(log)):
            if log[k].type == "enqueued" and log[k].job_id == event.job_id:
                return k
    return len(log)


def any_or_linked(log: list[JobEvent]) -> st.SearchStrategy[int]:
    """The position of any event of ``log``, or (as often) of one the processor wrote for another job:
    those are the conversation between jobs, where a late copy has the most to get wrong."""
    linked = [k for k, e in enumerate(log) if e.type in LINKED_TYPES]
    anything = st.integers(0, len(log) - 1)
    return st.one_of(anything, st.sampled_from(linked)) if linked else anything


def declared_graph(log: list[JobEvent]) -> dict[str, tuple[str, ...]]:
    """job id -> the jobs it depends on, as enqueued."""
    return {e.job_id: tuple(e.depends_on or ()) for e in log if e.type == "enqueued"}


@SETTINGS
@given(log=workflow_logs())
def test_workflow_fold_is_deterministic(log: list[JobEvent]) -> None:
    first = fold(log)
    assert first == fold(log)
    assert {k: encode_state(v) for k, v in first.items()} == {k: encode_state(v) for k, v in fold(log).items()}
    assert fold([decode(encode(e)) for e in log]) == first
    assert {k: decode_state(encode_state(v)) for k, v in first.items()} == first


@SETTINGS
@given(log=workflow_logs(), data=st.data())
def test_workflow_duplicate_delivery_changes_nothing(log: list[JobEvent], data: Any) -> None:
    expected = fold(log)
    i = data.draw(any_or_linked(log), label="duplicated event")
    j = data.draw(st.integers(i + 1, copy_positions_end(log, i)), label="delivered again before position")
    noisy = [*log[:j], log[i], *log[j:]]
    known_ids = {e.event_id for e in log}
    states: dict[str, JobState] = {}
    for position, event in enumerate(noisy):
        before = states.get(event.job_id)
        decision = apply(before, event)
        if position == j:
            # the copy changes no state; what it derives (a dependency answered again) has the ids
            # already in the log, which their jobs take as duplicates
            assert decision.state is before, f"re-delivered {event.type} changed the state: {decision}"
            assert {d.event_id for d in decision.derived} <= known_ids
        if decision.state is not None:
            states[event.job_id] = decision.state
        elif decision.rejected is None:
            states.pop(event.job_id, None)
    assert states == expected


@SETTINGS
@given(log=workflow_logs(), data=st.data())
def test_workflow_log_folds_like_the_live_processors(log: list[JobEvent], data: Any) -> None:
    # The live lanes apply the originals and the linked events (each in its job's lane) and derive
    # the echoes themselves; echoes read back later, anywhere after their cause, change nothing.
    live = fold([e for e in log if e.type not in DERIVED_TYPES])
    assert fold(log) == live
    shuffled = [e for e in log if e.type not in DERIVED_TYPES]
    for index, event in enumerate(log):
        if event.type in DERIVED_TYPES:
            cause = next(k for k, e in enumerate(shuffled) if e.event_id == event.causation_id)
            shuffled.insert(data.draw(st.integers(cause + 1, len(shuffled)), label=f"echo {index}"), event)
    assert fold(shuffled) == live


@SETTINGS
@given(log=workflow_logs())
def test_every_workflow_job_ends_and_runs_only_when_its_dependencies_allow(log: list[JobEvent]) -> None:
    states = fold(log)
    requests = [e for e in log if e.type == "dependency_requested"]
    answers = {e.causation_id for e in log if e.type == "dependency_resolved"}
    assert {r.event_id for r in requests} == answers  # every request answered, once per id
    for state in states.values():
        assert state.is_terminal, state
        workflow = state.workflow
        if workflow is None or not workflow.depends_on or state.attempts_started == 0:
            continue
        # it ran: every dependency had ended, all completed unless it runs anyway
        assert set(workflow.dependencies) == set(workflow.depends_on)
        if workflow.on_dependency_failure == "cancel":
            assert all(o.status == "completed" for o in workflow.dependencies.values())
        assert not workflow.dependents  # answered when it ended


@SETTINGS
@given(log=workflow_logs(), data=st.data())
def test_workflow_many_duplicates_change_nothing(log: list[JobEvent], data: Any) -> None:
    copies = data.draw(st.lists(any_or_linked(log), max_size=10), label="copies")
    noisy = list(log)
    for i in copies:
        source = next(k for k, e in enumerate(noisy) if e is log[i])
        end = copy_positions_end(noisy, source)
        noisy.insert(data.draw(st.integers(source + 1, end), label="position"), log[i])
    assert fold(noisy) == fold(log)


@SETTINGS
@given(log=workflow_logs())
def test_no_workflow_job_runs_before_all_its_answers(log: list[JobEvent]) -> None:
    states: dict[str, JobState] = {}
    for event in log:
        before = states.get(event.job_id)
        decision = apply(before, event)
        if decision.accepted and (event.type == "claimed" or (event.type == "attempt_started"
                                                              and before is not None and before.status is JobStatus.PENDING)):
            assert before is not None
            workflow = before.workflow
            if workflow is not None and workflow.depends_on:
                assert workflow.unresolved == (), f"{event.job_id} claimed while waiting for {workflow.unresolved}"
                if workflow.on_dependency_failure == "cancel":
                    assert all(o.status == "completed" for o in workflow.dependencies.values())
        if decision.state is not None:
            states[event.job_id] = decision.state
        elif decision.rejected is None:
            states.pop(event.job_id, None)


@SETTINGS
@given(log=workflow_logs())
def test_a_job_cancelled_for_a_cycle_names_a_cycle_of_the_graph(log: list[JobEvent]) -> None:
    graph = declared_graph(log)
    for state in fold(log).values():
        if not (state.reason or "").startswith("dependency cycle: "):
            continue
        cycle = state.reason.removeprefix("dependency cycle: ").split(" → ")  # type: ignore[union-attr]
        assert cycle[0] == cycle[-1] == state.job_id and len(cycle) >= 3
        assert len(set(cycle[:-1])) == len(cycle) - 1  # a simple cycle
        for waiting, waited_for in zip(cycle, cycle[1:]):
            assert waited_for in graph[waiting], f"{waiting} does not depend on {waited_for}"


@SETTINGS
@given(log=workflow_logs())
def test_no_job_stays_cancelled_by_a_dependency_that_completed(log: list[JobEvent]) -> None:
    # a dependency retried from the dead-letter queue reopens the dependents its failure cancelled
    states = fold(log)
    for state in states.values():
        cause = state.workflow.cancelled_by if state.workflow is not None else None
        if state.status is JobStatus.CANCELLED and cause is not None and cause in states:
            assert states[cause].status is not JobStatus.COMPLETED, f"{state.job_id} cancelled by completed {cause}"


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**64 - 1))
def test_cyclic_workflows_form_cycles_and_end_them(seed: int) -> None:
    # the generator must really produce cycles for the properties above to mean something: over a few
    # logs with many back references, some job ends cancelled for a cycle, and every job ends
    rng = random.Random(seed)
    reasons = []
    for _ in range(10):
        states = fold(workflow_log(rng, jobs=5, cycles=1.0, missing=0.0, expire=0.0))
        assert all(s.is_terminal for s in states.values())
        reasons += [s.reason or "" for s in states.values()]
    assert any(r.startswith("dependency cycle: ") for r in reasons)
