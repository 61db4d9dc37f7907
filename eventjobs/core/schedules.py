"""Periodic schedules: their definition, their events, the fold, and which ticks are due.

Why this module exists: a schedule is an entity on the log (`<ns>.schedules`), and every process
that reads it (the schedule service firing ticks, `App.schedules()`, the CLI, the projector)
must agree on what the records mean and on which ticks a schedule owes. So the rules live here,
pure: the shell reads records, calls `apply_schedule` and `ticks_due`, and writes what they say.

The topic is compacted, so a schedule's records are kept under three keys (`record_key`): the
schedule id for the definition events (created, updated, paused, resumed, deleted: each carries
the whole definition after it), `<id>@fired` for the last periodic tick fired, and
`<id>@triggered` for the last manual trigger. The schedule service writes only `@fired`,
operators only the others, so no writer ever rewrites what another wrote, and compaction keeps
exactly what the fold needs. The fold is a merge: a definition event wins by its stamp
(`occurred_at`, then `event_id`), a fired or triggered tick by being later. Applying records in
any order, any number of times, gives the same state (tests/core/test_schedules.py).

Ticks: `every` ticks are multiples of the period since the Unix epoch (UTC), so every process
computes the same ticks (`every="1h"` fires on the hour). `cron` ticks are the local wall-clock
times croniter matches in the schedule's time zone (croniter steps through naive wall-clock time,
where a cron expression means what it says), each mapped to one instant by `wall_clock_instant`:
a time the clock shows twice (DST ends) fires at its first occurrence only, a time the clock
skips (DST starts) fires once, at the first instant after the gap. A tick's job has the
idempotency key `<schedule id>@<tick, ISO-8601 UTC>`, so its job id is fixed
(`ids.job_id_for_key`) and a tick fired twice (a crash between the enqueue and its `fired`
record) is refused by the processor as a duplicate.

A rule must fire within `SCHEDULE_HORIZON_DAYS` of its definition (`define_schedule` refuses
`0 0 30 2 *`). A stored definition whose ticks cannot be computed all the same (an older
version or a foreign producer wrote it) raises `ScheduleNotComputable` from `next_tick` and
`previous_tick`, never a library's error, so the shell can set that one schedule aside.
"""

from __future__ import annotations

import hashlib
import threading
from datetime import datetime, timedelta
from functools import lru_cache
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import orjson
from croniter import croniter
from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError, model_validator

from eventjobs.core.refused import Refused
from eventjobs.core.clock import UTC, epoch_ms, format_utc_ms, from_epoch_ms, utc_ms
from eventjobs.core.commands import enqueue
from eventjobs.core.durations import parse_duration
from eventjobs.core.events import EnqueuedEvent, EventId, JobName, JsonObject, QueueName, UtcTimestamp
from eventjobs.core.ids import new_event_id
from eventjobs.core.limits import MAX_CATCH_UP_TICKS, MAX_CRON_CANDIDATES, MAX_REASON_BYTES, MIN_SCHEDULE_EVERY_S
from eventjobs.core.limits import SCHEDULE_HORIZON_DAYS, SCHEDULE_LATE_AFTER_S
from eventjobs.core.limits import truncate_text
from eventjobs.core.options import JobOptions, JobOptionsSpec, Priority
from eventjobs.core.validation import worded

CatchUp = Literal["none", "one", "all"]
CATCH_UP_VALUES: tuple[str, ...] = ("none", "one", "all")
#: Schedule ids: no `@` (it separates the record keys) and nothing a shell or a URL mangles.
SCHEDULE_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,200}$"
ScheduleId = Annotated[str, Field(min_length=1, max_length=200, pattern=SCHEDULE_ID_PATTERN)]
#: Options a schedule sets itself for every tick's job, so a caller may not give them.
TICK_OWNED_OPTIONS = ("idempotency_key", "run_at", "delay")
#: Keywords of `@app.job` that declare a schedule rather than a job option.
SCHEDULE_OPTIONS = ("every", "cron", "timezone", "catch_up")
FIRED_SUFFIX = "@fired"
TRIGGERED_SUFFIX = "@triggered"
_MS = timedelta(milliseconds=1)
_HORIZON = timedelta(days=SCHEDULE_HORIZON_DAYS)


class InvalidSchedule(ValueError):
    """A schedule that cannot be: bad cron, unknown time zone, both or neither of every/cron ..."""


class ScheduleNotComputable(InvalidSchedule):
    """A stored rule whose next or previous tick cannot be computed: no match within croniter's
    search (a day the month never has), or a tick beyond the year 9999 (an `every` of millennia)."""


def declared_schedule_id(job: str) -> str:
    """The id of the schedule declared on `@app.job(..., every=/cron=)`: `job:<name>`."""
    return f"job:{job}"


# -- the definition ------------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", strict=True, allow_inf_nan=False)


class ScheduleDefinition(_Model):
    """What a schedule runs, when, and whether it is paused (the whole of it, on every definition event)."""

    schedule_id: ScheduleId = Field(description="Unique within the namespace; `job:<name>` for a declared one.")
    job: JobName = Field(description="Registered job name each tick enqueues.")
    args: JsonObject = Field(description="Arguments of every tick's job.")
    queue: QueueName = Field(description="Queue of every tick's job.")
    priority: Annotated[Priority, Field(strict=False)] = Field(Priority.NORMAL, description="Priority of every tick's job.")
    options: JobOptionsSpec = Field(description="Retry budget, backoff, timeout ... of every tick's job.")
    every_ms: Annotated[int, Field(ge=MIN_SCHEDULE_EVERY_S * 1000)] | None = Field(
        None, description="Period in ms; ticks are its multiples since the Unix epoch (UTC).")
    cron: Annotated[str, Field(min_length=1, max_length=200)] | None = Field(
        None, description="Cron expression (5 fields, croniter), in `timezone`.")
    timezone: Annotated[str, Field(min_length=1, max_length=100)] = Field("UTC", description="IANA zone of `cron`.")
    catch_up: CatchUp = Field("one", description="Missed ticks on return: none, one (the latest), all (up to a bound).")
    declared: bool = Field(False, description="Declared on `@app.job` (synced from code) rather than by `App.schedule`.")
    paused: bool = Field(False, description="A paused schedule fires nothing; ticks while paused are never fired.")
    since: UtcTimestamp = Field(description="Ticks at or before this time are never fired (created, changed or resumed).")

    @model_validator(mode="after")
    def _one_rule(self) -> ScheduleDefinition:
        check_rule(self.every_ms, self.cron, self.timezone)
        return self

    def describe(self) -> str:
        """`every 30s` or `cron 0 * * * * (Europe/Paris)`."""
        if self.every_ms is not None:
            return f"every {_duration_text(self.every_ms)}"
        return f"cron {self.cron} ({self.timezone})"

    def plan(self) -> dict[str, Any]:
        """The definition without its pause and `since`: equal plans need no update."""
        return self.model_dump(mode="json", exclude={"paused", "since"})


def _duration_text(ms: int) -> str:
    for unit, size in (("d", 86_400_000), ("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if ms % size == 0:
            return f"{ms // size}{unit}"
    return f"{ms}ms"


def check_rule(every_ms: int | None, cron: str | None, timezone: str) -> None:
    """Exactly one of every/cron; a cron croniter reads; a time zone zoneinfo knows."""
    if (every_ms is None) == (cron is None):
        raise InvalidSchedule("give exactly one of every= (e.g. '30s') and cron= (e.g. '0 * * * *')")
    if cron is not None and not _readable_cron(cron):
        raise InvalidSchedule(f"invalid cron expression {cron!r}: use 5 fields (minute hour day month weekday), "
                              f"e.g. '0 * * * *'")
    _zone(timezone)


@lru_cache(maxsize=4096)
def _readable_cron(cron: str) -> bool:
    """croniter reads `cron` as 5 fields. Cached: every schedule record read is validated, reading
    an expression costs about 60 µs, and schedules share a few expressions."""
    return len(cron.split()) == 5 and croniter.is_valid(cron)


def check_horizon(definition: ScheduleDefinition, now: datetime) -> None:
    """The rule fires within `SCHEDULE_HORIZON_DAYS` of `now`, else `InvalidSchedule` says so."""
    if definition.every_ms is not None:
        if definition.every_ms <= _HORIZON // _MS:
            return
        what = f"every={_duration_text(definition.every_ms)!r} is longer than {SCHEDULE_HORIZON_DAYS} days"
        hint = f"use at most every='{SCHEDULE_HORIZON_DAYS}d'"
    else:
        try:
            if next_tick(definition, now) - utc_ms(now) <= _HORIZON:
                return
        except ScheduleNotComputable:
            pass
        what = (f"cron {definition.cron!r} ({definition.timezone}) has no tick within {SCHEDULE_HORIZON_DAYS} days "
                f"of {format_utc_ms(now)}")
        hint = ("check the day of month against the months (February has at most 29 days; April, June, September "
                "and November 30) and that a weekday's '#n' can fall on that day")
    raise InvalidSchedule(f"schedule {definition.schedule_id!r} of job {definition.job!r}: {what}; a schedule must "
                          f"fire at least once every {SCHEDULE_HORIZON_DAYS} days (5 years, SCHEDULE_HORIZON_DAYS in "
                          f"eventjobs/core/limits.py): {hint}")


def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise InvalidSchedule(f"unknown time zone {name!r}: use an IANA name such as 'UTC' or 'Europe/Paris'") from None


def parse_every(every: str | float | timedelta) -> int:
    """`every=` as people write it ('30s', '5m', 90, timedelta(hours=1)) -> ms, at least the minimum."""
    if isinstance(every, bool):
        raise InvalidSchedule(f"every={every!r} is not a duration; use e.g. '30s', '5m' or a number of seconds")
    if isinstance(every, timedelta):
        period = every
    elif isinstance(every, (int, float)):
        try:
            period = timedelta(seconds=every)
        except (OverflowError, ValueError):
            raise InvalidSchedule(f"every={every!r} is too long: a schedule must fire at least once every "
                                  f"{SCHEDULE_HORIZON_DAYS} days") from None
    elif isinstance(every, str):
        try:
            period = parse_duration(every, default_unit="s")
        except (OverflowError, ValueError):
            raise InvalidSchedule(f"every={every!r} is not a duration; use e.g. '30s', '5m', '1h' "
                                  f"(at most '{SCHEDULE_HORIZON_DAYS}d')") from None
    else:
        raise InvalidSchedule(f"every= must be a duration such as '30s', got {type(every).__name__}")
    ms = period // _MS
    if period % _MS or ms < MIN_SCHEDULE_EVERY_S * 1000:
        raise InvalidSchedule(f"every={every!r} must be whole milliseconds and at least {MIN_SCHEDULE_EVERY_S} s")
    return ms


def default_schedule_id(job: str, args: dict[str, Any], every_ms: int | None, cron: str | None, timezone: str) -> str:
    """`<job>:<digest of args and rule>`: scheduling the same thing again names the same schedule."""
    digest = hashlib.sha256(orjson.dumps([args, every_ms, cron, timezone], option=orjson.OPT_SORT_KEYS)).hexdigest()
    return f"{job}:{digest[:12]}"


def define_schedule(
    job: str,
    args: dict[str, Any] | None,
    options: JobOptions,
    *,
    every: str | float | timedelta | None = None,
    cron: str | None = None,
    timezone: str = "UTC",
    catch_up: str = "one",
    schedule_id: str | None = None,
    declared: bool = False,
    now: datetime,
) -> ScheduleDefinition:
    """A validated definition; `InvalidSchedule` says what is wrong and what is allowed.

    The rule must fire within `SCHEDULE_HORIZON_DAYS` of `now` (`check_horizon`). `options` are
    the job's options merged with the caller's overrides; an idempotency key, run_at or delay is
    refused (the schedule sets each tick's own key and runs it at its tick).
    """
    if (every is not None and cron is not None) or (every is None and cron is None):
        raise InvalidSchedule(f"schedule of job {job!r}: give exactly one of every= (e.g. '30s') and cron= (e.g. '0 * * * *')")
    if catch_up not in CATCH_UP_VALUES:
        raise InvalidSchedule(f"catch_up={catch_up!r} is not one of {', '.join(map(repr, CATCH_UP_VALUES))}")
    owned = [name for name in TICK_OWNED_OPTIONS if getattr(options, name) is not None]
    if owned:
        raise InvalidSchedule(f"schedule of job {job!r}: {', '.join(owned)} cannot be set on a schedule "
                              f"(each tick's job gets the key <schedule id>@<tick> and runs at its tick)")
    every_ms = parse_every(every) if every is not None else None
    check_rule(every_ms, cron, timezone)
    args = dict(args or {})
    if schedule_id is None:
        schedule_id = default_schedule_id(job, args, every_ms, cron, timezone)
    try:
        definition = ScheduleDefinition(
            schedule_id=schedule_id, job=job, args=args, queue=options.queue, priority=options.priority,
            options=options.to_spec(job, args), every_ms=every_ms, cron=cron, timezone=timezone,
            catch_up=catch_up, declared=declared, since=utc_ms(now),  # type: ignore[arg-type]  # catch_up is checked against CATCH_UP_VALUES above
        )
    except ValidationError as error:
        raise InvalidSchedule(f"schedule {schedule_id!r} of job {job!r}: {worded(error)}") from None
    check_horizon(definition, now)
    return definition


# -- events ----------------------------------------------------------------------------------


class _ScheduleEvent(_Model):
    event_id: EventId = Field(description="Unique id (UUIDv7).")
    schedule_id: ScheduleId = Field(description="The schedule; with the record kind, the Kafka key.")
    type: str = Field(description="Discriminator: which event this is.")
    occurred_at: UtcTimestamp = Field(description="When it happened (UTC, ms); orders definition events.")
    actor: Annotated[str, Field(min_length=1, max_length=200)] = Field(description="Who wrote it.")


class _DefinitionEvent(_ScheduleEvent):
    """An event that changes the definition: it carries the whole definition after it, so the
    compacted topic keeps what a reader needs under the schedule's key."""

    definition: ScheduleDefinition = Field(description="The whole definition after this event.")


class ScheduleCreatedEvent(_DefinitionEvent):
    """A schedule was created (or created again after it was deleted)."""

    type: Literal["created"] = "created"


class ScheduleUpdatedEvent(_DefinitionEvent):
    """A schedule's job, args, options or rule changed."""

    type: Literal["updated"] = "updated"


class SchedulePausedEvent(_DefinitionEvent):
    """A schedule was paused: it fires nothing until resumed."""

    type: Literal["paused"] = "paused"


class ScheduleResumedEvent(_DefinitionEvent):
    """A paused schedule was resumed; ticks that passed while paused are not fired."""

    type: Literal["resumed"] = "resumed"


class ScheduleDeletedEvent(_DefinitionEvent):
    """A schedule was deleted (it keeps its last definition, for history)."""

    type: Literal["deleted"] = "deleted"
    reason: Annotated[str, Field(max_length=MAX_REASON_BYTES)] = Field("", description="Why.")


class ScheduleFiredEvent(_ScheduleEvent):
    """The schedule service enqueued the job of a periodic tick (written after the enqueue was acknowledged)."""

    type: Literal["fired"] = "fired"
    tick: UtcTimestamp = Field(description="The tick's time (its job's idempotency key names it).")
    job_id: EventId = Field(description="The tick's job.")


class ScheduleTriggeredEvent(_ScheduleEvent):
    """An operator enqueued the schedule's job now, outside its ticks (a manual tick)."""

    type: Literal["triggered"] = "triggered"
    tick: UtcTimestamp = Field(description="When it was triggered.")
    job_id: EventId = Field(description="The job it enqueued.")


ScheduleEvent = Annotated[
    ScheduleCreatedEvent | ScheduleUpdatedEvent | SchedulePausedEvent | ScheduleResumedEvent
    | ScheduleDeletedEvent | ScheduleFiredEvent | ScheduleTriggeredEvent,
    Field(discriminator="type"),
]
SCHEDULE_EVENT_ADAPTER: TypeAdapter[Any] = TypeAdapter(ScheduleEvent)
DefinitionEvent = (ScheduleCreatedEvent | ScheduleUpdatedEvent | SchedulePausedEvent | ScheduleResumedEvent
                   | ScheduleDeletedEvent)
DEFINITION_EVENTS = (ScheduleCreatedEvent, ScheduleUpdatedEvent, SchedulePausedEvent, ScheduleResumedEvent,
                     ScheduleDeletedEvent)
#: type -> model, for the docs and the JSON Schema.
SCHEDULE_EVENT_TYPES: dict[str, type[_ScheduleEvent]] = {
    cls.model_fields["type"].default: cls
    for cls in (*DEFINITION_EVENTS, ScheduleFiredEvent, ScheduleTriggeredEvent)
}


def record_key(event: _ScheduleEvent) -> str:
    """The Kafka key of the record of `event` (see the module docstring)."""
    if isinstance(event, ScheduleFiredEvent):
        return event.schedule_id + FIRED_SUFFIX
    if isinstance(event, ScheduleTriggeredEvent):
        return event.schedule_id + TRIGGERED_SUFFIX
    return event.schedule_id


def encode_schedule_event(event: _ScheduleEvent) -> bytes:
    return event.model_dump_json().encode()


def admit_schedule_record(key: bytes | None, value: bytes | None) -> Any:
    """The schedule event of a record, `None` for a tombstone, or `Refused`."""
    if value is None:
        return None
    try:
        event = SCHEDULE_EVENT_ADAPTER.validate_json(value)
    except ValidationError as error:
        return Refused(kind="not a schedule event", reason=worded(error, limit=1)[:300])
    expected = record_key(event)
    if key is None or key != expected.encode():
        shown = key.decode(errors="replace")[:200] if key is not None else "none"
        return Refused(kind="key is not the record's", reason=f"key {shown!r}, expected {expected!r}")
    if event.type in ("created", "updated", "paused", "resumed", "deleted") \
            and event.definition.schedule_id != event.schedule_id:
        return Refused(kind="definition of another schedule",
                                     reason=f"event of {event.schedule_id!r} defines {event.definition.schedule_id!r}")
    return event


# -- builders (one per event) ---------------------------------------------------------------


def _stamp_after(state: ScheduleState | None, now: datetime) -> datetime:
    """`now`, or 1 ms after the current definition's stamp if that is later (a clock behind the
    last writer's), so the new definition event wins the merge as it wins the log order."""
    now = utc_ms(now)
    if state is not None and state.updated_at is not None and now <= state.updated_at:
        return state.updated_at + _MS
    return now


def schedule_created_event(definition: ScheduleDefinition, current: ScheduleState | None, *, now: datetime,
                           actor: str) -> ScheduleCreatedEvent:
    return ScheduleCreatedEvent(event_id=new_event_id(), schedule_id=definition.schedule_id,
                                occurred_at=_stamp_after(current, now), actor=actor, definition=definition)


def schedule_updated_event(definition: ScheduleDefinition, current: ScheduleState, *, now: datetime,
                           actor: str) -> ScheduleUpdatedEvent:
    """The new definition keeps the current pause: changing a paused schedule does not resume it."""
    paused = current.definition.paused if current.definition is not None else False
    return ScheduleUpdatedEvent(event_id=new_event_id(), schedule_id=definition.schedule_id,
                                occurred_at=_stamp_after(current, now), actor=actor,
                                definition=definition.model_copy(update={"paused": paused}))


def schedule_paused_event(current: ScheduleState, *, now: datetime, actor: str) -> SchedulePausedEvent:
    definition = _live(current)
    return SchedulePausedEvent(event_id=new_event_id(), schedule_id=current.schedule_id,
                               occurred_at=_stamp_after(current, now), actor=actor,
                               definition=definition.model_copy(update={"paused": True}))


def schedule_resumed_event(current: ScheduleState, *, now: datetime, actor: str) -> ScheduleResumedEvent:
    """Resumed from now on: `since` moves to now, so the ticks it missed while paused never fire."""
    definition = _live(current)
    stamp = _stamp_after(current, now)
    return ScheduleResumedEvent(event_id=new_event_id(), schedule_id=current.schedule_id, occurred_at=stamp,
                                actor=actor, definition=definition.model_copy(update={"paused": False, "since": stamp}))


def schedule_deleted_event(current: ScheduleState, reason: str, *, now: datetime, actor: str) -> ScheduleDeletedEvent:
    return ScheduleDeletedEvent(event_id=new_event_id(), schedule_id=current.schedule_id,
                                occurred_at=_stamp_after(current, now), actor=actor, definition=_live(current),
                                reason=truncate_text(reason, MAX_REASON_BYTES))


def schedule_fired_event(schedule_id: str, tick: datetime, job_id: str, *, now: datetime,
                         actor: str) -> ScheduleFiredEvent:
    return ScheduleFiredEvent(event_id=new_event_id(), schedule_id=schedule_id, occurred_at=utc_ms(now),
                              actor=actor, tick=utc_ms(tick), job_id=job_id)


def schedule_triggered_event(schedule_id: str, tick: datetime, job_id: str, *, now: datetime,
                             actor: str) -> ScheduleTriggeredEvent:
    return ScheduleTriggeredEvent(event_id=new_event_id(), schedule_id=schedule_id, occurred_at=utc_ms(now),
                                  actor=actor, tick=utc_ms(tick), job_id=job_id)


def _live(state: ScheduleState) -> ScheduleDefinition:
    if state.definition is None or state.deleted:
        raise InvalidSchedule(f"schedule {state.schedule_id!r} does not exist")
    return state.definition


# -- the fold --------------------------------------------------------------------------------


class ScheduleState(_Model):
    """What the log says about one schedule: its newest definition and its last ticks."""

    schedule_id: ScheduleId
    definition: ScheduleDefinition | None = None  # None: only ticks are known so far (compaction order)
    deleted: bool = False
    updated_at: UtcTimestamp | None = None  # stamp of the definition event in force ...
    updated_by: EventId | None = None  # ... and its event id (ties)
    last_tick: UtcTimestamp | None = None
    last_job_id: EventId | None = None
    last_triggered: UtcTimestamp | None = None
    last_triggered_job_id: EventId | None = None

    @property
    def live(self) -> bool:
        """Defined and not deleted."""
        return self.definition is not None and not self.deleted


def apply_schedule(state: ScheduleState | None, event: _ScheduleEvent) -> ScheduleState:
    """The schedule after `event`: a merge, so order and repetition of records do not matter.

    A definition event replaces the definition when its (occurred_at, event_id) is later than the
    one in force; a fired or triggered tick counts when it is later than the last one (ties: the
    larger job id, so even conflicting records give one answer).
    """
    state = state or ScheduleState(schedule_id=event.schedule_id)
    if isinstance(event, DEFINITION_EVENTS):
        stamp = (event.occurred_at, event.event_id)
        if state.updated_at is not None and stamp <= (state.updated_at, state.updated_by or ""):
            return state
        return state.model_copy(update={
            "definition": event.definition, "deleted": isinstance(event, ScheduleDeletedEvent),
            "updated_at": event.occurred_at, "updated_by": event.event_id,
        })
    if isinstance(event, ScheduleFiredEvent):
        if state.last_tick is not None and (event.tick, event.job_id) <= (state.last_tick, state.last_job_id or ""):
            return state
        return state.model_copy(update={"last_tick": event.tick, "last_job_id": event.job_id})
    if isinstance(event, ScheduleTriggeredEvent):
        if state.last_triggered is not None and \
                (event.tick, event.job_id) <= (state.last_triggered, state.last_triggered_job_id or ""):
            return state
        return state.model_copy(update={"last_triggered": event.tick, "last_triggered_job_id": event.job_id})
    raise TypeError(f"not a schedule event: {type(event).__name__}")


def fold_schedules(events: list[Any]) -> dict[str, ScheduleState]:
    """Every schedule's state after `events` (in any order)."""
    states: dict[str, ScheduleState] = {}
    for event in events:
        states[event.schedule_id] = apply_schedule(states.get(event.schedule_id), event)
    return states


# -- ticks -----------------------------------------------------------------------------------


def next_tick(definition: ScheduleDefinition, after: datetime) -> datetime:
    """The first tick strictly after `after`; `ScheduleNotComputable` if there is none to find."""
    after = utc_ms(after)
    try:
        if definition.every_ms is not None:
            every = definition.every_ms
            return from_epoch_ms((epoch_ms(after) // every + 1) * every)
        return _cron_tick(definition, after, forward=True)
    except (OverflowError, ValueError, OSError) as error:  # croniter's "failed to find", a year past 9999
        raise _not_computable(definition, "after", after, error) from None


def previous_tick(definition: ScheduleDefinition, at_or_before: datetime) -> datetime:
    """The last tick at or before `at_or_before`; `ScheduleNotComputable` if there is none to find."""
    at_or_before = utc_ms(at_or_before)
    try:
        if definition.every_ms is not None:
            every = definition.every_ms
            return from_epoch_ms(epoch_ms(at_or_before) // every * every)
        return _cron_tick(definition, at_or_before, forward=False)
    except (OverflowError, ValueError, OSError) as error:
        raise _not_computable(definition, "at or before", at_or_before, error) from None


def _not_computable(definition: ScheduleDefinition, where: str, at: datetime,
                    error: BaseException) -> ScheduleNotComputable:
    return ScheduleNotComputable(f"schedule {definition.schedule_id!r} ({definition.describe()}): no tick {where} "
                                 f"{format_utc_ms(at)} can be computed ({type(error).__name__}: {error})")


def _cron_tick(definition: ScheduleDefinition, instant: datetime, *, forward: bool) -> datetime:
    assert definition.cron is not None
    return _cron_tick_in(definition.cron, definition.timezone, instant, forward)


@lru_cache(maxsize=16_384)
def _cron_tick_in(cron: str, timezone: str, instant: datetime, forward: bool) -> datetime:
    """The first tick of `cron` in `timezone` after `instant` (`forward`), or the last at or before it.

    Cached: schedules that share a rule mostly share the instant asked about too (the tick they
    all fired last), and a step of croniter costs 30 to 150 µs.

    croniter steps through the zone's naive wall-clock time; each match maps to its instant
    (`wall_clock_instant`). That map never goes backwards, so the first match (stepping away
    from `instant`) whose instant lies on the right side of `instant` is the answer. Matches on
    the wrong side are skipped: only the wall-clock times of a repeated hour, whose first
    occurrence is behind an `instant` in the second one.
    """
    zone = _zone(timezone)
    local = instant.astimezone(zone)
    wall = local.replace(tzinfo=None)
    if not forward:
        if local.fold:  # the second pass of a repeated hour: its wall-clock times until now+repeat fired in the first
            wall += local.replace(fold=0).utcoffset() - local.utcoffset()  # type: ignore[operator]  # an aware time in a ZoneInfo has an offset
        wall += _MS  # croniter's get_prev is strictly before its start: include the instant itself
    parsed = _parsed_cron(cron)
    for _ in range(MAX_CRON_CANDIDATES):
        wall = parsed.get_next(datetime, start_time=wall) if forward else parsed.get_prev(datetime, start_time=wall)
        tick = wall_clock_instant(wall, zone)
        if (tick > instant) if forward else (tick <= instant):
            return tick
    raise ValueError(f"no match among {MAX_CRON_CANDIDATES} cron candidates")


def wall_clock_instant(wall: datetime, zone: ZoneInfo) -> datetime:
    """The instant (UTC, ms) a schedule in `zone` fires for the naive wall-clock time `wall`.

    A time the clock shows twice (DST ends: 01:30 in New York on 2024-11-03) is its first
    occurrence (`fold=0`); a time the clock skips (DST starts: 02:30 on 2024-03-10) is the first
    instant after the gap (03:00 local, 07:00 UTC). So each wall-clock time fires at most once,
    and the map never goes backwards. Pure: every process computes the same instant.
    """
    aware = wall.replace(tzinfo=zone)
    instant = aware.astimezone(UTC)
    if instant.astimezone(zone).replace(tzinfo=None) == wall:
        return utc_ms(instant)
    return _gap_end(aware, zone)


def _gap_end(skipped: datetime, zone: ZoneInfo) -> datetime:
    """The transition that skipped the wall-clock time `skipped`: its first instant.

    In a gap, fold=0 reads the time with the offset from before the change (an instant after
    it) and fold=1 with the offset from after (an instant before it); zoneinfo does not expose
    the transition itself, so it is found between the two, to the second (tz data has whole
    seconds).
    """
    later = epoch_ms(skipped.replace(fold=0).astimezone(UTC)) // 1000
    earlier = epoch_ms(skipped.replace(fold=1).astimezone(UTC)) // 1000
    new_offset = from_epoch_ms(later * 1000).astimezone(zone).utcoffset()
    while later - earlier > 1:
        middle = (earlier + later) // 2
        if from_epoch_ms(middle * 1000).astimezone(zone).utcoffset() == new_offset:
            later = middle
        else:
            earlier = middle
    return from_epoch_ms(later * 1000)


_PARSED = threading.local()
_PARSED_KEPT = 1024  # cron expressions kept parsed per thread


def _parsed_cron(cron: str) -> croniter:
    """A croniter of `cron`, parsed once per thread: parsing costs about 60 µs, a step from a
    given `start_time` 30 µs. Each call of get_next / get_prev with `start_time` starts afresh;
    per thread because the object keeps its position between the two."""
    cache: dict[str, croniter] | None = getattr(_PARSED, "cache", None)
    if cache is None:
        cache = _PARSED.cache = {}
    parsed = cache.get(cron)
    if parsed is None:
        if len(cache) >= _PARSED_KEPT:
            cache.clear()
        parsed = cache[cron] = croniter(cron, datetime(2000, 1, 1))  # noqa: DTZ001 - a placeholder: every step passes its own start_time
    return parsed


def baseline(state: ScheduleState) -> datetime | None:
    """Ticks at or before this are done (fired, or before the definition took effect)."""
    if state.definition is None:
        return None
    since = state.definition.since
    return max(since, state.last_tick) if state.last_tick is not None else since


def upcoming_tick(state: ScheduleState, not_before: datetime | None = None) -> datetime | None:
    """The schedule's next tick: the first after its baseline (and after `not_before`); None when
    it is not defined, deleted or paused; `ScheduleNotComputable` when its rule has none to give."""
    definition = state.definition
    start = baseline(state)
    if definition is None or start is None or state.deleted or definition.paused:
        return None
    if not_before is not None:
        start = max(start, utc_ms(not_before).astimezone(UTC))
    return next_tick(definition, start)


def ticks_due(
    definition: ScheduleDefinition,
    last_tick: datetime | None,
    now: datetime,
    *,
    catch_up: CatchUp | None = None,
    bound: int = MAX_CATCH_UP_TICKS,
    late_after_s: float = SCHEDULE_LATE_AFTER_S,
) -> list[datetime]:
    """The ticks to fire at `now`, oldest first; none for a paused schedule.

    Ticks after the baseline (the later of `last_tick` and the definition's `since`) and at or
    before `now` are owed. Those less than `late_after_s` old are on time and always fire. Older
    ones were missed (nothing ran): `catch_up` "none" fires none of them, "one" the latest of
    them, "all" the latest `bound` of them.
    """
    if definition.paused:
        return []
    catch_up = catch_up or definition.catch_up
    now = utc_ms(now)
    start = max(definition.since, last_tick) if last_tick is not None else definition.since
    if start >= now:
        return []
    late_line = now - timedelta(seconds=late_after_s)
    missed: list[datetime] = []
    if start < late_line and catch_up != "none":
        tick = previous_tick(definition, late_line)
        while tick > start and len(missed) < (1 if catch_up == "one" else bound):
            missed.append(tick)
            tick = previous_tick(definition, tick - _MS)
        missed.reverse()
    on_time: list[datetime] = []
    tick = next_tick(definition, max(start, late_line))
    while tick <= now:
        on_time.append(tick)
        tick = next_tick(definition, tick)
    return missed + on_time


# -- a tick's job ----------------------------------------------------------------------------


def tick_key(schedule_id: str, tick: datetime, *, manual: bool = False) -> str:
    """The idempotency key of a tick's job: `<schedule id>@<tick>` (`@manual:` for a trigger)."""
    return f"{schedule_id}@{'manual:' if manual else ''}{format_utc_ms(tick)}"


def tick_job(definition: ScheduleDefinition, tick: datetime, *, now: datetime, manual: bool = False) -> EnqueuedEvent:
    """The `enqueued` event of a tick: the schedule's job, args and options, keyed by the tick.

    The actor names the schedule (`schedule:<id>`), so the log says where the job came from.
    """
    options = JobOptions.from_spec(definition.options, queue=definition.queue, priority=definition.priority,
                                   idempotency_key=tick_key(definition.schedule_id, tick, manual=manual))
    return enqueue(definition.job, definition.args, options, now=now, actor=f"schedule:{definition.schedule_id}")


# -- what a listing shows ---------------------------------------------------------------------


class ScheduleStatus(BaseModel):
    """One schedule as `App.schedules()` and `eventjobs schedules list` show it."""

    model_config = ConfigDict(frozen=True)

    schedule_id: str
    job: str
    rule: str  # "every 30s" / "cron 0 * * * * (UTC)"
    args: dict[str, Any]
    paused: bool
    declared: bool
    catch_up: str
    last_tick: datetime | None
    last_job_id: str | None
    next_tick: datetime | None  # None while paused, or set aside
    last_triggered: datetime | None
    set_aside: str | None = None  # why it fires nothing: its stored rule cannot be computed


def status_of(state: ScheduleState, now: datetime) -> ScheduleStatus | None:
    """What to show for a schedule at `now` (None: deleted, or not defined). A stored rule whose
    next tick cannot be computed shows no next tick and the reason in `set_aside`."""
    definition = state.definition
    if definition is None or state.deleted:
        return None
    set_aside = None
    try:
        upcoming = upcoming_tick(state, not_before=now)
    except ScheduleNotComputable as error:
        upcoming, set_aside = None, str(error)
    return ScheduleStatus(
        schedule_id=state.schedule_id, job=definition.job, rule=definition.describe(), args=definition.args,
        paused=definition.paused, declared=definition.declared, catch_up=definition.catch_up,
        last_tick=state.last_tick, last_job_id=state.last_job_id, next_tick=upcoming,
        last_triggered=state.last_triggered, set_aside=set_aside,
    )


# -- schedules declared in code ----------------------------------------------------------------

ORPHAN_REASON = "no longer declared on @app.job (every=/cron=) in the app's code"


def definition_change(definition: ScheduleDefinition, state: ScheduleState | None, *, now: datetime,
                      actor: str) -> DefinitionEvent | None:
    """What makes schedule `state` follow `definition`: created if it is missing (or deleted),
    updated if its job, args, options or rule differ (keeping an operator's pause), else None."""
    if state is None or not state.live:
        return schedule_created_event(definition, state, now=now, actor=actor)
    if state.definition is not None and state.definition.plan() != definition.plan():
        return schedule_updated_event(definition, state, now=now, actor=actor)
    return None


def declared_changes(declared: dict[str, ScheduleDefinition], current: dict[str, ScheduleState], *, now: datetime,
                     actor: str) -> list[DefinitionEvent]:
    """What makes the log match the schedules declared in code (`declared`, by schedule id).

    A declared schedule that is missing (or deleted) is created; one whose job, args, options or
    rule differ is updated (keeping an operator's pause); a schedule declared earlier that the
    code no longer declares is deleted, with `ORPHAN_REASON` (the schedule service logs it).
    Schedules made with `App.schedule` are never touched.
    """
    changes: list[DefinitionEvent] = []
    for schedule_id, definition in sorted(declared.items()):
        change = definition_change(definition, current.get(schedule_id), now=now, actor=actor)
        if change is not None:
            changes.append(change)
    for schedule_id, state in sorted(current.items()):
        if state.live and state.definition is not None and state.definition.declared and schedule_id not in declared:
            changes.append(schedule_deleted_event(state, ORPHAN_REASON, now=now, actor=actor))
    return changes
