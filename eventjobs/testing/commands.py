"""The commands tests and the simulator write a job's events with, no broker needed.

Why this module exists: the simulator (``eventjobs.testing.simulation``), the property tests and
the benchmarks play every writer of a job, mostly from the job's state (claim the pending
attempt, fire the timer due, retry the dead-lettered job...). Here are the core's builders
(``eventjobs.core.commands``, re-exported, one builder per event) and, for a writer that holds
the job's ``JobState``, commands over it: each refuses what makes no sense for the state
(``CommandRefused``) and calls the event's builder. The services never hold a job's state when
they write, so they use the builders only.

All are pure except for ``new_event_id()`` when no ``event_id`` is given; ``now`` is passed in.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from eventjobs.core.commands import (
    DEFAULT_LEASE_S,
    MIN_LEASE_S,
    attempt_started_event,
    attempt_timed_out_event,
    cancel_requested_event,
    claimed_event,
    claiming_start_event,
    dead_letter_retried_event,
    discarded_event,
    due_event,
    enqueue,
    expired_event,
    heartbeat_event,
    lease_deadline,
    lease_expired_event,
    progress_event,
    retention_passed_event,
    timer_fired_event,
)
from eventjobs.core.events import (
    AttemptStartedEvent,
    AttemptTimedOutEvent,
    CancelRequestedEvent,
    ClaimedEvent,
    DeadLetterRetriedEvent,
    DiscardedEvent,
    DueEvent,
    ExpiredEvent,
    HeartbeatEvent,
    LeaseExpiredEvent,
    ProgressEvent,
)
from eventjobs.core.state import JobState, JobStatus

__all__ = [
    # the core's builders
    "DEFAULT_LEASE_S",
    "MIN_LEASE_S",
    "attempt_started_event",
    "attempt_timed_out_event",
    "cancel_requested_event",
    "claimed_event",
    "claiming_start_event",
    "dead_letter_retried_event",
    "discarded_event",
    "due_event",
    "enqueue",
    "expired_event",
    "heartbeat_event",
    "lease_deadline",
    "lease_expired_event",
    "progress_event",
    "retention_passed_event",
    "timer_fired_event",
    # commands over a job state
    "CommandRefused",
    "attempt_started",
    "cancel_request",
    "claim",
    "claim_and_start",
    "dead_letter_retry",
    "discard",
    "due",
    "expire",
    "heartbeat",
    "lease_expired",
    "progress",
    "timed_out",
]


class CommandRefused(ValueError):
    """The command makes no sense for the job's current state (nothing was written)."""


def _claimable(state: JobState) -> None:
    if state.status is not JobStatus.PENDING:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}, only a pending job can be claimed")


def claim(
    state: JobState,
    *,
    worker_id: str,
    now: datetime,
    actor: str,
    lease_s: float = DEFAULT_LEASE_S,
    event_id: str | None = None,
) -> ClaimedEvent:
    """A worker claims the job's current attempt (only a pending job can be claimed)."""
    _claimable(state)
    return claimed_event(
        state.job_id, state.attempt, worker_id=worker_id, now=now, actor=actor, lease_s=lease_s, event_id=event_id
    )


def claim_and_start(
    state: JobState,
    *,
    worker_id: str,
    now: datetime,
    actor: str,
    lease_s: float = DEFAULT_LEASE_S,
    event_id: str | None = None,
) -> AttemptStartedEvent:
    """A worker claims the job's current attempt and starts its handler at once: one
    ``attempt_started`` that is also the claim (only a pending job can be claimed)."""
    _claimable(state)
    return claiming_start_event(
        state.job_id, state.attempt, worker_id=worker_id, now=now, actor=actor, lease_s=lease_s, event_id=event_id
    )


def attempt_started(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> AttemptStartedEvent:
    """The claiming worker (the accepted claim) starts the handler."""
    if state.status is not JobStatus.CLAIMED or state.worker_id is None:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}, not claimed")
    return attempt_started_event(
        state.job_id, state.attempt, worker_id=state.worker_id, now=now, actor=actor, event_id=event_id,
        claim_id=state.claim_id,
    )


def progress(
    state: JobState, percent: float, message: str = "", *, now: datetime, actor: str, event_id: str | None = None
) -> ProgressEvent:
    """``ctx.progress(percent, message)`` on the current attempt (by the accepted claim)."""
    return progress_event(state.job_id, state.attempt, percent, message, now=now, actor=actor, event_id=event_id,
                          claim_id=state.claim_id)


def heartbeat(
    state: JobState, *, now: datetime, actor: str, lease_s: float = DEFAULT_LEASE_S, event_id: str | None = None
) -> HeartbeatEvent:
    """Extend the lease of the current attempt (by the accepted claim)."""
    return heartbeat_event(state.job_id, state.attempt, now=now, actor=actor, lease_s=lease_s, event_id=event_id,
                           claim_id=state.claim_id)


def timed_out(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> AttemptTimedOutEvent:
    """The current attempt exceeded the job's timeout."""
    return attempt_timed_out_event(
        state.job_id, state.attempt, timeout_s=state.options.timeout_s, now=now, actor=actor, event_id=event_id,
        claim_id=state.claim_id,
    )


def due(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> DueEvent:
    """The timer service: the run_at (scheduled), retry (retrying) or next republish (pending) timer fired."""
    timer: Literal["run_at", "retry", "republish"]
    sequence = None
    if state.status is JobStatus.SCHEDULED:
        timer = "run_at"
    elif state.status is JobStatus.RETRYING:
        timer = "retry"
    elif state.status is JobStatus.PENDING:
        timer, sequence = "republish", state.ready_republishes
    else:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}: no run_at, retry or republish timer is pending")
    return due_event(state.job_id, state.attempt, timer, now=now, actor=actor, event_id=event_id, sequence=sequence)


def lease_expired(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> LeaseExpiredEvent:
    """The timer service: the lease of the current attempt ran out."""
    if state.lease_deadline is None:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}: it holds no lease")
    return lease_expired_event(state.job_id, state.attempt, state.lease_deadline, now=now, actor=actor, event_id=event_id)


def expire(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> ExpiredEvent:
    """The timer service: the job's TTL timer fired."""
    ttl = state.options.ttl_s
    reason = f"ttl of {ttl:g} s passed" if ttl else ""
    return expired_event(state.job_id, reason, now=now, actor=actor, event_id=event_id)


def cancel_request(state: JobState, reason: str = "", *, now: datetime, actor: str, event_id: str | None = None) -> CancelRequestedEvent:
    """Ask to cancel the job (refused once it is terminal)."""
    if state.is_terminal:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}: nothing to cancel")
    return cancel_requested_event(state.job_id, reason, now=now, actor=actor, event_id=event_id)


def dead_letter_retry(
    state: JobState, reason: str = "", *, now: datetime, actor: str, event_id: str | None = None
) -> DeadLetterRetriedEvent:
    """An operator retries a dead-lettered job; the event names the dead-letter entry (causation_id)."""
    if state.status is not JobStatus.DEAD_LETTERED:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}, not dead_lettered")
    return dead_letter_retried_event(
        state.job_id, state.dead_letter_event_id, reason, now=now, actor=actor, event_id=event_id
    )


def discard(state: JobState, reason: str = "", *, now: datetime, actor: str, event_id: str | None = None) -> DiscardedEvent:
    """An operator discards a dead-lettered job; the event names the dead-letter entry (causation_id)."""
    if state.status is not JobStatus.DEAD_LETTERED:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}, not dead_lettered")
    return discarded_event(state.job_id, state.dead_letter_event_id, reason, now=now, actor=actor, event_id=event_id)
