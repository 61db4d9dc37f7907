"""Operator control records: the worker registry and queue pauses, and the rules that read them.

Why this module exists: workers announce themselves on `<ns>.workers` and operators pause queues
on `<ns>.queue-control`. Both topics are compacted and keyed (worker id, queue name), so the
latest record per key is the current fact. These records are not job events (they change no
job's state and are not folded), but they are decoded by several services (the worker, `App`,
the CLI, the dashboard), so their shape, how a bad record is refused, and what a record means
(is a worker alive, is a queue paused) live here, pure, and nowhere in the shell.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from eventjobs.core.refused import Refused
from eventjobs.core.clock import utc_ms
from eventjobs.core.limits import MAX_REASON_BYTES, truncate_text
from eventjobs.core.options import QUEUE_NAME_RE
from eventjobs.core.records import queue_of_route  # re-exported: the route format lives with `capability_route`
from eventjobs.core.state import JobStatus
from eventjobs.core.validation import issues, worded

__all__ = [
    "CANCELLABLE_STATUSES",
    "GONE_AFTER_HEARTBEATS",
    "WORKER_HEARTBEAT_S",
    "Presence",
    "QueueControl",
    "QueueStatus",
    "Refused",
    "WorkerAnnouncement",
    "WorkerStatus",
    "admit_queue_control",
    "admit_worker",
    "gone_after_s",
    "queue_control",
    "queue_of_route",
    "queue_statuses",
    "worker_announcement",
    "worker_presence",
]

#: How often a worker re-announces itself (with its busy slots); `EVENTJOBS_WORKER_HEARTBEAT`.
WORKER_HEARTBEAT_S = 5.0
#: A running worker whose last announcement is older than this many of its own heartbeat
#: intervals is shown as gone (killed, frozen or cut off): one late heartbeat is not enough.
GONE_AFTER_HEARTBEATS = 3
#: The statuses a bulk cancel selects by default: jobs not started yet, which a cancel stops at once.
#: (`waiting`, a job waiting for its dependencies, counts too where that status exists.)
CANCELLABLE_STATUSES: frozenset[str] = frozenset(
    status.value for status in JobStatus if status.value in ("pending", "scheduled", "retrying", "waiting")
)
_MAX_ID_CHARS = 200  # a worker id or host name longer than this is a mistake, not a name

Presence = Literal["alive", "stopped", "gone"]


class _ControlRecord(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")

    def encode(self) -> bytes:
        return self.model_dump_json().encode()


class WorkerAnnouncement(_ControlRecord):
    """A worker's latest word about itself, keyed by `worker_id` on `<ns>.workers`.

    Written when it starts, every `heartbeat_s` while it runs (`last_seen` and `busy` move on),
    and once with `state` "stopped" when it stops cleanly. A killed worker writes nothing more:
    its presence turns "gone" once `last_seen` is too old (`worker_presence`).
    """

    worker_id: str = Field(min_length=1, max_length=_MAX_ID_CHARS)
    host: str = Field(max_length=_MAX_ID_CHARS)
    pid: int = Field(ge=0)
    queues: tuple[str, ...]
    capabilities: tuple[str, ...] = ()
    concurrency: int = Field(ge=1)
    busy: int = Field(ge=0, description="Jobs running at the time of the announcement.")
    version: str = Field(max_length=100)
    started_at: datetime
    last_seen: datetime
    heartbeat_s: float = Field(gt=0, description="How often this worker announces itself.")
    state: Literal["running", "stopped"] = "running"

    @field_validator("started_at", "last_seen")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return utc_ms(value)


class WorkerStatus(WorkerAnnouncement):
    """A worker as an operator sees it: its announcement and whether it is alive, stopped or gone."""

    presence: Presence


class QueueControl(_ControlRecord):
    """Whether `queue` is paused, keyed by the queue name on `<ns>.queue-control`.

    The latest record of a queue is its state: a resume is a record with `paused` false (kept,
    so that operators see when and why it was resumed). Workers read the topic from its start,
    so a pause holds across their restarts.
    """

    queue: str
    paused: bool
    reason: str
    changed_at: datetime
    changed_by: str = Field(max_length=_MAX_ID_CHARS)

    @field_validator("queue")
    @classmethod
    def _queue_name(cls, value: str) -> str:
        if not QUEUE_NAME_RE.fullmatch(value):
            raise ValueError(f"queue name {value!r} must be 1-100 letters, digits, '.', '_' or '-'")
        return value

    @field_validator("changed_at")
    @classmethod
    def _utc(cls, value: datetime) -> datetime:
        return utc_ms(value)


class QueueStatus(BaseModel):
    """A queue as an operator sees it: paused or not, and the last change (None: never changed)."""

    model_config = ConfigDict(frozen=True)

    queue: str
    paused: bool = False
    reason: str | None = None
    changed_at: datetime | None = None
    changed_by: str | None = None


# -- builders ---------------------------------------------------------------------------------
def worker_announcement(
    *, worker_id: str, host: str, pid: int, queues: list[str] | tuple[str, ...],
    capabilities: list[str] | tuple[str, ...], concurrency: int, busy: int, version: str,
    started_at: datetime, now: datetime, heartbeat_s: float, stopped: bool = False,
) -> WorkerAnnouncement:
    """The one way an announcement is made (start, heartbeat and goodbye alike)."""
    return WorkerAnnouncement(
        worker_id=worker_id, host=host, pid=pid, queues=tuple(queues), capabilities=tuple(sorted(set(capabilities))),
        concurrency=concurrency, busy=busy, version=version, started_at=started_at, last_seen=now,
        heartbeat_s=heartbeat_s, state="stopped" if stopped else "running",
    )


def queue_control(queue: str, *, paused: bool, reason: str, now: datetime, actor: str) -> QueueControl:
    """The one way a pause or resume is made; raises ValueError with the reason for a bad queue name."""
    try:
        return QueueControl(queue=queue, paused=paused, reason=truncate_text(reason, MAX_REASON_BYTES),
                            changed_at=now, changed_by=actor[:_MAX_ID_CHARS])
    except ValidationError as error:
        raise ValueError("; ".join(issue.message for issue in issues(error))) from None


# -- admission: a bad record is a reason, never an exception -----------------------------------
def _key_text(key: bytes | None) -> str | Refused:
    if not key:
        return Refused("no key", "the record has no key")
    try:
        return key.decode()
    except UnicodeDecodeError as error:
        return Refused("key not UTF-8", str(error))


def admit_worker(key: bytes | None, value: bytes | None) -> tuple[str, WorkerAnnouncement | None] | Refused:
    """(worker id, its announcement; None for a tombstone) of a `<ns>.workers` record, or why not."""
    worker_id = _key_text(key)
    if isinstance(worker_id, Refused):
        return worker_id
    if not value:
        return worker_id, None
    try:
        announcement = WorkerAnnouncement.model_validate_json(value)
    except ValidationError as error:
        return Refused("not a worker announcement", worded(error, root="(root)")[:500])
    if announcement.worker_id != worker_id:
        return Refused("key does not match", f"the announcement is about worker {announcement.worker_id!r}")
    return worker_id, announcement


def admit_queue_control(key: bytes | None, value: bytes | None) -> tuple[str, QueueControl | None] | Refused:
    """(queue, its control record; None for a tombstone) of a `<ns>.queue-control` record, or why not."""
    queue = _key_text(key)
    if isinstance(queue, Refused):
        return queue
    if not value:
        return queue, None
    try:
        control = QueueControl.model_validate_json(value)
    except ValidationError as error:
        return Refused("not a queue control record", worded(error, root="(root)")[:500])
    if control.queue != queue:
        return Refused("key does not match", f"the record is about queue {control.queue!r}")
    return queue, control


# -- what the records mean ---------------------------------------------------------------------
def gone_after_s(announcement: WorkerAnnouncement) -> float:
    """How long after its last announcement a running worker counts as gone (its own heartbeat x3)."""
    return GONE_AFTER_HEARTBEATS * announcement.heartbeat_s


def worker_presence(announcement: WorkerAnnouncement, now: datetime, gone_after: float | None = None) -> Presence:
    """"stopped" if it said goodbye; "gone" if silent for longer than `gone_after` seconds (default
    `gone_after_s`); else "alive"."""
    if announcement.state == "stopped":
        return "stopped"
    limit = gone_after_s(announcement) if gone_after is None else gone_after
    silent = (utc_ms(now) - announcement.last_seen).total_seconds()
    return "gone" if silent > limit else "alive"


def queue_statuses(known: set[str] | frozenset[str], controls: dict[str, QueueControl]) -> list[QueueStatus]:
    """Every queue that is `known` (an app's job queues, ready topics) or was ever paused, sorted by name."""
    statuses = []
    for queue in sorted(set(known) | set(controls)):
        control = controls.get(queue)
        if control is None:
            statuses.append(QueueStatus(queue=queue))
        else:
            statuses.append(QueueStatus(queue=queue, paused=control.paused, reason=control.reason,
                                        changed_at=control.changed_at, changed_by=control.changed_by))
    return statuses
