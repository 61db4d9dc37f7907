"""``apply(state, event)``: the single place where a job changes state.

Why this module exists: every processor, every replay and every test computes job state with
this one pure function, so they all agree. It never reads a clock (times come from the event),
never raises (an event that does not fit is rejected with a reason), and returns a ``Decision``:

* ``state``: the new state (or the unchanged one);
* ``derived``: events the processor must append because of this one (``retry_scheduled``,
  ``completed``, ``failed`` + ``dead_lettered``, ``cancelled``, ``scheduled``,
  ``duplicate_rejected``, ``debounced``). Their ids come from ``derived_event_id`` (so deriving twice gives the
  same ids), ``occurred_at`` is the trigger's, ``causation_id`` the trigger's id;
* ``rejected``: why the event was refused (illegal, stale), or None;
* ``duplicate``: the event was already applied (a redelivery, or the echo of a derived event).

Derived events are already reflected in the returned state; when they come back through the
log, ``apply`` recognises them and changes nothing. The exception are the events derived for
another job (``LINKED_TYPES``: a waiting job's ``dependency_requested`` to each dependency, a
dependency's ``dependency_resolved`` answer to each dependent, its ``dependency_reopened`` to
the dependents its failure answered when it runs again, and the ``dependency_probe`` cycle
checks that waiting jobs pass along): they are keyed by that other job and change its state when
its lane applies them. Their ids are derived from their cause (an answer's from the request and
its round, whether given at once or when the dependency ends), so delivering one twice is a
duplicate there, or is rejected as stale. So folding the whole log from scratch and a
live processor end in identical states.

Idempotency does not hang on remembering ids. Each accepted event moves the job somewhere it
cannot accept that same event again: attempt numbers only grow, heartbeats must extend the
lease, progress must be newer, operator actions name the dead-letter entry they act on, a TTL
is disarmed once the job is retried from the dead-letter queue, a republish timer names the
re-publish it performs. The few recent ids kept in the state only make ``duplicate`` (rather
than a "stale" rejection) precise for near redeliveries.

Fenced attempts: the accepted claim's id becomes the job's ``claim_id`` (a ``claimed`` event, or
an ``attempt_started`` that carries ``lease_deadline``: the claim and the start in one event,
pending -> running, with every check of a claim), and the worker's attempt events (started,
progress, heartbeat, outcome) carry the claim they belong to.
A worker whose claim was refused (another worker claimed the attempt first, e.g. from a
redelivered or re-published ready record) may still run the handler, but its events are
rejected, so only the accepted claim decides the attempt.

Performance: the state and derived events are built without re-validation (everything that
goes into them was validated when the triggering event was decoded); the tests check that such
objects equal their validated counterparts and survive encode/decode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, NamedTuple

import orjson

from eventjobs.core.clock import add_seconds, format_utc_ms
from eventjobs.core.events import (
    DERIVED_TYPES,
    EVENT_TYPES,
    LINKED_TYPES,
    AttemptFailedEvent,
    AttemptSnoozedEvent,
    AttemptTimedOutEvent,
    CancelledEvent,
    CompletedEvent,
    DeadLetteredEvent,
    DependencyProbeEvent,
    DependencyReopenedEvent,
    DependencyRequestedEvent,
    DependencyResolvedEvent,
    DebouncedEvent,
    DuplicateRejectedEvent,
    EnqueuedEvent,
    Event,
    FailedEvent,
    JobEvent,
    LeaseExpiredEvent,
    RetryScheduledEvent,
    ScheduledEvent,
    SlotReleasedEvent,
    SlotRequestedEvent,
)
from eventjobs.core.flow import debounce_open, runs_again, window_end
from eventjobs.core.ids import derived_event_id
from eventjobs.core.limits import (
    MAX_DEPENDENCY_RESULTS_BYTES,
    MAX_DEPENDENTS,
    MAX_PROBE_HOPS,
    MAX_PROBE_ORIGINS_KEPT,
    MAX_REVIVABLE_DEPENDENTS,
)
from eventjobs.core.options import JobOptionsSpec, backoff_delay_s
from eventjobs.core.slots import owner_id
from eventjobs.core.state import (
    ACCEPTING_STATUSES,
    ACTIVE_STATUSES,
    RECENT_EVENT_IDS,
    TERMINAL_STATUSES,
    DependencyOutcome,
    ErrorInfo,
    JobState,
    JobStatus,
    Workflow,
)

__all__ = ["Decision", "apply", "fold", "replay"]

WAITING = JobStatus.WAITING
PENDING = JobStatus.PENDING
SCHEDULED = JobStatus.SCHEDULED
CLAIMED = JobStatus.CLAIMED
RUNNING = JobStatus.RUNNING
RETRYING = JobStatus.RETRYING
COMPLETED = JobStatus.COMPLETED
CANCELLED = JobStatus.CANCELLED
DEAD_LETTERED = JobStatus.DEAD_LETTERED
DISCARDED = JobStatus.DISCARDED


class Decision(NamedTuple):
    """What ``apply`` decided for one event.

    ``state`` is None, with nothing rejected, when the job is forgotten: its ``finished``
    retention passed, so it leaves the state table (see ``RetentionPassedEvent``).
    """

    state: JobState | None
    derived: tuple[JobEvent, ...] = ()
    rejected: str | None = None
    duplicate: bool = False

    @property
    def accepted(self) -> bool:
        """The event changed the state (neither rejected nor a duplicate)."""
        return self.rejected is None and not self.duplicate


# --------------------------------------------------------------------------------------------
# Building values without re-validation
# --------------------------------------------------------------------------------------------

_new = object.__new__
_set = object.__setattr__
_tuple_new = tuple.__new__  # Decision(...) without the NamedTuple's Python-level __new__
_STATE_FIELDS = frozenset(JobState.model_fields)


def _build(cls: type[Any], data: dict[str, Any], fields: frozenset[str]) -> Any:
    """An instance of a pydantic model from already-valid data (what ``model_construct`` does, faster)."""
    obj = _new(cls)
    _set(obj, "__dict__", data)
    _set(obj, "__pydantic_fields_set__", fields)
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


_DERIVED_CLASSES = tuple(EVENT_TYPES[type_] for type_ in sorted(DERIVED_TYPES | LINKED_TYPES))
_EVENT_FIELDS = {cls: frozenset(cls.model_fields) for cls in _DERIVED_CLASSES}
_TYPE_OF = {cls: cls.model_fields["type"].default for cls in _DERIVED_CLASSES}


def _derive(cls: type[Any], trigger: Event, index: int, actor: str, payload: dict[str, Any]) -> Any:
    """A derived event: deterministic id, the trigger's time, caused by the trigger (``_build`` inlined)."""
    type_ = _TYPE_OF[cls]
    cause = trigger.event_id
    data = {
        "event_id": derived_event_id(cause, type_, index),
        "job_id": trigger.job_id,
        "type": type_,
        "occurred_at": trigger.occurred_at,
        "schema_version": 1,
        "causation_id": cause,
        "actor": actor,
        **payload,
    }
    obj = _new(cls)
    _set(obj, "__dict__", data)
    _set(obj, "__pydantic_fields_set__", _EVENT_FIELDS[cls])
    _set(obj, "__pydantic_extra__", None)
    _set(obj, "__pydantic_private__", None)
    return obj


def _derive_for(cls: type[Any], job_id: str, cause: str, index: int, trigger: Event, actor: str,
                payload: dict[str, Any]) -> Any:
    """A derived event about another job (``LINKED_TYPES``): keyed by ``job_id``, its id derived
    from ``cause`` (not necessarily the trigger: an answer to a dependency request derives from
    the request, whenever it is given), at the trigger's time."""
    type_ = _TYPE_OF[cls]
    data = {
        "event_id": derived_event_id(cause, type_, index),
        "job_id": job_id,
        "type": type_,
        "occurred_at": trigger.occurred_at,
        "schema_version": 1,
        "causation_id": cause,
        "actor": actor,
        **payload,
    }
    return _build(cls, data, _EVENT_FIELDS[cls])


# --------------------------------------------------------------------------------------------
# Outcomes of one event
# --------------------------------------------------------------------------------------------


def _accept(state: JobState, event: Event, data: dict[str, Any], derived: tuple[Any, ...] = ()) -> Decision:
    """Finish a new state: ``data`` is a copy of the old state's fields with this event's changes."""
    ids = state.recent_event_ids
    if derived:
        data["recent_event_ids"] = (*ids, event.event_id, *[d.event_id for d in derived])[-RECENT_EVENT_IDS:]
    else:
        data["recent_event_ids"] = (*ids[1 - RECENT_EVENT_IDS :], event.event_id)
    data["version"] = state.version + 1
    data["updated_at"] = event.occurred_at
    new = _new(JobState)
    _set(new, "__dict__", data)
    _set(new, "__pydantic_fields_set__", _STATE_FIELDS)
    _set(new, "__pydantic_extra__", None)
    _set(new, "__pydantic_private__", None)
    return _tuple_new(Decision, (new, derived, None, False))


def _reject(state: JobState | None, reason: str) -> Decision:
    return _tuple_new(Decision, (state, (), reason, False))


def _duplicate(state: JobState) -> Decision:
    return _tuple_new(Decision, (state, (), None, True))


def _not_accepted(state: JobState, event: Event) -> Decision:
    status = state.status
    if status is DEAD_LETTERED:
        return _reject(
            state,
            f"job is dead_lettered: '{event.type}' changes nothing (only dead_letter_retried or discarded do)",
        )
    if status in TERMINAL_STATUSES:
        return _reject(state, f"job is {status.value} (terminal): '{event.type}' changes nothing")
    allowed = ", ".join(sorted(s.value for s in ACCEPTING_STATUSES.get(event.type, ())))
    return _reject(state, f"'{event.type}' is not accepted while the job is {status.value} (only when: {allowed})")


def _outside_the_active_attempt(state: JobState, event: Any) -> Decision | None:
    """Why an event about an attempt's run does not apply (None: it does): it must be about the
    current attempt, while that attempt is claimed or running, and come from the accepted claim.

    The claim check applies when both the event and the state name a claim: an event without
    ``claim_id`` (written before claim ids existed; ``lease_expired`` has none) and a state whose
    claim was folded before them are checked by attempt and status only, as they always were.
    """
    if event.attempt != state.attempt:
        return _stale_attempt(state, event)
    status = state.status
    if status not in ACTIVE_STATUSES:
        return _not_accepted(state, event)
    claim_id = event.__dict__.get("claim_id")
    if claim_id is not None and claim_id != state.claim_id and state.claim_id is not None:
        return _foreign_claim(state, claim_id)
    return None


def _foreign_claim(state: JobState, claim_id: str) -> Decision:
    return _reject(
        state,
        f"claim {claim_id} is not the accepted claim of attempt {state.attempt} (claim {state.claim_id} "
        f"of worker {state.worker_id}); recorded, no effect",
    )


def _stale_attempt(state: JobState, event: Any) -> Decision:
    return _reject(
        state,
        f"stale attempt {event.attempt}: job is on attempt {state.attempt} ({state.status.value}); recorded, no effect",
    )


# --------------------------------------------------------------------------------------------
# One handler per event type
# --------------------------------------------------------------------------------------------


_SHARED_OPTIONS: dict[JobOptionsSpec, JobOptionsSpec] = {}
_SHARED_OPTIONS_MAX = 4096


def _shared(options: JobOptionsSpec) -> JobOptionsSpec:
    """One instance per distinct options spec (many jobs share a few), so a large state table
    holds fewer objects for the garbage collector to scan. Values are immutable: sharing them
    changes no result. Bounded: past the limit new specs are simply not shared."""
    shared = _SHARED_OPTIONS.get(options)
    if shared is not None:
        return shared
    if len(_SHARED_OPTIONS) < _SHARED_OPTIONS_MAX:
        _SHARED_OPTIONS[options] = options
    return options


def _create(event: EnqueuedEvent, actor: str) -> Decision:
    occurred_at = event.occurred_at
    run_at = event.run_at
    options = _shared(event.options)
    scheduled = run_at is not None and run_at > occurred_at
    expires_at = None
    if options.ttl_s is not None:
        expires_at = add_seconds(run_at if scheduled else occurred_at, options.ttl_s)  # type: ignore[arg-type]  # scheduled implies a run_at
    derived: tuple[Any, ...] = ()
    workflow = None
    status = SCHEDULED if scheduled else PENDING
    if event.depends_on:  # waits for its dependencies first; each is asked for its outcome
        depends_on = tuple(dict.fromkeys(d for d in event.depends_on if d != event.job_id))
        if depends_on:
            workflow = _build(Workflow, {
                **_NO_WORKFLOW, "depends_on": depends_on,
                "on_dependency_failure": event.on_dependency_failure or _NO_WORKFLOW["on_dependency_failure"],
            }, _WORKFLOW_FIELDS)
            derived = tuple(
                _derive_for(DependencyRequestedEvent, dependency, event.event_id, index, event, actor,
                            {"dependent_id": event.job_id})
                for index, dependency in enumerate(depends_on)
            )
            status, scheduled = WAITING, False
    elif scheduled:
        derived = (_derive(ScheduledEvent, event, 0, actor, {"run_at": run_at}),)
    data = {  # every JobState field, in declaration order (a test checks this)
        "job_id": event.job_id,
        "name": event.name,
        "queue": event.queue,
        "priority": event.priority,
        "args": event.args,
        "options": options,
        "status": status,
        "attempt": 0,
        "attempts_started": 0,
        "ready_republishes": 0,
        "max_attempts": options.max_attempts,
        "enqueued_at": occurred_at,
        "run_at": run_at,
        "next_due_at": run_at if scheduled else None,
        "expires_at": expires_at,
        "lease_deadline": None,
        "worker_id": None,
        "claim_id": None,
        "started_at": None,
        "finished_at": None,
        "updated_at": occurred_at,
        "result": None,
        "last_error": None,
        "reason": None,
        "cancel_requested": False,
        "progress_percent": None,
        "progress_message": None,
        "progress_at": None,
        "progress_event_id": None,
        "idempotency_key": event.idempotency_key,
        "parent_job_id": event.parent_job_id,
        "enqueued_event_id": event.event_id,
        "dead_letter_event_id": None,
        "version": 1,
        "recent_event_ids": (event.event_id, *[d.event_id for d in derived])[-RECENT_EVENT_IDS:],
        "workflow": workflow,
    }
    if status is PENDING and options.concurrency is not None:  # runs only once the key's owner grants a slot
        derived = _pending_or_ask(data, event, actor)
        data["recent_event_ids"] = (event.event_id, *[d.event_id for d in derived])[-RECENT_EVENT_IDS:]
    return _tuple_new(Decision, (_build(JobState, data, _STATE_FIELDS), derived, None, False))


def _on_enqueued(state: JobState, event: Any, actor: str) -> Decision:
    if event.event_id == state.enqueued_event_id:
        return _duplicate(state)
    if runs_again(state):  # unique_states: the window's job ended in a status that no longer refuses
        return _create(event, actor)
    if event.options.debounce_s is not None and state.options.debounce_s is not None and debounce_open(state):
        return _debounce(state, event, actor)
    notice = _derive(
        DuplicateRejectedEvent,
        event,
        0,
        actor,
        {"idempotency_key": event.idempotency_key, "duplicate_event_id": event.event_id},
    )
    key = f" (idempotency key {event.idempotency_key!r})" if event.idempotency_key else ""
    reason = f"job {state.job_id} already exists{key}, enqueued by event {state.enqueued_event_id}; duplicate refused"
    end = window_end(state)
    if end is not None:
        why = "it has started" if state.options.debounce_s is not None else "one job per key and window"
        reason = (f"job {state.job_id} won the window of idempotency key {event.idempotency_key!r} until "
                  f"{format_utc_ms(end)} ({why}); enqueue {event.event_id} refused")
    return _tuple_new(Decision, (state, (notice,), reason, False))


def _debounce(state: JobState, event: Any, actor: str) -> Decision:
    """Another enqueue of a debounced job's window, before the job started: it takes the new args
    and starts ``debounce`` after this enqueue (never earlier than it was to start)."""
    run_at = add_seconds(event.occurred_at, state.options.debounce_s)  # type: ignore[arg-type]  # set: only a debounced job gets here
    if state.run_at is not None and state.run_at > run_at:
        run_at = state.run_at
    data = state.__dict__.copy()
    data["args"] = event.args
    data["run_at"] = run_at
    data["status"] = SCHEDULED
    data["next_due_at"] = run_at
    if state.options.ttl_s is not None:
        data["expires_at"] = add_seconds(run_at, state.options.ttl_s)
    if state.ready_republishes:
        data["ready_republishes"] = 0
    return _accept(state, event, data, (_derive(DebouncedEvent, event, 0, actor, {"run_at": run_at}),))


def _on_due(state: JobState, event: Any, actor: str) -> Decision:
    status = state.status
    if status is not SCHEDULED and status is not RETRYING and status is not PENDING:
        return _not_accepted(state, event)
    if event.attempt != state.attempt:
        return _stale_attempt(state, event)
    expected = "run_at" if status is SCHEDULED else "retry" if status is RETRYING else "republish"
    if event.timer != expected:
        return _reject(state, f"a '{event.timer}' timer does not apply to a {status.value} job (expects '{expected}')")
    if status is SCHEDULED and state.options.debounce_s is not None and state.next_due_at is not None \
            and event.occurred_at < state.next_due_at:
        return _reject(state, f"run_at timer fired at {format_utc_ms(event.occurred_at)}, before the job's start at "
                              f"{format_utc_ms(state.next_due_at)} (a debounce put it back): stale, no effect")
    data = state.__dict__.copy()
    if status is PENDING:  # the ready record waited long enough: effects publish it again
        if event.sequence != state.ready_republishes:
            return _reject(
                state,
                f"republish timer {event.sequence} of attempt {state.attempt} is stale: its ready record was "
                f"re-published {state.ready_republishes} time(s); recorded, no effect",
            )
        data["ready_republishes"] = state.ready_republishes + 1
        return _accept(state, event, data)
    data["next_due_at"] = None
    if state.ready_republishes:
        data["ready_republishes"] = 0  # counted per attempt
    return _accept(state, event, data, _pending_or_ask(data, event, actor))


def _claim(state: JobState, event: Any) -> Decision | dict[str, Any]:
    """A claim of the current attempt (a ``claimed``, or an ``attempt_started`` that is also the
    claim): the new state's fields, or why it is refused. Only a pending job is claimed, once per
    attempt: the first claim folded wins, and the claim is the event's own id."""
    if event.attempt != state.attempt:
        return _stale_attempt(state, event)
    status = state.status
    if status is not PENDING:
        if status in ACTIVE_STATUSES:
            return _reject(state, f"attempt {state.attempt} is already claimed by {state.worker_id}")
        return _not_accepted(state, event)
    if event.lease_deadline <= event.occurred_at:
        return _reject(state, "lease_deadline is not after occurred_at: the lease would already be over")
    data = state.__dict__.copy()
    data["status"] = CLAIMED
    data["worker_id"] = event.worker_id
    data["claim_id"] = event.event_id  # the worker's attempt events must name this claim
    data["lease_deadline"] = event.lease_deadline
    data["attempts_started"] = state.attempts_started + 1
    if state.expires_at is not None:
        data["expires_at"] = None  # started in time: the ttl only limits the wait for the first start
    if state.progress_at is not None:
        data["progress_percent"] = data["progress_message"] = data["progress_at"] = data["progress_event_id"] = None
    return data


def _on_claimed(state: JobState, event: Any, actor: str) -> Decision:
    data = _claim(state, event)
    if isinstance(data, Decision):  # refused: it says why
        return data
    return _accept(state, event, data)


def _on_claiming_start(state: JobState, event: Any) -> Decision:
    """An ``attempt_started`` with ``lease_deadline``: the claim and the start in one event, so
    pending -> running, with every check of a claim (the start needs no other)."""
    if event.claim_id is not None and event.claim_id != event.event_id:
        return _reject(state, f"a start that is also the claim names itself as the claim, not {event.claim_id}")
    data = _claim(state, event)
    if isinstance(data, Decision):  # refused: it says why
        return data
    data["status"] = RUNNING
    data["started_at"] = event.occurred_at
    return _accept(state, event, data)


def _on_attempt_started(state: JobState, event: Any, actor: str) -> Decision:
    if event.lease_deadline is not None:
        return _on_claiming_start(state, event)
    if event.attempt != state.attempt:
        return _stale_attempt(state, event)
    if state.status is not CLAIMED:
        if state.status is PENDING:
            return _reject(state, f"attempt {state.attempt} is not claimed: a start without lease_deadline follows "
                                  "an accepted claimed")
        return _not_accepted(state, event)
    claim_id = event.claim_id
    if claim_id is not None and claim_id != state.claim_id and state.claim_id is not None:
        return _foreign_claim(state, claim_id)
    if event.worker_id != state.worker_id:
        return _reject(state, f"attempt {state.attempt} is claimed by {state.worker_id}, not {event.worker_id}")
    data = state.__dict__.copy()
    data["status"] = RUNNING
    data["started_at"] = event.occurred_at
    if state.workflow is not None and state.workflow.rate_reasked:  # a run began: a later one may ask again
        data["workflow"] = _changed(state.workflow, rate_reasked=False)
    return _accept(state, event, data)


def _on_progress(state: JobState, event: Any, actor: str) -> Decision:
    refused = _outside_the_active_attempt(state, event)
    if refused is not None:
        return refused
    last_at = state.progress_at
    if last_at is not None and (event.occurred_at, event.event_id) <= (last_at, state.progress_event_id):
        return _reject(state, "progress older than the last recorded one")
    data = state.__dict__.copy()
    data["progress_percent"] = event.percent
    data["progress_message"] = event.message
    data["progress_at"] = event.occurred_at
    data["progress_event_id"] = event.event_id
    return _accept(state, event, data)


def _on_heartbeat(state: JobState, event: Any, actor: str) -> Decision:
    refused = _outside_the_active_attempt(state, event)
    if refused is not None:
        return refused
    if state.lease_deadline is not None and event.lease_deadline <= state.lease_deadline:
        return _reject(state, "heartbeat does not extend the lease (deadline not later than the current one)")
    data = state.__dict__.copy()
    data["lease_deadline"] = event.lease_deadline
    return _accept(state, event, data)


def _on_attempt_succeeded(state: JobState, event: Any, actor: str) -> Decision:
    refused = _outside_the_active_attempt(state, event)
    if refused is not None:
        return refused
    completed = _derive(CompletedEvent, event, 0, actor, {"attempt": event.attempt, "result": event.result})
    data = state.__dict__.copy()
    data["status"] = COMPLETED
    data["result"] = event.result
    data["finished_at"] = event.occurred_at
    data["lease_deadline"] = None
    if state.workflow is not None and state.workflow.dependencies:
        data["workflow"] = _without_dependency_results(state.workflow)  # its own result takes their room
    return _accept(state, event, data, (completed,))


_ERROR_FIELDS = frozenset(ErrorInfo.model_fields)


def _error(error_type: str, message: str, traceback: str) -> ErrorInfo:
    data = {"error_type": error_type, "message": message, "traceback": traceback}
    return _build(ErrorInfo, data, _ERROR_FIELDS)  # type: ignore[no-any-return]  # _build returns the model it is given


def _failure_error(state: JobState, event: Any) -> tuple[ErrorInfo, bool, float | None]:
    """(error, retryable, worker-chosen delay) for the three ways an attempt can fail."""
    if type(event) is AttemptFailedEvent:
        return _error(event.error_type, event.message, event.traceback), event.retryable, event.retry_delay_s
    if type(event) is AttemptTimedOutEvent:
        message = f"attempt {event.attempt} timed out after {event.timeout_s:g} s"
        return _error("TimeoutError", message, ""), True, None
    if type(event) is AttemptSnoozedEvent:
        message = f"attempt {event.attempt} snoozed once more than max_snoozes ({state.options.max_snoozes}) allows"
        return _error("SnoozeLimitExceeded", message, ""), True, None
    deadline = format_utc_ms(event.lease_deadline)
    message = f"lease of worker {state.worker_id} on attempt {event.attempt} expired at {deadline}"
    return _error("LeaseExpired", message, ""), True, None


def _on_attempt_ended_badly(state: JobState, event: Any, actor: str) -> Decision:
    """attempt_failed, attempt_timed_out, lease_expired: retry, dead-letter, or finish a cancel."""
    refused = _outside_the_active_attempt(state, event)
    if refused is not None:
        return refused
    attempt = state.attempt
    if type(event) is LeaseExpiredEvent and event.lease_deadline != state.lease_deadline:
        return _reject(state, "lease was extended since this timer was set: the worker is still alive")
    error, retryable, delay_s = _failure_error(state, event)
    now = event.occurred_at
    data = state.__dict__.copy()
    data["last_error"] = error
    data["lease_deadline"] = None

    if state.cancel_requested:
        cancelled = _derive(CancelledEvent, event, 0, actor, {"reason": state.reason or "cancel requested"})
        data["status"] = CANCELLED
        data["finished_at"] = now
        return _accept(state, event, data, (cancelled,))

    if retryable and attempt + 1 < state.max_attempts:
        if delay_s is None:
            delay_s = backoff_delay_s(state.options.backoff, attempt, state.job_id)
        delay_s = round(delay_s * 1000) / 1000  # whole milliseconds, like every time on the wire
        due_at = add_seconds(now, delay_s)
        scheduled = _derive(RetryScheduledEvent, event, 0, actor, {"attempt": attempt + 1, "due_at": due_at, "delay_s": delay_s})
        data["status"] = RETRYING
        data["attempt"] = attempt + 1
        data["next_due_at"] = due_at
        return _accept(state, event, data, (scheduled,))

    if retryable:
        reason = f"attempts exhausted: {attempt - state.budget_start + 1} of {state.options.max_attempts} failed"
    else:
        reason = f"not retryable: {error.error_type}"
    error_fields = {"error_type": error.error_type, "message": error.message, "traceback": error.traceback}
    failed = _derive(FailedEvent, event, 0, actor, {"attempt": attempt, "reason": reason, **error_fields})
    dead = _derive(DeadLetteredEvent, event, 1, actor, {"reason": reason, **error_fields})
    data["status"] = DEAD_LETTERED
    data["finished_at"] = now
    data["reason"] = reason
    data["dead_letter_event_id"] = dead.event_id
    return _accept(state, event, data, (failed, dead))


def _on_cancel_requested(state: JobState, event: Any, actor: str) -> Decision:
    status = state.status
    reason = event.reason or "cancel requested"
    if status is PENDING or status is SCHEDULED or status is RETRYING or status is WAITING:
        cancelled = _derive(CancelledEvent, event, 0, actor, {"reason": reason})
        data = state.__dict__.copy()
        data["status"] = CANCELLED
        data["finished_at"] = event.occurred_at
        data["reason"] = reason
        data["next_due_at"] = None
        return _accept(state, event, data, (cancelled,))
    if status in ACTIVE_STATUSES:
        if state.cancel_requested:
            return _reject(state, "cancel already requested; the running attempt decides when it ends")
        data = state.__dict__.copy()
        data["cancel_requested"] = True
        data["reason"] = reason
        return _accept(state, event, data)
    return _not_accepted(state, event)


def _on_expired(state: JobState, event: Any, actor: str) -> Decision:
    status = state.status
    if status is not PENDING and status is not SCHEDULED and status is not WAITING:
        return _not_accepted(state, event)
    if state.expires_at is None or state.attempts_started:
        return _reject(state, "no ttl is armed for this job (none set, already started, or retried from the dead-letter queue)")
    reason = f"expired: ttl of {state.options.ttl_s or 0.0:g} s passed before the job started"
    last = state.last_error
    dead = _derive(
        DeadLetteredEvent,
        event,
        0,
        actor,
        {
            "reason": reason,
            "error_type": last.error_type if last else "",
            "message": last.message if last else "",
            "traceback": last.traceback if last else "",
        },
    )
    data = state.__dict__.copy()
    data["status"] = DEAD_LETTERED
    data["finished_at"] = event.occurred_at
    data["reason"] = reason
    data["next_due_at"] = None
    data["dead_letter_event_id"] = dead.event_id
    return _accept(state, event, data, (dead,))


def _on_retention_passed(state: JobState, event: Any, actor: str) -> Decision:
    if event.attempt != state.attempt:
        return _stale_attempt(state, event)
    finished_at = state.finished_at
    if finished_at is not None and event.due_at <= finished_at:
        # armed for an earlier finish of this job id (an idempotency key reused after a purge)
        return _reject(state, f"retention due at {format_utc_ms(event.due_at)} was armed before the job last finished")
    status = state.status
    if event.scope == "dead_letter":
        if status is not DEAD_LETTERED:
            return _not_accepted(state, event)
        data = state.__dict__.copy()
        data["status"] = DISCARDED
        data["finished_at"] = event.occurred_at
        data["reason"] = "discarded: its dead-letter retention passed without a retry"
        _no_revival(state, data)
        return _accept(state, event, data)
    if status is DEAD_LETTERED or status not in TERMINAL_STATUSES:
        return _reject(state, f"job is {status.value}: only a completed, cancelled or discarded job is forgotten")
    if state.workflow is not None and state.workflow.dependents:
        return _reject(state, f"{len(state.workflow.dependents)} dependent job(s) still wait for its outcome")
    return _FORGET


_FORGET = _tuple_new(Decision, (None, (), None, False))


def _dead_letter_entry_mismatch(state: JobState, event: Any) -> Decision | None:
    if state.status is not DEAD_LETTERED:
        return _not_accepted(state, event)
    if event.causation_id != state.dead_letter_event_id:
        return _reject(
            state,
            f"'{event.type}' must name the dead-letter entry it acts on: causation_id is {event.causation_id!r}, "
            f"the job's dead_lettered event is {state.dead_letter_event_id!r}",
        )
    return None


def _on_dead_letter_retried(state: JobState, event: Any, actor: str) -> Decision:
    refusal = _dead_letter_entry_mismatch(state, event)
    if refusal is not None:
        return refusal
    attempt = state.attempt + 1
    data = state.__dict__.copy()
    data.update(
        status=PENDING,
        attempt=attempt,
        max_attempts=attempt + state.options.max_attempts,
        lease_deadline=None,
        worker_id=None,
        claim_id=None,
        ready_republishes=0,
        next_due_at=None,
        expires_at=None,
        finished_at=None,
        result=None,
        reason=None,
        cancel_requested=False,
        progress_percent=None,
        progress_message=None,
        progress_at=None,
        progress_event_id=None,
        dead_letter_event_id=None,
    )
    workflow = state.workflow
    if workflow is None or not workflow.depends_on:
        data["workflow"] = workflow
        derived = _pending_or_ask(data, event, actor)
        if workflow is None:
            return _accept(state, event, data, derived)
    else:  # one that expired while waiting waits again for the dependencies that have not answered
        derived = _after_answers(data, workflow, event, actor)
    status = data["status"]
    if status is not CANCELLED:  # it runs again: the dependents its failure answered may wait for it again
        reopens, workflow = _reopen_dependents(state.job_id, data["workflow"], event, actor)
        data["workflow"] = workflow
        derived += reopens
        if status is WAITING:
            derived += _probes(state.enqueued_event_id, workflow, [state.job_id], None, event, actor)
    return _accept(state, event, data, derived)


def _on_discarded(state: JobState, event: Any, actor: str) -> Decision:
    refusal = _dead_letter_entry_mismatch(state, event)
    if refusal is not None:
        return refusal
    data = state.__dict__.copy()
    data["status"] = DISCARDED
    data["finished_at"] = event.occurred_at
    data["reason"] = event.reason or "discarded"
    _no_revival(state, data)
    return _accept(state, event, data)


def _no_revival(state: JobState, data: dict[str, Any]) -> None:
    """The job will not run again (discarded): the dependents it answered with its failure stay cancelled."""
    workflow = state.workflow
    if workflow is not None and workflow.revivable:
        data["workflow"] = _slim(_changed(workflow, revivable={}, dependent_rounds={}))


def _on_derived(state: JobState, event: Any, actor: str) -> Decision:
    """An event only the processor writes: already reflected in the state if it is a derivation."""
    cause = event.causation_id
    if cause is not None:
        for index in range(2):
            if event.event_id == derived_event_id(cause, event.type, index):
                return _duplicate(state)
    return _reject(
        state,
        f"'{event.type}' is written only by the processor as a consequence of another event; "
        f"event {event.event_id} is not such a derivation",
    )


# ---- workflows: dependencies across jobs, and snoozes -----------------------------------------
#
# A dependency is a conversation between the lanes of two jobs, in linked events (LINKED_TYPES):
# the dependent's request, the dependency's answer (of a round: 0, then one more each time the
# dependency reopens it), the dependency's reopen when it runs again after a failure answer, and
# the cycle probes that waiting jobs pass along their waits. Every one is keyed by the job it is
# about, its id derived from its cause, so a repeat is recognised wherever it arrives.

_WORKFLOW_FIELDS = frozenset(Workflow.model_fields)
_OUTCOME_FIELDS = frozenset(DependencyOutcome.model_fields)
_NO_WORKFLOW: dict[str, Any] = Workflow().__dict__  # the defaults (read only: copied before any change)


def _workflow(state: JobState, **changes: Any) -> Workflow:
    """The state's workflow (or an empty one) with ``changes``."""
    current = state.workflow
    data = {**(_NO_WORKFLOW if current is None else current.__dict__), **changes}
    return _build(Workflow, data, _WORKFLOW_FIELDS)  # type: ignore[no-any-return]  # _build returns the model it is given


def _changed(workflow: Workflow, **changes: Any) -> Workflow:
    return _build(Workflow, {**workflow.__dict__, **changes}, _WORKFLOW_FIELDS)  # type: ignore[no-any-return]  # _build returns the model it is given


def _slim(workflow: Workflow) -> Workflow | None:
    """None for a workflow that holds nothing any more (a plain job's state carries none)."""
    return None if workflow.__dict__ == _NO_WORKFLOW else workflow


def _without_dependency_results(workflow: Workflow) -> Workflow:
    data = workflow.__dict__.copy()
    data["dependencies"] = {
        job_id: _build(DependencyOutcome, {"status": o.status, "result": None, "result_omitted": o.result_omitted},
                       _OUTCOME_FIELDS)
        for job_id, o in workflow.dependencies.items()
    }
    data["probes"] = {}  # it will not wait again
    return _build(Workflow, data, _WORKFLOW_FIELDS)  # type: ignore[no-any-return]  # _build returns the model it is given


def _request_id(enqueued_event_id: str, workflow: Workflow, dependency_id: str) -> str:
    """The ``dependency_requested`` a job sent ``dependency_id`` (derived from its ``enqueued``)."""
    return derived_event_id(enqueued_event_id, "dependency_requested", workflow.depends_on.index(dependency_id))


def _answer_id(request_id: str, round_: int) -> str:
    """The id of the answer of round ``round_`` to the request ``request_id``."""
    return derived_event_id(request_id, "dependency_resolved", round_)


def _awaited_answer(enqueued_event_id: str, workflow: Workflow, dependency_id: str) -> str:
    """The answer a job waits for from ``dependency_id``: to its request, of the current round."""
    return _answer_id(_request_id(enqueued_event_id, workflow, dependency_id), workflow.rounds.get(dependency_id, 0))


def _owed_answer(workflow: Workflow | None, dependent_id: str) -> str | None:
    """The answer a job owes ``dependent_id``, which it holds as waiting for it (None: it holds no such wait)."""
    request = workflow.dependents.get(dependent_id) if workflow is not None else None
    return None if request is None else _answer_id(request, workflow.dependent_rounds.get(dependent_id, 0))  # type: ignore[union-attr]  # a request implies a workflow


def _revivable(status: JobStatus, workflow: Workflow | None) -> bool:
    """Ended, but may run again: dead-lettered (an operator's retry) or cancelled by a dependency (its reopen)."""
    return status is DEAD_LETTERED or (status is CANCELLED and workflow is not None and workflow.cancelled_by is not None)


def _answer(dependency: JobState | None, dependency_id: str, dependent_id: str, request_id: str, trigger: Event,
            actor: str, outcome: str, round_: int = 0) -> Any:
    """The ``dependency_resolved`` of round ``round_`` answering the request ``request_id`` (same id whenever it
    is given)."""
    result = dependency.result if dependency is not None and outcome == "completed" else None
    return _derive_for(DependencyResolvedEvent, dependent_id, request_id, round_, trigger, actor,
                       {"dependency_id": dependency_id, "outcome": outcome, "result": result})


def _reopen(dependency_id: str, dependent_id: str, answer_id: str, trigger: Event, actor: str) -> Any:
    """The ``dependency_reopened`` that takes back the failure answer ``answer_id`` (same id whenever it is given)."""
    return _derive_for(DependencyReopenedEvent, dependent_id, answer_id, 0, trigger, actor, {"dependency_id": dependency_id})


def _probes(enqueued_event_id: str, workflow: Workflow, path: list[str], origin: str | None, trigger: Event,
            actor: str) -> tuple[Any, ...]:
    """A cycle probe with ``path`` to each dependency the (waiting) job still waits for and that is not on the path
    (but for its first job: reaching that one closes the cycle). Each is keyed by the dependency, its id derived
    from the trigger and the dependency's place in ``depends_on``. ``origin`` None: the job starts a probe of its
    own (``path`` is just the job), whose origin is the wait each probe checks."""
    on_path = path[1:]
    probes = []
    for index, dependency in enumerate(workflow.depends_on):
        if dependency in workflow.dependencies or dependency in on_path:
            continue
        via = _awaited_answer(enqueued_event_id, workflow, dependency)
        probes.append(_derive_for(DependencyProbeEvent, dependency, trigger.event_id, index, trigger, actor,
                                  {"path": path, "origin": origin or via, "via": via}))
    return tuple(probes)


def _reopen_dependents(job_id: str, workflow: Workflow, trigger: Event, actor: str) -> tuple[tuple[Any, ...], Workflow]:
    """The job runs again after a failure answer: ask every dependent it gave one to wait for it again, and hold
    them as dependents once more (each owed the next round's answer)."""
    revivable = workflow.revivable
    if not revivable:
        return (), workflow
    rounds = dict(workflow.dependent_rounds)
    reopens = []
    for dependent_id, request_id in revivable.items():
        round_ = rounds.get(dependent_id, 0)
        reopens.append(_reopen(job_id, dependent_id, _answer_id(request_id, round_), trigger, actor))
        rounds[dependent_id] = round_ + 1
    return tuple(reopens), _changed(workflow, dependents={**workflow.dependents, **revivable}, revivable={},
                                    dependent_rounds=rounds)


def _without(mapping: dict[str, Any], key: str) -> dict[str, Any]:
    return mapping if key not in mapping else {k: v for k, v in mapping.items() if k != key}


def _on_dependency_requested(state: JobState, event: Any, actor: str) -> Decision:
    status = state.status
    workflow = state.workflow
    dependent_id = event.dependent_id
    if status in TERMINAL_STATUSES:  # ended already: answer now
        if not _revivable(status, workflow):  # for good: nothing to remember
            answer = _answer(state, state.job_id, dependent_id, event.event_id, event, actor, status.value)
            return _tuple_new(Decision, (state, (answer,), None, False))
        revivable = workflow.revivable if workflow is not None else {}
        rounds = workflow.dependent_rounds if workflow is not None else {}
        known = revivable.get(dependent_id) == event.event_id
        round_ = rounds.get(dependent_id, 0) if known else 0
        answer = _answer(state, state.job_id, dependent_id, event.event_id, event, actor, status.value, round_)
        if known or (dependent_id not in revivable and len(revivable) >= MAX_REVIVABLE_DEPENDENTS):
            return _tuple_new(Decision, (state, (answer,), None, False))  # remembered already, or no room: answered
        data = state.__dict__.copy()  # remembered, to be reopened if this job runs again
        data["workflow"] = _workflow(state, revivable={**revivable, dependent_id: event.event_id},
                                     dependent_rounds=_without(rounds, dependent_id))
        return _accept(state, event, data, (answer,))
    dependents = workflow.dependents if workflow is not None else {}
    if dependents.get(dependent_id) == event.event_id:
        return _duplicate(state)
    if dependent_id not in dependents and len(dependents) >= MAX_DEPENDENTS:
        answer = _answer(state, state.job_id, dependent_id, event.event_id, event, actor, "refused")
        reason = f"job {state.job_id} already has {len(dependents)} dependents (MAX_DEPENDENTS); answered refused"
        return _tuple_new(Decision, (state, (answer,), reason, False))
    data = state.__dict__.copy()
    rounds = workflow.dependent_rounds if workflow is not None else {}
    recorded = _workflow(state, dependents={**dependents, dependent_id: event.event_id},
                         dependent_rounds=_without(rounds, dependent_id))
    data["workflow"] = recorded
    probes: tuple[Any, ...] = ()
    if status is WAITING and event.occurred_at <= state.enqueued_at:
        # a cycle through the dependent would pass through this job: look for it. Only for a dependent
        # enqueued no later than this job (the request carries its enqueue time): around a cycle the
        # enqueue times cannot all fall, so every cycle has such an edge, and its probe goes round
        # (see docs/architecture.md); a dependent enqueued after its dependencies, as App.enqueue
        # makes them, starts none
        probes = _probes(state.enqueued_event_id, recorded, [dependent_id, state.job_id], _answer_id(event.event_id, 0),
                         event, actor)
    return _accept(state, event, data, probes)


def _answer_dependents(decision: Decision, trigger: Event, actor: str) -> Decision:
    """The job just ended: answer every job waiting for it, and forget them (but for a job that may run again:
    it remembers those it answered, to reopen their answer then)."""
    state: JobState = decision.state  # type: ignore[assignment]  # called for a job that just ended: it has a state
    workflow = state.workflow
    assert workflow is not None
    status = state.status
    rounds = workflow.dependent_rounds
    answers = tuple(
        _answer(state, state.job_id, dependent_id, request_id, trigger, actor, status.value, rounds.get(dependent_id, 0))
        for dependent_id, request_id in workflow.dependents.items()
    )
    revivable = workflow.revivable
    if _revivable(status, workflow):
        revivable = dict(list({**revivable, **workflow.dependents}.items())[:MAX_REVIVABLE_DEPENDENTS])
    kept_rounds = {dependent_id: n for dependent_id, n in rounds.items() if dependent_id in revivable}
    data = state.__dict__.copy()
    data["workflow"] = _slim(_changed(workflow, dependents={}, revivable=revivable, dependent_rounds=kept_rounds))
    return _tuple_new(Decision, (_build(JobState, data, _STATE_FIELDS), (*decision.derived, *answers), None, False))


def _dependency_failure(dependency_id: str, outcome: str) -> str:
    if outcome == "missing":
        return f"dependency {dependency_id} does not exist (never enqueued, or forgotten after its retention)"
    if outcome == "refused":
        return f"dependency {dependency_id} has too many dependents (MAX_DEPENDENTS) to wait for it"
    return f"dependency {dependency_id} ended {outcome}"


def _first_failure(workflow: Workflow) -> str | None:
    """The first dependency (in ``depends_on`` order) whose recorded answer cancels the job, if any."""
    if workflow.on_dependency_failure != "cancel":
        return None
    answered = workflow.dependencies
    for dependency_id in workflow.depends_on:
        outcome = answered.get(dependency_id)
        if outcome is not None and outcome.status != "completed":
            return dependency_id
    return None


#: Failure answers a dependency may take back (it can run again: a dead-lettered one, or one cancelled by
#: its own dependency); missing, refused and discarded are final.
_REOPENABLE = frozenset({"dead_lettered", "cancelled"})


def _cancelled_by(workflow: Workflow, failed: str) -> str | None:
    """Whom a job cancelled by the failure of ``failed`` names as its cause: ``failed``, if every failure it holds
    may be reopened (else nothing can make it wait again, and it is cancelled for good)."""
    if any(o.status != "completed" and o.status not in _REOPENABLE for o in workflow.dependencies.values()):
        return None
    return failed


def _after_answers(data: dict[str, Any], workflow: Workflow, event: Event, actor: str) -> tuple[Any, ...]:
    """Move the job (``data``) where the answers recorded in ``workflow`` put it, as the last answer would: cancelled
    by a failure (unless it runs anyway), waiting while some are missing, else pending, or scheduled if its run_at
    is still ahead. Returns what that derives."""
    now = event.occurred_at
    failed = _first_failure(workflow)
    if failed is not None:
        reason = _dependency_failure(failed, workflow.dependencies[failed].status)
        data.update(status=CANCELLED, finished_at=now, reason=reason, next_due_at=None,
                    workflow=_changed(workflow, cancelled_by=_cancelled_by(workflow, failed)))
        return (_derive(CancelledEvent, event, 0, actor, {"reason": reason}),)
    data["workflow"] = workflow
    if len(workflow.dependencies) < len(workflow.depends_on):
        data["status"] = WAITING
        return ()
    run_at = data["run_at"]
    if run_at is not None and run_at > now:
        data["status"] = SCHEDULED
        data["next_due_at"] = run_at
        return (_derive(ScheduledEvent, event, 0, actor, {"run_at": run_at}),)
    return _pending_or_ask(data, event, actor)


def _on_dependency_resolved(state: JobState, event: Any, actor: str) -> Decision:
    workflow = state.workflow
    dependency_id = event.dependency_id
    if workflow is None or dependency_id not in workflow.depends_on:
        return _reject(state, f"job {state.job_id} does not depend on {dependency_id}")
    if dependency_id in workflow.dependencies:
        return _duplicate(state)
    status = state.status
    waiting = status is WAITING
    if not waiting and not _revivable(status, workflow):
        return _not_accepted(state, event)
    request_id = _request_id(state.enqueued_event_id, workflow, dependency_id)
    if event.causation_id != request_id:
        return _reject(state, f"answers request {event.causation_id}, not this job's request {request_id}")
    round_ = workflow.rounds.get(dependency_id, 0)
    if event.event_id != _answer_id(request_id, round_):
        return _reject(state, f"answer {event.event_id} is not the round {round_} answer to request {request_id} "
                              f"(the dependency reopened its earlier answer)")
    outcome = event.outcome
    result, omitted = event.result, False
    if result is not None:
        kept = sum(len(orjson.dumps(o.result)) for o in workflow.dependencies.values() if o.result is not None)
        if kept + len(orjson.dumps(result)) > MAX_DEPENDENCY_RESULTS_BYTES:
            result, omitted = None, True
    recorded = _build(DependencyOutcome, {"status": outcome, "result": result, "result_omitted": omitted}, _OUTCOME_FIELDS)
    answered = _changed(workflow, dependencies={**workflow.dependencies, dependency_id: recorded})
    data = state.__dict__.copy()
    data["workflow"] = answered
    if not waiting:  # dead-lettered, or cancelled by another dependency: kept for a retry or a reopen
        return _accept(state, event, data)
    return _accept(state, event, data, _after_answers(data, answered, event, actor))


def _on_dependency_reopened(state: JobState, event: Any, actor: str) -> Decision:
    status = state.status
    workflow = state.workflow
    if status is not CANCELLED and status is not DEAD_LETTERED:
        return _not_accepted(state, event)
    dependency_id = event.dependency_id
    if workflow is None or dependency_id not in workflow.depends_on:
        return _reject(state, f"job {state.job_id} does not depend on {dependency_id}")
    held = workflow.dependencies.get(dependency_id)
    if held is None or held.status == "completed" \
            or event.causation_id != _awaited_answer(state.enqueued_event_id, workflow, dependency_id):
        return _reject(state, f"job {state.job_id} holds no failure answer {event.causation_id} of {dependency_id} "
                              f"to reopen")
    if workflow.on_dependency_failure != "cancel":
        return _reject(state, f"job {state.job_id} runs whatever its dependencies' outcome (on_dependency_failure "
                              f"run): a reopened dependency changes nothing")
    if not _revivable(status, workflow):
        return _reject(state, f"job {state.job_id} was cancelled for another reason: a reopened dependency changes nothing")
    reopened = _changed(
        workflow,
        dependencies={k: v for k, v in workflow.dependencies.items() if k != dependency_id},
        rounds={**workflow.rounds, dependency_id: workflow.rounds.get(dependency_id, 0) + 1},
    )
    data = state.__dict__.copy()
    data["workflow"] = reopened
    if status is DEAD_LETTERED:  # a retry will find it waiting for the dependency's next answer
        return _accept(state, event, data)
    failed = _first_failure(reopened)
    if failed is not None:  # still cancelled, by another dependency's failure
        data["workflow"] = _changed(reopened, cancelled_by=_cancelled_by(reopened, failed))
        data["reason"] = _dependency_failure(failed, reopened.dependencies[failed].status)
        return _accept(state, event, data)
    # waits again, as after a dead-letter retry: its ttl no longer applies
    data.update(status=WAITING, finished_at=None, reason=None, expires_at=None, next_due_at=None)
    reopens, waiting = _reopen_dependents(state.job_id, _changed(reopened, cancelled_by=None), event, actor)
    data["workflow"] = waiting
    probes = _probes(state.enqueued_event_id, waiting, [state.job_id], None, event, actor)
    return _accept(state, event, data, (*reopens, *probes))


def _on_dependency_probe(state: JobState, event: Any, actor: str) -> Decision:
    if state.status is not WAITING:
        return _not_accepted(state, event)
    workflow: Workflow = state.workflow  # type: ignore[assignment]  # a waiting job has one
    path = event.path
    job_id = state.job_id
    if event.via != _owed_answer(workflow, path[-1]):
        return _reject(state, f"job {path[-1]} does not wait for this job by the request the probe names "
                              f"(answered, or asked again since): stale probe")
    if path[0] == job_id:
        first = path[1]
        if first not in workflow.depends_on or first in workflow.dependencies \
                or event.origin != _awaited_answer(state.enqueued_event_id, workflow, first):
            return _reject(state, f"this job no longer waits for {first} by the request the probe names: stale probe")
        reason = f"dependency cycle: {' → '.join(path)} → {job_id}"
        data = state.__dict__.copy()
        data.update(status=CANCELLED, finished_at=event.occurred_at, reason=reason)
        return _accept(state, event, data, (_derive(CancelledEvent, event, 0, actor, {"reason": reason}),))
    if job_id in path:
        return _reject(state, "this job is on the probe's path already: that cycle does not pass its first job "
                              "(the cycle's own probes find it)")
    hops = len(path)
    if hops >= MAX_PROBE_HOPS:
        return _reject(state, f"the probe passed {hops} jobs (MAX_PROBE_HOPS): dropped")
    origin = event.origin
    seen = workflow.probes.get(origin)
    if seen is not None and seen <= hops:
        return _reject(state, f"this job forwarded the probe of {origin} already, by a path of {seen}")
    probes = {k: v for k, v in workflow.probes.items() if k != origin}
    probes[origin] = hops
    if len(probes) > MAX_PROBE_ORIGINS_KEPT:
        probes = dict(list(probes.items())[-MAX_PROBE_ORIGINS_KEPT:])
    data = state.__dict__.copy()
    data["workflow"] = _changed(workflow, probes=probes)
    return _accept(state, event, data, _probes(state.enqueued_event_id, workflow, [*path, job_id], origin, event, actor))


# ---- concurrency limits: slots of a key, asked of and given back to the key's owner --------------
#
# A limited job asks its key's owner (``eventjobs.core.slots``) for a slot each time it would become
# pending, and waits meanwhile; the grant makes it pending. When it leaves that attempt (terminal,
# retry, snooze, cancel, expiry) ``apply`` derives the release. Both are linked events keyed by the
# owner, their ids derived from the request, which is derived from the job's enqueued and attempt.

#: Statuses in which a limited job still waits for, or holds, the slot of its current request.
_HOLDING = (WAITING, PENDING, CLAIMED, RUNNING)


def _ask_slot(options: JobOptionsSpec, job_id: str, enqueued_event_id: str, attempt: int, trigger: Event,
              actor: str) -> Any:
    """The ``slot_requested`` of ``attempt`` (same id whenever it is derived)."""
    limit = options.concurrency
    assert limit is not None
    return _derive_for(SlotRequestedEvent, owner_id(limit.limit, limit.key), enqueued_event_id, attempt, trigger, actor,
                       {"requester_id": job_id, "attempt": attempt, "limit": limit.limit, "key": limit.key,
                        "max": limit.max, "strategy": limit.strategy, "rate": limit.rate, "burst": limit.burst})


def _pending_or_ask(data: dict[str, Any], event: Event, actor: str) -> tuple[Any, ...]:
    """The job (``data``) becomes pending, or, if it has a limit, waits for a slot instead: returns
    the request (or nothing). A job whose grant held it back for the rate (scheduled until its
    start) holds its grant already: it becomes pending."""
    data["status"] = PENDING
    options = data["options"]
    if options.concurrency is None:
        return ()
    current = data["workflow"]
    if current is not None and current.slot_request is not None and current.slot_granted:
        return ()
    request = _ask_slot(options, data["job_id"], data["enqueued_event_id"], data["attempt"], event, actor)
    base = _NO_WORKFLOW if current is None else current.__dict__
    data["workflow"] = _build(Workflow, {**base, "slot_request": request.event_id, "slot_granted": False,
                                         "slot_start": None}, _WORKFLOW_FIELDS)
    data["status"] = WAITING
    return (request,)


def _release_slot(state: JobState, decision: Decision, event: Event, actor: str) -> Decision:
    """The job left the attempt its slot was for: the release goes to the owner, the state forgets
    the request. A grant under a rate alone held nothing, but the owner decides what its grants
    hold (an operator may have set a max since: ``limit_changed``), so every grant is given back."""
    request = state.workflow.slot_request  # type: ignore[union-attr]  # the caller checked
    limit = state.options.concurrency
    new = decision[0]
    if limit is None or new is None:
        return decision
    data = new.__dict__.copy()
    data["workflow"] = _slim(_changed(new.workflow, slot_request=None, slot_granted=False,  # type: ignore[arg-type]
                                      slot_start=None))
    release = _release_of(state.job_id, owner_id(limit.limit, limit.key), request, event, actor)  # type: ignore[arg-type]
    data["recent_event_ids"] = (*new.recent_event_ids, release.event_id)[-RECENT_EVENT_IDS:]
    return _tuple_new(Decision, (_build(JobState, data, _STATE_FIELDS), (*decision[1], release), None, False))


def _release_of(job_id: str, owner: str, request: str, event: Event, actor: str) -> Any:
    """The ``slot_released`` of ``request`` (one id, however often it is derived)."""
    return _derive_for(SlotReleasedEvent, owner, request, 0, event, actor, {"requester_id": job_id})


def _holds_slot(before: JobState, after: JobState) -> bool:
    """Whether ``after`` still waits for, or holds, the slot ``before`` asked for: waiting, pending,
    claimed or running, or scheduled by its grant's rate in the same attempt."""
    status = after.status
    return status in _HOLDING or (status is SCHEDULED and after.attempt == before.attempt
                                  and after.workflow is not None and after.workflow.slot_granted)


def _slot_event_stale(state: JobState, event: Any, actor: str) -> Decision | None:
    workflow = state.workflow
    if workflow is None or workflow.slot_request != event.causation_id:
        reason = (f"'{event.type}' answers slot request {event.causation_id}, which job {state.job_id} no longer "
                  f"holds (released since): stale, no effect")
        return _answer_stale_grant(state, event, actor, reason)
    return None


def _answer_stale_grant(state: JobState | None, event: Any, actor: str, reason: str) -> Decision:
    """A grant the job does not hold (an owner that forgot its table granted a duplicate request
    again): the slot is given back at once, so it cannot leak. Other slot answers change nothing."""
    limit = state.options.concurrency if state is not None else None
    if event.type != "slot_granted" or event.causation_id is None or (state is not None and limit is None):
        return _reject(state, reason)
    release = _release_of(event.job_id, event.owner_id, event.causation_id, event, actor)
    return _tuple_new(Decision, (state, (release,), f"{reason}; the slot is given back", False))


def _not_a_job_event(state: JobState, event: Any, actor: str) -> Decision:
    return _reject(state, f"'{event.type}' is addressed to a concurrency limit's owner (eventjobs.core.slots), not a job")


def _on_slot_granted(state: JobState, event: Any, actor: str) -> Decision:
    stale = _slot_event_stale(state, event, actor)
    if stale is not None:
        return stale
    if state.workflow.slot_granted:  # type: ignore[union-attr]  # checked by _slot_event_stale
        return _duplicate(state)
    if state.status is not WAITING:
        return _not_accepted(state, event)
    data = state.__dict__.copy()
    not_before = event.not_before
    start = (not_before or event.occurred_at) if state.options.concurrency.rate is not None else None  # type: ignore[union-attr]  # a job that asked has a limit
    data["workflow"] = _changed(state.workflow, slot_granted=True, slot_start=start)  # type: ignore[arg-type]
    if not_before is not None and not_before > event.occurred_at:  # held back by the rate: a run_at timer
        data["status"] = SCHEDULED
        data["next_due_at"] = not_before
    else:
        data["status"] = PENDING
    return _accept(state, event, data)


def _on_slot_refused(state: JobState, event: Any, actor: str) -> Decision:
    stale = _slot_event_stale(state, event, actor)
    if stale is not None:
        return stale
    if state.status is not WAITING or state.workflow.slot_granted:  # type: ignore[union-attr]  # checked above
        return _not_accepted(state, event)
    data = state.__dict__.copy()
    data.update(status=CANCELLED, finished_at=event.occurred_at, reason=event.reason)
    return _accept(state, event, data, (_derive(CancelledEvent, event, 0, actor, {"reason": event.reason}),))


def _on_slot_revoked(state: JobState, event: Any, actor: str) -> Decision:
    stale = _slot_event_stale(state, event, actor)
    if stale is not None:
        return stale
    status = state.status
    if status is PENDING:
        data = state.__dict__.copy()
        data.update(status=CANCELLED, finished_at=event.occurred_at, reason=event.reason)
        return _accept(state, event, data, (_derive(CancelledEvent, event, 0, actor, {"reason": event.reason}),))
    if status in ACTIVE_STATUSES:
        if state.cancel_requested:
            return _duplicate(state) if state.reason == event.reason else _reject(state, "cancel already requested")
        data = state.__dict__.copy()
        data.update(cancel_requested=True, reason=event.reason)
        return _accept(state, event, data)
    return _not_accepted(state, event)


def _on_attempt_snoozed(state: JobState, event: Any, actor: str) -> Decision:
    refused = _outside_the_active_attempt(state, event)
    if refused is not None:
        return refused
    snoozes = state.workflow.snoozes if state.workflow is not None else 0
    late = event.late_for_rate
    if late and (state.options.concurrency is None or state.options.concurrency.rate is None
                 or state.workflow is None or state.workflow.rate_reasked):
        return _reject(state, "a late start gives a rate-limited job back once per run: refused")
    if state.cancel_requested or (snoozes >= state.options.max_snoozes and not late):
        return _on_attempt_ended_badly(state, event, actor)  # cancel, or over the bound: fails like an error
    due_at = add_seconds(event.occurred_at, round(event.delay_s * 1000) / 1000)
    data = state.__dict__.copy()
    data["status"] = SCHEDULED
    data["attempt"] = state.attempt + 1  # attempt numbers only grow ...
    data["max_attempts"] = state.max_attempts + 1  # ... but the budget grows with them: no attempt used
    data["next_due_at"] = due_at
    data["lease_deadline"] = None
    data["workflow"] = _workflow(state, rate_reasked=True) if late else _workflow(state, snoozes=snoozes + 1)
    return _accept(state, event, data, (_derive(ScheduledEvent, event, 0, actor, {"run_at": due_at}),))


_Handler = Callable[[JobState, Any, str], Decision]
_HANDLERS: dict[str, _Handler] = {
    "enqueued": _on_enqueued,
    "due": _on_due,
    "claimed": _on_claimed,
    "attempt_started": _on_attempt_started,
    "progress": _on_progress,
    "heartbeat": _on_heartbeat,
    "attempt_succeeded": _on_attempt_succeeded,
    "attempt_failed": _on_attempt_ended_badly,
    "attempt_timed_out": _on_attempt_ended_badly,
    "lease_expired": _on_attempt_ended_badly,
    "cancel_requested": _on_cancel_requested,
    "expired": _on_expired,
    "dead_letter_retried": _on_dead_letter_retried,
    "discarded": _on_discarded,
    "retention_passed": _on_retention_passed,
    "dependency_requested": _on_dependency_requested,
    "dependency_resolved": _on_dependency_resolved,
    "dependency_reopened": _on_dependency_reopened,
    "dependency_probe": _on_dependency_probe,
    "attempt_snoozed": _on_attempt_snoozed,
    "slot_requested": _not_a_job_event,
    "slot_released": _not_a_job_event,
    "limit_changed": _not_a_job_event,
    "slot_granted": _on_slot_granted,
    "slot_refused": _on_slot_refused,
    "slot_revoked": _on_slot_revoked,
    **dict.fromkeys(DERIVED_TYPES, _on_derived),
}


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def apply(state: JobState | None, event: JobEvent, actor: str = "processor") -> Decision:
    """Apply one event to a job's state (None: the job is unknown so far).

    ``actor`` is written into derived events (e.g. ``"processor:3"``). Never raises: anything
    that does not fit is returned as ``Decision(rejected=reason)`` with the state unchanged.
    """
    try:
        if state is None:
            if event.type == "enqueued":
                return _create(event, actor)
            if event.type == "dependency_requested":  # no such job: the dependent learns it at once
                answer = _answer(None, event.job_id, event.dependent_id, event.event_id, event, actor, "missing")
                return _tuple_new(Decision, (None, (answer,), f"unknown job {event.job_id!r}: answered missing", False))
            if event.type == "slot_granted":  # the job is forgotten: its slot goes back
                return _answer_stale_grant(None, event, actor, f"unknown job {event.job_id!r}: a grant it cannot use")
            return _reject(None, f"unknown job {event.job_id!r}: no enqueued event seen for it")
        if event.job_id != state.job_id:
            return _reject(state, f"event for job {event.job_id!r} applied to the state of job {state.job_id!r}")
        if event.event_id in state.recent_event_ids:
            # a grant the job gave back already may come again from an owner that forgot its table
            # (same id: derived from the request): the slot goes back again, so it cannot leak
            stale = _slot_event_stale(state, event, actor) if event.type == "slot_granted" else None
            return _duplicate(state) if stale is None else stale
        decision = _HANDLERS[event.type](state, event, actor)
        # every move into an ended status derives an event (completed, cancelled, dead_lettered ...;
        # a discard follows a dead-lettering, which answered already), so most events skip this
        if decision[1]:
            new = decision[0]
            workflow = state.workflow
            if workflow is not None and workflow.slot_request is not None and new is not None and new is not state \
                    and not _holds_slot(state, new):  # left the attempt its slot was for: give the slot back
                decision = _release_slot(state, decision, event, actor)
                new = decision[0]
            if new is not None and new is not state and new.workflow is not None and new.workflow.dependents \
                    and new.status in TERMINAL_STATUSES:
                return _answer_dependents(decision, event, actor)
        return decision
    except Exception as exc:  # noqa: BLE001 - a bug must not stop a processor: reject, keep the state, say why
        return _reject(state, f"internal error applying {getattr(event, 'type', '?')!r}: {exc!r}")


def replay(
    events: Iterable[JobEvent], states: dict[str, JobState] | None = None, actor: str = "processor"
) -> Iterator[tuple[JobEvent, Decision]]:
    """Apply events in order, yielding each with its decision; ``states`` (job id -> state) is updated in place."""
    if states is None:
        states = {}
    for event in events:
        decision = apply(states.get(event.job_id), event, actor)
        if decision.state is not None:
            states[event.job_id] = decision.state
        elif decision.rejected is None:
            states.pop(event.job_id, None)  # forgotten: its retention passed
        yield event, decision


def fold(
    events: Iterable[JobEvent], states: dict[str, JobState] | None = None, actor: str = "processor"
) -> dict[str, JobState]:
    """The state of every job after ``events`` (starting from ``states``, not modified)."""
    result: dict[str, JobState] = dict(states) if states else {}
    get = result.get
    for event in events:
        decision = apply(get(event.job_id), event, actor)
        if decision.state is not None:
            result[event.job_id] = decision.state
        elif decision.rejected is None:
            result.pop(event.job_id, None)  # forgotten: its retention passed
    return result
