"""Records the processor writes besides events: ready work, timers and dead letters.

These are derived data, never the truth (the event log is): a ready record tells a worker which
attempt of which job to run, a timer record tells the timer service what to fire when, and a
dead-letter record lists a job an operator may retry or discard. Each carries just enough to act
without looking anything up.
"""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from eventjobs.core.options import JobOptionsSpec, Priority

TimerKind = Literal["run_at", "retry", "lease", "ttl"]
TIMER_KINDS: tuple[TimerKind, ...] = ("run_at", "retry", "lease", "ttl")


class _Record(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class ReadyRecord(_Record):
    """Attempt `attempt` of job `job_id` may run now (on the ready topic of its queue and priority)."""

    job_id: str
    attempt: int
    name: str
    queue: str
    priority: Priority
    args: dict[str, Any]
    options: JobOptionsSpec
    enqueued_at: datetime
    ready_at: datetime
    parent_job_id: str | None = None
    partition: int | None = None  # the job's event-log partition (saves the worker hashing its key)

    @classmethod
    def decode(cls, data: bytes) -> ReadyRecord:
        return cls.model_validate_json(data)


class TimerRecord(_Record):
    """Fire `kind` for `job_id` at `due_at`; the key is `job_id:kind`, so a newer one replaces it."""

    job_id: str
    kind: TimerKind
    attempt: int
    due_at: datetime

    @property
    def key(self) -> bytes:
        return timer_key(self.job_id, self.kind, self.attempt)

    @classmethod
    def decode(cls, data: bytes) -> TimerRecord:
        return cls.model_validate_json(data)


def timer_key(job_id: str, kind: TimerKind, attempt: int | None = None) -> bytes:
    """`job_id:kind`, and for retries `job_id:retry:attempt`.

    A retry timer names its attempt because the timer service tombstones what it fired after the
    fired event is already visible: the processor may by then have armed the next attempt's retry,
    which a shared key would let that tombstone delete.
    """
    if kind == "retry":
        if attempt is None:
            raise ValueError("a retry timer key needs its attempt")
        return f"{job_id}:retry:{attempt}".encode()
    return f"{job_id}:{kind}".encode()


def parse_timer_key(key: bytes) -> tuple[str, str, int | None]:
    """(job_id, kind, attempt of a retry timer or None); job ids may themselves contain ':'."""
    text = key.decode()
    parts = text.rsplit(":", 2)
    if len(parts) == 3 and parts[1] == "retry" and parts[2].isdigit():
        return parts[0], "retry", int(parts[2])
    job_id, _, kind = text.rpartition(":")
    return job_id, kind, None


class DeadLetterRecord(_Record):
    """A job in the dead-letter queue; `dead_letter_event_id` is what retry and discard refer to."""

    job_id: str
    name: str
    queue: str
    reason: str
    error_type: str
    message: str
    traceback: str
    attempts: int
    dead_letter_event_id: str
    dead_lettered_at: datetime

    @classmethod
    def decode(cls, data: bytes) -> DeadLetterRecord:
        return cls.model_validate_json(data)


def capability_route(queue: str, capabilities: tuple[str, ...] | list[str]) -> str:
    """The ready-topic queue segment for jobs that need `capabilities`.

    Jobs needing capabilities go to their own ready topics, which only workers having all of
    them subscribe to, so such a job can never be handed to a worker without them. The set is
    named by a digest: capability names may contain '.' and ':', so joining them could make two
    different sets share a topic, and a long set could exceed Kafka's topic name limit.
    """
    caps = sorted(set(capabilities))
    if not caps:
        return queue
    digest = hashlib.sha256("\x1f".join(caps).encode()).hexdigest()[:16]
    return f"{queue}.caps-{digest}"
