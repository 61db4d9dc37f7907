"""Follow the processor's job-state changelog, so callers can wait for a job to finish.

The changelog is the processor's committed view of every job (read_committed), so `App.wait`
reports exactly what the system decided, not a guess from the raw events.

A changelog record the watcher cannot use (a key that is not UTF-8, a state that does not
decode) is skipped: counted in `skipped_records`, logged once per kind, and treated as no state
for that job; following goes on (docs/architecture.md, "Bad input").
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from dataclasses import dataclass, field
from collections.abc import Callable
from typing import NamedTuple

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from eventjobs.core.ids import created_ms
from eventjobs.core.state import JobState, StateDecodeError, decode_state
from eventjobs.kafka.clients import consumer, job_partition, partitions_of, read_to_end
from eventjobs.log.bad_records import BadRecords, describe_key, origin
from eventjobs.settings import Settings

log = logging.getLogger("eventjobs.log.state_watch")

FETCH_MAX_WAIT_MS = 500  # how long the broker holds a fetch of the tail open when nothing is new
POLL_TIMEOUT_MS = 200
MAX_RECORDS_PER_POLL = 10_000
# A job's states are written after its id was made; allowed difference between the clock that
# made the id and the processor's clock that stamps the changelog records.
CLOCK_SKEW_MARGIN_MS = 30_000


class _Cached(NamedTuple):
    partition: int
    timestamp_ms: int  # the changelog record's timestamp
    value: bytes


class _Found(NamedTuple):
    offset: int
    value: bytes


@dataclass(eq=False)
class _Waiting:
    """The callers waiting for one job, and the offset of its latest state the tail read meanwhile."""

    futures: list[asyncio.Future[JobState]] = field(default_factory=list)
    seen_offset: int = -1
    #: callers of `wait_for`: each is answered by the first state its condition holds for
    conditions: list[tuple[Callable[[JobState], bool], asyncio.Future[JobState]]] = field(default_factory=list)

    @property
    def idle(self) -> bool:
        return not self.futures and not self.conditions


@dataclass(eq=False)
class _Lookup:
    """Job ids to look up in one changelog partition, all answered by one read of it."""

    job_ids: set[str]
    found: asyncio.Future[dict[str, _Found]]


class StateWatcher:
    """One consumer over every changelog partition, from the beginning; keeps the latest states.

    States are kept as the changelog's bytes and decoded only when asked for or waited on, so
    following a busy changelog costs little, and `keep` bounds the memory (about 1-2 KB a job).
    A job whose state left that cache (or was read before anyone waited for it) is looked up in
    its own changelog partition; concurrent lookups of a partition share one read. The watcher
    lives on the event loop that created it.
    """

    def __init__(self, settings: Settings, topic: str, *, keep: int) -> None:
        self.settings = settings
        self.topic = topic
        self.keep = keep
        self.loop = asyncio.get_running_loop()
        self.raw: OrderedDict[str, _Cached] = OrderedDict()
        self._waiting: dict[str, _Waiting] = {}
        self._starting: asyncio.Task[None] | None = None
        self._follower: asyncio.Task[None] | None = None
        self._caught_up: asyncio.Future[None] | None = None  # done once all written before the start was read
        self._partition_count = 0
        # partition -> newest record timestamp evicted from the cache: a job whose states are
        # all younger than this (by its id's time) cannot have been evicted from that partition
        self._evicted_until_ms: dict[int, int] = {}
        self._pending_lookups: dict[int, _Lookup] = {}
        self._lookup_locks: dict[int, asyncio.Lock] = {}
        self._lookup_tasks: set[asyncio.Task[None]] = set()
        self.bad = BadRecords(log, f"the state watcher of {topic}")

    @property
    def skipped_records(self) -> int:
        """Changelog records skipped because they could not be used (see `bad.counts`)."""
        return self.bad.total

    # -- lifecycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        """Start following once; concurrent first callers all await the same start."""
        starting = self._starting
        if starting is None:
            starting = self._starting = asyncio.create_task(self._open())
        try:
            await asyncio.shield(starting)
        except Exception:
            if starting.done() and self._starting is starting:  # it failed: the next call tries again
                self._starting = None
            raise

    async def _open(self) -> None:
        partitions = await partitions_of(self.settings, self.topic)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} does not exist; run `eventjobs topics apply`")
        reader = consumer(self.settings, group_id=None, fetch_max_wait_ms=FETCH_MAX_WAIT_MS)
        await reader.start()
        try:
            reader.assign(partitions)
            await reader.seek_to_beginning()
            ends = await reader.end_offsets(partitions)
        except BaseException:
            await reader.stop()
            raise
        self._partition_count = len(partitions)
        self._caught_up = self.loop.create_future()
        self._follower = asyncio.create_task(self._follow(reader, ends, self._caught_up))

    async def stop(self) -> None:
        """Stop following; callers still waiting get an error saying so."""
        tasks = [t for t in (self._starting, self._follower, *self._lookup_tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._starting = self._follower = None
        self._fail_callers(RuntimeError(f"stopped following {self.topic} (the app was closed)"))

    async def _follow(
        self, reader: AIOKafkaConsumer, ends: dict[TopicPartition, int], caught_up: asyncio.Future[None]
    ) -> None:
        try:
            while True:
                batch = await reader.getmany(timeout_ms=POLL_TIMEOUT_MS, max_records=MAX_RECORDS_PER_POLL)
                for records in batch.values():
                    for record in records:
                        job_id = self._job_id(record)
                        if job_id is not None:
                            self._remember(job_id, record.partition, record.offset, record.timestamp, record.value)
                if not caught_up.done():
                    positions = {tp: await reader.position(tp) for tp in ends}
                    if all(positions[tp] >= end for tp, end in ends.items()):
                        caught_up.set_result(None)
        except Exception as error:  # callers learn it now instead of at their timeout; the next call restarts
            log.exception("following %s failed", self.topic)
            self._starting = self._follower = None
            self._fail_callers(RuntimeError(f"following {self.topic} failed: {error}"))
        finally:
            await reader.stop()

    def _job_id(self, record: ConsumerRecord[bytes, bytes]) -> str | None:
        """The job a changelog record is about, or None for a record to skip (no key, or not UTF-8)."""
        key: bytes | None = record.key
        if key is None:
            return None
        try:
            return key.decode()
        except UnicodeDecodeError as error:
            self.bad.report("key not UTF-8", f"{origin(record)} ({describe_key(record.key)})", str(error))
            return None

    def _fail_callers(self, error: Exception) -> None:
        """Everyone waiting for a job or for the catch-up gets `error` now."""
        futures = [f for waiting in self._waiting.values() for f in (*waiting.futures, *(c[1] for c in waiting.conditions))]
        for future in [self._caught_up, *futures]:
            if future is not None and not future.done():
                future.set_exception(error)
                future.exception()  # mark it retrieved: its caller may be past awaiting it

    # -- the tail ----------------------------------------------------------------------------
    def _remember(self, job_id: str, partition: int, offset: int, timestamp_ms: int, value: bytes | None) -> None:
        if value is None:  # tombstone: the processor forgot the job after its retention
            self.raw.pop(job_id, None)
        else:
            self.raw[job_id] = _Cached(partition, timestamp_ms, value)
            self.raw.move_to_end(job_id)
            while len(self.raw) > self.keep:
                _, evicted = self.raw.popitem(last=False)
                before = self._evicted_until_ms.get(evicted.partition, evicted.timestamp_ms)
                self._evicted_until_ms[evicted.partition] = max(before, evicted.timestamp_ms)
        waiting = self._waiting.get(job_id)
        if waiting is not None and value is not None:
            waiting.seen_offset = offset
            state = self._decode(job_id, value, f"{self.topic}/{partition}@{offset}")
            if state is None:
                self.raw.pop(job_id, None)
                return
            for until, future in waiting.conditions:
                if not future.done() and until(state):
                    future.set_result(state)
            if state.is_terminal:
                self._finish(job_id, state)

    def _decode(self, job_id: str, value: bytes, where: str) -> JobState | None:
        """The state in a changelog value, or None (skipped, counted, logged once) if it does not decode."""
        try:
            return decode_state(value)
        except StateDecodeError as error:
            self.bad.report("undecodable state", f"{where} (job {job_id})", str(error))
            return None

    def _cached(self, job_id: str) -> JobState | None:
        """The cached state of a job; an undecodable one is dropped from the cache (and reported once)."""
        cached = self.raw.get(job_id)
        if cached is None:
            return None
        state = self._decode(job_id, cached.value, f"{self.topic}/{cached.partition}")
        if state is None and self.raw.get(job_id) is cached:
            del self.raw[job_id]
        return state

    def _finish(self, job_id: str, state: JobState) -> None:
        waiting = self._waiting.get(job_id)
        if waiting is None:
            return
        futures, waiting.futures = waiting.futures, []
        if waiting.idle:
            del self._waiting[job_id]
        for future in futures:
            if not future.done():
                future.set_result(state)

    # -- asking ------------------------------------------------------------------------------
    async def latest(self, job_id: str) -> JobState | None:
        """The job's state as of at least the moment of the first call (the changelog read to its end)."""
        await self.start()
        assert self._caught_up is not None  # set by the start
        await asyncio.shield(self._caught_up)
        if job_id in self.raw:
            return self._cached(job_id)
        if self._may_have_evicted(job_id):
            found = await self._look_up(job_id)
            return self._decode(job_id, found.value, f"{self.topic}@{found.offset}") if found else None
        return None

    async def wait(self, job_id: str, timeout_s: float) -> JobState:
        """The job's terminal state, from the cache, the tail, or a lookup in its partition.

        The waiter is registered before anything is checked, so a state the tail reads while the
        check or the lookup runs reaches it. `timeout_s` covers everything, starting included.
        """
        finished: asyncio.Future[JobState] = self.loop.create_future()
        waiting = self._waiting.setdefault(job_id, _Waiting())
        waiting.futures.append(finished)
        last_known: JobState | None = None
        looked_up = False
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                await self.start()
                cached = job_id in self.raw
                last_known = self._cached(job_id)
                if last_known is not None and last_known.is_terminal:
                    return last_known
                if not cached and self._may_have_evicted(job_id):
                    found = await self._look_up(job_id)
                    looked_up = True
                    if found is not None and found.offset > waiting.seen_offset:  # not older than the tail's
                        last_known = self._decode(job_id, found.value, f"{self.topic}@{found.offset}")
                        if last_known is not None and last_known.is_terminal:
                            return last_known
                return await finished
        except TimeoutError:
            if not deadline.expired():
                raise
            raise TimeoutError(self._not_finished(job_id, timeout_s, last_known, looked_up)) from None
        finally:
            if finished in waiting.futures:
                waiting.futures.remove(finished)
            if waiting.idle and self._waiting.get(job_id) is waiting:
                del self._waiting[job_id]

    async def wait_for(self, job_id: str, until: Callable[[JobState], bool], timeout_s: float) -> JobState:
        """The first state of the job for which ``until`` holds: the latest one now (from the cache or
        a lookup), else each one the tail reads. Registered before anything is checked, as in `wait`.
        `TimeoutError` after `timeout_s` says the last state seen, or that there was none."""
        reached: asyncio.Future[JobState] = self.loop.create_future()
        waiting = self._waiting.setdefault(job_id, _Waiting())
        entry = (until, reached)
        waiting.conditions.append(entry)
        last_known: JobState | None = None
        try:
            async with asyncio.timeout(timeout_s) as deadline:
                await self.start()
                assert self._caught_up is not None  # set by the start
                await asyncio.shield(self._caught_up)
                cached = job_id in self.raw
                last_known = self._cached(job_id)
                if last_known is None and not cached and self._may_have_evicted(job_id):
                    found = await self._look_up(job_id)
                    if found is not None and found.offset > waiting.seen_offset:
                        last_known = self._decode(job_id, found.value, f"{self.topic}@{found.offset}")
                if last_known is not None and until(last_known):
                    return last_known
                return await reached
        except TimeoutError:
            if not deadline.expired():
                raise
            state = self._cached(job_id) if job_id in self.raw else last_known
            seen = f"its last state is {state.status.value}" if state is not None else f"{self.topic} has no state for it"
            raise TimeoutError(f"job {job_id} was not decided within {timeout_s:g} s ({seen}); is a processor running?") from None
        finally:
            waiting.conditions.remove(entry)
            if waiting.idle and self._waiting.get(job_id) is waiting:
                del self._waiting[job_id]

    def _not_finished(self, job_id: str, timeout_s: float, last_known: JobState | None, looked_up: bool) -> str:
        head = f"job {job_id} did not finish within {timeout_s:g} s"
        if self._follower is None:
            return f"{head}: could not start reading {self.topic} (is Kafka reachable?)"
        state = self._cached(job_id) if job_id in self.raw else last_known
        if state is not None:
            return f"{head}; it is {state.status.value} (attempt {state.attempt})"
        where = f"its changelog partition {self._partition_of(job_id)}" if looked_up else "the part read so far"
        return (
            f"{head}: {self.topic} has no state for it ({where}). The job is unknown: never enqueued in "
            f"namespace {self.settings.namespace!r}, not processed yet (is a processor running?), or "
            f"removed after its retention (retain_completed)"
        )

    # -- lookups of states no longer cached --------------------------------------------------
    def _partition_of(self, job_id: str) -> int:
        return job_partition(job_id, self._partition_count)

    def _may_have_evicted(self, job_id: str) -> bool:
        """Whether the tail may have read a state of the job and dropped it from the cache since."""
        evicted_until = self._evicted_until_ms.get(self._partition_of(job_id))
        if evicted_until is None:
            return False
        created = created_ms(job_id)
        return created is None or created - CLOCK_SKEW_MARGIN_MS <= evicted_until

    async def _look_up(self, job_id: str) -> _Found | None:
        """The job's latest record in its changelog partition (None: no state, or a tombstone)."""
        partition = self._partition_of(job_id)
        lookup = self._pending_lookups.get(partition)
        if lookup is None:
            lookup = self._pending_lookups[partition] = _Lookup(set(), self.loop.create_future())
            task = asyncio.create_task(self._read_partition(partition, lookup))
            self._lookup_tasks.add(task)
            task.add_done_callback(self._lookup_tasks.discard)
        lookup.job_ids.add(job_id)
        return (await asyncio.shield(lookup.found)).get(job_id)

    async def _read_partition(self, partition: int, lookup: _Lookup) -> None:
        """One read of a partition at a time; lookups asked for meanwhile gather for the next one."""
        try:
            async with self._lookup_locks.setdefault(partition, asyncio.Lock()):
                del self._pending_lookups[partition]
                found: dict[str, _Found] = {}
                async for record in read_to_end(self.settings, [TopicPartition(self.topic, partition)]):
                    job_id = self._job_id(record)
                    if job_id not in lookup.job_ids:
                        continue
                    if record.value is None:
                        found.pop(job_id, None)
                    else:
                        found[job_id] = _Found(record.offset, record.value)
            lookup.found.set_result(found)
        except asyncio.CancelledError:  # by stop()
            lookup.found.set_exception(RuntimeError(f"stopped reading {self.topic} (the app was closed)"))
            raise
        except Exception as error:  # noqa: BLE001 - handed to the waiting lookup, which raises it
            lookup.found.set_exception(error)
        finally:
            if self._pending_lookups.get(partition) is lookup:
                del self._pending_lookups[partition]

