"""Pure functions from the fold to ClickHouse rows: event -> job_events row, job -> jobs / dead_letters row.

Why this module exists: the projector, the replay and the tests must all turn the same log into the
same rows, byte for byte, so the mapping lives here with no I/O and no clock. A projected job is
the core's `JobState` plus what only the read side needs: when the current attempt became ready
(for the wait metric), which derived events the processor is still expected to echo into the log
(so the first echo counts in the metrics and a redelivered one does not), the offset of the
last event folded in (the row's version), and whether the job was forgotten.

A job is forgotten when its ``finished`` retention passed (``retention_passed`` with scope
"finished": the core's `apply` returns no state and rejects nothing). The processor drops it
from its table; the read side keeps it, with its final state, so its history stays queryable,
but marks it ``forgotten`` and folds the next event of that job id from no state, exactly as the
processor does: an ``enqueued`` with the same id (same idempotency key) creates a new job.
"""

from __future__ import annotations

from datetime import datetime, UTC
from collections.abc import Iterable, Sequence
from typing import Any, NamedTuple

import orjson

from eventjobs.core.codec import decode as decode_event
from eventjobs.core.events import DERIVED_TYPES, LINKED_TYPES, JobEvent
from eventjobs.core.fold import Decision, apply
from eventjobs.core.state import JobState, JobStatus, decode_state, encode_state

JOB_EVENT_COLUMNS: tuple[str, ...] = (
    "event_id", "job_id", "type", "occurred_at", "queue", "name", "attempt", "actor", "causation_id",
    "outcome", "counted", "reject_reason", "status_after", "has_wait", "wait_s", "has_duration", "duration_s",
    "payload", "log_partition", "log_offset",
)
JOB_COLUMNS: tuple[str, ...] = (
    "job_id", "queue", "name", "status", "priority", "attempt", "attempts_started", "max_attempts",
    "enqueued_at", "run_at", "started_at", "finished_at", "updated_at", "next_due_at", "worker_id", "result",
    "error_type", "error_message", "error_traceback", "reason", "progress_percent", "progress_message",
    "idempotency_key", "parent_job_id", "args", "state_json", "ready_at", "pending_echo", "log_partition", "version",
    "forgotten",
    "depends_on", "waiting_for", "dependents", "snoozes",  # 007_workflows
)
DEAD_LETTER_COLUMNS: tuple[str, ...] = (
    "job_id", "queue", "name", "reason", "error_type", "error_message", "error_traceback", "attempts",
    "dead_lettered_at", "dead_letter_event_id", "deleted", "version",
)
# What `jobs` must give back for the projector to resume folding a job.
RESUME_COLUMNS: tuple[str, ...] = (
    "job_id", "state_json", "ready_at", "pending_echo", "log_partition", "version", "forgotten",
)

_ATTEMPT_OUTCOMES = frozenset({"attempt_succeeded", "attempt_failed", "attempt_timed_out", "lease_expired"})
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


class ProjectedJob(NamedTuple):
    """A job as the read side folds it: the core state plus wait/echo bookkeeping and its version.

    ``forgotten``: the processor forgot the job (its ``finished`` retention passed). ``state`` is
    then its final state, kept for the history, and the next event of this job id is folded from
    no state (``apply(None, event)``).

    A NamedTuple rather than a frozen dataclass: one is built per event, and this is ~3x cheaper.
    """

    state: JobState
    ready_at: datetime | None
    pending_echo: tuple[str, ...]
    log_partition: int
    version: int
    forgotten: bool = False


class Projected(NamedTuple):
    """The outcome of folding one record: the job afterwards (None: still unknown) and its event row."""

    job: ProjectedJob | None
    row: tuple[Any, ...]


def project_event(job: ProjectedJob | None, event: JobEvent, payload: bytes, partition: int, offset: int) -> Projected:
    """Apply `event` with the core's `apply` and describe it as a `job_events` row.

    A forgotten `job` is folded as no job at all (as the processor, which dropped it, folds it);
    it stays the result until an event creates a new job with its id.
    """
    live = job if job is not None and not job.forgotten else None
    before = live.state if live is not None else None
    decision = apply(before, event)
    outcome, counted, pending = _classify(live, event, decision)
    wait_s = _wait_s(live, event) if decision.accepted else None
    duration_s = _duration_s(before, event) if decision.accepted else None
    after = decision.state
    new_job = job
    if after is not None:
        new_job = ProjectedJob(
            state=after,
            ready_at=_ready_at(live, event, decision),
            pending_echo=pending,
            log_partition=partition,
            version=offset,
        )
    elif live is not None and decision.accepted:
        # forgotten (its `finished` retention passed): the final state stays, for the history
        new_job = live._replace(pending_echo=pending, log_partition=partition, version=offset, forgotten=True)
    state = after or before or (job.state if job is not None else None)
    row = (
        event.event_id, event.job_id, event.type, event.occurred_at,
        state.queue if state else "", state.name if state else "",
        event.__dict__.get("attempt", -1), event.actor, event.causation_id or "",  # (getattr of a missing
        # field goes through pydantic's __getattr__ and an exception: ~3% of the projector's time)
        outcome, 1 if counted else 0, decision.rejected or "", after.status.value if after else "",
        1 if wait_s is not None else 0, wait_s or 0.0, 1 if duration_s is not None else 0, duration_s or 0.0,
        payload.decode("utf-8", errors="replace"), partition, offset,
    )
    return Projected(new_job, row)


def _classify(job: ProjectedJob | None, event: JobEvent, decision: Decision) -> tuple[str, bool, tuple[str, ...]]:
    """(outcome, counted in metrics, derived ids still expected to be echoed into the log).

    A ``retention_passed`` that forgets the job is "forgotten" and not counted: it ends no job and
    no attempt (the job ended when it finished), and a counted row would put a metric row at its
    minute, stretching the window throughput is computed over. One that discards a dead-lettered
    job is "applied" and counted, like an operator's ``discarded``.
    """
    pending = job.pending_echo if job is not None else ()
    if decision.derived:  # a dependency request or answer lands on another job: never echoed here
        echoes = [d.event_id for d in decision.derived if d.type not in LINKED_TYPES]
        if echoes:
            pending = tuple(dict.fromkeys((*pending, *echoes)))
    if decision.duplicate:
        if event.type in DERIVED_TYPES and event.event_id in pending:
            return "derived", True, tuple(i for i in pending if i != event.event_id)
        return "duplicate", False, pending
    if decision.rejected is not None:
        return ("unknown_job" if decision.state is None else "rejected"), False, pending
    if decision.state is None:
        return "forgotten", False, pending
    if event.type == "enqueued" and job is not None and not job.forgotten:
        return "applied", False, pending  # a debounce's replacement of the args: no new job, not counted
    return "applied", True, pending


def _seconds_between(start: datetime | None, end: datetime) -> float | None:
    if start is None:
        return None
    return max(0.0, (end - start).total_seconds())


def _wait_s(job: ProjectedJob | None, event: JobEvent) -> float | None:
    """Ready (enqueued, run_at or retry due time) -> attempt start."""
    if event.type != "attempt_started" or job is None:
        return None
    return _seconds_between(job.ready_at or job.state.enqueued_at, event.occurred_at)


def _duration_s(before: JobState | None, event: JobEvent) -> float | None:
    """Attempt start -> its outcome (only for attempts that started running)."""
    if event.type not in _ATTEMPT_OUTCOMES or before is None or before.status is not JobStatus.RUNNING:
        return None
    return _seconds_between(before.started_at, event.occurred_at)


def _ready_at(job: ProjectedJob | None, event: JobEvent, decision: Decision) -> datetime | None:
    previous = job.ready_at if job is not None else None
    if not decision.accepted:
        return previous
    if event.type == "enqueued":
        run_at = getattr(event, "run_at", None)
        return run_at if run_at is not None and run_at > event.occurred_at else event.occurred_at
    if event.type == "due":
        if event.timer == "republish":  # the same wait goes on: only its ready record was sent again
            return previous
        due_at = job.state.next_due_at if job is not None else None
        return due_at or event.occurred_at
    if event.type == "dead_letter_retried":
        return event.occurred_at
    return previous


def malformed_row(value: bytes | None, key: bytes | None, partition: int, offset: int, timestamp_ms: int,
                  reason: str) -> tuple[Any, ...]:
    """A record that is not an event: kept, visible, never counted (the processor quarantines it)."""
    occurred_at = datetime.fromtimestamp(max(timestamp_ms, 0) / 1000, tz=UTC)
    job_id = (key or b"").decode("utf-8", errors="replace")
    payload = (value or b"").decode("utf-8", errors="replace")
    return (f"malformed:{partition}:{offset}", job_id, "malformed", occurred_at, "", "", -1, "", "",
            "malformed", 0, reason, "", 0, 0.0, 0, 0.0, payload, partition, offset)


def _json_or_empty(value: Any) -> str:
    return orjson.dumps(value).decode() if value is not None else ""


def job_row(job: ProjectedJob) -> tuple[Any, ...]:
    """The `jobs` row of a projected job."""
    s = job.state
    error = s.last_error
    return (
        s.job_id, s.queue, s.name, s.status.value, s.priority.value, s.attempt, s.attempts_started, s.max_attempts,
        s.enqueued_at, s.run_at, s.started_at, s.finished_at, s.updated_at, s.next_due_at, s.worker_id or "",
        _json_or_empty(s.result), error.error_type if error else "", error.message if error else "",
        error.traceback if error else "", s.reason or "", s.progress_percent, s.progress_message or "",
        s.idempotency_key or "", s.parent_job_id or "", orjson.dumps(s.args).decode(),
        encode_state(s).decode(), job.ready_at, list(job.pending_echo), job.log_partition, job.version,
        1 if job.forgotten else 0,
        *_workflow_columns(s),
    )


def _workflow_columns(state: JobState) -> tuple[list[str], list[str], list[str], int]:
    """depends_on, waiting_for (unresolved while waiting), dependents, snoozes (007_workflows)."""
    workflow = state.workflow
    if workflow is None:
        return [], [], [], 0
    waiting_for = list(workflow.unresolved) if state.status is JobStatus.WAITING else []
    return list(workflow.depends_on), waiting_for, list(workflow.dependents), workflow.snoozes


def dead_letter_row(job: ProjectedJob) -> tuple[Any, ...]:
    """The `dead_letters` row: present while dead-lettered, a deletion marker once it left."""
    s = job.state
    error = s.last_error
    deleted = 0 if s.status is JobStatus.DEAD_LETTERED else 1
    return (
        s.job_id, s.queue, s.name, s.reason or "", error.error_type if error else "", error.message if error else "",
        error.traceback if error else "", s.attempts_started, s.finished_at or s.updated_at,
        s.dead_letter_event_id or "", deleted, job.version,
    )


def job_from_row(row: dict[str, Any]) -> ProjectedJob:
    """A projected job back from its `jobs` row (`RESUME_COLUMNS`), to resume folding after a restart."""
    return ProjectedJob(
        state=decode_state(row["state_json"].encode()),
        ready_at=row["ready_at"],
        pending_echo=tuple(row["pending_echo"]),
        log_partition=int(row["log_partition"]),
        version=int(row["version"]),
        forgotten=bool(row.get("forgotten", 0)),
    )


def columns_of(rows: list[tuple[Any, ...]], width: int) -> list[list[Any]]:
    """Rows -> one list per column (the shape `Backend.insert` takes)."""
    if not rows:
        return [[] for _ in range(width)]
    return [list(column) for column in zip(*rows, strict=True)]


def fold_stored(rows: Iterable[Sequence[Any]]) -> dict[str, ProjectedJob]:
    """Fold `job_events` rows `(job_id, payload, log_partition, log_offset, outcome)`, in log order,
    with `project_event` (malformed ones skipped): the jobs they leave, as the projector left them."""
    jobs: dict[str, ProjectedJob] = {}
    for job_id, payload, partition, offset, outcome in rows:
        if outcome == "malformed":
            continue
        data = payload.encode()
        projected = project_event(jobs.get(job_id), decode_event(data), data, int(partition), int(offset))
        if projected.job is not None:
            jobs[job_id] = projected.job
    return jobs
