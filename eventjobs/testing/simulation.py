"""Synthetic but valid job event logs, reproducible from a seed.

Why this module exists: property tests, the fold benchmark and load tests all need realistic
logs (many jobs interleaved, retries, lease losses, cancellations, dead letters, operator
actions) that are valid by construction. The simulator plays every writer (producer, worker,
timer service, operator) with the core's event builders against the real ``apply``, so a log
contains exactly what a healthy system would write, including the processor's derived events
right after their cause.

Everything is a pure function of the ``random.Random`` it is given: ids and times included.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, UTC
from typing import Any

from eventjobs.testing import commands
from eventjobs.core.events import LINKED_TYPES, JobEvent
from eventjobs.core.fold import apply
from eventjobs.core.options import (
    ConstantBackoff,
    ExponentialBackoff,
    JobOptions,
    LinearBackoff,
    NoBackoff,
    Priority,
)
from eventjobs.core.outcome import attempt_failed_event, attempt_snoozed_event, attempt_succeeded_event
from eventjobs.core.state import JobState, JobStatus

__all__ = ["SimulationProfile", "generate_log", "job_lifecycle", "sim_id", "workflow_log"]

EPOCH = datetime(2025, 1, 1, tzinfo=UTC)
OPERATOR = "operator:sim"


def sim_id(rng: random.Random, at: datetime) -> str:
    """A UUIDv7-shaped id for time ``at`` with random bits from ``rng`` (reproducible)."""
    ms = int(at.timestamp() * 1000)
    value = (ms << 80) | (0x7 << 76) | (rng.getrandbits(12) << 64) | (0b10 << 62) | rng.getrandbits(62)
    hex32 = f"{value:032x}"
    return f"{hex32[:8]}-{hex32[8:12]}-{hex32[12:16]}-{hex32[16:20]}-{hex32[20:]}"


@dataclass(frozen=True)
class SimulationProfile:
    """How often things happen (probabilities per decision point)."""

    succeed: float = 0.80  # a running attempt succeeds (otherwise one of the failure kinds)
    retryable: float = 0.85  # a failure is retryable
    timeout: float = 0.05  # a failure is a timeout
    lease_loss: float = 0.05  # a claimed/running attempt loses its lease
    claim_start: float = 0.0  # a pending job's claim is also the start (one attempt_started, as the worker writes it)
    cancel: float = 0.02  # someone asks to cancel at a decision point
    heartbeats: float = 0.5  # mean heartbeats per attempt
    progress: float = 0.5  # mean progress reports per attempt
    scheduled: float = 0.1  # the job has a future run_at
    ttl: float = 0.1  # the job has a ttl
    expire: float = 0.3  # a job with a ttl expires while waiting (per waiting period)
    dlq_retry: float = 0.5  # an operator retries a dead-lettered job (once per job at most)
    discard: float = 0.3  # an operator discards a dead-lettered job


def _options(rng: random.Random, profile: SimulationProfile) -> JobOptions:
    backoff = rng.choice(
        [
            ExponentialBackoff(),
            ExponentialBackoff(base_s=0.5, cap_s=60, jitter=0.2, seed=rng.getrandbits(16)),
            LinearBackoff(step_s=2),
            ConstantBackoff(delay_s=5),
            NoBackoff(),
        ]
    )
    return JobOptions(
        queue=rng.choice(["default", "email", "reports"]),
        max_attempts=rng.choice([1, 2, 3, 5, 20]),
        backoff=backoff,
        retry_on=("Exception",),
        timeout=rng.choice([10, 30, 120]),
        priority=rng.choice(list(Priority)),
        ttl=rng.choice([60.0, 600.0]) if rng.random() < profile.ttl else None,
    )


def job_lifecycle(
    rng: random.Random,
    *,
    start: datetime = EPOCH,
    options: JobOptions | None = None,
    profile: SimulationProfile = SimulationProfile(),
    name: str = "demo.task",
    args: dict[str, Any] | None = None,
    max_steps: int = 500,
) -> Iterator[JobEvent]:
    """The events of one job from ``enqueued`` to a terminal status, derived events included.

    Every original event is accepted by ``apply`` (the simulator checks); each is followed by
    the events the processor derives from it.
    """
    options = options or _options(rng, profile)
    now = start
    actor_w = f"worker:w{rng.randint(1, 8)}"
    state: JobState | None = None

    def tick(max_ms: int = 2000) -> datetime:
        nonlocal now
        now = now + timedelta(milliseconds=rng.randint(1, max_ms))
        return now

    def new_id() -> str:
        return sim_id(rng, now)

    job_id = new_id()
    if rng.random() < profile.scheduled:
        options = options.merged(delay=rng.choice([5, 60, 3600]))
    first = commands.enqueue(
        name,
        args if args is not None else {"n": rng.randint(0, 10**6), "to": f"user{rng.randint(0, 999)}@example.com"},
        options,
        now=now,
        actor="producer:sim:1",
        job_id=job_id,
        event_id=new_id(),
    )
    pending: list[JobEvent] = [first]
    dlq_retried = False

    for _ in range(max_steps):
        if not pending:
            assert state is not None
            event = _next_event(rng, state, profile, new_id, tick, actor_w, dlq_retried)
            if event is None:
                return
            if event.type == "dead_letter_retried":
                dlq_retried = True
            pending.append(event)
        event = pending.pop(0)
        decision = apply(state, event)
        if decision.rejected is not None:  # pragma: no cover - a simulator bug
            raise AssertionError(f"simulator wrote an illegal event {event.type}: {decision.rejected}")
        state = decision.state
        yield event
        yield from decision.derived
        if state is not None and state.next_due_at is not None and state.next_due_at > now:
            now = state.next_due_at  # timers fire at (or after) their due time


def _next_event(
    rng: random.Random,
    state: JobState,
    p: SimulationProfile,
    new_id: Callable[[], str],
    tick: Callable[..., datetime],
    worker: str,
    dlq_retried: bool,
) -> JobEvent | None:
    """The next event a producer, worker, timer or operator writes for the job, built by the core."""
    status = state.status
    if status in (JobStatus.SCHEDULED, JobStatus.PENDING, JobStatus.RETRYING):
        roll = rng.random()
        if roll < p.cancel:
            return commands.cancel_request(state, "no longer needed", now=tick(), actor=OPERATOR, event_id=new_id())
        can_expire = state.expires_at is not None and (status is JobStatus.RETRYING or state.attempts_started == 0)
        if can_expire and rng.random() < p.expire:
            return commands.expire(state, now=tick(), actor="timer:0", event_id=new_id())
        if status is JobStatus.PENDING:
            if p.claim_start and rng.random() < p.claim_start:
                return commands.claim_and_start(state, worker_id=worker[7:], now=tick(), actor=worker, event_id=new_id())
            return commands.claim(state, worker_id=worker[7:], now=tick(), actor=worker, event_id=new_id())
        return commands.due(state, now=tick(50), actor="timer:0", event_id=new_id())

    if status is JobStatus.CLAIMED:
        if rng.random() < p.lease_loss:
            return _lease_lost(state, tick(50), new_id)
        return commands.attempt_started(state, now=tick(200), actor=worker, event_id=new_id())

    if status is JobStatus.RUNNING:
        if not state.cancel_requested and rng.random() < p.cancel:
            return commands.cancel_request(state, "stop it", now=tick(), actor=OPERATOR, event_id=new_id())
        if rng.random() < p.heartbeats / (1 + p.heartbeats):
            return commands.heartbeat(state, now=tick(5000), actor=worker, event_id=new_id())
        if rng.random() < p.progress / (1 + p.progress):
            at = tick(1000)
            return commands.progress(state, float(rng.randint(0, 100)), "working", now=at, actor=worker, event_id=new_id())
        if rng.random() < p.lease_loss:
            return _lease_lost(state, tick(50), new_id)
        return _attempt_outcome(rng, state, p, tick(3000), new_id, worker)

    if status is JobStatus.DEAD_LETTERED:
        roll = rng.random()
        at = tick(60_000)
        if not dlq_retried and roll < p.dlq_retry:
            return commands.dead_letter_retry(state, "fixed", now=at, actor=OPERATOR, event_id=new_id())
        if roll < p.dlq_retry + p.discard:
            return commands.discard(state, "obsolete", now=at, actor=OPERATOR, event_id=new_id())
        return None
    return None  # completed, cancelled, discarded: nothing more happens


def _lease_lost(state: JobState, at: datetime, new_id: Callable[[], str]) -> JobEvent:
    """The lease timer fires: at its deadline, or now if that has passed."""
    assert state.lease_deadline is not None
    return commands.lease_expired(state, now=max(state.lease_deadline, at), actor="timer:0", event_id=new_id())


def _attempt_outcome(
    rng: random.Random, state: JobState, p: SimulationProfile, at: datetime, new_id: Callable[[], str], worker: str
) -> JobEvent:
    """How the running attempt ends: success, timeout, or a (retryable or not) failure."""
    if rng.random() < p.succeed:
        result = {"ok": True, "n": rng.randint(0, 1000)} if rng.random() < 0.5 else None
        return attempt_succeeded_event(state.job_id, state.attempt, result, occurred_at=at, actor=worker,
                                       event_id=new_id(), claim_id=state.claim_id)
    if rng.random() < p.timeout:
        return commands.timed_out(state, now=at, actor=worker, event_id=new_id())
    retryable = rng.random() < p.retryable
    return attempt_failed_event(
        state.job_id,
        state.attempt,
        error_type="ConnectionError" if retryable else "ValueError",
        message="connection reset by peer" if retryable else "bad input",
        traceback='Traceback (most recent call last):\n  File "tasks.py", line 12, in send\n    raise exc\n',
        retryable=retryable,
        retry_delay_s=rng.choice([None, None, None, 0.5]) if retryable else None,
        occurred_at=at,
        actor=worker,
        event_id=new_id(),
        claim_id=state.claim_id,
    )


def generate_log(
    n_events: int,
    *,
    seed: int = 0,
    concurrency: int = 1000,
    profile: SimulationProfile = SimulationProfile(),
    start: datetime = EPOCH,
) -> list[JobEvent]:
    """About ``n_events`` events (exactly that many) of many jobs, ``concurrency`` of them interleaved."""
    rng = random.Random(seed)
    live: list[Iterator[JobEvent]] = []
    log: list[JobEvent] = []
    job_start = start

    def new_job() -> Iterator[JobEvent]:
        nonlocal job_start
        job_start = job_start + timedelta(milliseconds=rng.randint(0, 50))
        return job_lifecycle(random.Random(rng.getrandbits(64)), start=job_start, profile=profile)

    while len(log) < n_events:
        while len(live) < concurrency:
            live.append(new_job())
        index = rng.randrange(len(live))
        event = next(live[index], None)
        if event is None:
            live[index] = live[-1]
            live.pop()
            continue
        log.append(event)
    return log


def workflow_log(
    rng: random.Random,
    *,
    jobs: int = 6,
    start: datetime = EPOCH,
    profile: SimulationProfile = SimulationProfile(cancel=0.01, lease_loss=0.02, ttl=0.3),
    snooze: float = 0.2,
    missing: float = 0.05,
    cycles: float = 0.0,
    expire: float = 0.05,
    dlq_retries: int = 2,
    max_steps: int = 5000,
) -> list[JobEvent]:
    """The events of a small workflow: ``jobs`` jobs, each depending on some enqueued before it (now
    and then on a job that does not exist; with ``cycles`` > 0 also on jobs enqueued after it, the
    way a producer that skips ``App.enqueue``'s dependency check can close a cycle), some snoozing, some
    expiring while they wait, dead-lettered jobs retried from the dead-letter queue (each at most
    ``dlq_retries`` times) or discarded, in one log.

    Events the processor derives for another job (``LINKED_TYPES``: dependency requests, answers,
    reopens and cycle probes) are delivered to their job some random steps later, as the lane that
    owns it would read them: in the order written between any two jobs (one lane writes them to one
    partition, in order), in any order otherwise. The other derived events follow their cause at
    once. Every job ends (terminal), unless ``max_steps`` runs out first.
    """
    now = start
    states: dict[str, JobState] = {}
    log: list[JobEvent] = []
    channels: dict[tuple[str, str], list[JobEvent]] = {}  # (writing job, job it is about) -> in order
    workers: dict[str, str] = {}
    retried: dict[str, int] = {}
    # a dead-lettered or waiting job -> the state version the operator (or its ttl) left as it is: it
    # acts again only once something else changed it, so a job that waits forever stays waiting
    left_alone: dict[str, int] = {}

    def tick(max_ms: int = 2000) -> datetime:
        nonlocal now
        now = now + timedelta(milliseconds=rng.randint(1, max_ms))
        return now

    def new_id() -> str:
        return sim_id(rng, now)

    def write(event: JobEvent) -> None:
        log.append(event)
        decision = apply(states.get(event.job_id), event)
        if decision.state is not None:
            states[event.job_id] = decision.state
        elif decision.rejected is None:
            states.pop(event.job_id, None)
        for derived in decision.derived:
            if derived.type in LINKED_TYPES:
                channels.setdefault((event.job_id, derived.job_id), []).append(derived)
            else:
                log.append(derived)

    def deliver() -> None:
        channel = rng.choice([key for key, queue in channels.items() if queue])
        queue = channels[channel]
        event = queue.pop(0)
        if not queue:
            del channels[channel]
        write(event)

    job_ids = [new_id() for _ in range(jobs)]
    graph: list[list[str]] = []
    for index in range(jobs):
        depends_on = rng.sample(job_ids[:index], rng.randint(0, min(3, index)))
        later = job_ids[index + 1:]
        if later and rng.random() < cycles:
            depends_on += rng.sample(later, rng.randint(1, min(2, len(later))))
        if rng.random() < missing:
            depends_on.append(new_id())  # never enqueued: answered missing
        graph.append(depends_on)
    enqueued = 0

    def acts(state: JobState) -> bool:
        if state.status is JobStatus.DEAD_LETTERED or state.status is JobStatus.WAITING:
            return left_alone.get(state.job_id) != state.version
        return not state.is_terminal

    for _ in range(max_steps):
        if enqueued < jobs and rng.random() < (0.6 if cycles else 0.3):
            options = _options(rng, profile).merged(
                on_dependency_failure=rng.choice(["cancel", "run"]), max_snoozes=rng.randint(0, 3)
            )
            job_id = job_ids[enqueued]
            event = commands.enqueue("demo.step", {"n": enqueued}, options, now=tick(), actor="producer:sim:1",
                                     job_id=job_id, event_id=new_id(), depends_on=graph[enqueued] or None)
            workers[job_id] = f"worker:w{rng.randint(1, 4)}"
            enqueued += 1
            write(event)
            continue
        if channels and rng.random() < 0.5:
            deliver()
            continue
        live = [states[j] for j in job_ids if j in states and acts(states[j])]
        if not live:
            if channels:
                deliver()
                continue
            if enqueued >= jobs:
                break
            continue
        state = rng.choice(live)
        job_id = state.job_id
        worker = workers[job_id]
        if state.status is JobStatus.DEAD_LETTERED:  # an operator decides
            at = tick(60_000)
            if retried.get(job_id, 0) < dlq_retries and rng.random() < 0.7:
                retried[job_id] = retried.get(job_id, 0) + 1
                write(commands.dead_letter_retry(state, "fixed", now=at, actor=OPERATOR, event_id=new_id()))
            elif rng.random() < 0.3:
                write(commands.discard(state, "obsolete", now=at, actor=OPERATOR, event_id=new_id()))
            else:
                left_alone[job_id] = state.version
            continue
        if state.status is JobStatus.WAITING:  # once per change: cancelled, expired, or left waiting
            roll = rng.random()
            if roll < profile.cancel:
                write(commands.cancel_request(state, "not needed", now=tick(), actor=OPERATOR, event_id=new_id()))
            elif roll < profile.cancel + expire and state.expires_at is not None:
                write(commands.expire(state, now=max(tick(), state.expires_at), actor="timer:0", event_id=new_id()))
            else:
                left_alone[job_id] = state.version
            continue
        if state.status is JobStatus.RUNNING and rng.random() < snooze:
            write(attempt_snoozed_event(state.job_id, state.attempt, rng.choice([0.0, 1.0, 30.0]), occurred_at=tick(),
                                        actor=worker, event_id=new_id(), claim_id=state.claim_id))
            continue
        step = _next_event(rng, state, profile, new_id, tick, worker, False)
        if step is not None:
            write(step)
    while channels:  # whatever is still on its way arrives
        deliver()
    return log
