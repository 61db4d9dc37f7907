"""Concurrency limits per key: the key owner's slot table and its pure fold ``apply_slot``.

Why this module exists: a limit such as "at most 2 jobs of tenant t-7 claimed or running at once"
must be counted in one place, while the jobs of the key live on many partitions (a job's
partition follows its id). As for dependencies, the conversation is in linked events, keyed by
whom they are about, with ids derived from their cause:

* the **owner** of a key is a derived id (``owner_id(limit, key)``); its partition's processor lane
  keeps the key's ``SlotTable`` (in the compacted ``limit-state`` changelog);
* a job that would become pending asks instead (``slot_requested``, keyed by the owner, id
  derived from the job's ``enqueued`` and its attempt) and waits (status ``waiting``);
* the owner grants a free slot (``slot_granted``, keyed by the job, id derived from the request);
  the job becomes pending, its ready record is published, a worker claims it;
* when the job leaves that attempt (any terminal outcome, a retry, a snooze, a lease expiry) its
  lane derives ``slot_released`` (keyed by the owner, id derived from the request), and the owner
  grants the oldest waiting request.

Strategies when every slot is taken: ``queue`` (the request waits, first come first served);
``cancel_newest`` (``slot_refused``: the asking job is cancelled); ``cancel_in_progress`` (the
oldest holder not yet revoked gets ``slot_revoked``, which cancels it, and the request waits at
the head of the queue for its slot; a request that still waits when a newer one comes is
refused).

Rate limits (``rate="20/s"``, ``burst``) are decided by the same owner, with the generic cell
rate algorithm over event time: each grant is given a start ``not_before`` at least one interval
(``ceil(period / count)`` ms) after the previous one, ``burst`` of them may share a moment, and
the table keeps the theoretical arrival time (``tat_ms``). A job granted a later start waits
scheduled until then (a run_at timer), holding its slot if the limit has a ``max`` too; a
replay of the owner's events reaches the same starts. With a rate and no ``max`` nothing is
held: every request is granted at once, with its start.

Idempotency: a request is known by its id while it is held or queued, and for the last
``RELEASED_KEPT`` released ones; a duplicate of any of them changes nothing. A release of a
request the table does not know is remembered too, so a request that arrives after its own
release (it cannot, in one partition's order, but a table restored from an older changelog
could see it) is not granted. The table never grants more than ``max`` (the last request's
option; lowering it lets the holders finish) and grants only requests it holds in its queue.

Forgetting: a table with no holder, no queue and no rate debt (``tat_ms`` passed) has nothing a
new table would not have but the ids it remembers; ``forgettable`` says when it has been idle
``SLOT_TABLE_IDLE_S``, and the owner's lane then drops it (a tombstone in ``limit-state``), so
memory follows the keys in use, not every key ever used. A duplicate request that arrives after
(a lane's redo long after the fact) is granted by the new table; the job, which no longer
holds that request, answers the stale grant with a release (``apply``), so no slot leaks.
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, NamedTuple

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from eventjobs.core.clock import epoch_ms, from_epoch_ms
from eventjobs.core.events import SLOT_OWNER_TYPES, SlotGrantedEvent, SlotRefusedEvent, SlotRevokedEvent
from eventjobs.core.ids import EVENTJOBS_NAMESPACE, derived_event_id
from eventjobs.core.limits import RATE_LATE_S, RATE_START_LAG_S
from eventjobs.core.options import rate_interval_ms

__all__ = ["MAX_QUEUED", "RELEASED_KEPT", "SLOT_TABLE_IDLE_S", "SlotDecision", "SlotHolder", "SlotTable", "apply_slot",
           "decode_table", "encode_table", "forgettable", "late_for_rate", "owner_id", "position", "rate_hold_s", "request_id"]

#: Released request ids a table remembers (a duplicate request or release of one is recognised).
RELEASED_KEPT = 256
#: Requests a key's queue holds at most; a request beyond is refused (its job cancelled), so a table
#: (at most MAX_CONCURRENCY holders, this many queued, RELEASED_KEPT ids) stays far below one record's
#: limit (about 90 bytes an entry: under 600 KB).
MAX_QUEUED = 5_000
#: An empty table (no holder, nothing queued, no rate debt) idle this long (event time of its last
#: change, the lane's clock) is forgotten: a tombstone in ``limit-state``.
SLOT_TABLE_IDLE_S = 600
LIMIT_NAMESPACE = uuid.uuid5(EVENTJOBS_NAMESPACE, "concurrency-limit")


def owner_id(limit: str, key: str) -> str:
    """The id of the owner of ``key`` under limit ``limit``: its slot events are keyed by it."""
    return str(uuid.uuid5(LIMIT_NAMESPACE, f"{limit}\x1f{key}"))


def request_id(enqueued_event_id: str, attempt: int) -> str:
    """The ``slot_requested`` a job sends for ``attempt`` (derived from its ``enqueued``)."""
    return derived_event_id(enqueued_event_id, "slot_requested", attempt)


class SlotHolder(NamedTuple):
    job_id: str
    request_id: str
    revoked: bool = False


class SlotTable(BaseModel):
    """One key's slots: who holds them and who waits, in order."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)

    owner_id: str
    limit: str
    key: str
    max: int | None = Field(description="Slots (the option of the last request; None: no cap, only a rate).")
    strategy: str = "queue"
    rate: str | None = Field(None, description="Starts per second, minute or hour (the last request's option).")
    burst: int = 1
    overridden: bool = Field(False, description="max, rate and burst were set by an operator (limit_changed): "
                                                "requests do not change them.")
    tat_ms: int = Field(0, description="The rate's theoretical arrival time (epoch ms): the next start's earliest "
                                       "moment, burst aside.")
    holders: tuple[tuple[str, str, bool], ...] = Field((), description="(job id, request id, revoked), oldest first.")
    queue: tuple[tuple[str, str], ...] = Field((), description="(job id, request id) waiting, oldest first.")
    released: tuple[str, ...] = Field((), description="The last RELEASED_KEPT released (or refused) request ids.")
    granted_total: int = 0
    version: int = 0
    updated_at: datetime | None = None

    @property
    def in_use(self) -> int:
        return len(self.holders)

    def knows(self, request: str) -> bool:
        return (any(h[1] == request for h in self.holders) or any(q[1] == request for q in self.queue)
                or request in self.released)


def position(table: SlotTable | None, job_id: str) -> int | None:
    """1-based place of ``job_id`` in the table's queue (None: not queued)."""
    if table is None:
        return None
    for index, (queued, _) in enumerate(table.queue):
        if queued == job_id:
            return index + 1
    return None


class SlotDecision(NamedTuple):
    table: SlotTable | None
    derived: tuple[Any, ...] = ()
    rejected: str | None = None
    duplicate: bool = False


def _linked(cls: type[Any], job_id: str, cause: str, trigger: Any, actor: str, payload: dict[str, Any]) -> Any:
    type_ = cls.model_fields["type"].default
    return cls.model_construct(
        event_id=derived_event_id(cause, type_, 0), job_id=job_id, type=type_, occurred_at=trigger.occurred_at,
        schema_version=1, causation_id=cause, actor=actor, **payload,
    )


def _remember(released: tuple[str, ...], *ids: str) -> tuple[str, ...]:
    return (*released, *ids)[-RELEASED_KEPT:]


def _start(table: dict[str, Any], trigger: Any) -> datetime | None:
    """The rate's start for a grant made at the trigger's time (None: at once), moving ``tat_ms``."""
    if table["rate"] is None:
        return None
    interval = rate_interval_ms(table["rate"])
    now = epoch_ms(trigger.occurred_at)
    arrival = max(table["tat_ms"], now)
    start = max(now, arrival - (table["burst"] - 1) * interval)
    table["tat_ms"] = arrival + interval
    return from_epoch_ms(start) if start > now else None


def _grant(table: dict[str, Any], job_id: str, request: str, trigger: Any, actor: str) -> Any:
    """Give ``request`` its grant (and its slot, if the limit has a max)."""
    if table["max"] is None:  # a rate alone: nothing held, the id remembered against duplicates
        table["released"] = _remember(table["released"], request)
    else:
        table["holders"] = (*table["holders"], (job_id, request, False))
    table["granted_total"] += 1
    return _linked(SlotGrantedEvent, job_id, request, trigger, actor,
                   {"owner_id": table["owner_id"], "not_before": _start(table, trigger)})


def _free(table: dict[str, Any]) -> bool:
    return table["max"] is None or len(table["holders"]) < table["max"]


def _fill(table: dict[str, Any], trigger: Any, actor: str) -> list[Any]:
    """Grant the oldest queued requests while a slot is free."""
    grants = []
    while table["queue"] and _free(table):
        (job_id, request), table["queue"] = table["queue"][0], table["queue"][1:]
        grants.append(_grant(table, job_id, request, trigger, actor))
    return grants


def _what(table: dict[str, Any]) -> str:
    return f"limit {table['limit']!r} key {table['key']!r}: {len(table['holders'])} of {table['max']} slot(s) taken"


def late_for_rate(start_at: datetime, now: datetime, lag_s: float = RATE_START_LAG_S,
                  late_s: float = RATE_LATE_S) -> bool:
    """Whether a worker that has a rate-limited job's claim accepted at ``now`` is too late for the
    start its grant gave (``start_at``): it should give the job back to ask for a new start."""
    return (now - start_at).total_seconds() > lag_s + late_s


def rate_hold_s(start_at: datetime, now: datetime, lag_s: float = RATE_START_LAG_S) -> float:
    """Seconds a worker waits, once its claim stands, before the handler of a job whose rate grant
    gave ``start_at``: until ``lag_s`` after it (never longer than ``lag_s``; 0 when that passed)."""
    return min(lag_s, max(0.0, (start_at - now).total_seconds() + lag_s))


def forgettable(table: SlotTable, now: datetime, idle_s: float = SLOT_TABLE_IDLE_S) -> bool:
    """Whether the owner may drop ``table``: nothing held or queued, no rate debt, no operator's
    setting, idle ``idle_s``."""
    if table.holders or table.queue or table.overridden:
        return False
    now_ms = epoch_ms(now)
    last = epoch_ms(table.updated_at) if table.updated_at is not None else 0
    return table.tat_ms <= now_ms and now_ms - last >= idle_s * 1000


def apply_slot(table: SlotTable | None, event: Any, actor: str = "processor") -> SlotDecision:
    """Apply a ``slot_requested``, ``slot_released`` or ``limit_changed`` to the owner's table
    (None: no table yet).

    Pure and total: anything that does not fit is rejected with a reason, the table unchanged.
    """
    if event.type not in SLOT_OWNER_TYPES:
        return SlotDecision(table, rejected=f"'{event.type}' is not addressed to a concurrency limit's owner")
    if event.type == "limit_changed":
        return _change(table, event, actor)
    request = event.causation_id if event.type == "slot_released" else event.event_id
    if request is None:
        return SlotDecision(table, rejected="a slot release must name its request (causation_id)")
    if table is None:
        if event.type == "slot_released":  # never asked here: remembered, so a late request is not granted
            data: dict[str, Any] = {"owner_id": event.job_id, "limit": "?", "key": "?", "max": 1, "strategy": "queue",
                                    "rate": None, "burst": 1, "overridden": False, "tat_ms": 0, "holders": (), "queue": (),
                                    "released": (request,), "granted_total": 0, "version": 1,
                                    "updated_at": event.occurred_at}
            return SlotDecision(SlotTable.model_construct(**data), rejected="release of a request this owner never saw")
        data = {"owner_id": event.job_id, "limit": event.limit, "key": event.key, "max": event.max,
                "strategy": event.strategy, "rate": None, "burst": 1, "overridden": False, "tat_ms": 0, "holders": (), "queue": (),
                "released": (), "granted_total": 0, "version": 0, "updated_at": None}
    else:
        if table.owner_id != event.job_id:
            return SlotDecision(table, rejected=f"event for owner {event.job_id} applied to the table of {table.owner_id}")
        data = dict(table.__dict__)
        if event.type == "slot_requested" and table.knows(request):
            return SlotDecision(table, duplicate=True)
    derived: list[Any] = []
    if event.type == "slot_requested":
        data["limit"], data["key"], data["strategy"] = event.limit, event.key, event.strategy
        if not data["overridden"]:
            data["max"], data["rate"], data["burst"] = event.max, event.rate, event.burst
        job_id = event.requester_id
        if _free(data) and not data["queue"]:
            derived.append(_grant(data, job_id, request, event, actor))
        elif event.strategy == "queue" and len(data["queue"]) >= MAX_QUEUED:
            reason = f"cancelled: the key's queue is full ({_what(data)}, {len(data['queue']):,} waiting, MAX_QUEUED)"
            data["released"] = _remember(data["released"], request)
            derived.append(_linked(SlotRefusedEvent, job_id, request, event, actor,
                                   {"owner_id": data["owner_id"], "reason": reason}))
        elif event.strategy == "cancel_newest":
            reason = f"cancelled: every slot is taken ({_what(data)}; strategy cancel_newest)"
            data["released"] = _remember(data["released"], request)
            derived.append(_linked(SlotRefusedEvent, job_id, request, event, actor,
                                   {"owner_id": data["owner_id"], "reason": reason}))
        elif event.strategy == "cancel_in_progress":
            holders = list(data["holders"])
            unrevoked = next((i for i, h in enumerate(holders) if not h[2]), None)
            if unrevoked is not None:
                held_job, held_request, _ = holders[unrevoked]
                holders[unrevoked] = (held_job, held_request, True)
                data["holders"] = tuple(holders)
                reason = f"cancelled in favour of job {job_id}, newer ({_what(data)}; strategy cancel_in_progress)"
                derived.append(_linked(SlotRevokedEvent, held_job, held_request, event, actor,
                                       {"owner_id": data["owner_id"], "reason": reason}))
            elif data["queue"]:  # every holder is on its way out already: the older waiting request gives way
                old_job, old_request = data["queue"][0]
                data["queue"] = data["queue"][1:]
                data["released"] = _remember(data["released"], old_request)
                reason = f"cancelled in favour of job {job_id}, newer, while it waited (strategy cancel_in_progress)"
                derived.append(_linked(SlotRefusedEvent, old_job, old_request, event, actor,
                                       {"owner_id": data["owner_id"], "reason": reason}))
            data["queue"] = (*data["queue"], (job_id, request))
            derived += _fill(data, event, actor)
        else:
            data["queue"] = (*data["queue"], (job_id, request))
            derived += _fill(data, event, actor)
    else:  # slot_released
        holders = data["holders"]
        held = [h for h in holders if h[1] == request]
        queued = [q for q in data["queue"] if q[1] == request]
        if not held and not queued:
            if request in data["released"]:
                return SlotDecision(table, duplicate=True)
            data["released"] = _remember(data["released"], request)
            data["version"] += 1
            data["updated_at"] = event.occurred_at
            return SlotDecision(SlotTable.model_construct(**data),
                                rejected=f"release of request {request}, which holds no slot here: remembered")
        data["holders"] = tuple(h for h in holders if h[1] != request)
        data["queue"] = tuple(q for q in data["queue"] if q[1] != request)
        data["released"] = _remember(data["released"], request)
        derived += _fill(data, event, actor)
    data["version"] += 1
    data["updated_at"] = event.occurred_at
    return SlotDecision(SlotTable.model_construct(**data), tuple(derived))


def _change(table: SlotTable | None, event: Any, actor: str) -> SlotDecision:
    """An operator's ``limit_changed``: the key's max, rate and burst from now on (or, ``reset``, the
    requests' again); waiting requests are granted as far as the new max allows."""
    if table is not None and table.owner_id != event.job_id:
        return SlotDecision(table, rejected=f"event for owner {event.job_id} applied to the table of {table.owner_id}")
    if table is None:
        data: dict[str, Any] = {"owner_id": event.job_id, "limit": event.limit, "key": event.key, "max": event.max,
                                "strategy": "queue", "rate": None, "burst": 1, "overridden": False, "tat_ms": 0,
                                "holders": (), "queue": (), "released": (), "granted_total": 0, "version": 0,
                                "updated_at": None}
    else:
        data = dict(table.__dict__)
    if event.reset:
        if table is None or not table.overridden:
            return SlotDecision(table, duplicate=True)
        data["overridden"] = False  # the next request's options apply
    else:
        data["max"], data["rate"], data["burst"], data["overridden"] = event.max, event.rate, event.burst, True
    derived = _fill(data, event, actor)
    data["version"] += 1
    data["updated_at"] = event.occurred_at
    return SlotDecision(SlotTable.model_construct(**data), tuple(derived))


def encode_table(table: SlotTable) -> bytes:
    return orjson.dumps(table.model_dump(mode="json"))


def decode_table(data: bytes) -> SlotTable:
    """A changelog record back (``ValueError`` if it is not a valid table)."""
    try:
        raw = orjson.loads(data)
        raw["holders"] = tuple(tuple(h) for h in raw.get("holders", ()))
        raw["queue"] = tuple(tuple(q) for q in raw.get("queue", ()))
        raw["released"] = tuple(raw.get("released", ()))
        return SlotTable.model_validate(raw, strict=False)
    except (orjson.JSONDecodeError, ValidationError, AttributeError, TypeError) as error:
        raise ValueError(f"invalid slot table: {error}") from None
