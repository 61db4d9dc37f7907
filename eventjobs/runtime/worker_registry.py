"""A worker's entries in the worker registry (`<ns>.workers`): hello, heartbeats, goodbye.

Operators list workers from this topic (`App.workers`, `eventjobs workers`), so each worker
writes its announcement (`core.control.worker_announcement`) when it starts, again every
`heartbeat_s` with its busy slots, and a last one with state "stopped" when it stops cleanly.
A worker that is killed writes nothing more; readers then show it as gone
(`core.control.worker_presence`). A heartbeat that cannot be written is logged and tried again
at the next tick: the registry is for people, a broker hiccup must not stop the jobs.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from collections.abc import Callable
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version

from aiokafka import AIOKafkaProducer

from eventjobs.core.clock import Clock
from eventjobs.core.control import WorkerAnnouncement, worker_announcement
from eventjobs.log.bad_records import power_of_ten

log = logging.getLogger("eventjobs.runtime.worker_registry")


def package_version() -> str:
    try:
        return version("eventjobs")
    except PackageNotFoundError:
        return "unknown"


class WorkerRegistry:
    """Announces one worker; `busy` is read at every heartbeat."""

    def __init__(
        self, *, topic: str, worker_id: str, queues: list[str], capabilities: list[str], concurrency: int,
        busy: Callable[[], int], clock: Clock, heartbeat_s: float,
    ) -> None:
        self.topic = topic
        self.worker_id = worker_id
        self.queues = queues
        self.capabilities = capabilities
        self.concurrency = concurrency
        self.busy = busy
        self.clock = clock
        self.heartbeat_s = heartbeat_s
        self.host = socket.gethostname()
        self.pid = os.getpid()
        self.version = package_version()
        self.started_at: datetime = clock.now()
        self.failures = 0  # heartbeats not written

    def announcement(self, *, stopped: bool = False) -> WorkerAnnouncement:
        return worker_announcement(
            worker_id=self.worker_id, host=self.host, pid=self.pid, queues=self.queues,
            capabilities=self.capabilities, concurrency=self.concurrency, busy=0 if stopped else self.busy(),
            version=self.version, started_at=self.started_at, now=self.clock.now(), heartbeat_s=self.heartbeat_s,
            stopped=stopped,
        )

    async def _write(self, sender: AIOKafkaProducer, announcement: WorkerAnnouncement) -> None:
        await (await sender.send(self.topic, announcement.encode(), key=self.worker_id.encode()))

    async def hello(self, sender: AIOKafkaProducer) -> None:
        """The first announcement; raises if it cannot be written (the worker then does not start)."""
        await self._write(sender, self.announcement())

    async def heartbeats(self, sender: AIOKafkaProducer, stop: asyncio.Event) -> None:
        """Announce every `heartbeat_s` until `stop` (a supervised task of the worker)."""
        while not stop.is_set():
            try:
                await asyncio.wait_for(stop.wait(), self.heartbeat_s)
                return
            except TimeoutError:
                pass
            try:
                await self._write(sender, self.announcement())
            except Exception as error:  # noqa: BLE001 - see the module docstring
                self.failures += 1
                if power_of_ten(self.failures):
                    log.warning("worker %s: registry heartbeat not written (%r; %d so far); trying again in %.1f s",
                                self.worker_id, error, self.failures, self.heartbeat_s)

    async def goodbye(self, sender: AIOKafkaProducer) -> None:
        """The last announcement (state "stopped"); if it cannot be written the worker shows as gone later."""
        try:
            await asyncio.wait_for(self._write(sender, self.announcement(stopped=True)), 10)
        except Exception as error:  # noqa: BLE001 - stopping anyway
            log.warning("worker %s: goodbye not written to the registry (%r); it will show as gone", self.worker_id, error)
