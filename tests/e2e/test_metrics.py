"""Prometheus metrics of real services: a processor and a worker run as subprocesses with
`--metrics-port`, real jobs run (completing, retried, dead-lettered, cancelled), and each service's
/metrics, scraped over HTTP, agrees with the event log."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path
from subprocess import Popen


from eventjobs import App, metrics
from eventjobs.core.state import JobStatus
from tests.e2e.conftest import job_events, spawn
from tests.support.scrape import free_port, scrape, scrape_when_up, total

APP = "tests.support.jobs_app:app"

# counter -> the event types of the log it counts (failed attempts: the worker's failure outcomes
# and the lease expiries)
PROCESSOR_COUNTS = {
    metrics.JOBS_ENQUEUED: ("enqueued",),
    metrics.JOBS_COMPLETED: ("completed",),
    metrics.JOBS_FAILED: ("attempt_failed", "attempt_timed_out", "lease_expired"),
    metrics.JOBS_RETRIED: ("retry_scheduled",),
    metrics.JOBS_DEAD_LETTERED: ("dead_lettered",),
    metrics.JOBS_CANCELLED: ("cancelled",),
}


async def test_metrics_of_the_processor_and_the_worker_agree_with_the_event_log(
        app: App, tmp_path: Path, processes: list[Popen[bytes]]) -> None:
    settings = app.settings
    processor_port, worker_port = free_port(), free_port()
    processor_log, worker_log = tmp_path / "processor.log", tmp_path / "worker.log"
    processor = spawn(["processor", "--app", APP, "--metrics-port", str(processor_port)], settings, processor_log)
    processes.append(processor)
    worker = spawn(["worker", "--app", APP, "--queues", "default", "--concurrency", "4", "--lease", "5s"],
                   settings, worker_log, EVENTJOBS_METRICS_PORT=str(worker_port))  # the port from the environment
    processes.append(worker)
    before = await scrape_when_up(worker_port, worker, worker_log)
    assert total(before, metrics.WORKER_SLOTS) == 4
    await scrape_when_up(processor_port, processor, processor_log)

    completing = [await app.enqueue("add", {"a": i, "b": 1}) for i in range(5)]
    retried = await app.enqueue("flaky", {"fail_times": 1})
    dead = await app.enqueue("picky", {"error": "key"})  # KeyError is not retried: failed, dead-lettered
    later = await app.enqueue("add", {"a": 0, "b": 0}, delay=3600)
    await app.cancel(later)
    for job_id in [*completing, retried]:
        assert (await app.wait(job_id, timeout=90)).status is JobStatus.COMPLETED
    assert (await app.wait(dead, timeout=90)).status is JobStatus.DEAD_LETTERED
    assert (await app.wait(later, timeout=90)).status is JobStatus.CANCELLED

    log_counts = Counter(event.type for event in await job_events(settings))
    assert log_counts["retry_scheduled"] == 1 and log_counts["dead_lettered"] == 1 and log_counts["cancelled"] == 1
    expected = {name: sum(log_counts[t] for t in types) for name, types in PROCESSOR_COUNTS.items()}
    expected_started = log_counts["attempt_started"]
    assert expected_started == 8  # 5 adds, the flaky job twice, the picky job once

    # counters move once the processor's transaction commits (within its commit interval)
    deadline = asyncio.get_running_loop().time() + 30
    while True:
        scraped = await scrape(processor_port)
        counted = {name: total(scraped, name) for name in PROCESSOR_COUNTS}
        if counted == expected or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.2)
    assert counted == expected, (counted, dict(log_counts))
    assert total(scraped, metrics.JOBS_COMPLETED, name="add", queue="default") == 5
    assert total(scraped, metrics.JOBS_COMPLETED, name="flaky", queue="default") == 1
    assert total(scraped, metrics.JOBS_RETRIED, name="flaky", queue="default") == 1
    assert total(scraped, metrics.JOBS_DEAD_LETTERED, name="picky", queue="default") == 1
    assert total(scraped, metrics.JOBS_CANCELLED, name="add", queue="default") == 1
    assert not any("job_id" in labels for samples in scraped.values() for labels, _ in samples)
    # the timer service, in the processor's process: the retry's timer fired; the cancelled job's
    # run_at timer was tombstoned; the processor's own retention timers of the finished jobs are
    # pending, one per job of this test (the processor's partitions hold no other job)
    assert total(scraped, metrics.TIMER_LATENESS + "_count") >= 1
    assert metrics.TIMERS_PENDING in scraped
    assert total(scraped, metrics.HOUSEKEEPING_TIMERS) == len([*completing, retried, dead, later])
    assert metrics.PROCESSOR_LAG in scraped and total(scraped, metrics.QUARANTINED) == 0

    # the worker: starts, durations and waits of every attempt it ran, nothing busy now
    scraped = await scrape(worker_port)
    assert total(scraped, metrics.JOBS_STARTED) == expected_started
    assert total(scraped, metrics.JOBS_STARTED, name="flaky", queue="default") == 2
    assert total(scraped, metrics.JOB_DURATION + "_count") == expected_started
    assert total(scraped, metrics.JOB_WAIT + "_count") == expected_started
    assert 0 < total(scraped, metrics.JOB_WAIT + "_sum") < 60
    assert total(scraped, metrics.WORKER_BUSY_SLOTS) == 0 and total(scraped, metrics.WORKER_SLOTS) == 4

    # queue depth: nothing is left unconsumed (measured every couple of seconds)
    deadline = asyncio.get_running_loop().time() + 15
    while True:
        depth = [(labels, value) for labels, value in (await scrape(worker_port)).get(metrics.QUEUE_DEPTH, [])
                 if labels["queue"] == "default"]
        if (len(depth) == 4 and all(value == 0 for _, value in depth)) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert sorted(labels["priority"] for labels, _ in depth) == ["critical", "high", "low", "normal"]
    assert all(value == 0 for _, value in depth), depth


async def test_the_worker_reports_ready_records_waiting_as_queue_depth(
        app: App, tmp_path: Path, processes: list[Popen[bytes]]) -> None:
    """With every slot busy, the records behind them are unconsumed: the depth shows them."""
    settings = app.settings
    port = free_port()
    processes.append(spawn(["processor", "--app", APP], settings, tmp_path / "processor.log"))
    worker = spawn(["worker", "--app", APP, "--queues", "default", "--concurrency", "1", "--metrics-port", str(port)],
                   settings, tmp_path / "worker.log")
    processes.append(worker)
    await scrape_when_up(port, worker, tmp_path / "worker.log")
    for _ in range(6):
        await app.enqueue("sleepy", {"seconds": 20})
    deadline = asyncio.get_running_loop().time() + 60
    while True:
        scraped = await scrape(port)
        depth = total(scraped, metrics.QUEUE_DEPTH, queue="default", priority="normal")
        # (right after the claim the running job's record may still count as waiting: 6 for a moment)
        if (depth == 5 and total(scraped, metrics.WORKER_BUSY_SLOTS) == 1) or asyncio.get_running_loop().time() > deadline:
            break
        await asyncio.sleep(0.5)
    assert depth == 5 and total(scraped, metrics.WORKER_BUSY_SLOTS) == 1, scraped.get(metrics.QUEUE_DEPTH)
