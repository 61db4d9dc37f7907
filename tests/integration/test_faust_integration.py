"""The Faust integration against the real broker, with a real Faust worker subprocess.

The Faust app (`tests/support/faust_jobs_app.py`) enqueues an `add` job per order with an
idempotency key and turns `completed` events, read as `JobEventRecord`s, into notices. The
eventjobs processor and a worker run in this process. Checked: every order sent twice gives one
job that runs once; the completion notices carry the right job ids and results; an unknown job
raises the same `UnknownJob` in the Faust worker and sends nothing; bad records on the event log
are skipped (and logged) without stopping the agent.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from collections import Counter
from collections.abc import AsyncIterator
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pytest
from aiokafka.admin import NewTopic

from eventjobs import App, InvalidJobArguments, InvalidJobOptions, UnknownJob
from eventjobs.core.codec import EventDecodeError, decode, encode
from eventjobs.core.events import EVENT_TYPES, CompletedEvent, JobEvent
from eventjobs.core.ids import job_id_for_key, new_event_id
from eventjobs.integrations.faust import FaustEnqueuer, JobEventRecord, enqueue_from_faust
from eventjobs.kafka.clients import admin_client, consumer, partitions_of, producer, read_to_end
from eventjobs.runtime.processor import run_processor
from eventjobs.settings import Settings
from eventjobs.kafka.admin import apply_topics, wait_for_topics
from eventjobs.runtime.worker import Worker
from tests.support.jobs_app import EXECUTIONS, build_app

ROOT = Path(__file__).resolve().parents[2]
ORDERS = {"o1": (1, 2), "o2": (20, 22), "o3": (-5, 5)}


@pytest.fixture
async def ej_app(settings: Settings) -> AsyncIterator[App]:
    """The test's eventjobs app with its topics, plus the Faust app's orders and notices topics."""
    await apply_topics(settings, ["default"])
    extra = [f"{settings.namespace}.faust-orders", f"{settings.namespace}.faust-notices"]
    admin = admin_client(settings)
    await admin.start()
    try:
        await admin.create_topics([NewTopic(name, 1, 1) for name in extra])
        await wait_for_topics(admin, extra)
    finally:
        await admin.close()
    app = build_app(settings.namespace, kafka_bootstrap=settings.kafka_bootstrap)
    yield app
    await app.close()


async def _log(settings: Settings) -> list[JobEvent | bytes]:
    """Every record of the event log: decoded events, or the raw bytes of undecodable ones."""
    topic = f"{settings.namespace}.events"
    out: list[JobEvent | bytes] = []
    async for record in read_to_end(settings, await partitions_of(settings, topic)):
        try:
            out.append(decode(record.value))
        except EventDecodeError:
            out.append(record.value)
    return out


async def _summary(settings: Settings) -> str:
    """The log in short, and how far the ready topic got (for failure messages)."""
    log = [repr(e[:40]) if isinstance(e, bytes) else f"{e.job_id[:8]} {e.type} {e.actor}" for e in await _log(settings)]
    ready = await _end_offsets(settings, f"{settings.namespace}.ready.default.normal")
    return f"{log}\nready.default.normal end offsets: {sorted((tp.partition, n) for tp, n in ready.items() if n)}"


async def _end_offsets(settings: Settings, topic: str) -> dict[Any, int]:
    reader = consumer(settings, group_id=None)
    await reader.start()
    try:
        return dict(await reader.end_offsets(await partitions_of(settings, topic)))
    finally:
        await reader.stop()


async def test_faust_agents_enqueue_and_react_to_completions(
    settings: Settings, ej_app: App, tmp_path: Path
) -> None:
    ns = settings.namespace
    events_topic = ej_app.names.events

    # Bad enqueues from Faust code fail exactly like App.enqueue, and send nothing.
    before = await _end_offsets(settings, events_topic)
    with pytest.raises(UnknownJob):
        await enqueue_from_faust(ej_app, "no_such_job", {"a": 1})
    with pytest.raises(InvalidJobArguments):
        await FaustEnqueuer(ej_app).enqueue("add", ["not", "a", "dict"])  # type: ignore[arg-type]
    with pytest.raises(InvalidJobOptions):
        await FaustEnqueuer(ej_app).enqueue("add", {"a": 1, "b": 1}, max_attempts=0)
    assert await _end_offsets(settings, events_topic) == before

    # Bad records on the log ahead of everything else: the Faust agent must skip them and go on.
    sender = producer(settings)
    await sender.start()
    try:
        await sender.send_and_wait(events_topic, b"not json at all", key=b"junk")
        fake_completed = json.loads(encode(CompletedEvent(
            event_id=new_event_id(), job_id="fake-job", occurred_at=datetime.now(timezone.utc),
            actor="test", attempt=0, result={"sum": 999},
        )))
        fake_completed["attempt"] = "0"  # a lax reader would accept this; the strict codec does not
        await sender.send_and_wait(events_topic, json.dumps(fake_completed).encode(), key=b"fake-job")
        misplaced = ej_app._build_enqueue("add", {"a": 0, "b": 0})
        await sender.send_and_wait(events_topic, encode(misplaced), key=b"wrong-key")
    finally:
        await sender.stop()

    stop = asyncio.Event()
    tasks = [asyncio.create_task(run_processor(settings, stop))]
    worker = Worker(ej_app, queues=["default"], lease_s=5.0)
    tasks.append(asyncio.create_task(worker.run(stop)))
    log_path = tmp_path / "faust-worker.log"
    log_file = open(log_path, "wb")
    faust_worker = subprocess.Popen(
        [sys.executable, "-m", "faust", "-A", "tests.support.faust_jobs_app", "--datadir", str(tmp_path / "faust"),
         "worker", "-l", "warn", "--without-web"],
        cwd=ROOT, stdout=log_file, stderr=subprocess.STDOUT,
        env={**os.environ, "FAUST_JOBS_BROKER": settings.kafka_bootstrap, "FAUST_JOBS_NAMESPACE": ns},
    )
    notices: list[dict[str, Any]] = []
    try:
        await asyncio.wait_for(worker.started.wait(), 30)
        sender = producer(settings)
        await sender.start()
        try:
            for _ in range(2):  # every order twice: one job each
                for order_id, (a, b) in ORDERS.items():
                    order = {"order_id": order_id, "a": a, "b": b}
                    await sender.send_and_wait(f"{ns}.faust-orders", json.dumps(order).encode(), key=order_id.encode())
            bad_order = {"order_id": "o-bad", "a": 1, "b": 1, "job": "no_such_job"}
            await sender.send_and_wait(f"{ns}.faust-orders", json.dumps(bad_order).encode(), key=b"o-bad")
        finally:
            await sender.stop()

        reader = consumer(settings, f"{ns}.faust-notices", group_id=None)
        await reader.start()
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 45

            def count(kind: str) -> int:
                return sum(1 for n in notices if n["kind"] == kind)

            while (count("enqueued"), count("rejected"), count("completed")) != (2 * len(ORDERS), 1, len(ORDERS)):
                if loop.time() > deadline:
                    pytest.fail(f"notices so far: {notices}\nlog: {await _summary(settings)}\n"
                                f"{log_path.read_text(errors='replace')}")
                assert faust_worker.poll() is None, log_path.read_text(errors="replace")
                batch = await reader.getmany(timeout_ms=500)
                notices += [json.loads(m.value) for ms in batch.values() for m in ms]
            # The duplicates must have been refused by now; give a late, wrong notice a moment to show up.
            expected_ids = {job_id_for_key("add", f"order-{o}"): o for o in ORDERS}  # keyed per job name
            while True:
                log = await _log(settings)
                refused = Counter(e.job_id for e in log if not isinstance(e, bytes) and e.type == "duplicate_rejected")
                if all(refused[j] == 1 for j in expected_ids):
                    break
                assert loop.time() < deadline, f"duplicates not refused yet: {refused}"
                await asyncio.sleep(0.3)
            batch = await reader.getmany(timeout_ms=1000)
            notices += [json.loads(m.value) for ms in batch.values() for m in ms]
        finally:
            await reader.stop()
    finally:
        faust_worker.terminate()
        try:
            faust_worker.wait(timeout=30)
        except subprocess.TimeoutExpired:
            faust_worker.kill()
            faust_worker.wait()
        log_file.close()
        stop.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert not [r for r in results if isinstance(r, BaseException)], results

    faust_log = log_path.read_text(errors="replace")

    # (a) enqueue from an agent: both sends of an order return the key-derived job id ...
    enqueued = [n for n in notices if n["kind"] == "enqueued"]
    assert sorted((n["order_id"], n["job_id"]) for n in enqueued) == sorted(
        (o, job_id) for job_id, o in expected_ids.items() for _ in range(2)
    )
    # ... the log holds two `enqueued` events per job (tagged with the Faust app), one refused ...
    log = await _log(settings)
    events = [e for e in log if not isinstance(e, bytes)]
    for job_id in expected_ids:
        mine = [e for e in events if e.job_id == job_id]
        kinds = Counter(e.type for e in mine)
        assert kinds["enqueued"] == 2 and kinds["duplicate_rejected"] == 1 and kinds["completed"] == 1, kinds
        assert all(e.actor.startswith(f"faust:{ns}-faust-jobs:") for e in mine if e.type == "enqueued")
        assert EXECUTIONS[job_id] == 1
    # ... and the unknown job was refused with the same exception class, having sent nothing.
    rejected = [n for n in notices if n["kind"] == "rejected"]
    assert [(n["order_id"], n["error_module"], n["error"]) for n in rejected] == [
        ("o-bad", UnknownJob.__module__, UnknownJob.__qualname__)
    ]
    assert "no_such_job" in rejected[0]["message"]
    assert not [e for e in events if e.type == "enqueued" and e.name == "no_such_job"]

    # (b) the job event log as typed records: one completion notice per job, right id and result.
    completed = [n for n in notices if n["kind"] == "completed"]
    assert sorted((n["job_id"], n["result"]["sum"]) for n in completed) == sorted(
        (job_id, sum(ORDERS[o])) for job_id, o in expected_ids.items()
    )
    completed_ids = {e.job_id: e.event_id for e in events if e.type == "completed"}
    for notice in completed:
        assert notice["event_id"] == completed_ids[notice["job_id"]]
        assert notice["record_class"] == "JobEventRecord" and notice["event_class"] == "CompletedEvent"
        assert notice["occurred_at_is_datetime"] and notice["attempt"] == 0
        assert notice["wire_occurred_at"].endswith("Z") and len(notice["wire_occurred_at"]) == 24
    assert "fake-job" not in {n.get("job_id") for n in notices}  # the lax `completed` never reached the agent

    # Bad records were skipped with their reason in the Faust worker's log, the agent kept going.
    assert faust_log.count("skipped record") >= 3, faust_log
    assert "not valid JSON" in faust_log
    assert "field 'attempt' of 'completed' event" in faust_log
    assert "is not the event's job_id" in faust_log
    assert "Traceback" not in faust_log, faust_log


def test_job_event_record_covers_the_catalogue_and_round_trips() -> None:
    """Every field of every event type is a record field, and records serialize to the wire form."""
    fields = set().union(*(model.model_fields for model in EVENT_TYPES.values()))
    assert fields <= set(JobEventRecord._options.fields)
    app = build_app("tfaustrecord")
    event = app._build_enqueue("add", {"a": 1, "b": 2}, idempotency_key="k", priority="high")
    record = JobEventRecord.from_data(decode(encode(event)))
    assert record.to_event() == event
    assert decode(record.dumps()) == event
    assert JobEventRecord.from_data(json.loads(record.dumps())).to_event() == event
    assert JobEventRecord.from_data(record.asdict()).to_event() == event
    assert record.priority == "high" and record.args == {"a": 1, "b": 2} and record.result is None
    with pytest.raises(EventDecodeError):
        JobEventRecord.from_data({**json.loads(record.dumps()), "attempt": 1})  # not a field of `enqueued`
