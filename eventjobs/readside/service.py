"""`eventjobs project`: the long-running projector process (or task inside the processor).

It owns the read side: it opens the engine itself (never another process's read API), applies
pending projection files, and with chdb serves the read API on loopback and advertises it in the
owner record, so the CLI, replay and the dashboard reach the tables through it while it runs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from eventjobs.clickhouse import open_owning_backend
from eventjobs.clickhouse.backend import Backend
from eventjobs.clickhouse.backoff import Backoff
from eventjobs.clickhouse.chdb_backend import ChdbBackend
from eventjobs.clickhouse.errors import ClickHouseUnavailable
from eventjobs.clickhouse.http_api import ReadApi
from eventjobs.metrics import Metrics
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import Projector, ProjectorOptions
from eventjobs.readside.schedules import SchedulesProjection
from eventjobs.settings import Settings

log = logging.getLogger(__name__)
ROLE = "eventjobs project"


async def open_with_backoff(settings: Settings, stop: asyncio.Event, role: str = ROLE) -> Backend | None:
    """Open the owning backend, waiting (with backoff) while a ClickHouse server is unreachable."""
    backoff = Backoff()
    while not stop.is_set():
        try:
            return await asyncio.to_thread(open_owning_backend, settings, role=role)
        except ClickHouseUnavailable as error:
            delay = backoff.next_delay_s()
            log.warning("%s; retrying in %.1f s", error, delay)
            try:
                await asyncio.wait_for(stop.wait(), delay)
            except asyncio.TimeoutError:
                pass
    return None


async def run_projector(settings: Settings, stop: asyncio.Event, *, options: ProjectorOptions = ProjectorOptions(),
                        serve_read_api: bool = True, read_api_host: str = "127.0.0.1", read_api_port: int = 0,
                        on_ready: asyncio.Event | None = None, metrics: Metrics | None = None) -> None:
    """Project the namespace's event log (and its schedules topic) until `stop` is set. Safe to run as a
    task in another service."""
    backend = await open_with_backoff(settings, stop)
    if backend is None:
        return
    api: ReadApi | None = None
    try:
        await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
        if serve_read_api and isinstance(backend, ChdbBackend):
            api = ReadApi(backend, read_api_host, read_api_port)
            api.start()
            api.advertise(ROLE)
            log.info("read API for %s at %s", backend.describe(), api.url)
        if on_ready is not None:
            on_ready.set()
        await _side_by_side(Projector(backend, settings, options=options, role=ROLE, metrics=metrics).run(stop),
                            SchedulesProjection(backend, settings).run(stop))
    finally:
        if api is not None:
            api.stop()
        backend.close()


async def _side_by_side(*runs: Any) -> None:
    """Run both projections until both return; the first failure cancels the other and is raised as it is."""
    tasks = [asyncio.ensure_future(run) for run in runs]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
        await asyncio.gather(*pending)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
