"""The pure rules of periodic schedules: definitions, records, the fold, and which ticks are due."""

from __future__ import annotations

import ast
import random
import re
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eventjobs
from eventjobs.core.refused import Refused
from eventjobs.core.clock import from_epoch_ms
from eventjobs.core.ids import job_id_for_key
from eventjobs.core.limits import MAX_CATCH_UP_TICKS, SCHEDULE_HORIZON_DAYS, SCHEDULE_LATE_AFTER_S
from eventjobs.core.options import ConstantBackoff, JobOptions, Priority
from eventjobs.core.schedules import (
    ORPHAN_REASON,
    SCHEDULE_EVENT_TYPES,
    InvalidSchedule,
    ScheduleDefinition,
    ScheduleNotComputable,
    ScheduleState,
    admit_schedule_record,
    apply_schedule,
    declared_changes,
    declared_schedule_id,
    define_schedule,
    encode_schedule_event,
    fold_schedules,
    next_tick,
    previous_tick,
    record_key,
    schedule_created_event,
    schedule_deleted_event,
    schedule_fired_event,
    schedule_paused_event,
    schedule_resumed_event,
    schedule_triggered_event,
    schedule_updated_event,
    status_of,
    tick_job,
    tick_key,
    ticks_due,
    upcoming_tick,
)
from tests.support.schedule_records import UNCOMPUTABLE_RULES, stored_definition

UTC = timezone.utc
T0 = datetime(2026, 3, 1, 12, 0, 0, tzinfo=UTC)
PROPS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def every(period: str = "1s", *, since: datetime = T0, catch_up: str = "one", **kw: Any) -> ScheduleDefinition:
    return define_schedule("report", {"n": 1}, JobOptions(), every=period, now=since, catch_up=catch_up,
                           schedule_id=kw.pop("schedule_id", "s1"), **kw)


def cron(expr: str, tz: str = "UTC", *, since: datetime = T0, catch_up: str = "one") -> ScheduleDefinition:
    return define_schedule("report", {}, JobOptions(), cron=expr, timezone=tz, now=since, catch_up=catch_up,
                           schedule_id="c1")


# -- definitions and their errors --------------------------------------------------------------


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"cron": "61 * * * *"}, "invalid cron expression '61 \\* \\* \\* \\*'"),
    ({"cron": "* * * * * *"}, "use 5 fields"),
    ({"cron": "0 * * * *", "timezone": "Europe/Atlantis"}, "unknown time zone 'Europe/Atlantis'"),
    ({}, "exactly one of every= .* and cron="),
    ({"every": "1m", "cron": "* * * * *"}, "exactly one of every="),
    ({"every": "999ms"}, "at least 1 s"),
    ({"every": "soon"}, "'soon' is not a duration"),
    ({"every": "1m", "catch_up": "some"}, "catch_up='some' is not one of 'none', 'one', 'all'"),
    ({"every": "1m", "schedule_id": "a@b"}, "schedule_id"),
])
def test_bad_definitions_say_what_is_wrong(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(InvalidSchedule, match=message):
        define_schedule("report", {}, JobOptions(), now=T0, **kwargs)


@pytest.mark.parametrize(("kwargs", "rule"), [
    ({"cron": "0 0 30 2 *"}, "cron '0 0 30 2 *' (UTC) has no tick within 1827 days of 2026-03-01T12:00:00.000Z"),
    ({"cron": "0 0 31 4,6,9,11 *", "timezone": "Europe/Paris"}, "cron '0 0 31 4,6,9,11 *' (Europe/Paris) has no tick"),
    ({"cron": "0 0 1 1 0#5"}, "cron '0 0 1 1 0#5' (UTC) has no tick"),
    ({"every": "3000000d"}, "every='3000000d' is longer than 1827 days"),
    ({"every": "1828d"}, "every='1828d' is longer than 1827 days"),
    ({"every": 10**20}, "every=100000000000000000000 is too long"),
])
def test_a_rule_that_fires_not_once_within_the_horizon_is_refused(kwargs: dict[str, Any], rule: str) -> None:
    """Syntax alone let these through, and every service computing their ticks then crashed."""
    with pytest.raises(InvalidSchedule, match=re.escape(rule)) as refused:
        define_schedule("report", {}, JobOptions(), now=T0, **kwargs)
    assert f"at least once every {SCHEDULE_HORIZON_DAYS} days" in str(refused.value)


def test_rules_that_fire_within_the_horizon_are_allowed_however_rare() -> None:
    leap_day = define_schedule("report", {}, JobOptions(), cron="0 0 29 2 *", now=T0)
    assert next_tick(leap_day, T0) == datetime(2028, 2, 29, tzinfo=UTC)
    longest = define_schedule("report", {}, JobOptions(), every=f"{SCHEDULE_HORIZON_DAYS}d", now=T0)
    assert longest.every_ms == SCHEDULE_HORIZON_DAYS * 86_400_000


@pytest.mark.parametrize("name", sorted(UNCOMPUTABLE_RULES))
def test_a_stored_rule_that_cannot_be_computed_raises_one_error_and_is_shown_set_aside(name: str) -> None:
    """Written by an older version or a foreign producer: the record is a valid schedule event,
    and its ticks raise `ScheduleNotComputable`, never croniter's or datetime's own error."""
    key, value = stored_definition(name, T0, **UNCOMPUTABLE_RULES[name])  # type: ignore[arg-type]
    event = admit_schedule_record(key, value)
    assert not isinstance(event, Refused), event
    state = apply_schedule(None, event)
    definition = state.definition
    assert definition is not None
    computations = [lambda: next_tick(definition, T0), lambda: upcoming_tick(state),
                    lambda: ticks_due(definition, None, T0 + timedelta(days=400))]
    if definition.cron is not None:  # an `every` of millennia has its previous tick at the epoch
        computations.append(lambda: previous_tick(definition, T0))
    for compute in computations:
        with pytest.raises(ScheduleNotComputable, match=f"schedule '{name}' .*: no tick .* can be computed"):
            compute()
    status = status_of(state, T0)
    assert status is not None and status.next_tick is None and status.set_aside is not None
    assert status.set_aside.startswith(f"schedule '{name}' ({definition.describe()}): no tick after")


@pytest.mark.parametrize("option", ["idempotency_key", "delay", "run_at"])
def test_options_a_schedule_sets_itself_are_refused(option: str) -> None:
    value = {"idempotency_key": "k", "delay": 5, "run_at": T0}[option]
    with pytest.raises(InvalidSchedule, match=option):
        define_schedule("report", {}, JobOptions(**{option: value}), every="1m", now=T0)


def test_every_accepts_text_numbers_and_timedeltas() -> None:
    assert every("90s").every_ms == 90_000
    assert define_schedule("r", {}, JobOptions(), every=30, now=T0).every_ms == 30_000
    assert define_schedule("r", {}, JobOptions(), every=timedelta(hours=1), now=T0).describe() == "every 1h"


def test_the_default_id_is_the_same_for_the_same_schedule() -> None:
    a = define_schedule("r", {"x": 1}, JobOptions(), every="1m", now=T0)
    b = define_schedule("r", {"x": 1}, JobOptions(), every="1m", now=T0 + timedelta(days=3))
    c = define_schedule("r", {"x": 2}, JobOptions(), every="1m", now=T0)
    assert a.schedule_id == b.schedule_id != c.schedule_id and a.schedule_id.startswith("r:")


# -- ticks -------------------------------------------------------------------------------------


def test_every_ticks_are_multiples_of_the_period_since_the_epoch() -> None:
    hourly = every("1h")
    assert next_tick(hourly, T0) == T0 + timedelta(hours=1)
    assert next_tick(hourly, T0 - timedelta(milliseconds=1)) == T0
    assert previous_tick(hourly, T0 + timedelta(minutes=59)) == T0 == previous_tick(hourly, T0)


def test_cron_ticks_follow_the_time_zone_across_daylight_saving() -> None:
    nine = cron("0 9 * * *", "Europe/Paris")
    assert next_tick(nine, datetime(2026, 1, 15, tzinfo=UTC)) == datetime(2026, 1, 15, 8, 0, tzinfo=UTC)  # CET
    assert next_tick(nine, datetime(2026, 7, 15, tzinfo=UTC)) == datetime(2026, 7, 15, 7, 0, tzinfo=UTC)  # CEST
    assert previous_tick(nine, datetime(2026, 7, 15, 7, 0, tzinfo=UTC)) == datetime(2026, 7, 15, 7, 0, tzinfo=UTC)


def test_on_time_ticks_all_fire_in_order() -> None:
    assert ticks_due(every("1s"), None, T0 + timedelta(seconds=3, milliseconds=500)) == [
        T0 + timedelta(seconds=s) for s in (1, 2, 3)]
    assert ticks_due(every("1s"), T0 + timedelta(seconds=2), T0 + timedelta(seconds=3)) == [T0 + timedelta(seconds=3)]
    assert ticks_due(every("1s"), T0 + timedelta(seconds=3), T0 + timedelta(seconds=3, milliseconds=999)) == []


def test_catch_up_decides_what_fires_of_ticks_missed_while_down() -> None:
    down_until = T0 + timedelta(hours=2)  # hourly ticks at 13:00 and 14:00; the latter is on time
    missed_and_now = ticks_due(every("1m", catch_up="none"), None, down_until)
    on_time = [t for t in missed_and_now]
    assert all(down_until - t < timedelta(seconds=SCHEDULE_LATE_AFTER_S) for t in on_time)
    assert len(ticks_due(every("1m", catch_up="one"), None, down_until)) == len(on_time) + 1
    assert ticks_due(every("1m", catch_up="one"), None, down_until)[0] == down_until - timedelta(minutes=1)
    everything = ticks_due(every("1m", catch_up="all"), None, down_until)
    assert len(everything) == len(on_time) + MAX_CATCH_UP_TICKS  # 119 missed, the latest 100 fire
    assert everything[0] == down_until - timedelta(minutes=MAX_CATCH_UP_TICKS)
    few = ticks_due(every("1m", catch_up="all"), None, T0 + timedelta(minutes=5))
    assert few == [T0 + timedelta(minutes=m) for m in range(1, 6)]


def test_nothing_fires_while_paused_nor_before_the_definition_took_effect() -> None:
    paused = every("1s").model_copy(update={"paused": True})
    assert ticks_due(paused, None, T0 + timedelta(seconds=10)) == []
    assert ticks_due(every("1s", since=T0 + timedelta(seconds=5)), None, T0 + timedelta(seconds=6)) == [
        T0 + timedelta(seconds=6)]
    assert ticks_due(every("1s"), None, T0) == []


@PROPS
@given(
    period_s=st.integers(1, 7200),
    since_s=st.integers(0, 10**6),
    last_offset=st.one_of(st.none(), st.integers(0, 10**6)),
    now_offset=st.integers(0, 10**6),
    catch_up=st.sampled_from(["none", "one", "all"]),
)
def test_due_ticks_are_ticks_owed_in_order(period_s: int, since_s: int, last_offset: int | None, now_offset: int,
                                           catch_up: str) -> None:
    since = T0 + timedelta(seconds=since_s)
    definition = every(f"{period_s}s", since=since, catch_up=catch_up)
    last = since + timedelta(seconds=last_offset) if last_offset is not None else None
    now = since + timedelta(seconds=now_offset)
    due = ticks_due(definition, last, now)
    start = max(since, last) if last else since
    assert due == sorted(set(due))
    assert all(start < t <= now and previous_tick(definition, t) == t for t in due)
    late = now - timedelta(seconds=SCHEDULE_LATE_AFTER_S)
    owed_on_time = [t for t in _all_ticks(definition, start, now) if t > late]
    assert [t for t in due if t > late] == owed_on_time  # on time: every one, always
    missed = [t for t in due if t <= late]
    limit = {"none": 0, "one": 1, "all": MAX_CATCH_UP_TICKS}[catch_up]
    all_missed = [t for t in _all_ticks(definition, start, now) if t <= late]
    assert missed == all_missed[len(all_missed) - min(limit, len(all_missed)):]
    assert ticks_due(definition, due[-1], now) == [] if due else True  # firing them leaves nothing due


def _all_ticks(definition: ScheduleDefinition, start: datetime, end: datetime) -> list[datetime]:
    ms = definition.every_ms
    assert ms is not None
    first = (int(start.timestamp() * 1000) // ms + 1) * ms
    last = int(end.timestamp() * 1000) // ms * ms
    if last - first > 10**6 * ms:
        first = last - 10**6 * ms
    return [from_epoch_ms(t) for t in range(first, last + 1, ms)] if first <= last else []


# -- a tick's job ------------------------------------------------------------------------------


def test_a_tick_enqueues_the_schedule_job_keyed_by_its_time() -> None:
    options = JobOptions(queue="reports", priority="high", max_attempts=3, backoff=ConstantBackoff(delay_s=2),
                         timeout=12)
    definition = define_schedule("report", {"n": 7}, options, every="1h", schedule_id="hourly", now=T0)
    tick = T0 + timedelta(hours=1)
    job = tick_job(definition, tick, now=tick + timedelta(milliseconds=3))
    assert job.idempotency_key == "hourly@2026-03-01T13:00:00.000Z" == tick_key("hourly", tick)
    assert job.job_id == job_id_for_key("report", job.idempotency_key)
    assert (job.name, job.args, job.queue, job.priority, job.actor) == (
        "report", {"n": 7}, "reports", Priority.HIGH, "schedule:hourly")
    assert job.options == options.to_spec() and job.run_at is None
    again = tick_job(definition, tick, now=tick + timedelta(seconds=30))  # fired again after a crash
    assert again.job_id == job.job_id
    manual = tick_job(definition, tick, now=tick, manual=True)
    assert manual.idempotency_key == "hourly@manual:2026-03-01T13:00:00.000Z" and manual.job_id != job.job_id



def test_a_ticks_job_keeps_every_option_of_the_schedules_job() -> None:
    """No option is lost between the definition and the tick's job (max_snoozes once was)."""
    options = JobOptions(max_attempts=4, backoff=ConstantBackoff(delay_s=3), timeout=9, ttl=60,
                         dead_letter_retention=120, retry_on=("ValueError",), capabilities=("gpu",), max_snoozes=3)
    definition = define_schedule("report", {}, options, every="1m", schedule_id="s", now=T0)
    job = tick_job(definition, T0 + timedelta(minutes=1), now=T0 + timedelta(minutes=1))
    assert job.options == options.to_spec()


# -- records -----------------------------------------------------------------------------------


def _one_of_each() -> list[Any]:
    definition = every("1m")
    created = schedule_created_event(definition, None, now=T0, actor="operator:a")
    state = apply_schedule(None, created)
    paused = schedule_paused_event(state, now=T0 + timedelta(seconds=1), actor="operator:a")
    state = apply_schedule(state, paused)
    resumed = schedule_resumed_event(state, now=T0 + timedelta(seconds=2), actor="operator:a")
    state = apply_schedule(state, resumed)
    updated = schedule_updated_event(every("5m"), state, now=T0 + timedelta(seconds=3), actor="operator:a")
    state = apply_schedule(state, updated)
    deleted = schedule_deleted_event(state, "not needed", now=T0 + timedelta(seconds=4), actor="operator:a")
    fired = schedule_fired_event("s1", T0 + timedelta(minutes=1), "job-1", now=T0 + timedelta(minutes=1), actor="s:h:1")
    triggered = schedule_triggered_event("s1", T0 + timedelta(seconds=5), "job-2", now=T0, actor="operator:a")
    return [created, paused, resumed, updated, deleted, fired, triggered]


def test_every_record_type_round_trips_under_its_key() -> None:
    events = _one_of_each()
    assert {e.type for e in events} == set(SCHEDULE_EVENT_TYPES)
    for event in events:
        assert admit_schedule_record(record_key(event).encode(), encode_schedule_event(event)) == event
    assert [record_key(e) for e in events[-2:]] == ["s1@fired", "s1@triggered"]


def test_unusable_records_are_refused_with_a_kind() -> None:
    created = _one_of_each()[0]
    refused = [
        admit_schedule_record(b"s1", b"{not json"),
        admit_schedule_record(b"s1", b'{"type": "exploded"}'),
        admit_schedule_record(b"other", encode_schedule_event(created)),
        admit_schedule_record(None, encode_schedule_event(created)),
        admit_schedule_record(b"s1", encode_schedule_event(created).replace(b'"every_ms":60000', b'"every_ms":5')),
    ]
    assert all(isinstance(r, Refused) for r in refused), refused
    assert [r.kind for r in refused] == ["not a schedule event", "not a schedule event", "key is not the record's",
                                         "key is not the record's", "not a schedule event"]
    assert admit_schedule_record(b"s1", None) is None


def test_pause_keeps_through_an_update_and_resume_skips_the_paused_ticks() -> None:
    created = schedule_created_event(every("1s"), None, now=T0, actor="a")
    state = apply_schedule(None, created)
    state = apply_schedule(state, schedule_paused_event(state, now=T0 + timedelta(seconds=1), actor="a"))
    state = apply_schedule(state, schedule_updated_event(every("2s"), state, now=T0 + timedelta(seconds=2), actor="a"))
    assert state.definition is not None and state.definition.paused and state.definition.every_ms == 2000
    resumed = schedule_resumed_event(state, now=T0 + timedelta(seconds=60), actor="a")
    state = apply_schedule(state, resumed)
    assert state.definition is not None and not state.definition.paused
    assert ticks_due(state.definition, state.last_tick, T0 + timedelta(seconds=63)) == [T0 + timedelta(seconds=62)]


def test_a_writer_with_a_clock_behind_still_wins_over_the_definition_it_read() -> None:
    created = schedule_created_event(every("1s"), None, now=T0 + timedelta(hours=1), actor="fast clock")
    state = apply_schedule(None, created)
    paused = schedule_paused_event(state, now=T0, actor="slow clock")
    assert apply_schedule(state, paused).definition.paused  # type: ignore[union-attr]


# -- the fold: properties ----------------------------------------------------------------------


@st.composite
def schedule_logs(draw: st.DrawFn) -> list[Any]:
    """A log of records as the writers write them: definition events stamped in log order per
    schedule (each writer read the one before), ticks fired in increasing order, triggers."""
    log: list[Any] = []
    states: dict[str, ScheduleState | None] = {"a": None, "b": None}
    fired: dict[str, int] = {"a": 0, "b": 0}
    clock = T0
    for _ in range(draw(st.integers(1, 25))):
        sid = draw(st.sampled_from(["a", "b"]))
        clock += timedelta(milliseconds=draw(st.integers(0, 5000)))
        state = states[sid]
        kind = draw(st.sampled_from(["define", "pause", "resume", "delete", "fire", "trigger"]))
        if kind == "define" or state is None or not state.live:
            period = draw(st.sampled_from(["1s", "2s", "1m"]))
            definition = every(period, since=clock, schedule_id=sid)
            event: Any = (schedule_created_event(definition, state, now=clock, actor="w") if state is None
                          or not state.live else schedule_updated_event(definition, state, now=clock, actor="w"))
        elif kind == "pause":
            event = schedule_paused_event(state, now=clock, actor="w")
        elif kind == "resume":
            event = schedule_resumed_event(state, now=clock, actor="w")
        elif kind == "delete":
            event = schedule_deleted_event(state, "why", now=clock, actor="w")
        elif kind == "fire":
            fired[sid] += draw(st.integers(0, 3))
            event = schedule_fired_event(sid, T0 + timedelta(seconds=fired[sid]), f"job-{fired[sid]}", now=clock,
                                         actor="s")
        else:
            event = schedule_triggered_event(sid, clock, f"manual-{clock.timestamp()}", now=clock, actor="w")
        if kind in ("fire", "trigger") and state is None:
            continue
        log.append(event)
        states[sid] = apply_schedule(state, event)
    return log


@PROPS
@given(log=schedule_logs(), seed=st.integers(0, 2**32))
def test_the_fold_is_deterministic_and_order_and_repetition_change_nothing(log: list[Any], seed: int) -> None:
    rng = random.Random(seed)
    expected = fold_schedules(log)
    assert fold_schedules(list(log)) == expected
    shuffled = log[:]
    rng.shuffle(shuffled)
    assert fold_schedules(shuffled) == expected
    duplicated = log + [rng.choice(log) for _ in range(5 if log else 0)]
    rng.shuffle(duplicated)
    assert fold_schedules(duplicated) == expected
    decoded = [admit_schedule_record(record_key(e).encode(), encode_schedule_event(e)) for e in log]
    assert fold_schedules(decoded) == expected  # as another process reads it


@PROPS
@given(log=schedule_logs())
def test_the_compacted_topic_folds_to_the_same_schedules(log: list[Any]) -> None:
    newest: dict[str, tuple[int, Any]] = {}
    for offset, event in enumerate(log):
        newest[record_key(event)] = (offset, event)
    compacted = [event for _, event in sorted(newest.values(), key=lambda pair: pair[0])]
    assert fold_schedules(compacted) == fold_schedules(log)


@PROPS
@given(log=schedule_logs())
def test_applying_a_record_twice_is_applying_it_once(log: list[Any]) -> None:
    state: ScheduleState | None = None
    for event in log:
        if state is not None and state.schedule_id != event.schedule_id:
            continue
        once = apply_schedule(state, event)
        assert apply_schedule(once, event) == once
        state = once


# -- schedules declared in code ----------------------------------------------------------------


def _declared(job: str, period: str = "1m") -> ScheduleDefinition:
    return define_schedule(job, {}, JobOptions(), every=period, now=T0, declared=True,
                           schedule_id=declared_schedule_id(job))


def test_declared_schedules_are_created_updated_and_orphans_deleted() -> None:
    kept, changed, orphan, made = _declared("kept"), _declared("changed"), _declared("orphan"), \
        define_schedule("made", {}, JobOptions(), every="1m", now=T0, schedule_id="by-api")
    log = [schedule_created_event(d, None, now=T0, actor="w") for d in (kept, changed, orphan, made)]
    current = fold_schedules(log)
    current["job:changed"] = apply_schedule(current["job:changed"], schedule_paused_event(
        current["job:changed"], now=T0 + timedelta(seconds=1), actor="operator"))
    later = T0 + timedelta(hours=1)
    declared = {d.schedule_id: d for d in (_declared("kept"), _declared("changed", "5m"), _declared("new"))}
    changes = declared_changes(declared, current, now=later, actor="w")
    assert [(c.type, c.schedule_id) for c in changes] == [
        ("updated", "job:changed"), ("created", "job:new"), ("deleted", "job:orphan")]
    assert changes[0].definition.paused and changes[0].definition.every_ms == 300_000  # the pause is kept
    assert changes[2].reason == ORPHAN_REASON
    after = fold_schedules([*log, *changes])
    assert declared_changes(declared, {**current, **{k: after[k] for k in after}}, now=later, actor="w") == []


def test_a_status_shows_the_last_and_next_tick() -> None:
    state = apply_schedule(None, schedule_created_event(every("1m"), None, now=T0, actor="a"))
    state = apply_schedule(state, schedule_fired_event("s1", T0 + timedelta(minutes=1), "j1", now=T0, actor="s"))
    status = status_of(state, T0 + timedelta(minutes=1, seconds=10))
    assert status is not None
    assert (status.rule, status.last_tick, status.last_job_id, status.next_tick) == (
        "every 1m", T0 + timedelta(minutes=1), "j1", T0 + timedelta(minutes=2))
    deleted = apply_schedule(state, schedule_deleted_event(state, "x", now=T0 + timedelta(minutes=2), actor="a"))
    assert status_of(deleted, T0) is None


# -- only the core builds schedule events ------------------------------------------------------


def test_no_module_outside_the_core_builds_a_schedule_event_by_hand() -> None:
    package = Path(eventjobs.__file__).parent
    classes = {cls.__name__ for cls in SCHEDULE_EVENT_TYPES.values()}
    found = []
    for path in package.rglob("*.py"):
        if package / "core" in path.parents:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call):
                func = node.func
                name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
                if name in classes:
                    found.append(f"{path}:{node.lineno}")
    assert found == []
