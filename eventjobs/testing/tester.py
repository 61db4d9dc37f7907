"""`JobTester`: run an app's real handlers inline, on a frozen clock, with no broker.

Why this module exists: users test their handlers in their own suites (River's ``rivertest``,
Dramatiq's ``StubBroker``, ``Oban.Testing``). A test here runs what production runs, in one
process: the job is enqueued with ``App._build_enqueue`` (the job type's options and the
enqueue's overrides), its attempt is claimed and started with the worker's builders, the
registered handler gets a real ``JobContext``, ``core.attempt_end`` turns what happened into the
attempt's event (the worker's rule), and ``MemoryLane`` folds every event with ``apply`` and
keeps the timers the processor would arm. Time stands still until the test moves it
(``advance``); the timers due by then fire in order, and every attempt they make runnable runs.

Not production: one worker that serves every queue and has every capability, no leases that
run out (the clock does not move while a handler runs), no cancel of a running handler, no
shutdown. A handler's ``timeout`` is real time, as in the worker: pass a short one in a test.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Coroutine
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from eventjobs import JobContext, JobsNotCompleted, UnknownDependency
from eventjobs.core.attempt_end import (
    Happened,
    NoHandler,
    NotRecordable,
    Raised,
    Returned,
    RunningAttempt,
    TimedOut,
    attempt_end,
)
from eventjobs.core.clock import FrozenClock, epoch_ms, from_epoch_ms, utc_ms
from eventjobs.core.commands import (
    DEFAULT_LEASE_S,
    cancel_requested_event,
    claiming_start_event,
    heartbeat_event,
    progress_event,
)
from eventjobs.core.events import EnqueuedEvent, JobEvent
from eventjobs.core.housekeeping import Retention
from eventjobs.core.records import DeadLetterRecord, ReadyRecord
from eventjobs.core.state import JobState, JobStatus
from eventjobs.testing.lane import MemoryLane

if TYPE_CHECKING:
    from eventjobs import App

__all__ = ["MAX_ATTEMPTS_PER_CALL", "JobRun", "JobTester", "StillRunnable", "run_job", "run_job_sync"]

T = TypeVar("T")

#: At most this many attempts per `advance` / `drain` call, by default: more means a job that never ends.
MAX_ATTEMPTS_PER_CALL = 10_000
OPERATOR_ACTOR = "operator:testing"


class StillRunnable(RuntimeError):
    """`advance` or `drain` ran its most attempts (`JobTester.max_attempts_per_call`) and jobs could still run."""


class JobRun:
    """One job in a `JobTester`: its state and its events as the fold has them now."""

    def __init__(self, tester: JobTester, job_id: str) -> None:
        self.tester = tester
        self.job_id = job_id

    @property
    def state(self) -> JobState:
        """The job's current state (after its retention passed: the last one it had)."""
        return self.tester.state(self.job_id)

    @property
    def status(self) -> JobStatus:
        return self.state.status

    @property
    def result(self) -> dict[str, Any] | None:
        return self.state.result

    @property
    def events(self) -> list[JobEvent]:
        """Every event of the job, in log order: written by the "worker", the "timers" and the
        "processor" (derived), rejected ones included (`JobTester.rejected` says why)."""
        return [event for event in self.tester.events if event.job_id == self.job_id]

    @property
    def types(self) -> list[str]:
        """The types of `events`, for short assertions: `["enqueued", "attempt_started", ...]`."""
        return [event.type for event in self.events]

    @property
    def enqueued(self) -> list[EnqueuedEvent]:
        """The `enqueued` events of the children its handler enqueued (`ctx.enqueue`), in order."""
        return [event for event in self.tester.enqueued if event.parent_job_id == self.job_id]

    async def advance(self, seconds: float = 0.0, **delta: float) -> None:
        """`JobTester.advance`: let time pass for every job of the tester."""
        await self.tester.advance(seconds, **delta)

    async def drain(self, *, advance_clock: bool = False) -> None:
        """`JobTester.drain`."""
        await self.tester.drain(advance_clock=advance_clock)

    def advance_sync(self, seconds: float = 0.0, **delta: float) -> None:
        self.tester.advance_sync(seconds, **delta)

    def drain_sync(self, *, advance_clock: bool = False) -> None:
        self.tester.drain_sync(advance_clock=advance_clock)

    def __repr__(self) -> str:
        state = self.tester.lane.last_states.get(self.job_id)
        if state is None:
            return f"<JobRun {self.job_id} (no state)>"
        error = f" last_error={state.last_error.error_type}: {state.last_error.message[:200]!r}" if state.last_error else ""
        return f"<JobRun {state.name} {self.job_id} {state.status.value} attempt={state.attempt}{error}>"


class JobTester:
    """Runs jobs of ``app`` inline, with the real handlers, context, outcome rules and fold.

    ``clock`` (default: a `FrozenClock` at 2024-01-01 UTC) is the only time the events see;
    ``lease_s`` is the lease the "worker" takes. Retention follows the app's settings, as the
    processor's would. ``advance`` and ``drain`` run at most ``max_attempts_per_call`` attempts
    each, then raise `StillRunnable` (a job that never ends would otherwise hang the test).
    """

    def __init__(
        self, app: App, *, clock: FrozenClock | None = None, worker_id: str = "testing", lease_s: float = DEFAULT_LEASE_S,
        max_attempts_per_call: int = MAX_ATTEMPTS_PER_CALL,
    ) -> None:
        self.app = app
        self.clock = clock or FrozenClock()
        self.worker_id = worker_id
        self.actor = f"worker:{worker_id}"
        self.lease_s = lease_s
        settings = app.settings
        self.lane = MemoryLane(Retention(settings.retain_completed_s, settings.dead_letter_retention_s))
        self.max_attempts_per_call = max_attempts_per_call
        self._attempts_left = max_attempts_per_call

    # -- what the log holds -------------------------------------------------------------------
    @property
    def events(self) -> list[JobEvent]:
        """Every event of every job, in log order."""
        return self.lane.events

    @property
    def enqueued(self) -> list[EnqueuedEvent]:
        """Every `enqueued` event (by the test or by handlers), in order."""
        return [event for event in self.lane.events if isinstance(event, EnqueuedEvent)]

    @property
    def rejected(self) -> list[tuple[JobEvent, str]]:
        """Events the fold refused, with its reason (a duplicate enqueue, say)."""
        return self.lane.rejected

    @property
    def dead_letters(self) -> dict[str, DeadLetterRecord]:
        """The dead-letter entries now, by job id."""
        return self.lane.dead_letters

    def state(self, job_id: str) -> JobState:
        """The job's current state (the last one, once its retention passed)."""
        state = self.lane.last_states.get(job_id)
        if state is None:
            known = ", ".join(f"{s.name} {s.job_id}" for s in list(self.lane.last_states.values())[:10]) or "none"
            raise KeyError(f"no job {job_id!r} in this tester (jobs: {known})")
        return state

    def job(self, job_id: str) -> JobRun:
        """The `JobRun` view of a job of this tester."""
        self.state(job_id)
        return JobRun(self, job_id)

    # -- what a test does ---------------------------------------------------------------------
    def enqueue(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> str:
        """Enqueue as `App.enqueue` does (same validation, options and errors), into this tester;
        returns the job id. Nothing runs yet."""
        event = self.app._build_enqueue(name, args, now=self.clock.now(), **options)
        self.app.writer.encoded([event])  # App.enqueue's size check (PayloadTooLarge), nothing is sent
        for dependency in event.depends_on or ():
            if dependency not in self.lane.last_states:
                raise UnknownDependency(
                    f"depends_on names job {dependency!r}, which this tester does not hold (enqueue it first); "
                    f"nothing was enqueued"
                )
        self.lane.write(event)
        return event.job_id

    async def run(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> JobRun:
        """Enqueue a job and run its attempt now, if it may run now (not scheduled for later and not
        waiting for dependencies). Only this job runs: children it enqueues wait for `drain`."""
        job_id = self.enqueue(name, args, **options)
        ready = self.lane.take_ready(job_id)
        if ready is not None:
            await self._attempt(ready)
        return JobRun(self, job_id)

    async def advance(self, seconds: float = 0.0, **delta: float) -> None:
        """Let ``seconds`` (and/or `timedelta` keyword arguments) pass: every timer due meanwhile
        fires at its due time, in order (retries, snoozes, run_at, ttl, retention), and every
        attempt that may run then runs, children and dependents included."""
        step = timedelta(seconds=seconds, **delta)
        if step < timedelta(0):
            raise ValueError(f"time only moves forward, got {step}")
        target = utc_ms(self.clock.now() + step)
        self._attempts_left = self.max_attempts_per_call
        await self._settle()
        while (due_ms := self.lane.next_due_ms()) is not None and due_ms <= epoch_ms(target):
            if due_ms > epoch_ms(self.clock.now()):
                self.clock.set(from_epoch_ms(due_ms))
            await self._settle()
        self.clock.set(target)
        await self._settle()

    async def drain(self, *, advance_clock: bool = False) -> None:
        """Run every job that may run now, and what that makes runnable (children, dependents,
        retries due now), until nothing may. With ``advance_clock``, then jump the clock to each
        next retry, run_at or ttl timer until no job waits for one (retention timers excluded)."""
        self._attempts_left = self.max_attempts_per_call
        await self._settle()
        while advance_clock and (due_ms := self.lane.next_due_ms(housekeeping=False)) is not None:
            if due_ms > epoch_ms(self.clock.now()):
                self.clock.set(from_epoch_ms(due_ms))
            await self._settle()

    def cancel(self, job_id: str, reason: str = "") -> None:
        """Ask to cancel the job, as `App.cancel` does (it ends now unless its attempt is running)."""
        self.state(job_id)
        self.lane.write(cancel_requested_event(job_id, reason, now=self.clock.now(), actor=OPERATOR_ACTOR))

    # -- sync twins, for tests without an event loop -----------------------------------------
    def run_sync(self, name: str, args: dict[str, Any] | None = None, **options: Any) -> JobRun:
        return _run_sync(self.run(name, args, **options), "run_sync", "await tester.run(...)")

    def advance_sync(self, seconds: float = 0.0, **delta: float) -> None:
        _run_sync(self.advance(seconds, **delta), "advance_sync", "await tester.advance(...)")

    def drain_sync(self, *, advance_clock: bool = False) -> None:
        _run_sync(self.drain(advance_clock=advance_clock), "drain_sync", "await tester.drain()")

    # -- the "worker" -------------------------------------------------------------------------
    async def _settle(self) -> None:
        """Fire the timers due now and run the ready attempts, until neither is left."""
        while True:
            self.lane.fire_due(self.clock.now())
            ready = self.lane.take_ready()
            if ready is None:
                return
            if self._attempts_left <= 0:
                raise StillRunnable(
                    f"{self.max_attempts_per_call:,} attempts ran in this call and job {ready.name} {ready.job_id} may still "
                    f"run (attempt {ready.attempt}): a job that retries, snoozes or enqueues jobs forever?"
                )
            self._attempts_left -= 1
            await self._attempt(ready)

    async def _attempt(self, ready: ReadyRecord) -> None:
        """Claim, start and run one attempt, and write the event that ends it, as the worker does."""
        now = self.clock.now()
        claim = claiming_start_event(ready.job_id, ready.attempt, worker_id=self.worker_id, now=now, actor=self.actor,
                                     lease_s=self.lease_s)  # the claim is the start, as the worker writes it
        self.lane.write(claim)
        if self.lane.states[ready.job_id].claim_id != claim.event_id:  # refused: another claim won (not here)
            return
        definition = self.app.jobs.get(ready.name)
        backoff = definition.options.backoff if definition is not None and callable(definition.options.backoff) else None
        try:
            happened = await self._call(ready, claim.event_id)
        except Exception as error:  # noqa: BLE001 - running it failed outside the handler, as the worker records it
            happened = NotRecordable(error)
        attempt = RunningAttempt.of(ready, actor=self.actor, claim_id=claim.event_id, backoff=backoff,
                                    max_event_bytes=self.app.settings.max_event_bytes)
        self.lane.write(attempt_end(attempt, happened, now=self.clock.now()))

    async def _call(self, ready: ReadyRecord, claim_id: str) -> Happened:
        definition = self.app.jobs.get(ready.name)
        if definition is None:
            return NoHandler(ready.name, self.app.name, tuple(self.app.jobs))
        ctx = self._context(ready, claim_id)
        call = functools.partial(definition.handler, ready.args, ctx) if definition.takes_context else \
            functools.partial(definition.handler, ready.args)
        try:
            async with asyncio.timeout(ready.options.timeout_s) as deadline:
                if definition.is_async:
                    result = await call()
                else:  # in a thread, as the worker runs it: ctx's methods reach this loop from there
                    result = await asyncio.get_running_loop().run_in_executor(None, call)
        except TimeoutError as error:
            return TimedOut() if deadline.expired() else Raised(error)
        except asyncio.CancelledError:
            raise
        except BaseException as error:  # noqa: BLE001 - every failure is the attempt's outcome, as in the worker
            return Raised(error)
        return Returned(result)

    def _context(self, ready: ReadyRecord, claim_id: str) -> JobContext:
        job_id, attempt = ready.job_id, ready.attempt

        async def send_progress(percent: float, message: str) -> None:
            self.lane.write(progress_event(job_id, attempt, percent, message, now=self.clock.now(), actor=self.actor,
                                           claim_id=claim_id))

        async def send_heartbeat() -> None:
            self.lane.write(heartbeat_event(job_id, attempt, now=self.clock.now(), actor=self.actor,
                                            lease_s=self.lease_s, claim_id=claim_id))

        async def enqueue_child(name: str, args: dict[str, Any] | None, **options: Any) -> str:
            return self.enqueue(name, args, **options)

        async def wait_for_jobs(job_ids: list[str], timeout: float) -> dict[str, Any]:
            return await self._wait_for(job_ids)

        def cancel_requested() -> bool:
            state = self.lane.states.get(job_id)
            return state is not None and state.cancel_requested

        return JobContext(
            job_id=job_id, name=ready.name, queue=ready.queue, attempt=attempt, max_attempts=ready.options.max_attempts,
            send_progress=send_progress, send_heartbeat=send_heartbeat, enqueue_child=enqueue_child,
            loop=asyncio.get_running_loop(), cancel_requested=cancel_requested,
            dependencies={dep: outcome.model_dump() for dep, outcome in (ready.dependencies or {}).items()},
            wait_for_jobs=wait_for_jobs,
        )

    async def _wait_for(self, job_ids: list[str]) -> dict[str, Any]:
        """`ctx.wait_for_jobs`: run those jobs' ready attempts now (the clock stands still while a
        handler waits), then {job id: result}, or `JobsNotCompleted` naming the others."""
        for job_id in job_ids:
            while (ready := self.lane.take_ready(job_id)) is not None:
                await self._attempt(ready)
        results: dict[str, Any] = {}
        problems: dict[str, str] = {}
        for job_id in job_ids:
            state = self.lane.last_states.get(job_id)
            if state is None:
                problems[job_id] = "no such job in this tester"
            elif state.status is JobStatus.COMPLETED:
                results[job_id] = state.result
            elif state.is_terminal:
                problems[job_id] = f"ended {state.status.value}" + (f": {state.reason}" if state.reason else "")
            else:
                problems[job_id] = (f"did not end: {state.status.value} (the tester's clock stands still while a "
                                    f"handler waits, so retries and scheduled runs do not come)")
        if problems:
            raise JobsNotCompleted(problems, results)
        return results


def _run_sync(coroutine: Coroutine[Any, Any, T], name: str, instead: str) -> T:
    """Run a tester coroutine to its end in a new event loop (for sync tests)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coroutine)
    coroutine.close()
    raise RuntimeError(f"{name} is for code without a running event loop; in an async test use `{instead}`")


async def run_job(app: App, name: str, args: dict[str, Any] | None = None, *,
                  clock: FrozenClock | None = None, **options: Any) -> JobRun:
    """Run one job of ``app`` in a new `JobTester` (see `JobTester.run`); returns its `JobRun`,
    whose `advance` / `drain` step what follows (retries, snoozes, children)."""
    return await JobTester(app, clock=clock).run(name, args, **options)


def run_job_sync(app: App, name: str, args: dict[str, Any] | None = None, *,
                 clock: FrozenClock | None = None, **options: Any) -> JobRun:
    """`run_job` for tests without an event loop (then step with `run.advance_sync` / `drain_sync`)."""
    return _run_sync(run_job(app, name, args, clock=clock, **options), "run_job_sync", "await run_job(...)")


