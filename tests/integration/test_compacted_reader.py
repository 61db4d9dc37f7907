"""log.readers.read_compacted, against the broker: the latest decodable value per key of a compacted
partition, the keys whose latest record does not decode, and every undecodable record told as read."""

from __future__ import annotations

import pytest
from aiokafka import ConsumerRecord, TopicPartition

from eventjobs.kafka.admin import apply_topics
from eventjobs.kafka.clients import producer
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.log.readers import read_compacted
from eventjobs.settings import Settings

NOT_UTF8 = b"\xff\xfe"


async def test_each_key_keeps_its_latest_decodable_value_and_the_undecodable_are_listed_and_told(
    settings: Settings,
) -> None:
    # Given a compacted partition with good, bad, replaced and tombstoned records (values: integers)
    await apply_topics(settings)
    topic = TopicNames(settings.namespace, load_specs(settings.topics_dir)).limit_state
    records: list[tuple[bytes | None, bytes | None]] = [
        (b"good", b"1"),
        (b"bad-then-good", b"x"), (b"bad-then-good", b"2"),
        (b"good-then-bad", b"3"), (b"good-then-bad", b"y"),
        (b"bad-then-tombstone", b"z"), (b"bad-then-tombstone", None),
        (b"good-then-tombstone", b"4"), (b"good-then-tombstone", None),
        (NOT_UTF8, b"w"),
        (b"bad-twice", b"u"), (b"bad-twice", b"v"),
    ]
    sender = producer(settings)
    await sender.start()
    try:
        for key, value in records:
            await sender.send_and_wait(topic, value, key=key, partition=0)
    finally:
        await sender.stop()

    # When it is read with a decoder that refuses what is not a number
    told: list[tuple[bytes | None, bytes | None, str]] = []

    def on_undecodable(record: ConsumerRecord[bytes, bytes], error: Exception) -> None:
        told.append((record.key, record.value, type(error).__name__))

    read = await read_compacted(settings, [TopicPartition(topic, 0)], int, ValueError, on_undecodable=on_undecodable)

    # Then each key has its latest value if it decodes, and is listed as undecodable if it does not
    assert read.latest == {"good": 1, "bad-then-good": 2}
    assert {key: record.value for key, (record, _) in read.undecodable.items()} == {
        b"good-then-bad": b"y", NOT_UTF8: b"w", b"bad-twice": b"v"}
    assert all(isinstance(error, ValueError) for _, error in read.undecodable.values())
    # and every undecodable record was told as it was read, a later record of its key or not
    assert told == [(b"bad-then-good", b"x", "ValueError"), (b"good-then-bad", b"y", "ValueError"),
                    (b"bad-then-tombstone", b"z", "ValueError"), (NOT_UTF8, b"w", "ValueError"),
                    (b"bad-twice", b"u", "ValueError"), (b"bad-twice", b"v", "ValueError")]
    # and an error the decoder raises that is not one of `errors` is not taken for an undecodable record
    with pytest.raises(ValueError):
        await read_compacted(settings, [TopicPartition(topic, 0)], int, KeyError)
