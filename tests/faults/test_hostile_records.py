"""Hostile records on every topic a service reads: each is skipped with its reason, and nothing stops.

Against the real broker, with the processor (and its timer service) and the worker as separate OS
processes: records that are not JSON, have the wrong fields, a huge attempt, a key that is not the
record's, an empty key or one that is not UTF-8 are written straight to the timer topic, the
job-state changelog, the dead-letter topic and a ready topic. After each, ordinary jobs still
complete, the processes are still alive, every kind of bad record is logged once (a flood does
not flood the log), and the bad record is dealt with where it lives: tombstoned on the timer
topic, copied to `<ns>.quarantine` with its reason and origin from a ready topic, skipped by the
readers of the changelog and of the dead-letter list.

The first tests need no broker: the pure parts (admitting a timer record, the once-per-kind log,
the timer service's indexing of bad records).
"""

from __future__ import annotations

import asyncio
import logging
import signal
from datetime import datetime, timedelta, timezone
from pathlib import Path
from subprocess import Popen

import orjson
import pytest

from eventjobs import App
from eventjobs.core.refused import Refused
from eventjobs.core.records import TimerRecord
from eventjobs.core.state import JobStatus
from eventjobs.core.timer_index import MAX_ATTEMPT, admit_timer
from eventjobs.kafka.clients import partitions_of, producer, read_to_end
from eventjobs.log.bad_records import BadRecords
from tests.support.scrape import free_port, scrape
from tests.e2e.conftest import job_events, spawn
from tests.unit.test_timer_service import T0, service_owning, timer

APP = "tests.support.jobs_app:app"
NOT_UTF8 = b"\xff\xfe\xfd"


# -- the pure parts ----------------------------------------------------------------------------


def _record(job_id: str = "j", kind: str = "ttl", attempt: int = 0, due_at: datetime = T0) -> TimerRecord:
    return TimerRecord(job_id=job_id, kind=kind, attempt=attempt, due_at=due_at)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("key", "value", "kind"),
    [
        (b"j:ttl", b"not json", "not JSON"),
        (b"", b"not json", "not JSON"),
        (b"j:ttl", NOT_UTF8, "not JSON"),
        (b"j:ttl", b'{"job_id": "j"}', "wrong fields"),
        (b"j:snooze", b'{"job_id": "j", "kind": "snooze", "attempt": 0, "due_at": "2025-01-01T00:00:00Z"}',
         "kind not fired"),
        (b"j:lease", b'{"job_id": "j", "kind": "lease", "attempt": 0, "due_at": "2025-01-01T00:00:00Z"}',
         "kind not fired"),  # a lease is a processor lane's own timer, never a record
        (b"j:ttl", b'{"job_id": "j", "kind": "ttl", "attempt": 0, "due_at": "2025-01-01T00:00:00Z", "sequence": 0}',
         "wrong fields"),
        (b"j:retry:2000000", _record(kind="retry", attempt=2_000_000).encode(), "attempt out of range"),
        (b"j:ttl", _record(attempt=10**30).encode(), "attempt out of range"),
        (b"j:ttl", _record(attempt=-1).encode(), "attempt out of range"),
        (b"", _record().encode(), "key does not match"),
        (NOT_UTF8, _record().encode(), "key does not match"),
        (b"j:run_at", _record().encode(), "key does not match"),
        (b"other:ttl", _record().encode(), "key does not match"),
    ],
)
def test_a_timer_record_nobody_can_use_is_refused_with_its_kind(key: bytes, value: bytes, kind: str) -> None:
    refused = admit_timer(key, value)
    assert isinstance(refused, Refused) and refused.kind == kind, refused
    assert refused.reason and "\n" not in refused.reason


def test_a_good_timer_record_is_admitted_with_its_due_time_and_attempt() -> None:
    record = _record(kind="retry", attempt=MAX_ATTEMPT)
    assert admit_timer(record.key, record.encode()) == (int(T0.timestamp() * 1000), MAX_ATTEMPT)
    naive = b'{"job_id": "j", "kind": "ttl", "attempt": 1, "due_at": "2025-01-01T12:00:00"}'
    assert admit_timer(b"j:ttl", naive) == (int(T0.timestamp() * 1000), 1)  # no zone: UTC
    ancient = b'{"job_id": "j", "kind": "ttl", "attempt": 1, "due_at": "0001-01-01T00:00:00Z"}'
    assert admit_timer(b"j:ttl", ancient) == (-62135596800000, 1)  # due long ago: fires at once


def test_bad_records_are_counted_each_and_logged_once_per_kind(caplog: pytest.LogCaptureFixture) -> None:
    bad = BadRecords(logging.getLogger("test.bad"), "test service")
    with caplog.at_level(logging.INFO, logger="test.bad"):
        for n in range(250):
            bad.report("not JSON", f"t/0@{n}", "Invalid JSON")
        bad.report("wrong fields", "t/0@999", "job_id: Field required")
    assert bad.counts == {"not JSON": 250, "wrong fields": 1} and bad.total == 251
    lines = [r.getMessage() for r in caplog.records]
    assert sum("a bad record (not JSON) at t/0@0: Invalid JSON" in line for line in lines) == 1
    assert sum("a bad record (wrong fields)" in line for line in lines) == 1
    assert [line for line in lines if "so far" in line] == [  # then only at 10, 100, 1,000 ...
        "test service has skipped 10 bad records of kind 'not JSON' so far (latest at t/0@9)",
        "test service has skipped 100 bad records of kind 'not JSON' so far (latest at t/0@99)",
    ]


def test_the_timer_service_skips_bad_timer_records_and_takes_them_for_tombstones() -> None:
    service = service_owning(0)
    good_key, good_value = timer("good", "run_at", 1)
    replaced_key, replaced_value = timer("replaced", "ttl", 5)
    records = [
        (b"j:run_at", b"not json", 10),
        (b"", b"not json", 11),
        (b"j:ttl", _record(attempt=10**30).encode(), 12),
        (NOT_UTF8, _record().encode(), 13),
        (replaced_key, b"{}", 14),
        (good_key, good_value, 15),
        (replaced_key, replaced_value, 16),  # a later record of the key replaces the bad one
    ]
    service.index_timers(0, records)  # raised ValidationError / ValueError before
    assert sorted(key for key, _, _ in service.indexes[0].items()) == [good_key, replaced_key]
    assert service.take_bad_records(0) == [b"j:run_at", b"", b"j:ttl", NOT_UTF8]
    assert service.skipped_records == 4
    assert service.bad.counts == {"not JSON": 2, "attempt out of range": 1, "key does not match": 1}
    assert service.take_bad_records(0) == []  # taken once
    (firing,) = service.take_due(T0 + timedelta(seconds=10))
    assert [(e.job_id, e.type) for e in firing.events] == [("good", "due"), ("replaced", "expired")]


def test_a_bad_record_replacing_a_timer_removes_the_timer_and_is_held_until_the_partition_is_loaded() -> None:
    service = service_owning(0)
    service.loading[0] = 100  # still rebuilding: a later record of the key may follow
    key, value = timer("j", "ttl", 1)
    service.index_timers(0, [(key, value), (key, b"not json")])
    assert service.indexes[0].get(key) is None  # the newest record of the key is the bad one
    assert service.take_bad_records(0) == [] and service.skipped_records == 0
    service.index_timers(0, [(key, None)])  # e.g. the tombstone written for it before a restart
    del service.loading[0]
    assert service.take_bad_records(0) == [] and service.skipped_records == 0  # nothing to report again


def test_a_timer_that_causes_no_event_is_reported_and_tombstoned_with_the_fired_ones() -> None:
    service = service_owning(0)
    beyond_events = _record(job_id="j", kind="retry", attempt=1_000_500)  # the index holds it, events do not
    service.index_timers(0, [(beyond_events.key, beyond_events.encode()), timer("k", "run_at", 0)])
    (firing,) = service.take_due(T0)
    assert [e.job_id for e in firing.events] == ["k"]
    assert [key for key, _ in firing.dropped] == [beyond_events.key]
    assert service.bad.counts == {"causes no event": 1}


# -- against the broker, with the services in their own processes -------------------------------


async def _wait_for(predicate, timeout: float = 30.0, what: str = "condition"):  # type: ignore[no-untyped-def]
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        result = await predicate()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def _records(app: App, topic: str) -> list:  # type: ignore[type-arg]
    return [r async for r in read_to_end(app.settings, await partitions_of(app.settings, topic))]


async def _write(app: App, topic: str, records: list[tuple[bytes | None, bytes | None]], partition: int | None = None) -> None:
    sender = producer(app.settings)
    await sender.start()
    try:
        for key, value in records:
            await sender.send_and_wait(topic, value, key=key, partition=partition)
    finally:
        await sender.stop()


async def _start_services(app: App, tmp_path: Path, processes: list[Popen[bytes]], *worker_args: str,
                          processor_args: tuple[str, ...] = ()) -> tuple[Popen[bytes], Popen[bytes]]:
    processor = spawn(["processor", "--app", APP, *processor_args], app.settings, tmp_path / "processor.log")
    worker = spawn(["worker", "--app", APP, *worker_args], app.settings, tmp_path / "worker.log")
    processes.extend([processor, worker])
    warm = await app.enqueue("add", {"a": 1, "b": 1})
    assert (await app.wait(warm, timeout=60)).status is JobStatus.COMPLETED  # both are up
    return processor, worker


async def _ordinary_jobs_complete(app: App) -> None:
    jobs = [await app.enqueue("add", {"a": n, "b": 1}) for n in range(5)]
    jobs.append(await app.enqueue("add", {"a": 1, "b": 2}, delay=0.3))  # a run_at timer
    jobs.append(await app.enqueue("retry_later", {}))  # a retry timer
    for job_id in jobs:
        assert (await app.wait(job_id, timeout=30)).status is JobStatus.COMPLETED


def _log_lines(path: Path, needle: str) -> list[str]:
    return [line for line in path.read_text(errors="replace").splitlines() if needle in line]


async def test_hostile_timer_records_are_skipped_and_tombstoned_and_timers_still_fire(
    app: App, tmp_path: Path, processes: list[Popen[bytes]]
) -> None:
    metrics_port = free_port()
    processor, worker = await _start_services(app, tmp_path, processes,
                                              processor_args=("--metrics-port", str(metrics_port)))
    topic = app.names.timers
    now = datetime.now(timezone.utc)
    hostile: list[tuple[bytes | None, bytes | None]] = [
        (b"h1:run_at", b"not json"),
        (b"h2:ttl", b'{"job_id": "h2"}'),  # wrong fields
        (b"h3:retry:" + str(10**30).encode(), _record("h3", "retry", 10**30, now).encode()),  # huge attempt
        (b"h4:ttl", _record("h4", "ttl", 2**40, now).encode()),
        (b"h8:lease", _record("h8", "ttl", 0, now).encode().replace(b'"ttl"', b'"lease"')),  # a housekeeping kind
        (b"h5:snooze", _record("h5", "run_at", 0, now).encode()),  # a key that is not the record's
        (NOT_UTF8, _record("h6", "run_at", 0, now).encode()),
        (b"", b"not json"),  # an empty key
        (b"h7:retry:1000500", _record("h7", "retry", 1_000_500, now).encode()),  # indexed, but causes no event
        *[(f"flood{n}:run_at".encode(), b"not json") for n in range(20)],
    ]
    await _write(app, topic, hostile, partition=0)

    async def all_tombstoned() -> bool:
        latest = {r.key: r.value for r in await _records(app, topic) if r.partition == 0}
        return all(latest.get(key, b"") is None for key, _ in hostile)

    await _wait_for(all_tombstoned, what="tombstones for every hostile timer record")
    await _ordinary_jobs_complete(app)
    assert processor.poll() is None and worker.poll() is None

    log = tmp_path / "processor.log"
    for kind in ("not JSON", "wrong fields", "kind not fired", "attempt out of range", "key does not match",
                 "causes no event"):
        assert len(_log_lines(log, f"timer service skipped and tombstoned a bad record ({kind})")) == 1, kind
    assert len(_log_lines(log, "not JSON")) == 2  # the first, and the count at 10: not 22 lines
    # and each is counted by kind in the processor's metrics
    skipped = {labels["kind"]: value for labels, value in (await scrape(metrics_port))["eventjobs_records_skipped_total"]}
    assert skipped["not JSON"] == 22 and skipped["kind not fired"] == 1 and skipped["wrong fields"] == 1, skipped

    # A restart reads the topic from the beginning again: the tombstones replace the bad records,
    # so nothing is reported again, and timers fire.
    processor.send_signal(signal.SIGTERM)
    assert processor.wait(timeout=30) == 0
    restarted = spawn(["processor", "--app", APP], app.settings, tmp_path / "restarted.log")
    processes.append(restarted)
    await _ordinary_jobs_complete(app)
    assert restarted.poll() is None and worker.poll() is None
    assert _log_lines(tmp_path / "restarted.log", "bad record") == []


async def test_hostile_changelog_records_leave_cancels_and_app_wait_working(
    app: App, tmp_path: Path, processes: list[Popen[bytes]]
) -> None:
    processor, worker = await _start_services(app, tmp_path, processes, "--lease", "3s")
    topic = app.names.job_state
    await _write(app, topic, [(NOT_UTF8, b"not json"), (b"some-job", b"not json"), (b"other-job", b"{}")])
    running = await app.enqueue("sleepy", {"seconds": 20})

    async def is_running() -> bool:
        state = await app.state(running)  # App.state and App.wait read the changelog too
        return state is not None and state.status is JobStatus.RUNNING

    await _wait_for(is_running, what="the sleepy job to run")
    # a bad state under the running job's key, which the worker's cancel watcher decodes
    await _write(app, topic, [(running.encode(), b"not json"), (NOT_UTF8, b"{}")])
    await app.cancel(running)
    started = asyncio.get_running_loop().time()
    assert (await app.wait(running, timeout=30)).status is JobStatus.CANCELLED
    assert asyncio.get_running_loop().time() - started < 10  # stopped at a heartbeat, not after 20 s
    events = await job_events(app.settings, running)
    assert "attempt_succeeded" not in [e.type for e in events]
    assert any(e.type == "attempt_failed" and "cancel requested" in e.message for e in events)  # type: ignore[union-attr]

    await _ordinary_jobs_complete(app)
    assert processor.poll() is None and worker.poll() is None
    watcher = app._watcher
    assert watcher is not None and watcher.skipped_records >= 1
    assert len(_log_lines(tmp_path / "worker.log", "bad record (undecodable state)")) == 1


async def test_hostile_dead_letter_entries_are_skipped_and_the_good_ones_listed(
    app: App, tmp_path: Path, processes: list[Popen[bytes]]
) -> None:
    processor, worker = await _start_services(app, tmp_path, processes)
    dead = await app.enqueue("gives_up", {})
    assert (await app.wait(dead, timeout=30)).status is JobStatus.DEAD_LETTERED
    (entry,) = await app.dead_letters()
    forged = entry.model_copy(update={"job_id": "someone-else"})
    await _write(app, app.names.dead_letters, [
        (b"junk-1", b"not json"),
        (b"junk-2", b'{"job_id": "junk-2"}'),
        (NOT_UTF8, entry.encode()),
        (b"junk-3", forged.encode()),  # about another job than its key
        (b"", b"not json"),
    ])
    assert [e.job_id for e in await app.dead_letters()] == [dead]
    assert app.skipped_dead_letters == 5
    assert await app.retry_all_dead_letters() == [dead]
    await _ordinary_jobs_complete(app)
    assert processor.poll() is None and worker.poll() is None


async def test_hostile_ready_records_are_quarantined_and_the_worker_runs_the_next_job(
    app: App, tmp_path: Path, processes: list[Popen[bytes]]
) -> None:
    processor, worker = await _start_services(app, tmp_path, processes)
    topic = app.names.ready("default", "normal")
    template = orjson.loads((await _records(app, topic))[0].value)

    def forged(job_id: str, **changes: object) -> bytes:
        return orjson.dumps({**template, "job_id": job_id, **changes})

    hostile: list[tuple[bytes | None, bytes | None]] = [
        (b"junk-1", b"not json"),
        (b"junk-2", b'{"job_id": "junk-2"}'),  # wrong fields
        (b"other", forged("hostile-key")),  # a key that is not the job id
        (b"hostile-partition", forged("hostile-partition", partition=999)),
        (b"hostile-attempt", forged("hostile-attempt", attempt=-1)),
        (b"hostile-caps", forged("hostile-caps", options={**template["options"], "capabilities": ["gpu"]})),
        (b"", b"not json"),
        *[(f"flood-{n}".encode(), b"not json") for n in range(15)],
    ]
    await _write(app, topic, [*hostile, (NOT_UTF8, None)])  # ... and a revocation with a key that is not UTF-8
    await _ordinary_jobs_complete(app)
    assert processor.poll() is None and worker.poll() is None

    async def quarantined() -> list:  # type: ignore[type-arg]
        records = [r for r in await _records(app, app.names.quarantine)
                   if dict(r.headers)["eventjobs.source"].startswith(f"{topic}/".encode())]
        return records if len(records) >= len(hostile) else []

    records = await _wait_for(quarantined, what="the hostile ready records in the quarantine topic")
    assert sorted((r.key, r.value) for r in records) == sorted(hostile)
    reasons = [dict(r.headers)["eventjobs.reason"].decode() for r in records]
    for kind in ("not a ready record", "key does not match", "partition out of range", "cannot be claimed",
                 "capabilities missing"):
        assert any(reason.startswith(kind) for reason in reasons), kind
        assert len(_log_lines(tmp_path / "worker.log", f"worker quarantined a bad record ({kind})")) == 1, kind
    assert len(_log_lines(tmp_path / "worker.log", "not a ready record")) == 2  # first, and the count at 10
