"""A queue paused longer than the re-publish delay must not turn into duplicate runs (real broker,
every service in its own OS process).

The processor runs with `--republish-after 1s`, so a pending job's ready record comes up for
re-publishing after 1, 3 and 7 seconds. The queue is paused, jobs are enqueued, the worker is
restarted during the pause, and the pause lasts through several of those rounds. Then the
queue is resumed: the restarted worker runs jobs one at a time, is stopped (SIGTERM) in the
middle, and a third worker process takes over from the offsets it committed.

What must hold: every job's handler started exactly once (counted by the fault app's side
channel, which the log cannot tell), and nothing was re-published (the records waited, none was
lost). A re-published copy sits behind its original in the same partition, so it reaches the
worker that takes over after the one that ran the original: that worker, which did not claim
the original, used to claim the copy and run the handler again although its claim was refused.

With the processor also restarted during the pause, the new one does not know where its
predecessor's ready records went and looks for them by time, from 30 s before each job's
enqueue (`PUBLISH_CLOCK_MARGIN_S`): the warm-up job's record, read just before the pause, is in
that window, so the look is not conclusive and each job is re-published once. Those copies are
marked, and the worker that takes over claims them asking for the verdict and does not run
them: still one start per job.
"""

from __future__ import annotations

import asyncio
import signal
from pathlib import Path
from subprocess import Popen

import pytest

from eventjobs import App
from eventjobs.core.events import is_claim
from eventjobs.core.fold import replay
from eventjobs.core.state import JobStatus
from eventjobs.kafka.clients import admin_client, consumer, partitions_of
from eventjobs.kafka.topics import PRIORITIES
from tests.e2e.conftest import job_events
from tests.faults.test_process_faults import Services, fault_app, poll, wait_all_terminal  # noqa: F401 - a fixture
from tests.support.fault_app import execution_lines, read_executions

pytestmark = pytest.mark.kafka

JOBS = 12
PAUSED_S = 9.0  # re-publishes would come 1, 3 and 7 s after the enqueue: three rounds


async def consumed_to_the_end(app: App) -> bool:
    """Whether the workers' group of `default` committed every ready partition to its end (the
    workers settled every record they will ever see, copies included)."""
    topics = [app.names.ready("default", priority) for priority in PRIORITIES]
    partitions = [tp for topic in topics for tp in await partitions_of(app.settings, topic)]
    admin, reader = admin_client(app.settings), consumer(app.settings, group_id=None,
                                                         isolation_level="read_uncommitted")
    await admin.start()
    await reader.start()
    try:
        committed = await admin.list_consumer_group_offsets(app.names.worker_group("default"), partitions=partitions)
        ends = await reader.end_offsets(partitions)
    finally:
        await reader.stop()
        await admin.close()
    offset = {tp: meta.offset for tp, meta in committed.items()}
    return all(offset.get(tp, -1) >= end for tp, end in ends.items() if end > 0)


async def republished_once(app: App, jobs: list[str]) -> bool:
    states = [await app.state(job_id) for job_id in jobs]
    return all(s is not None and s.ready_republishes >= 1 for s in states)


async def stop(process: Popen[bytes]) -> None:
    process.send_signal(signal.SIGTERM)
    assert await asyncio.to_thread(process.wait, 60) == 0


@pytest.mark.parametrize("processor_restarted", [False, True], ids=["processor-kept", "processor-restarted"])
async def test_a_pause_longer_than_the_republish_delay_runs_every_job_once(
    fault_app: App, tmp_path: Path, processes: list[Popen[bytes]], processor_restarted: bool,  # noqa: F811
) -> None:
    app = fault_app
    services = Services(app.settings, tmp_path, processes)
    processor = services.start("processor", "processor", "--republish-after", "1s")
    first = services.start("worker", "w1", "--concurrency", "1")
    warmup = await app.enqueue("work", {"i": -1})
    assert (await app.wait(warmup, timeout=90)).status is JobStatus.COMPLETED, services.tail("w1")

    # Given a paused queue holding jobs for longer than several re-publish delays, its worker
    # restarted in the meantime
    await app.pause_queue("default", "a long migration")
    await asyncio.sleep(1.5)  # the pause takes effect within about a second
    jobs = [await app.enqueue("work", {"i": i, "sleep": 0.3}) for i in range(JOBS)]
    await stop(first)
    restarted = services.start("worker", "w2", "--concurrency", "1")
    if processor_restarted:  # and its first looks made (each job published again once, see above)
        await stop(processor)
        services.start("processor", "processor-2", "--republish-after", "1s")
        await poll(lambda: republished_once(app, jobs), 90, "the restarted processor to publish each job again")
    await asyncio.sleep(PAUSED_S)
    states = [await app.state(job_id) for job_id in jobs]
    assert all(s is not None and s.status is JobStatus.PENDING for s in states), states

    # When the queue is resumed, and the worker running its jobs is stopped after a few of them
    # and another worker process takes over
    await app.resume_queue("default")
    await poll(lambda: len(execution_lines(services.executions)) >= 1 + JOBS // 3, 60, "a few jobs to run",
               every=0.02)
    await stop(restarted)
    services.start("worker", "w3", "--concurrency", "1")
    ended = await wait_all_terminal(app, jobs, timeout=120)
    await poll(lambda: consumed_to_the_end(app), 60, "the workers to settle every ready record")

    # Then every job completed, and its handler started exactly once
    assert {s.status for s in ended.values()} == {JobStatus.COMPLETED}
    runs = read_executions(services.executions)
    assert {job_id: runs[(job_id, 0)] for job_id in jobs} == {job_id: 1 for job_id in jobs}, sorted(
        execution_lines(services.executions))
    events = [e for job_id in jobs for e in await job_events(app.settings, job_id)]
    if not processor_restarted:
        # And no ready record was published again: each waited in its topic, none was lost. (A
        # look made just after a worker committed past a record whose claim the lane had not
        # folded yet finds it read and fires a re-publish, which the fold then refuses: the job
        # is claimed by then. No copy follows from it.)
        assert [s.ready_republishes for s in ended.values()] == [0] * JOBS
        assert [e for e, d in replay(events, {}) if e.type == "due" and d.accepted] == []
        assert sum(is_claim(e) for e in events) == JOBS
    else:
        # And after the restart each job was published again once (then its copy's offset was
        # known, and it waited); the worker that took over claimed copies of jobs already run,
        # and started none of them
        assert [s.ready_republishes for s in ended.values()] == [1] * JOBS
        assert sum(is_claim(e) for e in events) > JOBS
        assert sum(e.type == "attempt_started" for e in events) == JOBS
