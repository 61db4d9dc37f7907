"""Do the ready records of a pass's due re-publishes still wait in their topics? One look at the broker.

A pending job's ready record that its worker group has not read yet (its queue is paused, or
behind a backlog) is not lost, and a copy of it would only be claimed a second time. So before
the processor re-publishes, it asks, for every due re-publish of a pass at once:

- the partitions of their ready topics (one metadata request),
- the offset each worker group committed there (one offset fetch per group, for all its partitions),
- where those partitions' logs start and end (two offset lookups),
- for records whose offset this process does not know (published before a restart), the first
  offset at or after a few probe times (at most `PROBES` offset-for-time lookups).

The rule is `core.housekeeping` (`ready_record_waits`, `records_since_wait`); this module only
gathers its inputs. A look that fails or takes longer than `CHECK_TIMEOUT_S` tells nothing:
the records are then not known to wait, and are published again, as before this check existed
(logged once, then at powers of ten).
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient

from eventjobs.core.housekeeping import ReadyPartition, ready_record_waits, records_since_wait
from eventjobs.kafka.clients import admin_client, consumer
from eventjobs.log.bad_records import power_of_ten
from eventjobs.settings import Settings

log = logging.getLogger("eventjobs.runtime.ready_checks")

#: The most offset-for-time lookups of one pass (each one request for every partition at once).
PROBES = 4
#: A look at the broker that takes longer than this tells nothing (the records are published again).
CHECK_TIMEOUT_S = 10.0


@dataclass(frozen=True)
class Candidate:
    """A due re-publish: the job, its ready topic and the worker group that reads it, where its
    record went if this process published it (partition, offset), and otherwise the earliest
    moment it can have been published, in epoch ms (`core.housekeeping.earliest_publish`)."""

    job_id: str
    topic: str
    group: str
    place: tuple[int, int] | None
    earliest_ms: int


def probe_times(earliest: Iterable[int], count: int = PROBES) -> list[int]:
    """At most `count` probe times spread over the candidates' earliest publish times, the
    smallest always among them (so every candidate has a probe at or before its time)."""
    values = sorted(set(earliest))
    if len(values) <= count:
        return values
    if count == 1:
        return values[:1]
    return sorted({values[round(i * (len(values) - 1) / (count - 1))] for i in range(count)})


class ReadyChecks:
    """The processor's look at its ready topics (an admin client and an offsets reader, started
    on first use, closed with `close`)."""

    def __init__(self, settings: Settings, retention_ms: int | None) -> None:
        self.settings = settings
        self.retention_ms = retention_ms  # the ready topics' retention (None: forever)
        self.failures = 0
        self._admin: AIOKafkaAdminClient | None = None
        self._reader: AIOKafkaConsumer | None = None

    async def close(self) -> None:
        admin, reader, self._admin, self._reader = self._admin, self._reader, None, None
        if reader is not None:
            await reader.stop()
        if admin is not None:
            await admin.close()

    async def waiting(self, candidates: list[Candidate], now_ms: int) -> set[str]:
        """The job ids of `candidates` whose ready record still waits; empty when the look failed."""
        if not candidates:
            return set()
        try:
            waiting = await asyncio.wait_for(self._look(candidates, now_ms), CHECK_TIMEOUT_S)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # noqa: BLE001 - nothing known: publish again, as without the check
            self.failures += 1
            if power_of_ten(self.failures):
                log.warning("looking whether %d ready record(s) still wait failed (%r; %d look(s) failed so far); "
                            "they are published again", len(candidates), error, self.failures)
            await self.close()  # a client in a bad state is made anew next time
            return set()
        return waiting

    async def _clients(self) -> tuple[AIOKafkaAdminClient, AIOKafkaConsumer]:
        if self._admin is None or self._reader is None:
            await self.close()
            admin = admin_client(self.settings)
            reader = consumer(self.settings, group_id=None, isolation_level="read_uncommitted")
            try:
                await admin.start()
                await reader.start()
            except BaseException:
                await reader.stop()
                await admin.close()
                raise
            self._admin, self._reader = admin, reader
        return self._admin, self._reader

    async def _look(self, candidates: list[Candidate], now_ms: int) -> set[str]:
        admin, reader = await self._clients()
        topics = sorted({c.topic for c in candidates})
        partitions = {t["topic"]: sorted(p["partition"] for p in t["partitions"])
                      for t in await admin.describe_topics(topics) if not t.get("error_code")}
        every = [TopicPartition(topic, p) for topic in topics for p in partitions.get(topic, [])]
        if not every:
            return set()
        starts = await reader.beginning_offsets(every)
        ends = await reader.end_offsets(every)
        committed: dict[TopicPartition, int] = {}
        groups: dict[str, set[str]] = defaultdict(set)
        for c in candidates:
            groups[c.group].add(c.topic)
        for group, group_topics in sorted(groups.items()):
            asked = [tp for tp in every if tp.topic in group_topics]
            for tp, meta in (await admin.list_consumer_group_offsets(group, partitions=asked)).items():
                if meta.offset >= 0:  # -1: the group has no offset there
                    committed[tp] = meta.offset
        where = {tp: ReadyPartition(starts[tp], ends[tp], committed.get(tp)) for tp in every}

        waiting: set[str] = set()
        unknown: dict[str, list[Candidate]] = defaultdict(list)
        for c in candidates:
            if c.place is None:
                unknown[c.topic].append(c)
                continue
            place = where.get(TopicPartition(c.topic, c.place[0]))
            if place is not None and ready_record_waits(c.place[1], place):
                waiting.add(c.job_id)
        if unknown:
            waiting |= await self._look_by_time(reader, unknown, partitions, where, now_ms)
        return waiting

    async def _look_by_time(self, reader: AIOKafkaConsumer, unknown: dict[str, list[Candidate]],
                            partitions: dict[str, list[int]], where: dict[TopicPartition, ReadyPartition],
                            now_ms: int) -> set[str]:
        """Records published before this process took their partition: where the records since
        each probe time begin, on every partition of their topic (`records_since_wait`)."""
        probes = {topic: probe_times(c.earliest_ms for c in jobs) for topic, jobs in unknown.items()}
        found: dict[tuple[str, int], dict[int, int | None]] = {}  # (topic, probe) -> partition -> offset
        for k in range(max(len(times) for times in probes.values())):
            asked = {TopicPartition(topic, p): times[k] for topic, times in probes.items() if k < len(times)
                     for p in partitions.get(topic, [])}
            if not asked:
                continue
            answers = await reader.offsets_for_times(asked)
            for tp, at in asked.items():
                answer = answers.get(tp)
                found.setdefault((tp.topic, at), {})[tp.partition] = None if answer is None else answer.offset
        waiting = set()
        for topic, jobs in unknown.items():
            topic_where = {p: where[TopicPartition(topic, p)] for p in partitions.get(topic, [])}
            for c in jobs:
                probe = max(t for t in probes[topic] if t <= c.earliest_ms)
                if records_since_wait(c.earliest_ms, found.get((topic, probe), {}), topic_where, now_ms=now_ms,
                                      retention_ms=self.retention_ms):
                    waiting.add(c.job_id)
        return waiting
