"""Cron ticks across daylight-saving changes: each local wall-clock time fires at most once.

The rule (docs/workflows.md, "Schedules"): a wall-clock time the clock shows twice (it goes
back) fires at its first occurrence only; a time the clock skips (it goes forward) fires once,
at the first instant after the gap. Put as one sentence: a wall-clock time fires at the first
instant at which the zone's clock reads it or a later time. `reference_ticks` computes that
from first principles, minute by minute with zoneinfo and its own field matching (no croniter),
and the properties compare the service's view, `ticks_due` called pass after pass as `now`
steps through the change, with it.
"""

from __future__ import annotations

import subprocess
import sys
from collections import Counter
from datetime import date, datetime, time, timedelta, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from eventjobs.core.options import JobOptions
from eventjobs.core.schedules import ScheduleDefinition, define_schedule, next_tick, previous_tick, ticks_due

UTC = timezone.utc
ROOT = Path(__file__).resolve().parents[2]
PROPS = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
MINUTE = timedelta(minutes=1)

#: zone -> (the day its clocks go forward in 2024, the day they go back). Sydney's seasons are the
#: other way round; Lord Howe moves by half an hour.
CHANGES = {
    "America/New_York": (date(2024, 3, 10), date(2024, 11, 3)),
    "Europe/Paris": (date(2024, 3, 31), date(2024, 10, 27)),
    "Australia/Sydney": (date(2024, 10, 6), date(2024, 4, 7)),
    "Australia/Lord_Howe": (date(2024, 10, 6), date(2024, 4, 7)),
}
CASES = [(zone, direction) for zone in CHANGES for direction in ("forward", "back")]


def local_midnight(zone: str, day: date) -> datetime:
    return datetime.combine(day, time(0), ZoneInfo(zone)).astimezone(UTC)


def cron_schedule(minutes: set[int], hours: set[int], zone: str, since: datetime) -> ScheduleDefinition:
    def field(values: set[int], size: int) -> str:
        return "*" if len(values) == size else ",".join(map(str, sorted(values)))

    return define_schedule("report", {}, JobOptions(), cron=f"{field(minutes, 60)} {field(hours, 24)} * * *",
                           timezone=zone, catch_up="all", schedule_id="dst", now=since)


def reference_ticks(minutes: set[int], hours: set[int], zone: str, start: datetime, end: datetime) -> list[datetime]:
    """Ticks in (start, end] by the rule: stepping UTC minute by minute, each minute's instant fires
    if the zone's clock reached a matching wall-clock time there that it had not shown before."""
    tz = ZoneInfo(zone)
    shown = start.astimezone(tz).replace(tzinfo=None)  # the latest wall-clock time shown so far
    ticks = []
    instant = start + MINUTE
    while instant <= end:
        wall = instant.astimezone(tz).replace(tzinfo=None)
        reached = []
        while shown < wall:  # a minute, or the whole gap when the clock jumps forward
            shown += MINUTE
            reached.append(shown)
        if any(w.minute in minutes and w.hour in hours for w in reached):
            ticks.append(instant)
        instant += MINUTE
    return ticks


def fire_while_stepping(definition: ScheduleDefinition, start: datetime,
                        steps: list[int]) -> tuple[list[datetime], datetime]:
    """What the schedule service fires pass after pass as `now` moves by `steps` seconds; the ticks
    and the last `now`."""
    now, last, fired = start, None, []
    for step in steps:
        now += timedelta(seconds=step)
        due = ticks_due(definition, last, now)
        fired += due
        last = due[-1] if due else last
    return fired, now


def change_window(zone: str, direction: str) -> tuple[datetime, datetime]:
    """From the local midnight before the change to 6 hours after it."""
    day = CHANGES[zone][0 if direction == "forward" else 1]
    midnight = local_midnight(zone, day)
    return midnight, midnight + timedelta(hours=10)


minute_sets = st.one_of(st.just(set(range(60))), st.sets(st.sampled_from([0, 1, 15, 29, 30, 31, 45, 59]), min_size=1,
                                                          max_size=4))
hour_sets = st.one_of(st.just(set(range(24))), st.sets(st.integers(0, 5), min_size=1, max_size=3))


@PROPS
@given(case=st.sampled_from(CASES), minutes=minute_sets, hours=hour_sets,
       steps=st.lists(st.integers(1, 900), max_size=300))
def test_stepping_now_through_a_dst_change_fires_each_wall_clock_time_once(
        case: tuple[str, str], minutes: set[int], hours: set[int], steps: list[int]) -> None:
    zone, direction = case
    start, end = change_window(zone, direction)
    definition = cron_schedule(minutes, hours, zone, start)
    rest = int((end - start).total_seconds()) - sum(steps)
    steps += [900] * max(0, -(-rest // 900))  # on past the window's end, 15 minutes at most a pass
    fired, last_now = fire_while_stepping(definition, start, steps)
    assert [t for t, n in Counter(fired).items() if n > 1] == []
    assert fired == sorted(fired)
    assert fired == reference_ticks(minutes, hours, zone, start, last_now)


@PROPS
@given(case=st.sampled_from(CASES), minutes=minute_sets, hours=hour_sets, at_s=st.integers(0, 10 * 3600))
def test_next_and_previous_tick_agree_with_the_rule(case: tuple[str, str], minutes: set[int], hours: set[int],
                                                     at_s: int) -> None:
    zone, direction = case
    start, end = change_window(zone, direction)
    definition = cron_schedule(minutes, hours, zone, start)
    ticks = reference_ticks(minutes, hours, zone, start - timedelta(days=1), end + timedelta(days=1))
    at = start + timedelta(seconds=at_s)
    assert next_tick(definition, at) == min(t for t in ticks if t > at)
    assert previous_tick(definition, at) == max(t for t in ticks if t <= at)


def test_the_repeated_hour_fires_its_wall_clock_time_once() -> None:
    """New York, 2024-11-03: 01:30 happens at 05:30 UTC (EDT) and again at 06:30 UTC (EST). A pass
    every 10 s through the day fired the 05:30 tick 187 times (due again on every pass until the
    repeated hour ended); it fires once."""
    start = datetime(2024, 11, 3, tzinfo=UTC)
    definition = define_schedule("report", {}, JobOptions(), cron="30 1 * * *", timezone="America/New_York",
                                 now=start)
    fired, _ = fire_while_stepping(definition, start, [10] * (24 * 360))
    assert fired == [datetime(2024, 11, 3, 5, 30, tzinfo=UTC)]


@pytest.mark.parametrize(("zone", "cron", "day", "expected"), [
    # the clocks go forward: the missing 02:30 fires once, at the first instant after the gap
    ("America/New_York", "30 2 * * *", date(2024, 3, 10), ["07:00"]),  # 03:00 EDT
    ("Europe/Paris", "30 2 * * *", date(2024, 3, 31), ["01:00"]),  # 03:00 CEST
    ("Australia/Sydney", "30 2 * * *", date(2024, 10, 6), ["16:00"]),  # 03:00 AEDT (the 5th, UTC)
    # hourly: 02:00 is missing and fires with 03:00, at the same instant: one tick
    ("America/New_York", "0 * * * *", date(2024, 3, 10), ["06:00", "07:00", "08:00", "09:00"]),  # 01:00, 03:00 ...
    # the clocks go back: the repeated 01:30 (Paris 02:30) fires at its first occurrence only
    ("America/New_York", "30 1 * * *", date(2024, 11, 3), ["05:30"]),  # 01:30 EDT, not 06:30 (EST)
    ("Europe/Paris", "30 2 * * *", date(2024, 10, 27), ["00:30"]),  # 02:30 CEST, not 01:30 (CET)
    ("Australia/Sydney", "30 2 * * *", date(2024, 4, 7), ["15:30"]),  # 02:30 AEDT (the 6th, UTC)
    ("America/New_York", "0 * * * *", date(2024, 11, 3), ["05:00", "07:00", "08:00"]),  # 01:00 EDT, 02:00, 03:00
])
def test_the_documented_examples(zone: str, cron: str, day: date, expected: list[str]) -> None:
    midnight = local_midnight(zone, day)
    definition = define_schedule("report", {}, JobOptions(), cron=cron, timezone=zone, now=midnight,
                                 catch_up="all")
    window = ticks_due(definition, None, midnight + timedelta(hours=4, minutes=1), bound=1000)
    shown = [t.strftime("%H:%M") for t in window if midnight + timedelta(hours=1) <= t <= midnight + timedelta(hours=4)]
    assert shown == expected  # UTC, from local 01:00 to 04:00 (by the clock of the day before the change)


PRINT_TICKS = """
from datetime import datetime, timezone
from eventjobs.core.options import JobOptions
from eventjobs.core.schedules import define_schedule, ticks_due
start, end = datetime(2024, 11, 3, tzinfo=timezone.utc), datetime(2024, 11, 3, 9, tzinfo=timezone.utc)
schedule = define_schedule("r", {}, JobOptions(), cron="*/20 0-3 * * *", timezone="America/New_York", now=start,
                           catch_up="all")
print(" ".join(tick.strftime("%H:%M") for tick in ticks_due(schedule, None, end)))
"""


def test_ticks_do_not_depend_on_the_process_time_zone() -> None:
    """Ticks are idempotency keys: processes in other local zones compute the same ones."""
    outputs = {
        subprocess.run([sys.executable, "-c", PRINT_TICKS], capture_output=True, text=True, check=True, cwd=ROOT,
                       env={"TZ": tz, "PATH": "/usr/bin:/bin"}).stdout.strip()
        for tz in ("UTC", "Asia/Tokyo", "America/Los_Angeles")
    }
    # 00:00 to 01:40 EDT, nothing while 01:xx repeats (EST), 02:00 to 03:40 EST; in UTC
    assert outputs == {"04:00 04:20 04:40 05:00 05:20 05:40 07:00 07:20 07:40 08:00 08:20 08:40"}
