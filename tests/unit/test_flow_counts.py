"""A debounce's replacement is an accepted `enqueued` that makes no new job: neither the processor's
counters nor the read side's metric rows count it as one."""

from __future__ import annotations

from aiokafka.structs import ConsumerRecord

from eventjobs.core.clock import add_seconds
from eventjobs.core.codec import encode
from eventjobs.core.commands import enqueue
from eventjobs.core.events import EnqueuedEvent
from eventjobs.core.options import JobOptions
from eventjobs.readside.rows import JOB_EVENT_COLUMNS, project_event
from eventjobs.runtime.processor import fold_batch
from tests.core.test_flow import WINDOW_START

COUNTED = JOB_EVENT_COLUMNS.index("counted")


def _burst() -> list[EnqueuedEvent]:
    options = JobOptions(debounce="30s", idempotency_key="sync-1")
    return [enqueue("sync", {"n": n}, options, now=add_seconds(WINDOW_START, n), actor="producer:test") for n in range(3)]


def _record(event: EnqueuedEvent, offset: int) -> ConsumerRecord[bytes, bytes]:
    value, key = encode(event), event.job_id.encode()
    return ConsumerRecord(topic="t.events", partition=0, offset=offset, timestamp=0, timestamp_type=0, key=key,
                          value=value, checksum=None, serialized_key_size=len(key), serialized_value_size=len(value),
                          headers=[])


def test_the_processor_counts_one_job_enqueued_for_a_debounced_burst() -> None:
    result = fold_batch({}, [_record(e, i) for i, e in enumerate(_burst())], actor="processor:0",
                        max_event_bytes=1_048_576)
    assert [kind for kind, _ in result.counted] == ["enqueued"]
    assert [e.type for e in result.effects.events] == ["scheduled", "debounced", "debounced"]


def test_the_read_side_counts_one_job_enqueued_for_a_debounced_burst() -> None:
    job, counted = None, []
    for offset, event in enumerate(_burst()):
        job, row = project_event(job, event, encode(event), 0, offset)
        counted.append(row[COUNTED])
    assert counted == [1, 0, 0]
    assert job is not None and job.state.args == {"n": 2}
