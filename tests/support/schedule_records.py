"""Schedule records as an older version or a foreign producer writes them straight onto the
schedules topic: valid records whose rule this version refuses to define (`define_schedule`
checks the horizon), so that readers of the topic meet definitions they cannot compute."""

from __future__ import annotations

from datetime import datetime

import orjson

from eventjobs.core.options import JobOptions
from eventjobs.core.schedules import define_schedule, encode_schedule_event, schedule_created_event

#: Stored rules with no tick to compute: days the months never have, a 5th Sunday on the 1st,
#: and a period that ends past the year 9999.
UNCOMPUTABLE_RULES: dict[str, dict[str, object]] = {
    "february-30": {"cron": "0 0 30 2 *"},
    "april-31": {"cron": "0 0 31 4,6,9,11 *"},
    "fifth-sunday-on-the-first": {"cron": "0 0 1 1 0#5"},
    "every-3000000-days": {"every_ms": 3_000_000 * 86_400_000},
}


def stored_definition(schedule_id: str, now: datetime, *, job: str = "add", cron: str | None = None,
                      every_ms: int | None = None, timezone: str = "UTC") -> tuple[bytes, bytes]:
    """(key, value) of a `created` record of `schedule_id` with this rule, as JSON written by hand."""
    template = define_schedule(job, {}, JobOptions(), every="1h", schedule_id=schedule_id, now=now)
    record = orjson.loads(encode_schedule_event(schedule_created_event(template, None, now=now, actor="foreign")))
    record["definition"].update(every_ms=every_ms, cron=cron, timezone=timezone)
    return schedule_id.encode(), orjson.dumps(record)
