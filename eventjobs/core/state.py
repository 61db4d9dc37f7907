"""A job's current state, its statuses, and the table of legal transitions.

Why this module exists: ``JobState`` is what the processor keeps per job (in memory, and in the
compacted changelog topic, one record per event), what operators see, and what ``apply``
reads to decide. It is a frozen value: ``apply`` returns a new one. It stays small because it
is written to Kafka once per event: the job's history lives in the event log, not here.

``TRANSITIONS`` is the state machine as data, for people and tests: ``docs/events.md`` draws its
diagram from it, and ``tests/core/test_fold.py`` checks that every row is what ``apply`` really
does and that every status / event pair outside the table is rejected, so the two cannot drift.
``apply`` decides with one handler per event type (``fold.py``); it reads the table only to name
the allowed statuses in a rejection's reason.
"""

from __future__ import annotations

import enum
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventjobs.core.options import JobOptionsSpec, Priority
from eventjobs.core.validation import worded

__all__ = [
    "ACCEPTING_STATUSES",
    "ACTIVE_STATUSES",
    "RECENT_EVENT_IDS",
    "TERMINAL_STATUSES",
    "TRANSITIONS",
    "Workflow",
    "DependencyOutcome",
    "ErrorInfo",
    "JobState",
    "JobStatus",
    "StateDecodeError",
    "Transition",
    "decode_state",
    "encode_state",
]

#: How many recent event ids a state remembers, to flag exact redeliveries as duplicates.
#: Correctness does not depend on it (every transition is also guarded structurally, see
#: ``fold``); it only makes ``Decision.duplicate`` precise for near duplicates.
RECENT_EVENT_IDS = 8


class JobStatus(str, enum.Enum):
    """Where a job is in its life. Closed: no other values exist."""

    WAITING = "waiting"
    PENDING = "pending"
    SCHEDULED = "scheduled"
    CLAIMED = "claimed"
    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    CANCELLED = "cancelled"
    DEAD_LETTERED = "dead_lettered"
    DISCARDED = "discarded"

    @property
    def description(self) -> str:
        """What happens to a job in this status (also rendered in docs/events.md)."""
        return _STATUS_DOC[self]

    @property
    def terminal(self) -> bool:
        """No event moves the job on (dead_lettered: only an operator's retry or discard)."""
        return self in TERMINAL_STATUSES

    def __str__(self) -> str:
        return self.value


_STATUS_DOC = {
    JobStatus.WAITING: "Waiting for the jobs in its depends_on to end (each answers with `dependency_resolved`); then pending "
    "(or scheduled, if its run_at is still ahead), or cancelled if a dependency did not complete, or if a cycle probe "
    "(`dependency_probe`) shows that it waits for itself. A job with a concurrency limit also waits here for a slot of "
    "its key (`slot_requested`, answered by `slot_granted`) each time it would become pending.",
    JobStatus.PENDING: "Ready to run: a worker of its queue (with the required capabilities) may claim the current attempt. "
    "Its ready record is published again if it is lost while the job stays pending (the processor's timer `republish` "
    "looks after 1 h, doubling, at most daily; a record still waiting for the workers, in a paused or busy queue, is not).",
    JobStatus.SCHEDULED: "Waiting for its run_at; the timer service writes `due` (timer run_at) then.",
    JobStatus.CLAIMED: "A worker holds a lease on the current attempt but has not started the handler yet (a worker "
    "that starts it right after claiming writes one `attempt_started` that is also the claim: pending -> running).",
    JobStatus.RUNNING: "The handler is running; heartbeats extend the lease, progress is recorded.",
    JobStatus.RETRYING: "An attempt failed and a retry is due at next_due_at; the timer service writes `due` (timer retry) then.",
    JobStatus.COMPLETED: "Terminal: the handler succeeded; result holds what it returned.",
    JobStatus.CANCELLED: "Terminal: cancelled on request, before it ran or when the running attempt ended; or because a "
    "dependency did not complete (then it waits again if that dependency is retried from the dead-letter queue: "
    "`dependency_reopened`), or for a dependency cycle.",
    JobStatus.DEAD_LETTERED: "In the dead-letter queue: failed for good, not retryable, or expired. Leaves only by "
    "`dead_letter_retried` (runs again with a fresh attempt budget; one that expired while waiting waits again for "
    "the dependencies that have not answered) or `discarded`.",
    JobStatus.DISCARDED: "Terminal: an operator dropped it from the dead-letter queue.",
}

TERMINAL_STATUSES: frozenset[JobStatus] = frozenset(
    {JobStatus.COMPLETED, JobStatus.CANCELLED, JobStatus.DEAD_LETTERED, JobStatus.DISCARDED}
)
#: An attempt is under way: a worker holds the claim and its lease. A tuple, because membership
#: of a two-element tuple is an identity check (the fold asks this on every event).
ACTIVE_STATUSES: tuple[JobStatus, JobStatus] = (JobStatus.CLAIMED, JobStatus.RUNNING)


class Transition(NamedTuple):
    """One legal move: ``event`` in ``source`` (None: no job yet) leads to ``target`` (None: the job
    is forgotten, its state leaves the table) when ``when`` holds."""

    source: JobStatus | None
    event: str
    target: JobStatus | None
    when: str
    derives: tuple[str, ...] = ()


_S = JobStatus
_FAILURES = ("attempt_failed", "attempt_timed_out", "lease_expired")
_WAITING = (_S.WAITING, _S.SCHEDULED, _S.PENDING, _S.RETRYING)
#: Worker-written attempt events are accepted only from the accepted claim (see ``JobState.claim_id``).
_OF_THE_CLAIM = "from the accepted claim (claim_id)"


def _claim_of(event: str) -> str:
    return "" if event == "lease_expired" else f"{_OF_THE_CLAIM}, "


TRANSITIONS: tuple[Transition, ...] = (
    Transition(None, "enqueued", _S.WAITING, "depends_on names other jobs", ("dependency_requested",)),
    Transition(None, "enqueued", _S.PENDING, "no depends_on, run_at is empty or not after occurred_at"),
    Transition(None, "enqueued", _S.SCHEDULED, "no depends_on, run_at is after occurred_at", ("scheduled",)),
    *(
        Transition(s, "enqueued", _S.SCHEDULED, "debounce, another enqueue of the job's window, never started, no cancel "
                   "requested: takes the new args, starts debounce after the enqueue (never earlier)", ("debounced",))
        for s in (_S.SCHEDULED, _S.PENDING)
    ),
    Transition(
        _S.WAITING, "dependency_resolved", _S.WAITING, "a dependency ended; others are still unresolved (and none failed, "
        "or on_dependency_failure is run)",
    ),
    Transition(
        _S.WAITING, "dependency_resolved", _S.PENDING, "the last dependency ended, all completed (or "
        "on_dependency_failure is run), run_at is empty or not after occurred_at",
    ),
    Transition(
        _S.WAITING, "dependency_resolved", _S.SCHEDULED, "as for pending, but run_at is after occurred_at", ("scheduled",)
    ),
    Transition(
        _S.WAITING, "dependency_resolved", _S.CANCELLED, "a dependency did not complete and on_dependency_failure is cancel",
        ("cancelled",),
    ),
    Transition(
        _S.DEAD_LETTERED, "dependency_resolved", _S.DEAD_LETTERED, "the job expired while waiting: the answer is recorded "
        "for a retry from the dead-letter queue",
    ),
    Transition(
        _S.CANCELLED, "dependency_resolved", _S.CANCELLED, "the job was cancelled by another dependency: the answer is "
        "recorded for when that dependency reopens it",
    ),
    Transition(
        _S.WAITING, "dependency_requested", _S.WAITING, "the dependent is recorded (answered when the job ends); if it was "
        "enqueued no later than this job, a cycle probe goes to each dependency the job still waits for",
        ("dependency_probe",),
    ),
    *(
        Transition(s, "dependency_requested", s, "the job has not ended: the dependent is recorded (answered when it ends)")
        for s in (_S.SCHEDULED, _S.PENDING, _S.CLAIMED, _S.RUNNING, _S.RETRYING)
    ),
    *(
        Transition(s, "dependency_requested", s, f"the job has ended: answered at once{also}", ("dependency_resolved",))
        for s, also in (
            (_S.COMPLETED, ""),
            (_S.CANCELLED, (" (cancelled by a dependency, it also remembers the dependent, to reopen its answer if "
                            "it waits again)")),
            (_S.DEAD_LETTERED, " (it also remembers the dependent, to reopen its answer if it is retried)"),
            (_S.DISCARDED, ""),
        )
    ),
    Transition(
        _S.CANCELLED, "dependency_reopened", _S.WAITING, "the dependency whose failure cancelled the job (on_dependency_failure "
        "cancel) runs again, and no other recorded answer is a failure: the job waits for it again, and sends a cycle "
        "probe to each dependency it waits for", ("dependency_probe",),
    ),
    Transition(
        _S.CANCELLED, "dependency_reopened", _S.CANCELLED, "as above, but another recorded answer is a failure: the job "
        "forgets the reopened answer and stays cancelled, by that other dependency",
    ),
    Transition(
        _S.DEAD_LETTERED, "dependency_reopened", _S.DEAD_LETTERED, "the job holds the dependency's failure (recorded after "
        "it expired): it forgets it and waits for the next answer",
    ),
    Transition(
        _S.WAITING, "dependency_probe", _S.WAITING, "the probe's last job waits for this one by the request it names, this "
        "job is not on its path, the path is below the hop limit, and this probe was not forwarded here by a path as "
        "short: forwarded to each dependency the job waits for", ("dependency_probe",),
    ),
    Transition(
        _S.WAITING, "dependency_probe", _S.CANCELLED, "the probe comes back to the first job of its path, which still "
        "waits for the second by the request it names: a dependency cycle; the job answers its dependents (the last "
        "job of the path among them), which ends the others", ("cancelled", "dependency_resolved"),
    ),
    *(
        Transition(s, "attempt_snoozed", _S.SCHEDULED, f"{_OF_THE_CLAIM}, snoozes below max_snoozes (or late_for_rate, "
                   "once per run, not counted): next attempt, budget one larger, due after delay_s", ("scheduled",))
        for s in ACTIVE_STATUSES
    ),
    *(
        Transition(s, "attempt_snoozed", _S.RETRYING, f"{_OF_THE_CLAIM}, max_snoozes reached, attempts left",
                   ("retry_scheduled",))
        for s in ACTIVE_STATUSES
    ),
    *(
        Transition(s, "attempt_snoozed", _S.DEAD_LETTERED, f"{_OF_THE_CLAIM}, max_snoozes reached, no attempts left",
                   ("failed", "dead_lettered"))
        for s in ACTIVE_STATUSES
    ),
    Transition(None, "enqueued", _S.WAITING, "a concurrency limit (option concurrency), no depends_on, no run_at ahead: "
               "asks the key's owner for a slot", ("slot_requested",)),
    *(
        Transition(s, "due", _S.WAITING, "as for pending, with a concurrency limit: asks for a slot", ("slot_requested",))
        for s in (_S.SCHEDULED, _S.RETRYING)
    ),
    Transition(_S.WAITING, "slot_granted", _S.PENDING, "grants the request the job waits with (causation_id)"),
    Transition(_S.WAITING, "slot_refused", _S.CANCELLED, "refuses the request the job waits with (strategy "
               "cancel_newest, or a newer request under cancel_in_progress)", ("cancelled", "slot_released")),
    Transition(_S.PENDING, "slot_revoked", _S.CANCELLED, "revokes the slot the job holds (strategy cancel_in_progress): "
               "not claimed yet, cancelled at once", ("cancelled", "slot_released")),
    *(Transition(s, "slot_revoked", s, "revokes the slot the job holds (strategy cancel_in_progress): sets "
                 "cancel_requested; the attempt's end cancels it") for s in ACTIVE_STATUSES),
    Transition(_S.SCHEDULED, "due", _S.PENDING, "timer is run_at, attempt is the current one (debounce: not before "
               "next_due_at, which a later enqueue may have put back)"),
    Transition(_S.RETRYING, "due", _S.PENDING, "timer is retry, attempt is the current one"),
    Transition(
        _S.PENDING, "due", _S.PENDING,
        "timer is republish, attempt is the current one, sequence is ready_republishes: the ready record is published again",
    ),
    Transition(_S.PENDING, "claimed", _S.CLAIMED, "attempt is the current one, lease_deadline after occurred_at"),
    Transition(_S.CLAIMED, "attempt_started", _S.RUNNING, "no lease_deadline: same attempt, claim and worker as the "
               "accepted claim"),
    Transition(_S.PENDING, "attempt_started", _S.RUNNING, "with lease_deadline, the start is also the claim: attempt is "
               "the current one, lease_deadline after occurred_at, claim_id none or the event's own id"),
    *(Transition(s, "progress", s, f"current attempt, {_OF_THE_CLAIM}, newer than the last progress") for s in ACTIVE_STATUSES),
    *(
        Transition(s, "heartbeat", s, f"current attempt, {_OF_THE_CLAIM}, lease_deadline later than the current one")
        for s in ACTIVE_STATUSES
    ),
    *(Transition(s, "attempt_succeeded", _S.COMPLETED, f"current attempt, {_OF_THE_CLAIM}", ("completed",)) for s in ACTIVE_STATUSES),
    *(
        row
        for event in _FAILURES
        for s in ACTIVE_STATUSES
        for row in (
            Transition(s, event, _S.RETRYING, f"{_claim_of(event)}retryable, attempts left, no cancel requested", ("retry_scheduled",)),
            Transition(s, event, _S.DEAD_LETTERED, f"{_claim_of(event)}not retryable or no attempts left", ("failed", "dead_lettered")),
            Transition(s, event, _S.CANCELLED, f"{_claim_of(event)}cancel was requested", ("cancelled",)),
        )
    ),
    *(Transition(s, "cancel_requested", _S.CANCELLED, "not started", ("cancelled",)) for s in _WAITING),
    *(Transition(s, "cancel_requested", s, "sets cancel_requested; the attempt's end decides") for s in ACTIVE_STATUSES),
    *(
        Transition(s, "expired", _S.DEAD_LETTERED, "ttl armed: the job has never started", ("dead_lettered",))
        for s in (_S.WAITING, _S.SCHEDULED, _S.PENDING)
    ),
    Transition(
        _S.DEAD_LETTERED, "dead_letter_retried", _S.PENDING, "causation_id is the dead_lettered event; every dependency "
        "answered (all completed, or on_dependency_failure run), run_at empty or passed",
    ),
    Transition(
        _S.DEAD_LETTERED, "dead_letter_retried", _S.SCHEDULED, "as for pending, but run_at is after occurred_at",
        ("scheduled",),
    ),
    Transition(
        _S.DEAD_LETTERED, "dead_letter_retried", _S.WAITING, "causation_id is the dead_lettered event; some dependency has "
        "not answered (the job expired while waiting) and none failed: it waits again, sending a cycle probe to each "
        "dependency it waits for", ("dependency_probe",),
    ),
    Transition(
        _S.DEAD_LETTERED, "dead_letter_retried", _S.CANCELLED, "causation_id is the dead_lettered event; a dependency "
        "answered with a failure while it was dead-lettered (on_dependency_failure cancel)", ("cancelled",),
    ),
    Transition(_S.DEAD_LETTERED, "discarded", _S.DISCARDED, "causation_id is the dead_lettered event"),
    Transition(
        _S.DEAD_LETTERED, "retention_passed", _S.DISCARDED, "scope dead_letter: not retried within its dead-letter retention"
    ),
    *(
        Transition(s, "retention_passed", None, "scope finished: finished for retain_completed; the job is forgotten")
        for s in (_S.COMPLETED, _S.CANCELLED, _S.DISCARDED)
    ),
)

#: event type -> statuses in which ``apply`` considers it (from ``TRANSITIONS``).
ACCEPTING_STATUSES: dict[str, frozenset[JobStatus]] = {}
for _row in TRANSITIONS:
    if _row.source is not None:
        ACCEPTING_STATUSES[_row.event] = ACCEPTING_STATUSES.get(_row.event, frozenset()) | {_row.source}
del _row


class ErrorInfo(BaseModel):
    """The last failure of a job: kept so every failure's error and traceback can be shown."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    error_type: str
    message: str
    traceback: str = ""


class DependencyOutcome(BaseModel):
    """How one dependency ended, as its dependent recorded it (``dependency_resolved``)."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    status: str = Field(description="completed, dead_lettered, cancelled, discarded, missing or refused.")
    result: dict[str, Any] | None = Field(None, description="Its result (completed ones), unless omitted.")
    result_omitted: bool = Field(
        False, description="The result was not kept: the job's dependency results would exceed MAX_DEPENDENCY_RESULTS_BYTES."
    )


class Workflow(BaseModel):
    """A job's links to other jobs, and its snoozes: None in the state of a job that has neither,
    so a plain job's state is not larger for them."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    depends_on: tuple[str, ...] = Field((), description="The jobs this one waits for.")
    on_dependency_failure: str = Field("cancel", description="cancel or run, when a dependency does not complete.")
    dependencies: dict[str, DependencyOutcome] = Field(
        default_factory=dict, description="Dependencies that ended so far (dropped but for their status once the job completes)."
    )
    dependents: dict[str, str] = Field(
        default_factory=dict,
        description="Jobs waiting for this one: dependent job id -> the dependency_requested event to answer when it ends.",
    )
    snoozes: int = Field(0, description="How often the job returned Snooze.")
    cancelled_by: str | None = Field(
        None,
        description="The dependency whose failure cancelled this job (it waits again if that dependency runs again: "
        "dependency_reopened); None if it was not cancelled by a dependency.",
    )
    rounds: dict[str, int] = Field(
        default_factory=dict,
        description="Dependencies that reopened their answer to this job: dependency id -> how often (the round of the "
        "answer it waits for from them; absent: 0).",
    )
    revivable: dict[str, str] = Field(
        default_factory=dict,
        description="While this job is dead-lettered or cancelled by a dependency: the dependents it answered with that "
        "failure (dependent job id -> their request), asked to wait again (dependency_reopened) if it runs again.",
    )
    dependent_rounds: dict[str, int] = Field(
        default_factory=dict,
        description="Dependents (in dependents or revivable) whose request this job reopened: dependent job id -> the "
        "round of the answer it owes them (absent: 0).",
    )
    probes: dict[str, int] = Field(
        default_factory=dict,
        description="Cycle probes this job forwarded while waiting: the wait each checks (its origin) -> the shortest "
        "path it came by (oldest first, at most MAX_PROBE_ORIGINS_KEPT).",
    )

    slot_request: str | None = Field(
        None,
        description="Concurrency limit: the slot_requested event of the attempt that waits for (or holds) a slot; "
        "None when the job neither waits for nor holds one.",
    )
    slot_granted: bool = Field(False, description="The slot of slot_request was granted (the job may be claimed).")
    rate_reasked: bool = Field(
        False, description="A limit with a rate: the job was claimed too late for its start and asked again "
        "(once per run: cleared when its handler starts)."
    )
    slot_start: datetime | None = Field(
        None, description="A limit with a rate: the start its grant gave (the worker starts the handler "
        "RATE_START_LAG_S after it, so that starts keep the grants' spacing)."
    )

    @property
    def unresolved(self) -> tuple[str, ...]:
        """Dependencies that have not answered yet."""
        return tuple(d for d in self.depends_on if d not in self.dependencies)


class JobState(BaseModel):
    """The current state of one job. Frozen; ``apply`` returns a new one.

    Attempt numbers are 0-based and only grow over a job's life (a dead-letter retry continues
    the count), so a late event of an old attempt can always be recognised as stale.
    ``max_attempts`` is the effective budget: attempt numbers below it may run. A dead-letter
    retry raises it to ``attempt + options.max_attempts`` (a fresh budget).
    """

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    job_id: str
    name: str
    queue: str
    priority: Priority
    args: dict[str, Any]
    options: JobOptionsSpec
    status: JobStatus
    attempt: int = Field(0, description="Current 0-based attempt number.")
    attempts_started: int = Field(0, description="Claims accepted over the job's whole life.")
    ready_republishes: int = Field(
        0, description="How often the current attempt's ready record was re-published while pending (timer republish)."
    )
    max_attempts: int = Field(description="Effective budget: attempts numbered below this may run.")
    enqueued_at: datetime
    run_at: datetime | None = None
    next_due_at: datetime | None = Field(None, description="When the run_at or retry timer fires (scheduled/retrying).")
    expires_at: datetime | None = Field(None, description="When the TTL timer fires, if a ttl is armed.")
    lease_deadline: datetime | None = None
    worker_id: str | None = None
    claim_id: str | None = Field(
        None,
        description="event_id of the accepted claim of the current (or last) attempt: the worker's attempt events "
        "must name it. None for claims folded before claim ids existed.",
    )
    started_at: datetime | None = Field(None, description="When the current/last attempt started.")
    finished_at: datetime | None = Field(None, description="When the job reached its terminal status.")
    updated_at: datetime
    result: dict[str, Any] | None = None
    last_error: ErrorInfo | None = None
    reason: str | None = Field(None, description="Why the job is cancelled/dead-lettered/discarded (or cancel asked).")
    cancel_requested: bool = False
    progress_percent: float | None = None
    progress_message: str | None = None
    progress_at: datetime | None = None
    progress_event_id: str | None = None
    idempotency_key: str | None = None
    parent_job_id: str | None = None
    enqueued_event_id: str = Field(description="The enqueued event that created the job.")
    dead_letter_event_id: str | None = Field(None, description="The dead_lettered event operators act on.")
    version: int = Field(1, description="Number of events applied (rejected and duplicate ones excluded).")
    recent_event_ids: tuple[str, ...] = Field((), description="Last few applied ids (incl. derived), for duplicate flags.")
    workflow: Workflow | None = Field(None, description="Dependencies, dependents and snoozes; None when it has none.")

    @property
    def is_terminal(self) -> bool:
        return self.status in TERMINAL_STATUSES

    @property
    def budget_start(self) -> int:
        """First attempt number of the current budget (0, or where the last dead-letter retry began)."""
        return self.max_attempts - self.options.max_attempts


class StateDecodeError(ValueError):
    """A changelog record is not a valid ``JobState``."""


def _state_default(value: Any) -> Any:
    if isinstance(value, BaseModel):
        return value.__dict__
    raise TypeError(f"{type(value).__name__} is not JSON-serializable")


def encode_state(state: JobState) -> bytes:
    """The state as JSON for the compacted changelog topic (timestamps RFC 3339 with ``Z``).

    Written once per applied event, so it uses orjson's native datetime writer (microsecond
    digits, always ``000`` since states only hold millisecond times).
    """
    return orjson.dumps(state.__dict__, default=_state_default, option=orjson.OPT_UTC_Z)


def decode_state(data: bytes) -> JobState:
    """Read a changelog record back; raises ``StateDecodeError`` if it is not a valid state."""
    try:
        return JobState.model_validate_json(data)
    except ValidationError as exc:
        raise StateDecodeError(f"invalid job state: {worded(exc, limit=1, root='state')}") from None
