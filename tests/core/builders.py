"""Test helpers: write the events of one job the way the real writers would.

``JobLog`` plays producer, worker, timer service and operator for one job, with a clock that
only moves when told to, and short readable event ids (``e001``...). ``Run`` applies events
one by one and keeps the state, the decisions and the log (derived events included).
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from typing import Any

from eventjobs.core.clock import add_seconds
from eventjobs.core.events import (
    AttemptFailedEvent,
    AttemptSnoozedEvent,
    AttemptStartedEvent,
    AttemptSucceededEvent,
    AttemptTimedOutEvent,
    CancelRequestedEvent,
    ClaimedEvent,
    DeadLetterRetriedEvent,
    DependencyProbeEvent,
    DependencyReopenedEvent,
    DependencyRequestedEvent,
    DependencyResolvedEvent,
    DiscardedEvent,
    DueEvent,
    EnqueuedEvent,
    ExpiredEvent,
    HeartbeatEvent,
    JobEvent,
    LeaseExpiredEvent,
    ProgressEvent,
    RetentionPassedEvent,
    SlotGrantedEvent,
    SlotRefusedEvent,
    SlotReleasedEvent,
    SlotRequestedEvent,
    SlotRevokedEvent,
)
from eventjobs.core.fold import Decision, apply
from eventjobs.core.ids import derived_event_id
from eventjobs.core.options import ConstantBackoff, JobOptions
from eventjobs.core.state import JobState, JobStatus

T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
TRACEBACK = 'Traceback (most recent call last):\n  File "job.py", line 3, in run\nConnectionError: reset\n'


class JobLog:
    """Events of one job, written at a controllable time."""

    def __init__(self, job_id: str = "job-1", start: datetime = T0) -> None:
        self.job_id = job_id
        self.now = start
        self._n = 0

    def tick(self, seconds: float = 1.0) -> datetime:
        self.now = add_seconds(self.now, seconds)
        return self.now

    def next_id(self) -> str:
        self._n += 1
        return f"{self.job_id}-e{self._n:03d}"

    def _env(self, **overrides: Any) -> dict[str, Any]:
        env: dict[str, Any] = {"event_id": self.next_id(), "job_id": self.job_id, "occurred_at": self.now}
        env.update(overrides)
        return env

    # producer ---------------------------------------------------------------------------------
    def enqueued(
        self,
        options: JobOptions | None = None,
        *,
        run_in: float | None = None,
        args: dict[str, Any] | None = None,
        depends_on: list[str] | None = None,
        **overrides: Any,
    ) -> EnqueuedEvent:
        options = options or JobOptions(max_attempts=3, backoff=ConstantBackoff(delay_s=10))
        return EnqueuedEvent(
            depends_on=depends_on, on_dependency_failure=options.on_dependency_failure if depends_on else None,
            **self._env(**overrides),
            actor="producer:test:1",
            name="send_email",
            queue=options.queue,
            args=args if args is not None else {"to": "a@example.com"},
            options=options.to_spec(),
            run_at=add_seconds(self.now, run_in) if run_in is not None else None,
            priority=options.priority,
            idempotency_key=options.idempotency_key if isinstance(options.idempotency_key, str) else None,
        )

    # worker -------------------------------------------------------------------------------------
    def claimed(self, attempt: int = 0, worker: str = "w1", lease_s: float = 60.0, **overrides: Any) -> ClaimedEvent:
        return ClaimedEvent(
            **self._env(**overrides), actor=f"worker:{worker}", attempt=attempt, worker_id=worker,
            lease_deadline=add_seconds(self.now, lease_s),
        )

    def started(self, attempt: int = 0, worker: str = "w1", **overrides: Any) -> AttemptStartedEvent:
        return AttemptStartedEvent(**self._env(**overrides), actor=f"worker:{worker}", attempt=attempt, worker_id=worker)

    def claim_started(self, attempt: int = 0, worker: str = "w1", lease_s: float = 60.0, *, own_claim: bool = True,
                      **overrides: Any) -> AttemptStartedEvent:
        """An ``attempt_started`` that is also the claim (it carries the lease; its claim_id is its own id,
        or None with ``own_claim=False``)."""
        env = self._env(**overrides)
        return AttemptStartedEvent(
            **{"claim_id": env["event_id"] if own_claim else None, **env}, actor=f"worker:{worker}", attempt=attempt,
            worker_id=worker, lease_deadline=add_seconds(self.now, lease_s),
        )

    def progress(self, attempt: int = 0, percent: float = 50.0, message: str = "half", **overrides: Any) -> ProgressEvent:
        return ProgressEvent(**self._env(**overrides), actor="worker:w1", attempt=attempt, percent=percent, message=message)

    def heartbeat(self, attempt: int = 0, lease_s: float = 60.0, **overrides: Any) -> HeartbeatEvent:
        return HeartbeatEvent(
            **self._env(**overrides), actor="worker:w1", attempt=attempt, lease_deadline=add_seconds(self.now, lease_s)
        )

    def succeeded(self, attempt: int = 0, result: dict[str, Any] | None = None, **overrides: Any) -> AttemptSucceededEvent:
        return AttemptSucceededEvent(**self._env(**overrides), actor="worker:w1", attempt=attempt, result=result)

    def failed(
        self,
        attempt: int = 0,
        *,
        retryable: bool = True,
        error_type: str = "ConnectionError",
        message: str = "reset",
        delay: float | None = None,
        **overrides: Any,
    ) -> AttemptFailedEvent:
        return AttemptFailedEvent(
            **self._env(**overrides), actor="worker:w1", attempt=attempt, error_type=error_type, message=message,
            traceback=TRACEBACK, retryable=retryable, retry_delay_s=delay,
        )

    def snoozed(self, attempt: int = 0, delay_s: float = 5.0, **overrides: Any) -> AttemptSnoozedEvent:
        return AttemptSnoozedEvent(**self._env(**overrides), actor="worker:w1", attempt=attempt, delay_s=delay_s)

    # processor, for another job ------------------------------------------------------------------
    def requested(self, dependent_id: str = "job-2", **overrides: Any) -> DependencyRequestedEvent:
        """Job ``dependent_id`` asks this job for its outcome."""
        return DependencyRequestedEvent(**self._env(**overrides), actor="processor:0", dependent_id=dependent_id)

    def resolved(
        self, state: JobState, dependency_id: str, outcome: str = "completed", result: dict[str, Any] | None = None,
        **overrides: Any,
    ) -> DependencyResolvedEvent:
        """The answer to this job's request to ``dependency_id`` (its id derived from the request and the round)."""
        request = request_id(state, dependency_id)
        env = self._env(**overrides)
        env.setdefault("causation_id", request)
        env["event_id"] = overrides.get("event_id", awaited_answer(state, dependency_id))
        return DependencyResolvedEvent(**env, actor="processor:1", dependency_id=dependency_id,
                                       outcome=outcome, result=result)  # type: ignore[arg-type]

    def reopened(self, state: JobState, dependency_id: str, **overrides: Any) -> DependencyReopenedEvent:
        """``dependency_id`` runs again and takes back the answer this job holds from it (its id derived from it)."""
        answer = awaited_answer(state, dependency_id)
        env = self._env(**overrides)
        env.setdefault("causation_id", answer)
        env["event_id"] = overrides.get("event_id", derived_event_id(answer, "dependency_reopened", 0))
        return DependencyReopenedEvent(**env, actor="processor:1", dependency_id=dependency_id)

    def probe(self, path: list[str], origin: str, via: str, **overrides: Any) -> DependencyProbeEvent:
        """A cycle probe that the last job of ``path`` forwards to this job."""
        return DependencyProbeEvent(**self._env(**overrides), actor="processor:1", path=path, origin=origin, via=via)

    def timed_out(self, attempt: int = 0, timeout_s: float = 30.0, **overrides: Any) -> AttemptTimedOutEvent:
        return AttemptTimedOutEvent(**self._env(**overrides), actor="worker:w1", attempt=attempt, timeout_s=timeout_s)

    # a concurrency limit's owner, for this job ---------------------------------------------------
    def _slot_request(self, state: JobState | None) -> str:
        workflow = state.workflow if state is not None else None
        return (workflow.slot_request if workflow is not None else None) or "no-request"

    def granted(self, state: JobState | None, **overrides: Any) -> SlotGrantedEvent:
        request = self._slot_request(state)
        return SlotGrantedEvent(**self._env(event_id=derived_event_id(request, "slot_granted", 0), causation_id=request,
                                            **overrides), actor="processor:0", owner_id="owner-1")

    def slot_refused(self, state: JobState | None, **overrides: Any) -> SlotRefusedEvent:
        request = self._slot_request(state)
        return SlotRefusedEvent(**self._env(event_id=derived_event_id(request, "slot_refused", 0), causation_id=request,
                                            **overrides), actor="processor:0", owner_id="owner-1", reason="full")

    def slot_revoked(self, state: JobState | None, **overrides: Any) -> SlotRevokedEvent:
        request = self._slot_request(state)
        return SlotRevokedEvent(**self._env(event_id=derived_event_id(request, "slot_revoked", 0), causation_id=request,
                                            **overrides), actor="processor:0", owner_id="owner-1", reason="newer")

    def slot_requested(self, **overrides: Any) -> SlotRequestedEvent:
        return SlotRequestedEvent(**self._env(**overrides), actor="processor:0", requester_id="job-2", attempt=0,
                                  limit="l", key="k", max=1, strategy="queue")

    def limit_changed(self, **overrides: Any) -> Any:
        from eventjobs.core.events import LimitChangedEvent

        return LimitChangedEvent(**self._env(**overrides), actor="cli:test", limit="l", key="k", max=2)

    def slot_released(self, **overrides: Any) -> SlotReleasedEvent:
        return SlotReleasedEvent(**self._env(causation_id="r", **overrides), actor="processor:0", requester_id="job-2")

    # timer service ------------------------------------------------------------------------------
    def due(self, attempt: int = 0, timer: str = "retry", sequence: int | None = None, **overrides: Any) -> DueEvent:
        return DueEvent(**self._env(**overrides), actor="timer:0", attempt=attempt, timer=timer, sequence=sequence)  # type: ignore[arg-type]

    def republish(self, attempt: int = 0, sequence: int = 0, **overrides: Any) -> DueEvent:
        """The republish timer of a pending attempt fired (the ``sequence``-th re-publish)."""
        return self.due(attempt, "republish", sequence, **overrides)

    def lease_expired(self, attempt: int, lease_deadline: datetime, **overrides: Any) -> LeaseExpiredEvent:
        return LeaseExpiredEvent(**self._env(**overrides), actor="timer:0", attempt=attempt, lease_deadline=lease_deadline)

    def retention_passed(self, attempt: int = 0, scope: str = "finished", **overrides: Any) -> RetentionPassedEvent:
        return RetentionPassedEvent(
            **self._env(**overrides), actor="timer:0", attempt=attempt, scope=scope, due_at=self.now  # type: ignore[arg-type]
        )

    def expired(self, **overrides: Any) -> ExpiredEvent:
        return ExpiredEvent(**self._env(**overrides), actor="timer:0", reason="ttl passed")

    # operator -----------------------------------------------------------------------------------
    def cancel(self, reason: str = "not needed", **overrides: Any) -> CancelRequestedEvent:
        return CancelRequestedEvent(**self._env(**overrides), actor="operator:ann", reason=reason)

    def dlq_retry(self, entry: str | None, **overrides: Any) -> DeadLetterRetriedEvent:
        return DeadLetterRetriedEvent(**self._env(causation_id=entry, **overrides), actor="operator:ann", reason="fixed")

    def discard(self, entry: str | None, **overrides: Any) -> DiscardedEvent:
        return DiscardedEvent(**self._env(causation_id=entry, **overrides), actor="operator:ann", reason="obsolete")


def request_id(state: JobState, dependency_id: str) -> str:
    """The request ``state``'s job sent ``dependency_id`` (derived from its enqueued event)."""
    depends_on = state.workflow.depends_on if state.workflow is not None else ()
    index = depends_on.index(dependency_id) if dependency_id in depends_on else 0
    return derived_event_id(state.enqueued_event_id, "dependency_requested", index)


def awaited_answer(state: JobState, dependency_id: str) -> str:
    """The id of the answer ``state``'s job waits for from ``dependency_id`` (of the current round)."""
    rounds = state.workflow.rounds if state.workflow is not None else {}
    return derived_event_id(request_id(state, dependency_id), "dependency_resolved", rounds.get(dependency_id, 0))


class Run:
    """Applies events in order like a processor; remembers everything."""

    def __init__(self, state: JobState | None = None) -> None:
        self.state = state
        self.decisions: list[Decision] = []
        self.log: list[JobEvent] = []

    def apply(self, event: JobEvent, *, accepted: bool = True) -> Decision:
        decision = apply(self.state, event)
        if accepted:
            assert decision.rejected is None, f"{event.type} rejected: {decision.rejected}"
            assert not decision.duplicate, f"{event.type} unexpectedly a duplicate"
        self.decisions.append(decision)
        self.log.append(event)
        self.log.extend(decision.derived)
        self.state = decision.state
        return decision

    def all(self, *events: JobEvent) -> JobState:
        for event in events:
            self.apply(event)
        assert self.state is not None
        return self.state


def reach(
    status: JobStatus,
    *,
    log: JobLog | None = None,
    options: JobOptions | None = None,
    run: Run | None = None,
) -> tuple[JobState, JobLog, Run]:
    """Drive a fresh job to ``status`` through valid events; return (state, log, run).

    retrying / dead_lettered are reached by failures of attempt 0; scheduled by a future run_at.
    """
    log = log or JobLog()
    run = run or Run()
    options = options or JobOptions(max_attempts=3, backoff=ConstantBackoff(delay_s=10))
    S = JobStatus
    if status is S.SCHEDULED:
        return run.all(log.enqueued(options, run_in=60)), log, run
    if status is S.WAITING:
        return run.all(log.enqueued(options, depends_on=["dep-a", "dep-b"])), log, run
    run.apply(log.enqueued(options))
    if status is S.PENDING:
        return run.state, log, run  # type: ignore[return-value]
    log.tick()
    run.apply(log.claimed())
    if status is S.CLAIMED:
        return run.state, log, run  # type: ignore[return-value]
    run.apply(log.started())
    if status is S.RUNNING:
        return run.state, log, run  # type: ignore[return-value]
    log.tick()
    if status is S.COMPLETED:
        return run.all(log.succeeded(result={"sent": True})), log, run
    if status is S.RETRYING:
        return run.all(log.failed(retryable=True)), log, run
    if status is S.CANCELLED:
        run.apply(log.cancel())
        return run.all(log.failed()), log, run
    if status in (S.DEAD_LETTERED, S.DISCARDED):
        run.apply(log.failed(retryable=False, error_type="ValueError", message="bad address"))
        if status is S.DISCARDED:
            assert run.state is not None
            run.apply(log.discard(run.state.dead_letter_event_id))
        return run.state, log, run  # type: ignore[return-value]
    raise AssertionError(f"cannot reach {status}")


def later(at: datetime, seconds: float) -> datetime:
    return at + timedelta(seconds=seconds)
