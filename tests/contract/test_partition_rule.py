"""The job partition rule and how the processor, replay and the projector treat an event that
arrived on another partition. No Kafka here: records are built in memory."""

from __future__ import annotations

import importlib.util
import os
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka.partitioner import DefaultPartitioner
from aiokafka.partitioner import murmur2 as aiokafka_murmur2
from aiokafka.structs import ConsumerRecord
from hypothesis import given
from hypothesis import strategies as st

from eventjobs.core.codec import encode
from eventjobs.core.commands import enqueue
from eventjobs.core.events import JobEvent
from eventjobs.core.options import JobOptions
from eventjobs.core.partitioning import job_partition, key_partition, murmur2
from eventjobs.core.state import JobStatus
from eventjobs.kafka import clients
from eventjobs.runtime.processor import fold_batch
from eventjobs.runtime.state_check import _fold_record

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2025, 1, 1, 12, 0, tzinfo=timezone.utc)
COUNT = 6


def test_murmur2_is_kafkas() -> None:
    java = {"21": -973932308, "foobar": -790332482, "a-little-bit-long-string": -985981536,
            "a-little-bit-longer-string": -1486304829, "abc": 479470107}
    for text, value in java.items():
        assert murmur2(text.encode()) == value & 0xFFFFFFFF


@given(st.binary(max_size=300))
def test_murmur2_equals_aiokafkas(data: bytes) -> None:
    assert murmur2(data) == aiokafka_murmur2(data)


@given(st.text(min_size=1, max_size=128), st.integers(1, 1000))
def test_the_rule_is_the_default_partitioner_of_aiokafka_and_the_java_client(job_id: str, count: int) -> None:
    expected = job_partition(job_id, count)
    assert 0 <= expected < count
    assert expected == key_partition(job_id.encode(), count)
    everything = list(range(count))
    assert DefaultPartitioner()(job_id.encode(), everything, everything) == expected


def test_the_shell_uses_the_one_rule() -> None:
    assert clients.job_partition is job_partition and clients.key_partition is key_partition


def test_a_topic_has_at_least_one_partition() -> None:
    with pytest.raises(ValueError):
        job_partition("j", 0)


def test_the_python_example_computes_the_same_rule_and_job_ids() -> None:
    """docs/examples/producers/enqueue_confluent.py does not import eventjobs: its own copies agree."""
    spec = importlib.util.spec_from_file_location("enqueue_confluent", ROOT / "docs/examples/producers/enqueue_confluent.py")
    assert spec is not None and spec.loader is not None
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    from eventjobs.core.ids import job_id_for_key

    for n in range(200):
        data = os.urandom(n)
        assert example.murmur2(data) == murmur2(data)
    for _ in range(200):
        job_id = str(uuid.uuid4())
        assert example.job_partition(job_id, COUNT) == job_partition(job_id, COUNT)
    assert example.job_id_for_key("send_receipt", "order-42") == job_id_for_key("send_receipt", "order-42")


# -- an event on another partition than its job's --------------------------------------------------


def rec(event: JobEvent, partition: int, offset: int) -> ConsumerRecord[bytes, bytes]:
    value, key = encode(event), event.job_id.encode()
    return ConsumerRecord(topic="ns.events", partition=partition, offset=offset, timestamp=0, timestamp_type=0,
                          key=key, value=value, checksum=None, serialized_key_size=len(key),
                          serialized_value_size=len(value), headers=[("trace", b"1")])


def new_job(name: str = "add") -> Any:
    return enqueue(name, {"a": 1}, JobOptions(queue="default"), now=T0, actor="producer:librdkafka")


def foreign_partition(job_id: str) -> int:
    return (job_partition(job_id, COUNT) + 1) % COUNT


def test_the_processor_moves_an_event_it_does_not_hold_to_its_jobs_partition() -> None:
    event = new_job()
    home, wrong = job_partition(event.job_id, COUNT), foreign_partition(event.job_id)
    result = fold_batch({}, [rec(event, wrong, 7)], actor=f"processor:{wrong}", max_event_bytes=1 << 20,
                        partition=wrong, partition_count=COUNT)
    assert result.effects.states == {} and result.effects.ready == [] and result.applied == 0
    assert [(m.partition, m.actor, m.record.offset) for m in result.moved] == [(home, "producer:librdkafka", 7)]
    # on its own partition the same record is applied
    there = fold_batch({}, [rec(event, home, 0)], actor=f"processor:{home}", max_event_bytes=1 << 20,
                       partition=home, partition_count=COUNT)
    assert there.moved == [] and there.effects.states[event.job_id].status is JobStatus.PENDING
    # without the partition count (old callers, tests) nothing is moved
    assert fold_batch({}, [rec(event, wrong, 7)], actor="p", max_event_bytes=1 << 20, partition=wrong).moved == []


def test_bad_records_are_quarantined_wherever_they_arrive() -> None:
    event = new_job()
    bad = rec(event, foreign_partition(event.job_id), 0)
    bad.value = b"not json"
    result = fold_batch({}, [bad], actor="p", max_event_bytes=1 << 20, partition=bad.partition, partition_count=COUNT)
    assert result.moved == [] and len(result.quarantined) == 1


def test_replay_folds_the_copy_and_skips_the_original_as_the_processor_does() -> None:
    event = new_job()
    home, wrong = job_partition(event.job_id, COUNT), foreign_partition(event.job_id)
    states: dict[str, Any] = {}
    _fold_record(states, rec(event, wrong, 0), 1 << 20, COUNT)
    assert states == {}  # moved: not folded where it arrived
    _fold_record(states, rec(event, home, 5), 1 << 20, COUNT)  # the copy
    assert states[event.job_id][0] == home and states[event.job_id][1].status is JobStatus.PENDING
