"""Build the events that producers, workers, timers and operators write.

Why this module exists: each writer of events must fill the envelope and the type's fields the
same way (job id from the idempotency key, run_at from a delay, the dead-letter entry an
operator acts on...). These functions take what the writer knows (the current state, ``now``,
who it is) and return a validated event; the shell only appends it. They are pure except for
``new_event_id()`` when no ``event_id`` is given.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Literal

from eventjobs.core.clock import add_seconds, utc_ms
from eventjobs.core.events import (
    AttemptStartedEvent,
    AttemptTimedOutEvent,
    CancelRequestedEvent,
    ClaimedEvent,
    DeadLetterRetriedEvent,
    DiscardedEvent,
    DueEvent,
    EnqueuedEvent,
    ExpiredEvent,
    HeartbeatEvent,
    LeaseExpiredEvent,
    ProgressEvent,
)
from eventjobs.core.ids import job_id_for_key, new_event_id, new_job_id
from eventjobs.core.options import JobOptions
from eventjobs.core.state import JobState, JobStatus

__all__ = [
    "CommandRefused",
    "attempt_started",
    "cancel_request",
    "claim",
    "dead_letter_retry",
    "discard",
    "due",
    "enqueue",
    "expire",
    "heartbeat",
    "lease_expired",
    "progress",
    "timed_out",
]


class CommandRefused(ValueError):
    """The command makes no sense for the job's current state (nothing was written)."""


def enqueue(
    name: str,
    args: Mapping[str, Any] | None,
    options: JobOptions | None = None,
    *,
    now: datetime,
    actor: str,
    job_id: str | None = None,
    parent_job_id: str | None = None,
    event_id: str | None = None,
    key_namespace: str | None = None,
) -> EnqueuedEvent:
    """An ``enqueued`` event for a new job.

    With an idempotency key the job id is ``job_id_for_key(key_namespace or name, key)``, so a
    second enqueue with the same key targets the same job and is refused by the processor.
    Raises ``InvalidJobOptions`` / pydantic ``ValidationError`` for bad options, name or args.
    """
    options = options or JobOptions()
    args = dict(args or {})
    key = options.resolve_idempotency_key(args)
    if job_id is None:
        job_id = job_id_for_key(key_namespace or name, key) if key is not None else new_job_id()
    return EnqueuedEvent(
        event_id=event_id or new_event_id(),
        job_id=job_id,
        occurred_at=now,
        actor=actor,
        name=name,
        queue=options.queue,
        args=args,
        options=options.to_spec(),
        run_at=options.resolve_run_at(now),
        priority=options.priority,
        idempotency_key=key,
        parent_job_id=parent_job_id,
    )


def _envelope(state: JobState, now: datetime, actor: str, event_id: str | None, causation_id: str | None) -> dict[str, Any]:
    return {
        "event_id": event_id or new_event_id(),
        "job_id": state.job_id,
        "occurred_at": now,
        "actor": actor,
        "causation_id": causation_id,
    }


def claim(
    state: JobState, *, worker_id: str, now: datetime, actor: str, lease_s: float | None = None, event_id: str | None = None
) -> ClaimedEvent:
    """A worker claims the job's current attempt; the lease defaults to the job's timeout + 30 s."""
    if state.status is not JobStatus.PENDING:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}, only a pending job can be claimed")
    lease = lease_s if lease_s is not None else state.options.timeout_s + 30.0
    return ClaimedEvent(
        **_envelope(state, now, actor, event_id, None),
        attempt=state.attempt,
        worker_id=worker_id,
        lease_deadline=add_seconds(utc_ms(now), lease),
    )


def attempt_started(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> AttemptStartedEvent:
    """The claiming worker starts the handler."""
    if state.status is not JobStatus.CLAIMED or state.worker_id is None:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}, not claimed")
    return AttemptStartedEvent(**_envelope(state, now, actor, event_id, None), attempt=state.attempt, worker_id=state.worker_id)


def progress(
    state: JobState, percent: float, message: str = "", *, now: datetime, actor: str, event_id: str | None = None
) -> ProgressEvent:
    """``ctx.progress(percent, message)``."""
    return ProgressEvent(
        **_envelope(state, now, actor, event_id, None), attempt=state.attempt, percent=float(percent), message=message
    )


def heartbeat(
    state: JobState, *, now: datetime, actor: str, lease_s: float | None = None, event_id: str | None = None
) -> HeartbeatEvent:
    """Extend the lease of the current attempt (default: the job's timeout + 30 s from now)."""
    lease = lease_s if lease_s is not None else state.options.timeout_s + 30.0
    return HeartbeatEvent(
        **_envelope(state, now, actor, event_id, None), attempt=state.attempt, lease_deadline=add_seconds(utc_ms(now), lease)
    )


def timed_out(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> AttemptTimedOutEvent:
    """The current attempt exceeded the job's timeout."""
    return AttemptTimedOutEvent(
        **_envelope(state, now, actor, event_id, None), attempt=state.attempt, timeout_s=state.options.timeout_s
    )


def due(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> DueEvent:
    """The timer service: the run_at (scheduled) or retry (retrying) timer of the job fired."""
    timer: Literal["run_at", "retry"]
    if state.status is JobStatus.SCHEDULED:
        timer = "run_at"
    elif state.status is JobStatus.RETRYING:
        timer = "retry"
    else:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}: no run_at or retry timer is pending")
    return DueEvent(**_envelope(state, now, actor, event_id, None), attempt=state.attempt, timer=timer)


def lease_expired(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> LeaseExpiredEvent:
    """The timer service: the lease of the current attempt ran out."""
    if state.lease_deadline is None:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}: it holds no lease")
    return LeaseExpiredEvent(
        **_envelope(state, now, actor, event_id, None), attempt=state.attempt, lease_deadline=state.lease_deadline
    )


def expire(state: JobState, *, now: datetime, actor: str, event_id: str | None = None) -> ExpiredEvent:
    """The timer service: the job's TTL timer fired."""
    ttl = state.options.ttl_s
    return ExpiredEvent(**_envelope(state, now, actor, event_id, None), reason=f"ttl of {ttl:g} s passed" if ttl else "")


def cancel_request(state: JobState, reason: str = "", *, now: datetime, actor: str, event_id: str | None = None) -> CancelRequestedEvent:
    """Ask to cancel the job (it stops now if waiting, or when the running attempt ends)."""
    if state.is_terminal:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}: nothing to cancel")
    return CancelRequestedEvent(**_envelope(state, now, actor, event_id, None), reason=reason)


def dead_letter_retry(
    state: JobState, reason: str = "", *, now: datetime, actor: str, event_id: str | None = None
) -> DeadLetterRetriedEvent:
    """An operator retries a dead-lettered job; the event names the dead-letter entry (causation_id)."""
    if state.status is not JobStatus.DEAD_LETTERED:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}, not dead_lettered")
    return DeadLetterRetriedEvent(**_envelope(state, now, actor, event_id, state.dead_letter_event_id), reason=reason)


def discard(state: JobState, reason: str = "", *, now: datetime, actor: str, event_id: str | None = None) -> DiscardedEvent:
    """An operator discards a dead-lettered job; the event names the dead-letter entry (causation_id)."""
    if state.status is not JobStatus.DEAD_LETTERED:
        raise CommandRefused(f"job {state.job_id} is {state.status.value}, not dead_lettered")
    return DiscardedEvent(**_envelope(state, now, actor, event_id, state.dead_letter_event_id), reason=reason)
