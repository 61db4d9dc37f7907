"""Follow the processor's job-state changelog, so callers can wait for a job to finish.

The changelog is the processor's committed view of every job (read_committed), so `App.wait`
reports exactly what the system decided, not a guess from the raw events.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict

from eventjobs.core.state import JobState, StateDecodeError, decode_state
from eventjobs.kafka import consumer, partitions_of
from eventjobs.settings import Settings

log = logging.getLogger("eventjobs.state_watch")


class StateWatcher:
    """One consumer over every changelog partition, from the beginning; keeps recent states.

    States are kept as the changelog's bytes and decoded only when asked for or waited on, so
    following a busy changelog costs little and `keep` bounds the memory (about 1-2 KB a job).
    """

    def __init__(self, settings: Settings, topic: str, *, keep: int = 50_000) -> None:
        self.settings = settings
        self.topic = topic
        self.keep = keep
        self.raw: OrderedDict[str, bytes] = OrderedDict()
        self._waiters: dict[str, list[asyncio.Future[JobState]]] = {}
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()  # set once everything written before start() was read
        self._ends: dict[object, int] = {}

    async def start(self) -> None:
        if self._task is None:
            partitions = await partitions_of(self.settings, self.topic)
            if not partitions:
                raise RuntimeError(f"topic {self.topic} does not exist; run `eventjobs topics apply`")
            reader = consumer(self.settings, group_id=None, fetch_max_wait_ms=500)
            await reader.start()
            reader.assign(partitions)
            await reader.seek_to_beginning()
            self._ends = await reader.end_offsets(partitions)
            self._task = asyncio.create_task(self._follow(reader))

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
            self._task = None

    async def _follow(self, reader) -> None:  # type: ignore[no-untyped-def]
        try:
            while True:
                batch = await reader.getmany(timeout_ms=200, max_records=10_000)
                for records in batch.values():
                    for record in records:
                        if record.value is not None and record.key is not None:
                            self._remember(record.key.decode(), record.value)
                if not self._ready.is_set():
                    positions = {tp: await reader.position(tp) for tp in self._ends}
                    if all(positions[tp] >= end for tp, end in self._ends.items()):
                        self._ready.set()
        finally:
            await reader.stop()

    def _remember(self, job_id: str, value: bytes) -> None:
        self.raw[job_id] = value
        self.raw.move_to_end(job_id)
        while len(self.raw) > self.keep:
            self.raw.popitem(last=False)
        if job_id in self._waiters:
            state = self._decode(job_id)
            if state is not None and state.is_terminal:
                for waiter in self._waiters.pop(job_id, []):
                    if not waiter.done():
                        waiter.set_result(state)

    def _decode(self, job_id: str) -> JobState | None:
        value = self.raw.get(job_id)
        if value is None:
            return None
        try:
            return decode_state(value)
        except StateDecodeError as error:
            log.warning("undecodable state of job %s: %s", job_id, error)
            return None

    async def latest(self, job_id: str) -> JobState | None:
        """The job's state as of at least the moment of the first call (the changelog read to its end)."""
        await self.start()
        await self._ready.wait()
        return self._decode(job_id)

    async def wait(self, job_id: str, timeout_s: float) -> JobState:
        await self.start()
        known = self._decode(job_id)
        if known is not None and known.is_terminal:
            return known
        waiter: asyncio.Future[JobState] = asyncio.get_running_loop().create_future()
        self._waiters.setdefault(job_id, []).append(waiter)
        try:
            return await asyncio.wait_for(waiter, timeout_s)
        except asyncio.TimeoutError:
            last = self._decode(job_id)
            where = f"it is {last.status.value} (attempt {last.attempt})" if last else "no state was seen for it"
            raise TimeoutError(f"job {job_id} did not finish within {timeout_s:g} s; {where}") from None
        finally:
            waiters = self._waiters.get(job_id)
            if waiters and waiter in waiters:
                waiters.remove(waiter)
