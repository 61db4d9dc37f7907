"""Large event logs, fast: built with the core's commands and `apply`, produced in big batches.

`job_log(n_jobs)` makes each job live a realistic life (enqueue, claim, start, then success,
a retry and success, or a non-retryable failure that dead-letters it), with the derived events
the processor would append (taken from `apply`'s decision, so they are exactly what it derives)
echoed into the log. Jobs are interleaved, as concurrent jobs are in a real log.
`produce_fast` writes encoded events with `eventjobs.kafka.clients.producer` in per-partition batches,
partitioned by key exactly as a keyed `send` would be.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone

from aiokafka.partitioner import DefaultPartitioner

from eventjobs.testing import commands
from eventjobs.core.codec import encode
from eventjobs.core.events import AttemptFailedEvent, AttemptSucceededEvent, DueEvent, JobEvent
from eventjobs.core.fold import apply
from eventjobs.core.ids import new_event_id
from eventjobs.core.options import JobOptions
from eventjobs.core.state import JobState
from eventjobs.kafka.clients import partitions_of, producer
from eventjobs.readside.projector import events_topic
from eventjobs.settings import Settings

START = datetime(2026, 1, 5, 9, 0, tzinfo=timezone.utc)
QUEUES = ("default", "emails", "reports")
NAMES = ("send_email", "render_report", "resize_image", "sync_account")


def _step(state: JobState | None, event: JobEvent, out: list[JobEvent]) -> JobState:
    decision = apply(state, event)
    assert decision.accepted, (event.type, decision.rejected)
    out.append(event)
    out.extend(decision.derived)  # the processor's echo
    assert decision.state is not None
    return decision.state


def _run_attempt(state: JobState, now: datetime, rng: random.Random, out: list[JobEvent], outcome: str) -> JobState:
    worker = f"w{rng.randrange(8)}"
    state = _step(state, commands.claim(state, worker_id=worker, now=now, actor=worker), out)
    now += timedelta(milliseconds=rng.randint(1, 40))
    state = _step(state, commands.attempt_started(state, now=now, actor=worker), out)
    now += timedelta(milliseconds=rng.randint(5, 3000))
    envelope = {"event_id": new_event_id(), "job_id": state.job_id, "occurred_at": now, "actor": worker,
                "attempt": state.attempt}
    if outcome == "ok":
        event: JobEvent = AttemptSucceededEvent(**envelope, result={"ok": True, "n": rng.randrange(100)})
    else:
        event = AttemptFailedEvent(**envelope, error_type="ValueError", message="boom",
                                   traceback="Traceback ...\nValueError: boom", retryable=outcome == "retry")
    return _step(state, event, out)


def one_job(rng: random.Random, at: datetime) -> list[JobEvent]:
    out: list[JobEvent] = []
    options = JobOptions(queue=rng.choice(QUEUES), max_attempts=3)
    enqueued = commands.enqueue(rng.choice(NAMES), {"user": rng.randrange(10_000)}, options, now=at, actor="api")
    state = _step(None, enqueued, out)
    roll = rng.random()
    now = at + timedelta(milliseconds=rng.randint(1, 500))
    if roll < 0.8:
        _run_attempt(state, now, rng, out, "ok")
    elif roll < 0.9:
        state = _run_attempt(state, now, rng, out, "retry")
        assert state.next_due_at is not None
        due = DueEvent(event_id=new_event_id(), job_id=state.job_id, occurred_at=state.next_due_at, actor="timers",
                       attempt=state.attempt, timer="retry")
        state = _step(state, due, out)
        _run_attempt(state, state.next_due_at or due.occurred_at, rng, out, "ok")
    else:
        _run_attempt(state, now, rng, out, "fatal")
    return out


def job_log(n_events: int, *, seed: int = 0, concurrency: int = 200) -> list[JobEvent]:
    """At least `n_events` events of whole job lives, `concurrency` jobs interleaved at a time."""
    rng = random.Random(seed)
    log: list[JobEvent] = []
    at = START
    while len(log) < n_events:
        lives = []
        for _ in range(concurrency):
            at += timedelta(milliseconds=rng.randint(0, 30))
            lives.append(one_job(rng, at))
        cursors = [0] * len(lives)
        live = list(range(len(lives)))
        while live:
            k = rng.randrange(len(live))
            index = live[k]
            log.append(lives[index][cursors[index]])
            cursors[index] += 1
            if cursors[index] == len(lives[index]):
                live[k] = live[-1]
                live.pop()
    return log


async def produce_fast(settings: Settings, events: Sequence[JobEvent]) -> None:
    """Append `events` keyed by job id, in order per job, in large per-partition batches."""
    topic = events_topic(settings)
    partitions = [tp.partition for tp in await partitions_of(settings, topic)]
    partitioner = DefaultPartitioner()
    by_partition: dict[int, list[tuple[bytes, bytes]]] = {p: [] for p in partitions}
    for event in events:
        key = event.job_id.encode()
        by_partition[partitioner(key, partitions, partitions)].append((key, encode(event)))
    client = producer(settings, linger_ms=5, compression_type=None)
    await client.start()
    try:
        async def send_partition(partition: int, records: list[tuple[bytes, bytes]]) -> None:
            index = 0
            while index < len(records):
                batch = client.create_batch()
                while index < len(records):
                    key, value = records[index]
                    if batch.append(key=key, value=value, timestamp=None) is None:
                        break
                    index += 1
                batch.close()
                await (await client.send_batch(batch, topic, partition=partition))

        await asyncio.gather(*(send_partition(p, r) for p, r in by_partition.items() if r))
    finally:
        await client.stop()
