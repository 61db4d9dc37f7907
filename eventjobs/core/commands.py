"""Build the events that producers, workers, timers and operators write.

Why this module exists: each writer of events must fill the envelope and the type's fields the
same way (job id from the idempotency key, run_at from a delay, the lease rule, the id of a
fired timer, the dead-letter entry an operator acts on...), so every such event is built here
and nowhere else (``tests/core/test_event_builders_only.py`` holds the shell to that).

One builder per event type (``claimed_event``, ``heartbeat_event``, ...), taking only what the
writer knows: a worker holds a ready record and a timer service a timer key, not a job state.
(Commands over a ``JobState``, for the simulator that plays every writer, are built on these in
``eventjobs.testing.commands``.)

All are pure except for ``new_event_id()`` when no ``event_id`` is given; ``now`` is passed in.
The attempt's outcome events are built in ``eventjobs.core.outcome``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from eventjobs.core.clock import add_seconds, from_epoch_ms, utc_ms
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
    RetentionPassedEvent,
)
from eventjobs.core.ids import derived_event_id, job_id_for_key, new_event_id, new_job_id
from eventjobs.core.limits import MAX_PROGRESS_MESSAGE_CHARS, MAX_REASON_BYTES, truncate_text
from eventjobs.core.flow import windowed_job_id
from eventjobs.core.options import WHOLE_LIMIT_KEY, InvalidJobOptions, JobOptions, Limit, check_depends_on
from eventjobs.core.records import parse_timer_key

__all__ = [
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
]

#: A worker's lease unless it is configured otherwise (``eventjobs worker --lease``).
DEFAULT_LEASE_S = 30.0
#: The shortest lease granted: it must outlast the wait for the worker's first heartbeat (>= 0.2 s).
MIN_LEASE_S = 0.5


def lease_deadline(now: datetime, lease_s: float = DEFAULT_LEASE_S) -> datetime:
    """When a lease taken or extended at ``now`` ends: ``lease_s`` (at least ``MIN_LEASE_S``) later.

    The lease is the worker's, not the job's: a live worker heartbeats every lease/3 whatever the
    job's timeout, so a dead worker is noticed ``lease_s`` after its last claim or heartbeat.
    """
    return add_seconds(utc_ms(now), max(lease_s, MIN_LEASE_S))


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
    depends_on: Sequence[str] | None = None,
    default_job_id: str | None = None,
) -> EnqueuedEvent:
    """An ``enqueued`` event for a new job.

    With an idempotency key the job id is ``job_id_for_key(key_namespace or name, key)``, so a
    second enqueue with the same key targets the same job and is refused by the processor; with
    ``unique_for`` or ``debounce`` too it is ``flow.windowed_job_id`` (the key and the window of
    ``now``), and a debounced job starts ``debounce`` after ``now``.
    Without one it is ``default_job_id`` (a batch member's, ``ids.batch_member_ids``) or a new
    UUIDv7; ``job_id`` overrides both.
    ``depends_on``: jobs that must end first (``check_depends_on``: distinct ids, at most
    ``MAX_DEPENDENCIES``, not the job itself); ``options.on_dependency_failure`` says what then.
    Raises ``InvalidJobOptions`` / pydantic ``ValidationError`` for bad options, name or args.
    """
    options = options or JobOptions()
    args = dict(args or {})
    key = options.resolve_idempotency_key(args)
    window_s = options.unique_for or options.debounce
    if window_s is not None:
        option = "unique_for" if options.unique_for is not None else "debounce"
        if key is None:
            raise InvalidJobOptions(
                f"{option} needs an idempotency_key (a value, or a function of the args): the window is kept per key; "
                f"job {name!r} has none"
            )
        if depends_on:
            raise InvalidJobOptions(f"{option} and depends_on cannot be combined (job {name!r})")
    if job_id is None:
        if key is None:
            job_id = default_job_id or new_job_id()
        elif window_s is not None:
            job_id = windowed_job_id(key_namespace or name, key, window_s, now)
        else:
            job_id = job_id_for_key(key_namespace or name, key)
    dependencies = check_depends_on(depends_on, job_id) if depends_on else None
    return EnqueuedEvent(
        event_id=event_id or new_event_id(),
        job_id=job_id,
        occurred_at=now,
        actor=actor,
        name=name,
        queue=options.queue,
        args=args,
        options=options.to_spec(name, args),
        run_at=add_seconds(utc_ms(now), options.debounce) if options.debounce is not None else options.resolve_run_at(now),
        priority=options.priority,
        idempotency_key=key,
        parent_job_id=parent_job_id,
        depends_on=list(dependencies) if dependencies else None,
        on_dependency_failure=options.on_dependency_failure if dependencies else None,
    )


# -- one builder per event type ------------------------------------------------------------


def _envelope(
    job_id: str, now: datetime, actor: str, event_id: str | None, causation_id: str | None = None
) -> dict[str, Any]:
    return {
        "event_id": event_id or new_event_id(),
        "job_id": job_id,
        "occurred_at": now,
        "actor": actor,
        "causation_id": causation_id,
    }


def claimed_event(
    job_id: str,
    attempt: int,
    *,
    worker_id: str,
    now: datetime,
    actor: str,
    lease_s: float = DEFAULT_LEASE_S,
    event_id: str | None = None,
) -> ClaimedEvent:
    """A worker claims ``attempt``; its lease ends at ``lease_deadline(now, lease_s)``."""
    return ClaimedEvent(
        **_envelope(job_id, now, actor, event_id),
        attempt=attempt,
        worker_id=worker_id,
        lease_deadline=lease_deadline(now, lease_s),
    )


def attempt_started_event(
    job_id: str, attempt: int, *, worker_id: str, now: datetime, actor: str, event_id: str | None = None,
    claim_id: str | None = None,
) -> AttemptStartedEvent:
    """The claiming worker starts the handler; ``claim_id`` is its ``claimed`` event's id."""
    return AttemptStartedEvent(
        **_envelope(job_id, now, actor, event_id), attempt=attempt, worker_id=worker_id, claim_id=claim_id
    )


def claiming_start_event(
    job_id: str,
    attempt: int,
    *,
    worker_id: str,
    now: datetime,
    actor: str,
    lease_s: float = DEFAULT_LEASE_S,
    event_id: str | None = None,
) -> AttemptStartedEvent:
    """A worker claims ``attempt`` and starts its handler at once: one ``attempt_started`` that is
    also the claim (its ``claim_id`` is its own id; the lease ends at ``lease_deadline(now, lease_s)``)."""
    envelope = _envelope(job_id, now, actor, event_id)
    return AttemptStartedEvent(
        **envelope, attempt=attempt, worker_id=worker_id, claim_id=envelope["event_id"],
        lease_deadline=lease_deadline(now, lease_s),
    )


def progress_event(
    job_id: str, attempt: int, percent: float, message: str = "", *, now: datetime, actor: str, event_id: str | None = None,
    claim_id: str | None = None,
) -> ProgressEvent:
    """``ctx.progress(percent, message)``; a message over 10,000 characters is truncated (marked)."""
    if len(message) > MAX_PROGRESS_MESSAGE_CHARS:
        marker = f"… [truncated: {len(message):,} chars]"
        message = message[: MAX_PROGRESS_MESSAGE_CHARS - len(marker)] + marker
    return ProgressEvent(
        **_envelope(job_id, now, actor, event_id), attempt=attempt, percent=float(percent), message=message,
        claim_id=claim_id,
    )


def heartbeat_event(
    job_id: str,
    attempt: int,
    *,
    now: datetime,
    actor: str,
    lease_s: float = DEFAULT_LEASE_S,
    event_id: str | None = None,
    claim_id: str | None = None,
) -> HeartbeatEvent:
    """The worker extends its lease on ``attempt`` to ``lease_deadline(now, lease_s)``."""
    return HeartbeatEvent(
        **_envelope(job_id, now, actor, event_id), attempt=attempt, lease_deadline=lease_deadline(now, lease_s),
        claim_id=claim_id,
    )


def attempt_timed_out_event(
    job_id: str, attempt: int, *, timeout_s: float, now: datetime, actor: str, event_id: str | None = None,
    claim_id: str | None = None,
) -> AttemptTimedOutEvent:
    """``attempt`` ran longer than ``timeout_s``."""
    return AttemptTimedOutEvent(
        **_envelope(job_id, now, actor, event_id), attempt=attempt, timeout_s=timeout_s, claim_id=claim_id
    )


def due_event(
    job_id: str, attempt: int, timer: Literal["run_at", "retry", "republish"], *, now: datetime, actor: str,
    event_id: str | None = None, sequence: int | None = None,
) -> DueEvent:
    """The run_at, retry or republish timer of ``attempt`` fired (``sequence``: which republish)."""
    return DueEvent(**_envelope(job_id, now, actor, event_id), attempt=attempt, timer=timer, sequence=sequence)


def lease_expired_event(
    job_id: str, attempt: int, deadline: datetime, *, now: datetime, actor: str, event_id: str | None = None
) -> LeaseExpiredEvent:
    """The lease of ``attempt`` that ended at ``deadline`` was not extended."""
    return LeaseExpiredEvent(**_envelope(job_id, now, actor, event_id), attempt=attempt, lease_deadline=deadline)


def _reason(reason: str) -> str:
    """A free-text reason, truncated (marked) to ``MAX_REASON_BYTES`` so the states and events that
    copy it stay within the size limit (``eventjobs.core.limits``)."""
    return truncate_text(reason, MAX_REASON_BYTES)


def expired_event(job_id: str, reason: str, *, now: datetime, actor: str, event_id: str | None = None) -> ExpiredEvent:
    """The job's TTL passed before it started."""
    return ExpiredEvent(**_envelope(job_id, now, actor, event_id), reason=_reason(reason))


def cancel_requested_event(
    job_id: str, reason: str = "", *, now: datetime, actor: str, event_id: str | None = None
) -> CancelRequestedEvent:
    """Ask to cancel the job (it stops now if waiting, or when the running attempt ends)."""
    return CancelRequestedEvent(**_envelope(job_id, now, actor, event_id), reason=_reason(reason))


def limit_changed_event(
    limit: str, key: str | None = None, *, max_: int | None = None, rate: str | None = None, burst: int | None = None,
    reset: bool = False, now: datetime, actor: str,
) -> Any:
    """Set limit ``limit``'s max, rate and burst for ``key`` (None: the limit without key) at run
    time, or (``reset``) hand them back to the jobs' own options. ``InvalidJobOptions`` says what
    is wrong (the rules of ``Limit``)."""
    from eventjobs.core.events import LimitChangedEvent
    from eventjobs.core.slots import owner_id

    checked = None
    if reset:
        if max_ is not None or rate is not None or burst is not None:
            raise InvalidJobOptions(f"limit {limit!r}: a reset hands max, rate and burst back to the jobs' options; "
                                    f"give none of them with it")
    else:
        try:
            checked = Limit(key=key, name=limit, max=max_, rate=rate, burst=burst)
        except InvalidJobOptions as error:
            raise InvalidJobOptions(f"limit {limit!r}: {str(error).removeprefix('concurrency: ')}") from None
    resolved = key or WHOLE_LIMIT_KEY
    return LimitChangedEvent(
        **_envelope(owner_id(limit, resolved), now, actor, None), limit=limit, key=resolved,
        max=checked.max if checked else None, rate=checked.rate if checked else None,
        burst=(checked.burst or 1) if checked else 1, reset=reset,
    )


def dead_letter_retried_event(
    job_id: str, dead_letter_event_id: str | None, reason: str = "", *, now: datetime, actor: str,
    event_id: str | None = None,
) -> DeadLetterRetriedEvent:
    """Retry the dead-lettered job; naming the ``dead_lettered`` event acted on makes it idempotent."""
    return DeadLetterRetriedEvent(**_envelope(job_id, now, actor, event_id, dead_letter_event_id), reason=_reason(reason))


def discarded_event(
    job_id: str, dead_letter_event_id: str | None, reason: str = "", *, now: datetime, actor: str,
    event_id: str | None = None,
) -> DiscardedEvent:
    """Discard the dead-lettered job; naming the ``dead_lettered`` event acted on makes it idempotent."""
    return DiscardedEvent(**_envelope(job_id, now, actor, event_id, dead_letter_event_id), reason=_reason(reason))


def retention_passed_event(
    job_id: str, attempt: int, scope: Literal["dead_letter", "finished"], due_at: datetime, *, now: datetime,
    actor: str, event_id: str | None = None,
) -> RetentionPassedEvent:
    """The timer service: a job's dead-letter retention or its retain_completed passed."""
    return RetentionPassedEvent(
        **_envelope(job_id, now, actor, event_id), attempt=attempt, scope=scope, due_at=due_at
    )


def timer_fired_event(
    key: bytes, due_ms: int, attempt: int, *, now: datetime, actor: str
) -> DueEvent | LeaseExpiredEvent | ExpiredEvent | RetentionPassedEvent:
    """The event a due timer (its ``timer_key``, due time in ms, attempt) causes: a timer record's
    (run_at, retry, ttl; the timer service) or a lane's housekeeping timer's (lease, republish,
    retain, dead_letter; ``core.housekeeping``).

    Its id is derived from the timer, so firing the same timer again writes a duplicate, which
    ``apply`` ignores.
    """
    job_id, kind, number = parse_timer_key(key)
    due_at = from_epoch_ms(due_ms)
    cause = f"{job_id}:{kind}:{attempt}:{due_ms}"
    if kind == "run_at" or kind == "retry":
        return due_event(job_id, attempt, kind, now=now, actor=actor,  # type: ignore[arg-type]  # one of the two
                         event_id=derived_event_id(cause, "due", 0))
    if kind == "republish":  # the key names which re-publish of the attempt's ready record this is
        return due_event(job_id, attempt, "republish", now=now, actor=actor, sequence=number,
                         event_id=derived_event_id(f"{cause}:{number}", "due", 0))
    if kind == "lease":
        return lease_expired_event(
            job_id, attempt, due_at, now=now, actor=actor, event_id=derived_event_id(cause, "lease_expired", 0)
        )
    if kind == "ttl":
        return expired_event(
            job_id,
            f"ttl passed at {due_at.isoformat(timespec='milliseconds')} before the job started",
            now=now,
            actor=actor,
            event_id=derived_event_id(cause, "expired", 0),
        )
    if kind == "dead_letter" or kind == "retain":
        scope: Literal["dead_letter", "finished"] = "dead_letter" if kind == "dead_letter" else "finished"
        return retention_passed_event(
            job_id, attempt, scope, due_at, now=now, actor=actor,
            event_id=derived_event_id(cause, "retention_passed", 0),
        )
    raise ValueError(f"unknown timer kind {kind!r} in key {key!r}")
