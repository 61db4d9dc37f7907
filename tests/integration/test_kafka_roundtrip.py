"""The broker the project starts is a real, durable Kafka: acks=all writes come back byte for byte."""

from __future__ import annotations

import os

from eventjobs.kafka.clients import consumer, producer
from eventjobs.settings import Settings
from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.topics import TopicNames, load_specs


async def test_acks_all_round_trip_is_byte_identical(settings: Settings) -> None:
    # Given the namespace's topics exist
    await apply_topics(settings)
    topic = TopicNames(settings.namespace, load_specs(settings.topics_dir)).events
    records = [(f"job-{i}".encode(), os.urandom(64 + i) + b'{"type":"enqueued"}') for i in range(50)]

    # When they are produced with acks=all and the idempotent producer
    prod = producer(settings)
    await prod.start()
    try:
        for key, value in records:
            await prod.send(topic, value=value, key=key, headers=[("schema", b"1")])
        await prod.flush()
    finally:
        await prod.stop()

    # Then a read_committed consumer reads every one back unchanged, with its key and header
    cons = consumer(settings, topic)
    await cons.start()
    try:
        seen: list[tuple[bytes, bytes, list[tuple[str, bytes]]]] = []
        while len(seen) < len(records):
            batch = await cons.getmany(timeout_ms=5000)
            assert batch, f"no records within 5 s after {len(seen)} of {len(records)}"
            for messages in batch.values():
                seen += [(m.key, m.value, list(m.headers)) for m in messages]
    finally:
        await cons.stop()
    assert sorted((k, v) for k, v, _ in seen) == sorted(records)
    assert all(headers == [("schema", b"1")] for _, _, headers in seen)
