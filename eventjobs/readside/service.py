"""`eventjobs project`: the long-running projector process (or task inside the processor).

It owns the read side: it opens the engine itself (never another process's read API), applies
pending projection files, and with chdb serves the read API (read-only, with a token, on
loopback) and the owner socket (reads and writes, a Unix socket only this user can reach), and
advertises both with the token in the owner record, so the CLI and the dashboard read the tables
through the read API, and replay rebuilds them through the owner socket, while it runs.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from eventjobs.clickhouse import open_owning_backend
from eventjobs.clickhouse.backend import Backend
from eventjobs.clickhouse.backoff import Backoff
from eventjobs.clickhouse.chdb_backend import ChdbBackend
from eventjobs.clickhouse.errors import ClickHouseError, ClickHouseUnavailable
from eventjobs.clickhouse.http_api import OwnerApi, ReadApi
from eventjobs.metrics import Metrics
from eventjobs.readside.migrations import apply_migrations, default_projections_dir
from eventjobs.readside.projector import Projector, ProjectorOptions
from eventjobs.readside.schedules import SchedulesProjection
from eventjobs.settings import Settings

log = logging.getLogger(__name__)
ROLE = "eventjobs project"
#: how often the projector checks that its API servers still run
API_CHECK_S = 1.0


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
            except TimeoutError:
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
    servers: list[ReadApi | OwnerApi] = []
    try:
        await asyncio.to_thread(apply_migrations, backend, default_projections_dir())
        if serve_read_api and isinstance(backend, ChdbBackend):
            token = settings.read_api_token.get_secret_value() if settings.read_api_token else None
            api = ReadApi(backend, read_api_host, read_api_port, token=token)
            servers.append(api)
            owner = OwnerApi(backend)
            servers.append(owner)
            api.start()
            owner.start()
            api.advertise(ROLE, owner)
            log.info("read API for %s at %s (read-only, token in the owner record), owner socket %s",
                     backend.describe(), api.url, owner.path)
        if on_ready is not None:
            on_ready.set()
        await _side_by_side(Projector(backend, settings, options=options, role=ROLE, metrics=metrics).run(stop),
                            SchedulesProjection(backend, settings).run(stop),
                            _watch_servers(servers, stop))
    finally:
        for server in servers:
            server.stop()
        backend.close()


async def _watch_servers(servers: list[ReadApi | OwnerApi], stop: asyncio.Event) -> None:
    """Fail the projector (exit non-zero) when one of its API servers stopped on its own: the CLI and
    the dashboard would otherwise be locked out while it projects on."""
    while servers and not stop.is_set():
        for server in servers:
            if not server.alive:
                raise ClickHouseError(f"the {server.name} of the projector stopped; see the log above")
        try:
            await asyncio.wait_for(stop.wait(), API_CHECK_S)
        except TimeoutError:
            pass


async def _side_by_side(*runs: Any) -> None:
    """Run the projections (and the servers' watch) until all return; the first failure cancels the
    others and is raised as it is."""
    tasks = [asyncio.ensure_future(run) for run in runs]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()
        await asyncio.gather(*pending)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
