"""Which queues are paused: a follower of `<ns>.queue-control` for the worker.

The topic is read from its beginning, so a worker that starts (or restarts) while a queue is
paused knows it before it fetches anything (`caught_up`), and then followed, so a pause or resume
reaches every worker within about `POLL_S` plus the broker round trip. A record that cannot be
used is skipped and counted (`core.control.admit_queue_control`), never stops the worker.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from aiokafka import AIOKafkaConsumer, ConsumerRecord, TopicPartition

from eventjobs.core.refused import Refused
from eventjobs.core.control import QueueControl, admit_queue_control
from eventjobs.kafka.clients import consumer, partitions_of
from eventjobs.log.bad_records import BadRecords, describe_key, origin
from eventjobs.settings import Settings

log = logging.getLogger("eventjobs.runtime.queue_pauses")
POLL_S = 0.2  # longest wait for new control records in one fetch: a pause takes effect well within a second


class QueuePauses:
    """The latest control record per queue; `paused(queue)` answers from memory."""

    def __init__(self, settings: Settings, topic: str, on_change: Callable[[], None] = lambda: None) -> None:
        self.settings = settings
        self.topic = topic
        self.on_change = on_change  # called after a queue's pause state changed
        self.controls: dict[str, QueueControl] = {}
        self.caught_up = asyncio.Event()  # set once the topic was read to its end at start
        self.bad = BadRecords(log, f"queue control ({topic})")

    def paused(self, queue: str) -> bool:
        control = self.controls.get(queue)
        return control is not None and control.paused

    @property
    def skipped_records(self) -> int:
        return self.bad.total

    async def follow(self, stop: asyncio.Event) -> None:
        """Read the topic from the start, set `caught_up` at its end, then follow it until `stop`."""
        partitions = await partitions_of(self.settings, self.topic)
        if not partitions:
            raise RuntimeError(f"topic {self.topic} does not exist; create it with `eventjobs topics apply`")
        reader = consumer(self.settings, group_id=None, fetch_max_wait_ms=int(POLL_S * 1000))
        await reader.start()
        try:
            reader.assign(partitions)
            await reader.seek_to_beginning(*partitions)
            ends = await reader.end_offsets(partitions)
            while not stop.is_set():
                batch = await reader.getmany(timeout_ms=int(POLL_S * 1000))
                changed = False
                for records in batch.values():
                    for record in records:
                        changed |= self._take(record)
                if not self.caught_up.is_set() and await self._at_end(reader, ends):
                    self.caught_up.set()
                    log.info("queue control read: paused %s", sorted(q for q in self.controls if self.paused(q)) or "none")
                if changed:
                    self.on_change()
        finally:
            await reader.stop()

    @staticmethod
    async def _at_end(reader: AIOKafkaConsumer, ends: dict[TopicPartition, int]) -> bool:
        for tp, end in ends.items():
            if await reader.position(tp) < end:
                return False
        return True

    def _take(self, record: ConsumerRecord[bytes, bytes]) -> bool:
        """Apply one record; whether a queue's paused state changed."""
        admitted = admit_queue_control(record.key, record.value)
        if isinstance(admitted, Refused):
            self.bad.report(admitted.kind, f"{origin(record)} ({describe_key(record.key)})", admitted.reason)
            return False
        queue, control = admitted
        before = self.paused(queue)
        if control is None:
            self.controls.pop(queue, None)
        else:
            self.controls[queue] = control
        if self.paused(queue) != before:
            log.info("queue %s %s (%s)", queue, "paused" if self.paused(queue) else "resumed",
                     control.reason if control else "record deleted")
            return True
        return False
