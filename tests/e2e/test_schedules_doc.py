"""The "Schedules" example of docs/workflows.md runs as written against the real broker, the
processor and the schedule service: the declared schedule is written and the run-time one fires."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

from eventjobs import App
from eventjobs.core.state import JobStatus
from eventjobs.kafka.admin import apply_topics
from eventjobs.runtime.schedules import ScheduleService
from eventjobs.settings import Settings
from tests.e2e.conftest import Runtime, exec_doc_example, job_events, wait_for_status
from tests.e2e.test_schedules import schedule_ticks, wait_until

ROOT = Path(__file__).resolve().parents[2]


def _example() -> str:
    section = (ROOT / "docs" / "workflows.md").read_text().split("## Schedules", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)  # type: ignore[union-attr]


async def test_the_schedules_example(settings: Settings) -> None:
    await apply_topics(settings, ["reports"])
    namespace = exec_doc_example(_example(), settings, "docs/workflows.md")
    app: App = namespace["app"]
    runtime = Runtime(app)
    runtime.start_processor()
    service = ScheduleService(settings, jobs=app.jobs, writer=app.writer)  # as `eventjobs processor --app` runs it
    runtime.tasks.append(asyncio.create_task(service.run(runtime.stop)))
    try:
        schedule_id, job_id = await namespace["main"]()
        assert (await wait_for_status(runtime, job_id, JobStatus.PENDING)).args == {"n": 1}

        async def two_ticks() -> bool:
            return len(schedule_ticks(await job_events(settings), schedule_id)) >= 2

        await wait_until(two_ticks, 60, "two ticks of the example's schedule")
        listed = {s.schedule_id: s for s in await app.schedules()}
        assert listed["job:daily_report"].rule == "cron 0 6 * * * (Europe/Paris)"
        assert listed["ping-every-second"].last_tick is not None
    finally:
        await runtime.close()
