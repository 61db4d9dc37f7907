"""What one job costs the broker, counted from the broker: every topic of a fresh namespace is read
back (read_committed, so transaction markers and aborted writes are not counted; tombstones are
records and are counted), and each record is charged to the job its key names.

This is the guard for work that makes a job cheaper (or dearer): the breakdown it must find is
`RECORDS_PER_JOB`, the one place it is written down besides docs/benchmarks.md ("Records per job").
"""

from __future__ import annotations

import asyncio
from collections import Counter

from eventjobs import App
from eventjobs.core.state import JobStatus
from eventjobs.kafka.clients import partitions_of, read_to_end
from eventjobs.kafka.topics import TopicNames, load_specs
from eventjobs.runtime.processor import run_processor
from tests.e2e.conftest import QUEUES, Runtime

# Records one trivial job (`add`, which returns at once) writes to the topics of each spec in
# topics/*.yaml when it runs alone on an idle processor, as (fewest, most); every other spec's
# topics get none. Keep in step with docs/benchmarks.md, "Records per job" (the table there is
# this one).
RECORDS_PER_JOB = {
    # enqueued, attempt_started (the worker's claim and start in one event), attempt_succeeded,
    # completed (derived)
    "events": (4, 4),
    # compacted: one record per key per commit. The pending state, then the completed one; only
    # the completed one when the worker's claiming start and outcome were folded before the
    # enqueue's commit began (its ready record goes out before that commit)
    "job-state": (1, 2),
    "ready": (1, 1),  # the ready record the worker takes
    # none: the lease is the processor's housekeeping timer (in memory, rebuilt from job-state)
    "timers": (0, 0),
}
MOST_RECORDS_PER_JOB = 7  # the sum over every topic (6-7 today)
NOT_PER_JOB = {"workers"}  # the worker registry: announcements per worker, keyed by worker id
JOBS = 4
COMMIT_INTERVAL_S = 2.0  # longer than a trivial job takes from its ready record to its outcome


async def test_a_job_alone_writes_the_documented_records_per_topic(app: App) -> None:
    settings = app.settings
    names = TopicNames(settings.namespace, load_specs(settings.topics_dir))
    runtime = Runtime(app)
    # Given a processor committing at most every COMMIT_INTERVAL_S, and a worker
    runtime.tasks.append(asyncio.create_task(
        run_processor(settings, runtime.stop, commit_interval_s=COMMIT_INTERVAL_S)))
    try:
        await runtime.start_worker()
        warm_up = await app.enqueue("add", {"a": 0, "b": 0})  # partitions assigned, clients connected
        assert (await app.wait(warm_up, timeout=60)).status is JobStatus.COMPLETED
        # When each job is enqueued after the processor was idle for a whole interval (its
        # enqueue commits at once), and runs well within the next interval (its claim, start
        # and outcome commit together)
        job_ids = []
        for i in range(JOBS):
            await asyncio.sleep(COMMIT_INTERVAL_S + 0.3)
            job_id = await app.enqueue("add", {"a": i, "b": 1})
            assert (await app.wait(job_id, timeout=60)).status is JobStatus.COMPLETED
            job_ids.append(job_id)
    finally:
        await runtime.close()

    # Then every topic of the namespace, read back, holds exactly the documented records per job
    spec_of = {id(spec_file.spec): key for key, spec_file in names.specs.items()}
    per_job = {job_id: Counter[str]() for job_id in job_ids}
    unowned: Counter[str] = Counter()
    known = set(job_ids) | {warm_up}
    for topic, spec in names.planned(QUEUES):
        spec_key = spec_of[id(spec)]
        async for record in read_to_end(settings, await partitions_of(settings, topic)):
            owner = (record.key or b"")[:36].decode(errors="replace")
            if owner in per_job:
                per_job[owner][spec_key] += 1
            elif owner not in known:
                unowned[spec_key] += 1
    measured = {job_id: dict(sorted(counts.items())) for job_id, counts in per_job.items()}
    for job_id, counts in per_job.items():
        for spec_key in names.specs:
            fewest, most = RECORDS_PER_JOB.get(spec_key, (0, 0))
            assert fewest <= counts[spec_key] <= most, (
                f"job {job_id} wrote {counts[spec_key]} record(s) to the {spec_key!r} topics, documented "
                f"{fewest}..{most}; records per job by topic spec: {measured}")
        assert sum(counts.values()) <= MOST_RECORDS_PER_JOB, (
            f"job {job_id} wrote {sum(counts.values())} records, at most {MOST_RECORDS_PER_JOB} documented: {measured}")
    assert MOST_RECORDS_PER_JOB == sum(most for _, most in RECORDS_PER_JOB.values())
    assert set(unowned) <= NOT_PER_JOB, f"records that name no job outside {NOT_PER_JOB}: {dict(unowned)}"
