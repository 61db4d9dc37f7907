"""Oversized errors and results against the real broker: the job ends, nothing stops.

A handler that raises an exception with a 2,000,000-character message, one that fails with a
message the size of the event limit while its args are large (so that, untruncated, the job's
state would not fit its changelog topic), and handlers returning 2 MB and 1 MB results: each job
ends dead-lettered within seconds with a truncated error or a clear "result too large" error, the
processor and the worker keep running, no record is quarantined, and other jobs complete.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from subprocess import Popen

import orjson
from aiokafka import ConsumerRecord

from eventjobs import App
from eventjobs.core.clock import SystemClock
from eventjobs.core.codec import encode
from eventjobs.core.commands import cancel_requested_event, enqueue
from eventjobs.core.events import JobEvent
from eventjobs.core.limits import size_limits
from eventjobs.core.state import JobStatus, encode_state
from eventjobs.kafka.clients import partitions_of, read_to_end
from eventjobs.runtime.processor import fold_batch
from tests.e2e.conftest import spawn

APP = "tests.support.jobs_app:app"


async def _records(app: App, topic: str) -> list[bytes | None]:
    return [r.value async for r in read_to_end(app.settings, await partitions_of(app.settings, topic))]


async def test_huge_errors_and_results_end_their_jobs_and_nothing_stops(
    app: App, tmp_path: Path, processes: list[Popen[bytes]]
) -> None:
    settings = app.settings
    limits = size_limits(settings.max_event_bytes)
    processor = spawn(["processor", "--app", APP], settings, tmp_path / "processor.log")
    worker = spawn(["worker", "--app", APP, "--concurrency", "8"], settings, tmp_path / "worker.log")
    processes.extend([processor, worker])
    warm = await app.enqueue("add", {"a": 1, "b": 1})
    assert (await app.wait(warm, timeout=90)).status is JobStatus.COMPLETED  # both services are up

    pad = {"pad": "p" * 60_000}  # large args: an untruncated 1,000,000-char error would push the state over 1 MiB
    started = asyncio.get_running_loop().time()
    huge_error = await app.enqueue("huge_error", {"chars": 2_000_000})
    near_limit = await app.enqueue("huge_error", {"chars": 1_000_000, "marker": True, **pad})
    control_chars = await app.enqueue("huge_error", {"chars": 300_000, "char": "\x01"})  # 6 bytes each as JSON
    huge_result = await app.enqueue("huge_result", {"bytes": 2_000_000})
    big_result = await app.enqueue("huge_result", {"bytes": 1_000_000, **pad})
    others = [await app.enqueue("add", {"a": i, "b": 1}) for i in range(5)]

    states = {job: await app.wait(job, timeout=30) for job in
              (huge_error, near_limit, control_chars, huge_result, big_result, *others)}
    elapsed = asyncio.get_running_loop().time() - started
    logs = (tmp_path / "processor.log").read_text()[-3000:] + (tmp_path / "worker.log").read_text()[-3000:]
    assert elapsed < 10, (elapsed, logs)

    error = states[huge_error]
    assert error.status is JobStatus.DEAD_LETTERED, error
    assert error.reason == "attempts exhausted: 2 of 2 failed"
    assert error.last_error is not None and error.last_error.error_type == "ValueError"
    assert error.last_error.message.startswith("EEEE")
    assert error.last_error.message.endswith("… [truncated: 2,000,000 chars]")
    assert "[truncated: " in error.last_error.traceback and "Traceback (most recent call last)" in error.last_error.traceback
    assert len(orjson.dumps(error.last_error.message)) <= limits.error_message_bytes
    assert len(orjson.dumps(error.last_error.traceback)) <= limits.traceback_bytes

    near = states[near_limit]
    assert near.status is JobStatus.DEAD_LETTERED, near
    assert near.last_error is not None and near.last_error.error_type == "Cancel"
    assert near.last_error.message.endswith("… [truncated: 1,000,000 chars]")

    controls = states[control_chars]
    assert controls.status is JobStatus.DEAD_LETTERED, controls
    assert controls.last_error is not None and controls.last_error.message.endswith("[truncated: 300,000 chars]")

    for job, size in ((huge_result, 2_000_000), (big_result, 1_000_000)):
        state = states[job]
        assert state.status is JobStatus.DEAD_LETTERED, state
        assert state.attempts_started == 1  # not retryable: the same result would be too large again
        assert state.last_error is not None and state.last_error.error_type == "ResultTooLarge"
        message = state.last_error.message
        assert f"{len(orjson.dumps({'blob': 'r' * size})):,} bytes" in message, message
        assert f"over the limit of {limits.result_bytes:,}" in message, message

    for job in others:
        assert states[job].status is JobStatus.COMPLETED
    assert processor.poll() is None, logs
    assert worker.poll() is None, logs
    later = await app.enqueue("add", {"a": 2, "b": 2})
    assert (await app.wait(later, timeout=10)).result == {"sum": 4}

    assert await _records(app, app.names.quarantine) == []
    for topic in (app.names.events, app.names.job_state, app.names.dead_letters):
        sizes = [len(value) for value in await _records(app, topic) if value is not None]
        assert max(sizes) <= settings.max_event_bytes, (topic, max(sizes))
    dead = {entry.job_id: entry for entry in await app.dead_letters()}
    assert dead[huge_error].message.endswith("… [truncated: 2,000,000 chars]")
    assert dead[huge_result].error_type == "ResultTooLarge"


def _record(event: JobEvent, offset: int) -> ConsumerRecord[bytes, bytes]:
    value, key = encode(event), event.job_id.encode()
    return ConsumerRecord(topic="ns.events", partition=0, offset=offset, timestamp=0, timestamp_type=0, key=key,
                          value=value, checksum=None, serialized_key_size=len(key), serialized_value_size=len(value),
                          headers=[])


def test_a_record_whose_outputs_would_be_too_large_is_quarantined_and_the_batch_goes_on() -> None:
    """The processor's last line of defence (what the budgets should make unreachable): a record
    whose new state would be over the limit is quarantined with the reason, not written, so the
    transaction cannot fail on it at every restart; the rest of the batch is applied."""
    now = SystemClock().now()
    big = enqueue("big", {"blob": "x" * 20_000}, now=now, actor="other-producer")
    small = enqueue("small", {"a": 1}, now=now, actor="other-producer")
    cancel = cancel_requested_event(small.job_id, "r" * 15_000, now=now, actor="operator")  # the job's 2nd record
    records = [_record(big, 0), _record(small, 1), _record(cancel, 2)]
    result = fold_batch({}, records, actor="processor:0", max_event_bytes=1_048_576, max_state_bytes=10_000)
    assert [q.record.offset for q in result.quarantined] == [0, 2]
    reasons = [q.reason for q in result.quarantined]
    assert reasons[0].startswith(f"applying this enqueued event of job {big.job_id} would write a job state of ")
    assert reasons[1].startswith(f"applying this cancel_requested event of job {small.job_id} would write a job state")
    assert all(reason.endswith("bytes, over the limit of 10,000") for reason in reasons)
    assert set(result.effects.states) == {small.job_id}
    assert result.effects.states[small.job_id].status is JobStatus.PENDING  # as if the cancel had not come
    assert [r.job_id for r in result.effects.ready] == [small.job_id]
    assert result.state_bytes[small.job_id][1] == encode_state(result.effects.states[small.job_id])
