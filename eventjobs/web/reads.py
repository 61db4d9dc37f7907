"""How the dashboard reads: the ClickHouse projections through `eventjobs.readside.queries`.

Each page asks its questions, and how fresh the projections are, in one worker thread over one
backend opened for that page and closed after it (`ReadSide.page`), as the CLI read commands do: while a projector owns the chdb directory that is
its read API; when nothing holds the directory, the dashboard opens it only for the moment it
reads, so a projector started later is not locked out for longer than one page.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from contextlib import closing
from typing import TypeVar

from eventjobs.clickhouse import Backend, open_backend
from eventjobs.kafka.offsets import end_offsets
from eventjobs.readside import queries
from eventjobs.readside.projector import events_topic
from eventjobs.settings import Settings

T = TypeVar("T")

#: how long the event log's end offsets are reused before they are asked for again
END_OFFSETS_TTL_S = 5.0
#: how long the dashboard waits for Kafka's end offsets before showing the lag as unknown
END_OFFSETS_TIMEOUT_S = 4.0


class ReadSide:
    """The projections of one namespace, as the dashboard's pages read them."""

    def __init__(self, settings: Settings, opener: Callable[[Settings], Backend] = open_backend) -> None:
        self.settings = settings
        self._opener = opener
        self._end_offsets: tuple[float, dict[int, int] | None] | None = None

    async def ask(self, question: Callable[[Backend], T]) -> T:
        """Run `question` on a backend opened for it, in a worker thread (queries block)."""

        def run() -> T:
            with closing(self._opener(self.settings)) as backend:
                return question(backend)

        return await asyncio.to_thread(run)

    async def page(self, question: Callable[[Backend], T]) -> tuple[T, queries.Freshness]:
        """`question`'s answer and how far the projections are behind the log (lag unknown when
        Kafka does not answer), over one backend."""
        end_offsets = await self._log_end_offsets()
        return await self.ask(lambda backend: (question(backend), queries.freshness(backend, end_offsets)))

    async def _log_end_offsets(self) -> dict[int, int] | None:
        cached = self._end_offsets
        if cached is not None and time.monotonic() - cached[0] < END_OFFSETS_TTL_S:
            return cached[1]
        try:
            offsets: dict[int, int] | None = await asyncio.wait_for(
                end_offsets(self.settings, events_topic(self.settings),
                            request_timeout_ms=int(END_OFFSETS_TIMEOUT_S * 1000)), END_OFFSETS_TIMEOUT_S)
        except Exception:  # noqa: BLE001 - the lag is informative: a page never fails because Kafka is away
            offsets = None
        self._end_offsets = (time.monotonic(), offsets)
        return offsets
