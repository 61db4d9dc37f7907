"""Records the processor writes besides events: ready work, timers and dead letters.

These are derived data, never the truth (the event log is): a ready record tells a worker which
attempt of which job to run, a timer record tells the timer service what to fire when, and a
dead-letter record lists a job an operator may retry or discard. Each carries just enough to act
without looking anything up.
"""

from __future__ import annotations

import hashlib
import re
from datetime import datetime, timedelta, UTC
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from eventjobs.core.refused import Refused
from eventjobs.core.options import JobOptionsSpec, Priority
from eventjobs.core.state import DependencyOutcome, JobState, JobStatus

#: The kinds of timer records: the processor writes them, the timer service fires them.
TimerKind = Literal["run_at", "retry", "ttl"]
TIMER_KINDS: tuple[TimerKind, ...] = ("run_at", "retry", "ttl")
#: The processor's own timers (`core.housekeeping`): never written as records, but keyed (and the
#: ids of the events they fire derived) the same way, `timer_key`.
HousekeepingKind = Literal["lease", "dead_letter", "retain", "republish"]
HOUSEKEEPING_KINDS: tuple[HousekeepingKind, ...] = ("lease", "dead_letter", "retain", "republish")



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
    partition: int | None = None  # the job's event-log partition, as the processor's lane holds it (informative:
    # the worker writes every event of the attempt to `job_partition` of the job id, which is the same)
    dependencies: dict[str, DependencyOutcome] | None = None  # how its depends_on ended (ctx.dependency_results)
    start_at: datetime | None = None  # a limit with a rate: the start its grant gave (`Workflow.slot_start`)
    rate_reasked: bool = False  # it was claimed too late once and asked again: it starts however late now

    @classmethod
    def decode(cls, data: bytes) -> ReadyRecord:
        return cls.model_validate_json(data)


#: Headers of a ready-topic tombstone (a revoked ready record), ASCII digits: the revoked attempt,
#: and its job's enqueue time in epoch ms (a job enqueued again after its retention passed has the
#: same id and starts again at attempt 0; the enqueue time tells the two apart).
REVOKED_ATTEMPT_HEADER = "eventjobs.attempt"
REVOKED_ENQUEUED_AT_HEADER = "eventjobs.enqueued_at"
_MS = timedelta(milliseconds=1)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def ready_attempt(ready: ReadyRecord) -> tuple[str, int, int]:
    """Which attempt of which job a ready record offers: (job id, attempt, enqueued_at in epoch ms)."""
    enqueued_at = ready.enqueued_at if ready.enqueued_at.tzinfo else ready.enqueued_at.replace(tzinfo=UTC)
    return ready.job_id, ready.attempt, (enqueued_at - _EPOCH) // _MS


def revocation_headers(ready: ReadyRecord) -> list[tuple[str, bytes]]:
    """The headers of the tombstone that revokes `ready` (see `revoked_attempt`)."""
    _, attempt, enqueued_ms = ready_attempt(ready)
    return [(REVOKED_ATTEMPT_HEADER, str(attempt).encode()), (REVOKED_ENQUEUED_AT_HEADER, str(enqueued_ms).encode())]


def revoked_attempt(key: bytes | None, headers: Any) -> tuple[str, int, int] | None:
    """What a ready-topic tombstone revokes, as `ready_attempt` names it; None if it does not say
    (the processor's tombstones always do)."""
    found = dict(headers or ())
    attempt, enqueued = found.get(REVOKED_ATTEMPT_HEADER), found.get(REVOKED_ENQUEUED_AT_HEADER)
    if key is None or not attempt or not enqueued or not attempt.isdigit() or not enqueued.lstrip(b"-").isdigit():
        return None
    return key.decode(errors="replace"), int(attempt), int(enqueued)


#: Header of a ready record the processor published again (the re-publish's sequence, ASCII
#: digits): another copy of the attempt may have been claimed already, by any worker, so a
#: worker claims this one asking for the verdict and runs the handler only if its claim stands.
REPUBLISHED_HEADER = "eventjobs.republished"
#: Header of a claim whose worker waits for the verdict before it starts (value ``1``): a lane
#: that refuses such a claim writes the job's state to the changelog again, which tells the
#: worker (a refused claim changes no state, so nothing else would be written).
AWAITS_VERDICT_HEADER = "eventjobs.awaits-verdict"
AWAITS_VERDICT = [(AWAITS_VERDICT_HEADER, b"1")]

ClaimVerdict = Literal["accepted", "refused", "undecided"]


def republished_headers(sequence: int) -> list[tuple[str, bytes]]:
    """The headers of a re-published ready record (`REPUBLISHED_HEADER`)."""
    return [(REPUBLISHED_HEADER, str(sequence).encode())]


def is_republished(headers: Any) -> bool:
    """Whether a ready record's headers mark it as re-published (any value: a copy is guarded)."""
    return any(name == REPUBLISHED_HEADER for name, _ in headers or ())


def awaits_verdict(headers: Any) -> bool:
    """Whether a claim's record asks for the verdict (`AWAITS_VERDICT_HEADER`)."""
    return any(name == AWAITS_VERDICT_HEADER for name, _ in headers or ())


def claim_verdict(state: JobState | None, ready: ReadyRecord, claim_id: str) -> ClaimVerdict:
    """What a job's state, read from the changelog after a worker sent its claim `claim_id` of
    the attempt `ready` offers, says about that claim.

    ``accepted``: the state names the claim. ``refused``: the state shows that the attempt can no
    longer run on this claim: another claim of it, a later attempt, another incarnation of the
    job id (enqueued at another time), an end, or the job forgotten (None). ``undecided``: still
    pending on that attempt, or (a limited job) still waiting for that attempt's slot: a state
    written before the claim was folded; a later state decides.
    """
    if state is None:
        return "refused"
    if state.claim_id == claim_id and state.attempt == ready.attempt:
        return "accepted"
    if (state.attempt != ready.attempt
            or ready_attempt(ready)[2] != (state.enqueued_at - _EPOCH) // _MS
            or (state.status is not JobStatus.PENDING and not _awaits_its_slot(state))):
        return "refused"
    return "undecided"


def _awaits_its_slot(state: JobState) -> bool:
    """A limited job waiting for the slot of this attempt: a state from before the grant that made
    it pending (the processor publishes the ready record before it commits the states before it)."""
    workflow = state.workflow
    return state.status is JobStatus.WAITING and workflow is not None and workflow.slot_request is not None


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


def timer_key(job_id: str, kind: TimerKind | HousekeepingKind, attempt: int | None = None,
              sequence: int | None = None) -> bytes:
    """`job_id:kind`, for retries `job_id:retry:attempt`, for republishes `job_id:republish:attempt:sequence`,
    for the run_at timer of a later attempt (after a snooze) `job_id:run_at:attempt`.

    A retry timer names its attempt because the timer service tombstones what it fired after the
    fired event is already visible: the processor may by then have armed the next attempt's retry,
    which a shared key would let that tombstone delete.

    The housekeeping kinds (lease, republish, retain, dead_letter) are no records: their keys
    index a lane's own timers and name the events those fire (the id derives from the key); a
    republish timer is re-armed when it fires, so it names its attempt and sequence.
    """
    if kind == "retry":
        if attempt is None:
            raise ValueError("a retry timer key needs its attempt")
        return f"{job_id}:retry:{attempt}".encode()
    if kind == "republish":
        if attempt is None or sequence is None:
            raise ValueError("a republish timer key needs its attempt and sequence")
        return f"{job_id}:republish:{attempt}:{sequence}".encode()
    if kind == "run_at" and attempt:  # a snoozed job's: the first run's fired timer is tombstoned just after
        return f"{job_id}:run_at:{attempt}".encode()
    return f"{job_id}:{kind}".encode()


def parse_timer_key(key: bytes) -> tuple[str, str, int | None]:
    """(job_id, kind, the attempt of a retry or later run_at timer / the sequence of a republish timer, or None).

    Job ids may themselves contain ':'.
    """
    text = key.decode()
    parts = text.rsplit(":", 3)
    if len(parts) == 4 and parts[1] == "republish" and parts[2].isdigit() and parts[3].isdigit():
        return parts[0], "republish", int(parts[3])
    if len(parts) >= 3 and parts[-2] in ("retry", "run_at") and parts[-1].isdigit():
        return text.rsplit(":", 2)[0], parts[-2], int(parts[-1])
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


def admit_dead_letter(key: bytes, value: bytes | None) -> tuple[str, DeadLetterRecord | None] | Refused:
    """(job id, its entry; None for a tombstone) of a dead-letter topic record, or why it is refused.

    The topic is compacted and keyed by job id, so a record whose key is not UTF-8, whose value
    is not a dead-letter record, or whose entry is about another job than its key says nothing
    usable about that key: the reader drops the key's earlier entry and lists the rest.
    """
    try:
        job_id = key.decode()
    except UnicodeDecodeError as error:
        return Refused("key not UTF-8", str(error))
    if not value:
        return job_id, None
    try:
        entry = DeadLetterRecord.decode(value)
    except ValidationError as error:
        return Refused("not a dead-letter record", str(error))
    if entry.job_id != job_id:
        return Refused("key does not match", f"the entry is about job {entry.job_id!r}")
    return job_id, entry


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


_CAPABILITY_ROUTE = re.compile(r"^(?P<queue>.+)\.caps-[0-9a-f]{16}$")  # what `capability_route` makes


def queue_of_route(route: str) -> str:
    """The queue a ready-topic route belongs to: the route itself, or the queue of a capability route."""
    match = _CAPABILITY_ROUTE.match(route)
    return match.group("queue") if match else route
